//! A participant against Stämma: protocol v1 over the WebSocket
//! (docs/protocol.md), one str0m peer for everything it sends and receives.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use stamma_client::signal::SignalClient;
use stamma_proto::{
    ClientSignal, Grant, MediaKind as WireKind, ParticipantInfo, PublishedTrack, Role,
    ServerSignal, TrackInfo, TrackSource,
};
use str0m::media::MediaKind;
use tokio::sync::watch;
use tracing::debug;

use crate::peer::{self, Shared, TrackKey};
use crate::run::{Outcome, ParticipantRun};
use crate::scenario::{ParticipantPlan, Subscribe};

pub struct StammaTarget {
    /// http(s):// base of the server.
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
}

/// Joins, limited so a stuck server fails the participant, not the run.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Below the server's idle timeout.
const PING_EVERY: Duration = Duration::from_secs(15);

pub async fn participant(
    target: Arc<StammaTarget>,
    shared: Arc<Shared>,
    plan: ParticipantPlan,
    stop: watch::Receiver<bool>,
) -> Outcome {
    let mut run = ParticipantRun::new(plan, &shared);
    let r = session(&target, &shared, &mut run, stop).await;
    run.finish(r).await
}

/// Room-local bookkeeping of who is who.
#[derive(Default)]
struct Room {
    /// participant id → load-test index.
    senders: HashMap<String, u32>,
    /// track id → which track.
    tracks: HashMap<String, TrackKey>,
    /// Tracks whose delivery is paused now.
    paused: HashSet<String>,
    /// Tracks or the grid page changed since pauses were last worked out.
    changed: bool,
}

impl Room {
    fn learn_participant(&mut self, p: &ParticipantInfo) {
        if let Some(i) = ParticipantPlan::index_of(&p.identity) {
            self.senders.insert(p.id.clone(), i);
            for t in &p.tracks {
                self.learn_track(t);
            }
        }
    }

    fn learn_track(&mut self, t: &TrackInfo) {
        if let Some(&sender) = self.senders.get(&t.participant_id) {
            let video = t.kind == WireKind::Video;
            self.tracks.insert(t.id.clone(), TrackKey { sender, video });
            self.changed = true;
        }
    }

    /// Which tracks to pause and resume for a grid page (`None`: all
    /// watched) or for watching nothing.
    fn changes(&mut self, watch_all: bool, page: Option<&[u32]>) -> (Vec<String>, Vec<String>) {
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        if !std::mem::take(&mut self.changed) {
            return (pause, resume);
        }
        for (id, key) in &self.tracks {
            let want = if !watch_all {
                false
            } else if !key.video {
                true
            } else {
                page.is_none_or(|p| p.contains(&key.sender))
            };
            let paused = self.paused.contains(id);
            if want && paused {
                resume.push(id.clone());
            } else if !want && !paused {
                pause.push(id.clone());
            }
        }
        for id in &pause {
            self.paused.insert(id.clone());
        }
        for id in &resume {
            self.paused.remove(id);
        }
        (pause, resume)
    }
}

