//! Three webrtc-rs participants meet through the server: real Opus tones and
//! VP8 video cross it, keyframe requests reach publishers, leaving is seen.

use std::time::{Duration, Instant};

use stamma_client::media::dominant_frequency;
use stamma_proto::{MediaKind, Role, ServerSignal};
use stamma_tests::{Publish, TestParticipant, TestServer, wait_until};

const TONES: [f32; 3] = [440.0, 660.0, 880.0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_hear_and_see_each_other() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut ps = Vec::new();
    for (i, hz) in TONES.iter().enumerate() {
        let p = TestParticipant::join(
            &srv.base,
            "meeting",
            &format!("user{i}"),
            Role::Speaker,
            Publish {
                tone_hz: Some(*hz),
                video: true,
                ..Publish::default()
            },
        )
        .await?;
        ps.push(p);
    }

    // Everyone receives audio and video from both others.
    let ids: Vec<String> = ps.iter().map(|p| p.id.clone()).collect();
    wait_until(Duration::from_secs(30), "all media flowing", || {
        ps.iter().enumerate().all(|(i, p)| {
            ids.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .all(|(_, other)| {
                    let audio = p
                        .received_from(other, MediaKind::Audio)
                        .and_then(|t| p.with_received(&t, |r| r.pcm.len()))
                        .unwrap_or(0);
                    let video = p
                        .received_from(other, MediaKind::Video)
                        .and_then(|t| p.with_received(&t, |r| r.packets))
                        .unwrap_or(0);
                    audio >= 48_000 && video >= 30
                })
        })
    })
    .await?;

    // Join-to-first-audio, for the record.
    for p in &ps {
        let first = ids
            .iter()
            .filter(|o| **o != p.id)
            .filter_map(|o| p.received_from(o, MediaKind::Audio))
            .filter_map(|t| p.with_received(&t, |r| r.first_at).flatten())
            .min();
        if let Some(first) = first {
            eprintln!(
                "join-to-first-audio {}: {} ms",
                p.identity,
                first.duration_since(p.connected_at).as_millis()
            );
        }
    }

    // Each hears the other two at the frequencies they sent.
    for (i, p) in ps.iter().enumerate() {
        for (j, other) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let t = p
                .received_from(other, MediaKind::Audio)
                .expect("audio track");
            let pcm = p.with_received(&t, |r| r.pcm.clone()).expect("pcm");
            // Skip the decoder's start-up, analyse one second.
            let window = &pcm[pcm.len() - 48_000..];
            let f = dominant_frequency(window, 100.0, 4000.0, 5.0);
            assert!(
                (f - TONES[j]).abs() <= 10.0,
                "{} hears {} at {f} Hz, expected {} Hz",
                p.identity,
                ps[j].identity,
                TONES[j]
            );
        }
    }

    // Video: starts on a keyframe, sequence numbers without gaps.
    for (i, p) in ps.iter().enumerate() {
        for (j, other) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let t = p
                .received_from(other, MediaKind::Video)
                .expect("video track");
            let (seqs, first_key, keyframes) = p
                .with_received(&t, |r| {
                    (r.seqs.clone(), r.first_is_keyframe, r.keyframes.len())
                })
                .expect("video");
            // The server starts every subscriber on a keyframe (proved without
            // client quirks in tests/sim.rs); here: if packet 1 arrived, it is one.
            assert_ne!(first_key, Some(false), "video must start on a keyframe");
            assert!(keyframes > 0, "no keyframe received");
            // A rewriting gap would never fill. A packet lost on the loopback
            // is repaired over RTX and arrives after later ones (once in CI:
            // 4, 6, ... with 5 missing at that point), so order is not judged.
            let (_, missing) = missing_seqs(&seqs);
            assert!(
                missing.is_empty(),
                "{} from {}: gap in video sequence numbers: {missing:?}",
                p.identity,
                ps[j].identity
            );
        }
    }

    // A PLI from user0 for user1's video reaches user1, and a keyframe follows.
    let video_of_1 = ps[0]
        .received_from(&ids[1], MediaKind::Video)
        .expect("video");
    let ssrc = ps[0].with_received(&video_of_1, |r| r.ssrc).expect("ssrc");
    let cam1 = ps[1]
        .local_tracks
        .lock()
        .unwrap()
        .iter()
        .find(|t| t.kind() == stamma_client::peer::MediaKind::Video)
        .cloned()
        .expect("camera");
    let requests_before = cam1.keyframe_requests();
    // Let the server's per-track keyframe throttle expire first.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pli_at = Instant::now();
    ps[0].peer.send_pli(ssrc).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        cam1.wait_keyframe_requests(requests_before + 1),
    )
    .await??;
    wait_until(Duration::from_secs(5), "keyframe after PLI", || {
        ps[0]
            .with_received(&video_of_1, |r| {
                r.keyframes.iter().any(|(t, _)| *t > pli_at)
            })
            .unwrap_or(false)
    })
    .await?;
    eprintln!(
        "PLI to keyframe: {} ms",
        ps[0]
            .with_received(&video_of_1, |r| r
                .keyframes
                .iter()
                .find(|(t, _)| *t > pli_at)
                .map(|(t, _)| t.duration_since(pli_at).as_millis()))
            .flatten()
            .unwrap_or(0)
    );

    // user2 leaves: the others are told within 2 s and its tracks are gone.
    let leaver = ps.pop().expect("three participants");
    let leaver_id = leaver.id.clone();
    let left_at = Instant::now();
    leaver.leave().await;
    for p in &ps {
        wait_until(Duration::from_secs(2), "participant_left", || {
            p.has_signal(|s| matches!(s, ServerSignal::ParticipantLeft { participant_id, .. } if *participant_id == leaver_id))
                .is_some()
        })
        .await?;
        let told = p
            .has_signal(|s| matches!(s, ServerSignal::ParticipantLeft { participant_id, .. } if *participant_id == leaver_id))
            .expect("told");
        assert!(told.duration_since(left_at) < Duration::from_secs(2));
        // Both of its tracks were unpublished, and a server offer without them followed.
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let t = p.received_from(&leaver_id, kind).expect("had the track");
            assert!(
                p.has_signal(|s| matches!(s, ServerSignal::TrackUnpublished { track_id, .. } if *track_id == t))
                    .is_some(),
                "track_unpublished for {kind:?}"
            );
        }
        wait_until(
            Duration::from_secs(2),
            "offer without the leaver's tracks",
            || {
                p.signal_after(left_at, |s| match s {
                    ServerSignal::Offer { tracks, .. } => {
                        tracks.iter().all(|t| t.participant_id != leaver_id) && !tracks.is_empty()
                    }
                    _ => false,
                })
                .is_some()
            },
        )
        .await?;
    }
    // The remaining two still hear each other.
    let t = ps[0]
        .received_from(&ids[1], MediaKind::Audio)
        .expect("audio");
    let before = ps[0].with_received(&t, |r| r.packets).unwrap_or(0);
    wait_until(
        Duration::from_secs(3),
        "audio continues after a leave",
        || ps[0].with_received(&t, |r| r.packets).unwrap_or(0) >= before + 25,
    )
    .await?;
    let mut n = srv.participants().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while n != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        n = srv.participants().await?;
    }
    assert_eq!(n, 2);
    Ok(())
}

