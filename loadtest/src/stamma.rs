//! A participant against Stämma: protocol v1 over the WebSocket
//! (docs/protocol.md), one str0m peer for everything it sends and receives.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use stamma_client::signal::{AnsweredOffers, SignalClient};
use stamma_proto::{
    ClientSignal, Grant, MediaKind as WireKind, ParticipantInfo, PauseReason, PublishedTrack, Role,
    ServerSignal, TrackInfo, TrackSource, VideoQuality,
};
use str0m::media::MediaKind;
use tokio::sync::watch;
use tracing::debug;

use crate::peer::{self, Shared, TrackKey};
use crate::run::{Outcome, ParticipantRun};
use crate::scenario::{ParticipantPlan, Scenario, Subscribe};
use crate::stats::Delta;

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
/// How often the reported dominant speaker is compared with the scenario's.
const DOMINANT_SAMPLE: Duration = Duration::from_secs(1);
/// After the scenario rotates its speakers, the server's detector (which
/// smooths audio levels) gets this long to follow before it is judged.
const DOMINANT_GRACE: Duration = Duration::from_secs(2);
/// At most this many track ids per `subscription` signal (the server takes 256).
const SUBSCRIPTION_CHUNK: usize = 200;

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
    /// Our own load-test index: our tracks are never subscription targets.
    me: u32,
    /// participant id → load-test index.
    senders: HashMap<String, u32>,
    /// track id → which track.
    tracks: HashMap<String, TrackKey>,
    /// Tracks whose delivery is paused now.
    paused: HashSet<String>,
    /// The quality last asked for, per video track.
    quality: HashMap<String, VideoQuality>,
    /// The speaker shown large (high quality): the last dominant speaker
    /// reported, kept while nobody speaks, as a meeting client does.
    dominant: Option<u32>,
    /// Tracks, the grid page or the dominant speaker changed since the
    /// subscription settings were last worked out.
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

    /// The `subscription` signals that bring the server up to date: pause
    /// and resume for a grid page (`None`: all watched) and the stage, or
    /// for watching nothing; and, when watching, every video tile at low
    /// quality but the dominant speaker's, which is shown large. Tracks
    /// needing the same settings share one signal, so a join costs one
    /// message, not two (the server limits clients to 20 a second).
    fn changes(&mut self, watch_all: bool, page: Option<&[u32]>) -> Vec<ClientSignal> {
        if !std::mem::take(&mut self.changed) {
            return Vec::new();
        }
        let mut groups: BTreeMap<(Option<bool>, Option<VideoQuality>), Vec<String>> =
            BTreeMap::new();
        for (id, key) in &self.tracks {
            if key.sender == self.me {
                continue;
            }
            let want = if !watch_all {
                false
            } else if !key.video {
                true
            } else {
                // The speaker is on the stage, whatever the grid page.
                page.is_none_or(|p| p.contains(&key.sender)) || self.dominant == Some(key.sender)
            };
            let paused = self.paused.contains(id);
            let enabled = (want == paused).then_some(want);
            let quality = if watch_all && key.video {
                let q = if self.dominant == Some(key.sender) {
                    VideoQuality::High
                } else {
                    VideoQuality::Low
                };
                (self.quality.get(id) != Some(&q)).then_some(q)
            } else {
                None
            };
            if enabled.is_none() && quality.is_none() {
                continue;
            }
            match enabled {
                Some(true) => {
                    self.paused.remove(id);
                }
                Some(false) => {
                    self.paused.insert(id.clone());
                }
                None => {}
            }
            if let Some(q) = quality {
                self.quality.insert(id.clone(), q);
            }
            groups
                .entry((enabled, quality))
                .or_default()
                .push(id.clone());
        }
        let mut out = Vec::new();
        for ((enabled, quality), mut ids) in groups {
            // Stable order, for the server's logs and for tests.
            ids.sort_unstable();
            for chunk in ids.chunks(SUBSCRIPTION_CHUNK) {
                out.push(ClientSignal::Subscription {
                    track_ids: chunk.to_vec(),
                    enabled,
                    quality,
                    width: None,
                    height: None,
                    pinned: None,
                });
            }
        }
        out
    }

    fn forget_track(&mut self, id: &str) {
        self.tracks.remove(id);
        self.paused.remove(id);
        self.quality.remove(id);
    }
}

/// What one participant saw of active-speaker detection.
#[derive(Default)]
struct SpeakerView {
    /// `None` before the first `speakers_changed`; after it, the first
    /// speaker of the last one (`None`: nobody speaking, or not one of ours).
    reported: Option<Option<u32>>,
}