async fn session(
    target: &StammaTarget,
    shared: &Arc<Shared>,
    run: &mut ParticipantRun,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let plan = run.plan;
    let sc = &shared.scenario;
    let publishes = plan.audio || plan.video;
    let role = if publishes {
        Role::Speaker
    } else {
        Role::Attendee
    };
    let grant = Grant::new(
        &target.api_key,
        &plan.room_name(),
        &plan.identity(),
        role,
        3600,
    );
    let token = grant
        .mint(&target.api_key, target.api_secret.as_bytes())
        .context("minting the join token")?;
    let (mut client, me, others) = tokio::time::timeout(JOIN_TIMEOUT, async {
        let mut c = SignalClient::connect(&target.url, &token).await?;
        let (me, others) = c.join().await?;
        Ok::<_, stamma_client::signal::SignalError>((c, me, others))
    })
    .await
    .map_err(|_| anyhow!("join timed out"))?
    .context("joining")?;
    let mut room = Room::default();
    room.learn_participant(&me);
    for p in &others {
        room.learn_participant(p);
    }
    let peer = peer::spawn(shared.clone(), plan, true)
        .await
        .context("binding the peer's UDP socket")?;
    run.peer = Some(peer);
    let peer = run.peer.as_ref().ok_or_else(|| anyhow!("no peer"))?;
    let mut pending = false;
    if publishes {
        let (sdp, tracks) = peer.offer().await.map_err(|e| anyhow!(e))?;
        let tracks = tracks
            .into_iter()
            .map(|(mid, kind)| {
                let kind = if kind == MediaKind::Video {
                    WireKind::Video
                } else {
                    WireKind::Audio
                };
                PublishedTrack {
                    mid: mid.to_string(),
                    kind,
                    source: TrackSource::default_for(kind),
                    width: None,
                    height: None,
                }
            })
            .collect();
        client.send(&ClientSignal::Offer { sdp, tracks }).await?;
        pending = true;
    }
    let watch_all = sc.subscribe != Subscribe::None;
    let mut shifts = 0;
    let page = |shifts: usize| {
        let base = (plan.room * sc.participants) as u32;
        sc.grid_page(plan.local, shifts)
            .map(|p| p.into_iter().map(|l| base + l as u32).collect::<Vec<u32>>())
    };
    let mut current = page(0);
    peer.watch(if watch_all {
        current.clone()
    } else {
        Some(Vec::new())
    })
    .await;
    let mut shift_at = tokio::time::Instant::now() + sc.grid_shift;
    let mut ping_at = tokio::time::Instant::now() + PING_EVERY;
    loop {
        let (pause, resume) = room.changes(watch_all, current.as_deref());
        for (ids, enabled) in [(pause, false), (resume, true)] {
            for chunk in ids.chunks(200) {
                client
                    .send(&ClientSignal::Subscription {
                        track_ids: chunk.to_vec(),
                        enabled: Some(enabled),
                        quality: None,
                        width: None,
                        height: None,
                        pinned: None,
                    })
                    .await?;
            }
        }
        tokio::select! {
            s = client.recv() => {
                let s = s?;
                match s {
                    ServerSignal::Offer { id, sdp, tracks } => {
                        // Our own offer wins; the server offers again after it.
                        if pending {
                            continue;
                        }
                        let keys = tracks
                            .iter()
                            .filter_map(|t| {
                                let sender = *room.senders.get(&t.participant_id)?;
                                Some(TrackKey { sender, video: t.kind == WireKind::Video })
                            })
                            .collect();
                        for t in &tracks {
                            if let Some(&sender) = room.senders.get(&t.participant_id) {
                                let video = t.kind == WireKind::Video;
                                room.tracks.insert(t.track_id.clone(), TrackKey { sender, video });
                                room.changed = true;
                            }
                        }
                        let answer = peer.accept_offer(sdp, keys).await.map_err(|e| anyhow!(e))?;
                        client.send(&ClientSignal::Answer { id, sdp: answer }).await?;
                    }
                    ServerSignal::Answer { sdp, .. } => {
                        peer.answer(sdp).await.map_err(|e| anyhow!(e))?;
                        pending = false;
                    }
                    ServerSignal::ParticipantJoined { participant } => room.learn_participant(&participant),
                    ServerSignal::TrackPublished { track } => room.learn_track(&track),
                    ServerSignal::TrackUnpublished { track_id, .. } => {
                        room.tracks.remove(&track_id);
                        room.paused.remove(&track_id);
                    }
                    ServerSignal::Error { code, message } => {
                        debug!(participant = plan.index, ?code, %message, "server error");
                        run.errors.push(format!("{code:?}: {message}"));
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(shift_at), if current.is_some() => {
                shifts += 1;
                current = page(shifts);
                room.changed = true;
                if watch_all {
                    peer.watch(current.clone()).await;
                }
                shift_at += sc.grid_shift;
            }
            _ = tokio::time::sleep_until(ping_at) => {
                client.send(&ClientSignal::Ping { ts: shared.micros(Instant::now()) }).await?;
                ping_at += PING_EVERY;
            }
            _ = stop.changed() => break,
        }
    }
    run.summary = Some(peer.finish().await);
    let _ = client.send(&ClientSignal::Leave).await;
    client.close().await;
    if pending {
        bail!("the server never answered our offer");
    }
    Ok(())
}
