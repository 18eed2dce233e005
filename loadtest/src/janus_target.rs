//! The same participants against Janus's VideoRoom plugin, for a side by
//! side comparison. Janus gives each participant two connections: one to
//! publish and one that receives the feeds it subscribes to.
//!
//! Janus's plugin announces new publishers but subscribing to them later
//! means renegotiating; to keep the comparison about forwarding, each
//! subscriber waits until its room's publishers are all present and then
//! subscribes once. Its join time counts from that subscribe request, and
//! a grid page stays where it started.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::watch;

use crate::janus::JanusSession;
use crate::peer::{self, Shared, TrackKey};
use crate::run::{Outcome, ParticipantRun};
use crate::scenario::ParticipantPlan;

pub struct JanusTarget {
    pub url: String,
    /// Each publisher's audio mid, so a subscriber can take only the audio
    /// of feeds outside its grid page.
    pub audio_mids: std::sync::Mutex<std::collections::HashMap<u32, String>>,
}

/// How long a subscriber waits for its room's publishers.
const PUBLISHERS_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn participant(
    target: Arc<JanusTarget>,
    shared: Arc<Shared>,
    plan: ParticipantPlan,
    stop: watch::Receiver<bool>,
) -> Outcome {
    let mut run = ParticipantRun::new(plan, &shared);
    let r = session(&target, &shared, &mut run, stop).await;
    run.finish(r).await
}

/// Janus room numbers must be non-zero; feed ids are participant index + 1.
fn room_id(plan: &ParticipantPlan) -> u64 {
    1000 + plan.room as u64
}

fn feed_id(sender: u32) -> u64 {
    u64::from(sender) + 1
}

async fn session(
    target: &JanusTarget,
    shared: &Arc<Shared>,
    run: &mut ParticipantRun,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let plan = run.plan;
    let sc = &shared.scenario;
    let room = room_id(&plan);
    let publishes = plan.audio || plan.video;
    let mut janus = JanusSession::connect(&target.url)
        .await
        .context("connecting to Janus")?;
    let control = janus
        .attach()
        .await
        .context("attaching the videoroom plugin")?;
    let max_publishers = sc.publishers_per_room().max(1) as u32;
    janus
        .create_room(control, room, max_publishers)
        .await
        .context("creating the room")?;
    let mut publisher = None;
    if publishes {
        let p = peer::spawn(shared.clone(), plan, !run.receives)
            .await
            .context("binding the publisher's socket")?;
        let (offer, tracks) = p.offer().await.map_err(|e| anyhow!(e))?;
        if let Some((mid, _)) = tracks
            .iter()
            .find(|t| t.1 == str0m::media::MediaKind::Audio)
        {
            target
                .audio_mids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(plan.index, mid.to_string());
        }
        let (_, answer) = janus
            .publish(control, room, feed_id(plan.index), &plan.identity(), &offer)
            .await
            .context("publishing")?;
        p.answer(answer).await.map_err(|e| anyhow!(e))?;
        publisher = Some(p);
    }
    if run.receives {
        let base = (plan.room * sc.participants) as u32;
        let wanted: Vec<u32> = (0..sc.publishers_per_room())
            .map(|l| base + l as u32)
            .filter(|s| *s != plan.index)
            .collect();
        let deadline = Instant::now() + PUBLISHERS_TIMEOUT;
        loop {
            let present = janus.publishers(control, room).await?;
            if wanted.iter().all(|s| present.contains(&feed_id(*s))) {
                break;
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "only {} of {} publishers appeared in Janus",
                    present.len(),
                    wanted.len()
                ));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return Err(anyhow!("stopped before all publishers appeared")),
            }
        }
        let page: Option<Vec<u32>> = sc
            .grid_page(plan.local, 0)
            .map(|p| p.into_iter().map(|l| base + l as u32).collect());
        let videos: &[u32] = page.as_deref().unwrap_or(&wanted);
        // Audio from everyone, video from the page.
        let feeds: Vec<(u64, Option<String>)> = {
            let mids = target.audio_mids.lock().unwrap_or_else(|e| e.into_inner());
            wanted
                .iter()
                .filter_map(|s| {
                    if videos.contains(s) {
                        Some((feed_id(*s), None))
                    } else {
                        mids.get(s).map(|m| (feed_id(*s), Some(m.clone())))
                    }
                })
                .collect()
        };
        run.t0 = Instant::now();
        let sub = peer::spawn(shared.clone(), plan, true)
            .await
            .context("binding the subscriber's socket")?;
        sub.watch(page.clone()).await;
        let handle = janus.attach().await?;
        let offer = janus
            .subscribe(handle, room, &feeds)
            .await
            .context("subscribing")?;
        let keys = wanted
            .iter()
            .flat_map(|&sender| {
                [
                    TrackKey {
                        sender,
                        video: false,
                    },
                    TrackKey {
                        sender,
                        video: true,
                    },
                ]
            })
            .filter(|k| !k.video || videos.contains(&k.sender))
            .collect();
        let answer = sub
            .accept_offer(offer, keys)
            .await
            .map_err(|e| anyhow!(e))?;
        janus
            .start(handle, &answer)
            .await
            .context("starting the subscription")?;
        run.peer = Some(sub);
    } else {
        run.peer = publisher.take();
    }
    let _ = stop.changed().await;
    if let Some(p) = &run.peer {
        run.summary = Some(p.finish().await);
    }
    if let Some(p) = publisher {
        p.finish().await;
    }
    janus.close().await;
    Ok(())
}