impl SpeakerView {
    /// One sample: `Some(matched)` if it counts (a dominant speaker has been
    /// reported and the scenario's speakers are not just rotating).
    fn sample(&self, sc: &Scenario, room: usize, elapsed: Duration) -> Option<bool> {
        let reported = self.reported?;
        let turn = sc.speaker_turn.as_micros().max(1);
        let since_rotation = Duration::from_micros((elapsed.as_micros() % turn) as u64);
        if since_rotation < DOMINANT_GRACE {
            return None;
        }
        let room_start = (room * sc.participants) as u32;
        Some(reported.is_some_and(|d| {
            d.checked_sub(room_start)
                .is_some_and(|local| sc.speaking(local as usize, elapsed))
        }))
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
    let mut room = Room {
        me: plan.index,
        ..Room::default()
    };
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
    // The server sends an offer unanswered for 3 s again, unchanged (same
    // id): under load our answer may be on its way, so a copy is ignored.
    let mut answered = AnsweredOffers::default();
    // The m-line of our camera: `publish_layers` names it, and it is known
    // before the server has told us the track's id.
    let mut own_video_mid: Option<String> = None;
    if publishes {
        let (sdp, tracks) = peer.offer().await.map_err(|e| anyhow!(e))?;
        own_video_mid = tracks
            .iter()
            .find(|(_, kind)| *kind == MediaKind::Video)
            .map(|(mid, _)| mid.to_string());
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
    // What the peer is told it watches: the page and the stage.
    let on_screen = |page: &Option<Vec<u32>>, stage: Option<u32>| {
        page.clone().map(|mut p| {
            if let Some(s) = stage.filter(|s| !p.contains(s)) {
                p.push(s);
            }
            p
        })
    };
    let mut shift_at = tokio::time::Instant::now() + sc.grid_shift;
    let mut ping_at = tokio::time::Instant::now() + PING_EVERY;
    let mut sample_at = tokio::time::Instant::now() + DOMINANT_SAMPLE;
    let mut own_video: Option<String> = None;
    let mut speakers = SpeakerView::default();
    // Counters from signals, handed to the collector with the time they
    // happened, like the peers' media counters.
    let record = |f: &dyn Fn(&mut Delta)| {
        let mut d = Delta::default();
        f(&mut d);
        shared.collector.record(Instant::now(), d);
    };
    loop {
        for signal in room.changes(watch_all, current.as_deref()) {
            client.send(&signal).await?;
        }
        tokio::select! {
            s = client.recv() => {
                let s = s?;
                match s {
                    ServerSignal::Offer { id, sdp, tracks } => {
                        // Our own offer wins; the server offers again after it.
                        if pending || !answered.take_new(id) {
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
                    ServerSignal::Answer { sdp, tracks } => {
                        peer.answer(sdp).await.map_err(|e| anyhow!(e))?;
                        pending = false;
                        if let Some(t) = tracks.iter().find(|t| t.kind == WireKind::Video) {
                            own_video = Some(t.id.clone());
                        }
                    }
                    ServerSignal::ParticipantJoined { participant } => room.learn_participant(&participant),
                    ServerSignal::TrackPublished { track } => room.learn_track(&track),
                    ServerSignal::TrackUnpublished { track_id, .. } => room.forget_track(&track_id),
                    ServerSignal::TrackPaused { track_id, reason, .. } => {
                        if reason == PauseReason::ServerLoad {
                            record(&|d| d.load_pause_events += 1);
                        }
                        server_pause(&room, peer, plan, &track_id, true).await;
                    }
                    ServerSignal::TrackResumed { track_id, .. } => {
                        server_pause(&room, peer, plan, &track_id, false).await;
                    }
                    ServerSignal::SpeakersChanged { speakers: list } => {
                        record(&|d| d.speakers_changed += 1);
                        let first = list.first().and_then(|s| room.senders.get(&s.participant_id).copied());
                        speakers.reported = Some(first);
                        // Nobody speaking keeps the last speaker on the stage.
                        if first.is_some() && first != room.dominant {
                            room.dominant = first;
                            room.changed = true;
                            peer.stage(first).await;
                            if watch_all {
                                peer.watch(on_screen(&current, room.dominant)).await;
                            }
                        }
                    }
                    ServerSignal::PublishLayers { track_id, mid, layers } => {
                        if own_video.as_deref() == Some(track_id.as_str())
                            || own_video_mid.as_deref() == Some(mid.as_str())
                        {
                            peer.publish_layers(layers.into_iter().map(|l| (l.rid, l.active)).collect()).await;
                        } else {
                            debug!(participant = plan.index, %track_id, "publish_layers for a track not our camera");
                        }
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
                    peer.watch(on_screen(&current, room.dominant)).await;
                }
                shift_at += sc.grid_shift;
            }
            _ = tokio::time::sleep_until(sample_at) => {
                sample_at += DOMINANT_SAMPLE;
                let elapsed = Instant::now().saturating_duration_since(shared.epoch);
                if let Some(matched) = speakers.sample(sc, plan.room, elapsed) {
                    record(&|d| {
                        d.dominant_checks += 1;
                        d.dominant_matches += u64::from(matched);
                    });
                }
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

/// Tell the peer the server paused or resumed one of the tracks we receive.
async fn server_pause(
    room: &Room,
    peer: &peer::PeerHandle,
    plan: ParticipantPlan,
    track_id: &str,
    paused: bool,
) {
    match room.tracks.get(track_id) {
        Some(&key) => peer.server_pause(key, paused).await,
        None => {
            debug!(participant = plan.index, %track_id, paused, "pause signal for an unknown track")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Preset;

    type Change = (Vec<String>, Option<bool>, Option<VideoQuality>);

    /// The subscription signals the room would send for page 1–2 now.
    fn page_changes(room: &mut Room) -> Vec<Change> {
        room.changed = true;
        room.changes(true, Some(&[1, 2]))
            .iter()
            .map(subscription)
            .collect()
    }

    fn subscription(s: &ClientSignal) -> Change {
        match s {
            ClientSignal::Subscription {
                track_ids,
                enabled,
                quality,
                ..
            } => (track_ids.clone(), *enabled, *quality),
            other => panic!("not a subscription: {other:?}"),
        }
    }

    #[test]
    fn tiles_ask_low_quality_and_the_dominant_speaker_high() {
        let mut room = Room {
            me: 0,
            ..Room::default()
        };
        for (id, sender, video) in [
            ("a1", 1, false),
            ("v1", 1, true),
            ("v2", 2, true),
            ("v3", 3, true),
            ("v0", 0, true),
        ] {
            room.tracks.insert(id.into(), TrackKey { sender, video });
        }
        // A page of 1 and 2: 3 is paused; all video low, in one signal per
        // combination of settings; our own track is left alone.
        let s = page_changes(&mut room);
        assert_eq!(
            s,
            vec![
                (
                    vec!["v1".into(), "v2".into()],
                    None,
                    Some(VideoQuality::Low)
                ),
                (vec!["v3".into()], Some(false), Some(VideoQuality::Low)),
            ]
        );
        assert!(
            room.changes(true, Some(&[1, 2])).is_empty(),
            "nothing changed"
        );
        // 2 becomes the dominant speaker, then 3: the one before goes back
        // to low; the speaker is watched on the stage also when not on the
        // page, and paused again when it leaves the stage.
        room.dominant = Some(2);
        let s = page_changes(&mut room);
        assert_eq!(s, vec![(vec!["v2".into()], None, Some(VideoQuality::High))]);
        room.dominant = Some(3);
        let s = page_changes(&mut room);
        assert_eq!(
            s,
            vec![
                (vec!["v2".into()], None, Some(VideoQuality::Low)),
                (vec!["v3".into()], Some(true), Some(VideoQuality::High)),
            ]
        );
        room.dominant = Some(1);
        let s = page_changes(&mut room);
        assert_eq!(
            s,
            vec![
                (vec!["v1".into()], None, Some(VideoQuality::High)),
                (vec!["v3".into()], Some(false), Some(VideoQuality::Low)),
            ]
        );
    }

    #[test]
    fn dominant_speaker_samples_skip_rotations_and_match_the_schedule() {
        let sc = Scenario::preset(Preset::Meeting50);
        let mut v = SpeakerView::default();
        let at = Duration::from_millis(3_000);
        assert_eq!(v.sample(&sc, 0, at), None, "nothing reported yet");
        let speaking: Vec<u32> = (0..50).filter(|&l| sc.speaking(l as usize, at)).collect();
        v.reported = Some(speaking.first().copied());
        assert_eq!(v.sample(&sc, 0, at), Some(true));
        let silent = (0..50).find(|&l| !sc.speaking(l as usize, at));
        v.reported = Some(silent);
        assert_eq!(v.sample(&sc, 0, at), Some(false));
        v.reported = Some(None);
        assert_eq!(v.sample(&sc, 0, at), Some(false), "nobody reported");
        // Within 2 s of a rotation (every 5 s), not judged.
        assert_eq!(v.sample(&sc, 0, Duration::from_millis(5_500)), None);
        // In room 1, indices are offset by the room size.
        v.reported = Some(speaking.first().map(|l| l + 50));
        assert_eq!(v.sample(&sc, 1, at), Some(true));
        assert_eq!(v.sample(&sc, 0, at), Some(false));
    }
}