/// Loss on the publisher's uplink is repaired by the server's NACKs, loss on
/// the subscriber's downlink by the server's retransmissions: the subscriber
/// ends up with every video packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_packets_are_recovered_in_both_directions() -> anyhow::Result<()> {
    use stamma_tests::{Direction, LossyRelay};
    let srv = TestServer::start(1).await?;
    let media = srv.media_addr();
    let up = LossyRelay::start(media, Direction::ToServer, 15).await?;
    let down = LossyRelay::start(media, Direction::ToClient, 15).await?;
    let publisher = TestParticipant::join_via(
        &srv.base,
        "lossy",
        "pub",
        Role::Speaker,
        Publish {
            tone_hz: Some(440.0),
            video: true,
            ..Publish::default()
        },
        Some((media, up.addr)),
    )
    .await?;
    let subscriber = TestParticipant::join_via(
        &srv.base,
        "lossy",
        "sub",
        Role::Attendee,
        Publish {
            tone_hz: None,
            video: false,
            ..Publish::default()
        },
        Some((media, down.addr)),
    )
    .await?;
    let video = || subscriber.received_from(&publisher.id, MediaKind::Video);
    wait_until(Duration::from_secs(20), "video through lossy links", || {
        video()
            .and_then(|t| subscriber.with_received(&t, |r| r.packets))
            .unwrap_or(0)
            >= 300
    })
    .await?;
    let up_dropped = up.dropped.load(std::sync::atomic::Ordering::Relaxed);
    let down_dropped = down.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        up_dropped >= 3 && down_dropped >= 3,
        "relays dropped {up_dropped}/{down_dropped}"
    );
    let t = video().expect("video");
    let seqs = subscriber
        .with_received(&t, |r| r.seqs.clone())
        .expect("seqs");
    let (unique, missing) = missing_seqs(&seqs);
    eprintln!(
        "dropped up {up_dropped}, down {down_dropped}; received {unique} unique, missing {}",
        missing.len()
    );
    assert!(missing.is_empty(), "not recovered: {missing:?}");
    Ok(())
}

/// RTP sequence numbers in arrival order: how many distinct ones arrived,
/// and which between the first and the last ones are missing, minus the
/// last 20 (about half a second of video), which may still be in repair.
/// Retransmissions (repairs, and probes resending old packets as libwebrtc
/// does) arrive late or twice; a receiver's jitter buffer orders them.
fn missing_seqs(seqs: &[u16]) -> (usize, Vec<u64>) {
    let mut ext: Vec<u64> = Vec::with_capacity(seqs.len());
    let mut highest: Option<u64> = None;
    for &s in seqs {
        let e = match highest {
            None => u64::from(s) + 65_536,
            Some(h) => (h as i64 + i64::from(s.wrapping_sub(h as u16) as i16)) as u64,
        };
        highest = Some(highest.map_or(e, |h| h.max(e)));
        ext.push(e);
    }
    ext.sort_unstable();
    ext.dedup();
    let span = ext.len().saturating_sub(20);
    let missing = match (ext.first(), span.checked_sub(1).and_then(|i| ext.get(i))) {
        (Some(&first), Some(&last)) => (first..=last)
            .filter(|s| ext.binary_search(s).is_err())
            .collect(),
        _ => Vec::new(),
    };
    (ext.len(), missing)
}

#[test]
fn late_repairs_are_not_gaps_and_holes_are() {
    // 1 repaired after 2, one duplicate, across the 16-bit wrap.
    let mut seqs: Vec<u16> = vec![65_533, 65_534, 65_535, 0, 2, 1, 1];
    seqs.extend(3..40);
    assert_eq!(missing_seqs(&seqs), (43, vec![]));
    // 0 never came: a hole (extended numbers start at 65 536).
    let holed: Vec<u16> = seqs.iter().copied().filter(|&s| s != 0).collect();
    assert_eq!(missing_seqs(&holed), (42, vec![131_072]));
    // The same hole among the last 20 may still be in repair.
    let recent: Vec<u16> = (0..40).filter(|&s| s != 30).collect();
    assert_eq!(missing_seqs(&recent).1, Vec::<u64>::new());
}
