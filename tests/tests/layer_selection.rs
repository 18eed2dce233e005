//! Simulcast layer selection, keyframe control and dynacast, on the
//! simulated network (virtual clock, no sockets, no sleeps): the server's
//! sans-IO worker with str0m peers behind rate-limited links.

use std::time::Duration;

use stamma_proto::{ClientSignal, ServerSignal, VideoQuality};
use stamma_sfu::allocator::TRIAL_TIME;
use stamma_tests::netsim::{LinkConfig, Links, NetSim, PeerId, Publish, Video};

const SECOND: Duration = Duration::from_secs(1);
const MILLI: Duration = Duration::from_millis(1);

/// A subscriber whose downlink drops from 2.5 Mbit/s to 300 kbit/s leaves
/// the top layers for the low one, keeps what the server sends under the
/// bottleneck, and climbs again when the link recovers. Every switch lands
/// on a keyframe and the stream stays continuous.
#[test]
fn subscriber_switches_to_low_layer_when_bandwidth_drops_and_back_when_it_recovers()
-> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Simulcast), Links::symmetric(5_000))?;
    sim.add_subscriber(Links::new(5_000, 2_500))?;
    sim.settle(10 * SECOND)?;
    // The drop comes at 8 s; STAMMA_TEST_DROP_OFFSET_MS moves it later, to
    // see how much the outcome depends on where in str0m's estimator cycle
    // it lands (it does: see docs/measurements.md, Allocator section).
    let offset = std::env::var("STAMMA_TEST_DROP_OFFSET_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    sim.run_to(8 * SECOND + Duration::from_millis(offset))?;
    let track = sim
        .video_track_id(0)
        .expect("the publisher's video has a track id");
    let before = sim
        .peer(1)
        .rx_track(&track)
        .and_then(|t| t.layer_at(sim.now()));
    assert!(
        before.is_some_and(|l| l >= 1),
        "on 2.5 Mbit/s the subscriber gets more than the low layer: {before:?}"
    );

    let drop_at = sim.now();
    sim.set_downlink_kbps(1, 300);
    let low_at = sim.run_until(
        |s| s.peer(1).rx_track(&track).and_then(|t| t.layer_at(s.now())) == Some(0),
        10 * SECOND,
    )?;
    let took = low_at - drop_at;
    eprintln!("low layer {took:?} after the drop");
    // Measured 1.27 s (0.86-1.36 s for drops 0-1.9 s later): str0m's
    // estimate falls to ~250 kbit/s within a second of the drop; the rest is
    // the old layer's queue draining (shed from then on, see `send_backlog`)
    // and the low layer's keyframe crossing the link.
    assert!(took <= 2 * SECOND, "low layer only {took:?} after the drop");
    sim.run_for(4 * SECOND)?;
    // Frames queued at the server are shed rather than delivered late:
    // what arrives after the drop left the publisher not long before.
    let worst = sim
        .peer(1)
        .rx_track(&track)
        .map(|t| {
            t.frames
                .iter()
                .filter(|f| f.at >= drop_at)
                .filter_map(|f| Some(f.at.saturating_sub(Duration::from_micros(f.stamp?.sent_us))))
                .max()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    eprintln!("worst video frame delay after the drop {worst:?}");
    // Measured 0.74 s (1.28 s when the old layer's queue is not shed): the
    // 250 ms link queue, the 150 ms send-queue limit and a keyframe's drain.
    assert!(worst <= SECOND, "a frame {worst:?} late");
    let settled = sim.now() - 3 * SECOND;
    let kbps = sim.peer(1).downlink.kbps_between(settled, sim.now());
    assert!(kbps <= 300.0, "{kbps} kbit/s through a 300 kbit/s link");
    assert_eq!(
        sim.peer(1)
            .rx_track(&track)
            .and_then(|t| t.layer_at(sim.now())),
        Some(0),
        "stays on the low layer"
    );

    let recover_at = sim.now();
    sim.set_downlink_kbps(1, 2_500);
    let up_at = sim.run_until(
        |s| {
            s.peer(1)
                .rx_track(&track)
                .and_then(|t| t.layer_at(s.now()))
                .is_some_and(|l| l >= 1)
        },
        10 * SECOND,
    )?;
    eprintln!("up again {:?} after the recovery", up_at - recover_at);
    assert!(up_at - recover_at <= 10 * SECOND);

    let rx = sim.peer(1).rx_track(&track).expect("video");
    let switches = rx.layer_switches();
    assert!(switches.len() >= 2, "{switches:?}");
    for s in &switches {
        // A switch's keyframe may itself be lost on the 300 kbit/s link; then
        // the first frame seen after the gap is a delta, not the server's doing.
        assert!(
            s.on_keyframe || s.after_gap,
            "switch not on a keyframe: {s:?}"
        );
    }
    let seq = rx.seq_report();
    assert_eq!(seq.duplicates, 0, "{seq:?}");
    // Outgoing numbering has no holes of its own: anything missing was lost
    // on the link (and most of that is repaired by retransmission).
    assert!(
        seq.missing <= sim.peer(1).downlink.losses() + sim.peer(1).downlink.dropped,
        "{seq:?}"
    );
    assert_eq!(rx.timestamp_regressions(), 0);
    // What /metrics exports saw the same: the switches, the repairs asked
    // for on the lossy link, the estimates the Allocator ran on.
    let stats = sim.worker().stats();
    assert!(
        stats.layer_switches >= switches.len() as u64,
        "{stats:?} vs {switches:?}"
    );
    assert!(stats.nacks_received > 0, "{stats:?}");
    assert!(sim.worker().drain_bwe_samples().count() > 0);
    Ok(())
}

/// Twenty subscribers asking for a keyframe within 100 ms cost the publisher
/// one request.
#[test]
fn twenty_keyframe_requests_in_100_ms_reach_the_publisher_once() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Simulcast), Links::symmetric(10_000))?;
    for _ in 0..20 {
        sim.add_subscriber(Links::symmetric(10_000))?;
    }
    sim.settle(10 * SECOND)?;
    sim.run_to(4 * SECOND)?;
    let track = sim
        .video_track_id(0)
        .expect("the publisher's video has a track id");
    let count = |sim: &NetSim| -> usize {
        let p = sim.peer(0).publisher.as_ref().expect("publisher");
        p.layers.iter().map(|l| l.keyframe_requests.len()).sum()
    };
    let before = count(&sim);
    let stats_before = sim.worker().stats();
    for i in 1..=20 {
        assert!(
            sim.request_keyframe(i, &track)?,
            "subscriber {i} sent a PLI"
        );
        sim.run_for(Duration::from_millis(5))?;
    }
    sim.run_for(SECOND)?;
    let after = count(&sim);
    assert_eq!(
        after - before,
        1,
        "keyframe requests reaching the publisher"
    );
    // The counters behind stamma_plis_received_total and
    // stamma_keyframe_requests_sent_total tell the same story.
    let stats = sim.worker().stats();
    assert_eq!(stats.plis_received - stats_before.plis_received, 20);
    assert_eq!(stats.keyframe_requests - stats_before.keyframe_requests, 1);
    Ok(())
}

/// The first subscriber of a video gets its first picture soon after its
/// media connection is up: the keyframe asked for when it subscribed arrived
/// before that and reached nobody, and while nobody receives the layer the
/// next request need not wait out the interval that protects watched layers.
#[test]
fn the_first_subscriber_sees_video_soon_after_connecting() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Single), Links::symmetric(10_000))?;
    sim.settle(10 * SECOND)?;
    sim.run_to(4 * SECOND)?;
    let joiner = sim.add_subscriber(Links::symmetric(10_000))?;
    let first_frame = |sim: &NetSim| {
        sim.peer(joiner)
            .rx_video()
            .filter_map(|t| t.frames.first().map(|f| f.at))
            .min()
    };
    sim.run_until(|sim| first_frame(sim).is_some(), 5 * SECOND)?;
    let connected = sim.peer(joiner).connected_at.expect("the joiner connected");
    let waited = first_frame(&sim)
        .expect("a frame")
        .saturating_sub(connected);
    let requests = sim
        .peer(0)
        .publisher
        .as_ref()
        .expect("publisher")
        .keyframe_requests(None);
    println!(
        "joiner connected at {connected:?}, first frame after {waited:?}; requests {requests:?}"
    );
    assert!(
        waited <= 400 * MILLI,
        "first picture {waited:?} after connecting"
    );
    Ok(())
}

/// A layer nobody receives is turned off at the publisher, and turned on
/// again within a second when a subscriber that can take it arrives.
#[test]
fn unused_layer_is_paused_and_resumed_within_a_second_of_a_new_subscriber() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Simulcast), Links::symmetric(10_000))?;
    // A thin subscriber: only the low layer fits.
    sim.add_subscriber(Links {
        up: LinkConfig::kbps(5_000),
        down: LinkConfig::kbps(300),
    })?;
    sim.settle(10 * SECOND)?;
    sim.run_to(8 * SECOND)?;
    let publisher = sim.peer(0).publisher.as_ref().expect("publisher");
    let f = publisher.layer(Some("f")).expect("layer f");
    assert!(
        !f.active,
        "nobody takes the top layer, it is off: {:?}",
        f.activity
    );
    assert!(
        sim.peer(0)
            .signals
            .iter()
            .any(|(_, s)| matches!(s, ServerSignal::PublishLayers { .. })),
        "the publisher was told"
    );

    let joined = sim.now();
    sim.add_subscriber(Links::symmetric(10_000))?;
    let on = sim.run_until(
        |s| {
            s.peer(0)
                .publisher
                .as_ref()
                .and_then(|p| p.layer(Some("h")))
                .is_some_and(|l| l.active)
        },
        5 * SECOND,
    )?;
    eprintln!("layer h back {:?} after the subscriber joined", on - joined);
    assert!(on - joined <= SECOND, "resumed after {:?}", on - joined);
    Ok(())
}

/// A paused video's outgoing stream is taken out of str0m after 2 s idle
/// (`parked_stream`) and put back on resume: the subscriber sees the same
/// SSRC, unbroken sequence numbers and timestamps, and a keyframe first.
#[test]
fn paused_stream_is_parked_and_resumes_as_the_same_stream() -> anyhow::Result<()> {
    use stamma_proto::ClientSignal;

    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Simulcast), Links::symmetric(5_000))?;
    sim.add_subscriber(Links::symmetric(5_000))?;
    sim.settle(10 * SECOND)?;
    sim.run_to(4 * SECOND)?;
    let track = sim.video_track_id(0).expect("a video track id");
    let ssrc_of = |sim: &NetSim| {
        sim.peer(1)
            .rx_track(&track)
            .and_then(|t| t.packets.last().map(|p| p.ssrc))
    };
    let ssrc = ssrc_of(&sim).expect("video flows before the pause");
    let parked_before = sim.worker().stats().streams_parked;

    let subscription = |enabled| ClientSignal::Subscription {
        track_ids: vec![track.clone()],
        enabled: Some(enabled),
        quality: None,
        width: None,
        height: None,
        pinned: None,
    };
    sim.signal(1, subscription(false))?;
    let paused_at = sim.now();
    sim.run_for(5 * SECOND)?;
    let stats = sim.worker().stats();
    assert!(
        stats.streams_parked > parked_before,
        "the idle stream was parked: {stats:?}"
    );
    // A renegotiation while parked (another publisher joins) must not give
    // the parked m-line a new stream: str0m makes one for every sending
    // m-line without one when it applies an SDP.
    sim.add_publisher(Publish::video(Video::Single), Links::symmetric(5_000))?;
    sim.run_for(3 * SECOND)?;
    let late = sim
        .peer(1)
        .rx_track(&track)
        .map(|t| {
            t.packets
                .iter()
                .filter(|p| p.at > paused_at + SECOND)
                .count()
        })
        .unwrap_or_default();
    assert_eq!(late, 0, "nothing is forwarded while paused");

    let restored_before = stats.streams_restored;
    sim.signal(1, subscription(true))?;
    let resumed_at = sim.now();
    sim.run_for(3 * SECOND)?;
    assert!(sim.worker().stats().streams_restored > restored_before);
    let rx = sim.peer(1).rx_track(&track).expect("the video track");
    let after: Vec<_> = rx.frames.iter().filter(|f| f.at > resumed_at).collect();
    assert!(
        after.len() > 10,
        "video flows again: {} frames",
        after.len()
    );
    assert!(
        after[0].keyframe,
        "the first frame after the pause is a keyframe"
    );
    assert!(after.iter().all(|f| f.complete), "every frame is whole");
    assert_eq!(ssrc_of(&sim), Some(ssrc), "the same stream resumed");
    let seq = rx.seq_report();
    assert!(seq.continuous(), "sequence numbers run on: {seq:?}");
    assert_eq!(rx.timestamp_regressions(), 0);
    Ok(())
}

/// After an audio packet str0m's pacer asks for an immediate timeout only to
/// reopen its gate; the worker leaves that to str0m's next own deadline
/// (`Worker::send_written`). Audio still arrives every 20 ms, and the
/// estimate, which needs every send time and feedback, still lifts the
/// subscriber to the top layer.
#[test]
fn audio_sends_skip_the_pacer_gate_timeout_without_delaying_anything() -> anyhow::Result<()> {
    use stamma_proto::MediaKind as WireKind;

    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(
        Publish::video(Video::Simulcast).with_audio(),
        Links::symmetric(5_000),
    )?;
    sim.add_subscriber(Links::symmetric(5_000))?;
    sim.set_speaking(0, Some(-30));
    sim.settle(10 * SECOND)?;
    sim.run_to(10 * SECOND)?;
    let deferred = sim.worker().stats().gate_timeouts_deferred;
    assert!(deferred > 100, "gate timeouts deferred: {deferred}");
    let audio = sim
        .peer(1)
        .rx
        .iter()
        .find(|t| t.kind == Some(WireKind::Audio))
        .expect("an audio track");
    let from = 5 * SECOND;
    let arrivals: Vec<Duration> = audio
        .packets
        .iter()
        .map(|p| p.at)
        .filter(|at| *at >= from)
        .collect();
    assert!(
        arrivals.len() >= 240,
        "{} audio packets in 5 s",
        arrivals.len()
    );
    let worst_gap = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst_gap <= Duration::from_millis(45),
        "audio gap {worst_gap:?}"
    );
    let track = sim.video_track_id(0).expect("a video track id");
    let layer = sim
        .peer(1)
        .rx_track(&track)
        .and_then(|t| t.layer_at(sim.now()));
    assert_eq!(layer, Some(2), "5 Mbit/s carries the top layer");
    Ok(())
}

/// Five publishers joining a room of seven within half a second reach an
/// existing member in at most two server offers (one at once, the rest coalesced: a member's
/// SDP grows with the room and both ends parse all of it each time), and
/// their video still reaches it soon after.
#[test]
fn joins_at_once_are_offered_together() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    // Offers are coalesced in rooms of 8 or more: this one has 7 before the joins.
    for _ in 0..6 {
        sim.add_publisher(Publish::video(Video::Single), Links::symmetric(5_000))?;
    }
    let member = sim.add_subscriber(Links::symmetric(10_000))?;
    sim.settle(10 * SECOND)?;
    sim.run_to(3 * SECOND)?;
    let offers = |sim: &NetSim| {
        sim.peer(member)
            .signals_where(|s| matches!(s, ServerSignal::Offer { .. }))
            .count()
    };
    let before = offers(&sim);
    let joined = sim.now();
    let mut publishers = Vec::new();
    for _ in 0..5 {
        publishers.push(sim.add_publisher(Publish::video(Video::Single), Links::symmetric(5_000))?);
        sim.run_for(Duration::from_millis(100))?;
    }
    let last_joined = sim.now();
    let all = sim.run_until(
        |s| {
            publishers.iter().all(|&p| {
                s.video_track_id(p)
                    .and_then(|t| s.peer(member).rx_track(&t).map(|r| !r.frames.is_empty()))
                    .unwrap_or(false)
            })
        },
        5 * SECOND,
    )?;
    let took = all - last_joined;
    let new_offers = offers(&sim) - before;
    eprintln!(
        "{new_offers} offers for five joins in {:?}; all five videos {took:?} after the last",
        last_joined - joined
    );
    assert!(new_offers <= 2, "{new_offers} offers for five joins");
    assert!(
        took <= 1500 * MILLI,
        "all five videos only {took:?} after the last join"
    );
    Ok(())
}

/// A client that loses a server offer (a page that dropped it while making
/// its own) still gets the tracks: the server sends the same offer again
/// after 3 s instead of waiting for an answer forever, and a client that
/// already answered ignores the copy.
#[test]
fn a_lost_server_offer_is_sent_again() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Single), Links::symmetric(5_000))?;
    let member = sim.add_subscriber(Links::symmetric(10_000))?;
    sim.settle(10 * SECOND)?;
    sim.peer_mut(member).drop_offers = 1;
    let joined = sim.now();
    let publisher = sim.add_publisher(Publish::video(Video::Single), Links::symmetric(5_000))?;
    let video = sim.run_until(
        |s| {
            s.video_track_id(publisher)
                .and_then(|t| s.peer(member).rx_track(&t).map(|r| !r.frames.is_empty()))
                .unwrap_or(false)
        },
        10 * SECOND,
    )?;
    eprintln!("video {:?} after the join", video - joined);
    assert!(
        video - joined <= 5 * SECOND,
        "video only {:?} after the join",
        video - joined
    );
    assert_eq!(sim.worker().stats().offers_resent, 1);
    // The copy of an offer already answered changes nothing: no error, and
    // nothing is sent a third time.
    sim.run_for(10 * SECOND)?;
    assert_eq!(sim.worker().stats().offers_resent, 1);
    let errors: Vec<_> = sim
        .peer(member)
        .signals_where(|s| matches!(s, ServerSignal::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    Ok(())
}

/// A subscriber behind a thin link that wants far more than fits (a grid of
/// twelve) is probed for more, but never with a burst that overflows its
/// link. str0m caps a probe at twice the desired rate, and the desired rate
/// was everything wanted (16 Mbit/s): in 3 of 8 runs a probe of ~380 padding
/// packets in 16 ms hit the 1 Mbit/s link and 53–275 datagrams were lost
/// (str0m's SSRCs are random, so runs differ; with the ceiling 0 in 12).
#[test]
fn a_thin_link_is_probed_without_overflowing_it() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    for i in 0..12 {
        let publish = Publish::video(Video::Simulcast);
        let publish = if i < 3 { publish.with_audio() } else { publish };
        sim.add_publisher(publish, Links::symmetric(5_000))?;
    }
    let sub = sim.add_subscriber(Links::new(5_000, 1_000))?;
    sim.settle(10 * SECOND)?;
    let start = sim.now();
    let lost_before = sim.peer(sub).downlink.losses();
    sim.run_for(30 * SECOND)?;
    let link = &sim.peer(sub).downlink;
    let kbps = link.kbps_between(start, sim.now());
    eprintln!(
        "{kbps:.0} kbit/s through the 1 Mbit/s link, {} lost, longest queueing {:?}",
        link.losses() - lost_before,
        link.max_queueing
    );
    assert_eq!(
        link.losses() - lost_before,
        0,
        "datagrams lost at the subscriber's link"
    );
    assert!(
        kbps > 150.0,
        "only {kbps:.0} kbit/s: not even the audio got through"
    );
    Ok(())
}

/// A subscriber's VP8 payload type and its retransmission (RTX) payload
/// type, as indexes into the link's per-payload-type byte counts.
fn vp8_payload_types(sim: &NetSim, peer: PeerId) -> (usize, usize) {
    sim.peer(peer)
        .rtc
        .codec_config()
        .params()
        .iter()
        .filter(|c| c.spec().codec == str0m::format::Codec::Vp8)
        .find_map(|c| Some((usize::from(*c.pt()), usize::from(*c.resend()?))))
        .expect("VP8 with RTX negotiated")
}

/// Retransmissions to a subscriber are capped at a share of the stream
/// (`RTX_RATIO_CAP`, a quarter): str0m queues a resend per NACKed number,
/// repeats included, and without a cap a subscriber that kept losing and
/// asking got several times its link in retransmissions (load tester,
/// behind 1 Mbit/s). On a link losing 40 % before the bottleneck the
/// uncapped share was 40 % of what was sent; repairs still flow under the cap.
#[test]
fn retransmissions_to_a_lossy_subscriber_are_capped() -> anyhow::Result<()> {
    // Without the Allocator the video is never paused, so the loss does not
    // take the stream (and with it the retransmissions) away.
    let mut config = NetSim::config();
    config.allocator = false;
    let mut sim = NetSim::new(config)?;
    sim.add_publisher(Publish::video(Video::Single), Links::symmetric(5_000))?;
    let sub = sim.add_subscriber(Links {
        up: LinkConfig::kbps(5_000),
        down: LinkConfig::kbps(2_000).with_loss(0.4),
    })?;
    sim.settle(10 * SECOND)?;
    let (media_pt, rtx_pt) = vp8_payload_types(&sim, sub);
    let before = sim.peer(sub).downlink.rtp_bytes_by_pt;
    sim.run_for(20 * SECOND)?;
    let after = sim.peer(sub).downlink.rtp_bytes_by_pt;
    let media = after[media_pt] - before[media_pt];
    let rtx = after[rtx_pt] - before[rtx_pt];
    let share = rtx as f64 / (media + rtx) as f64;
    eprintln!(
        "{} kbit/s of video, {} kbit/s of retransmissions ({:.0} %)",
        media * 8 / 20_000,
        rtx * 8 / 20_000,
        share * 100.0
    );
    assert!(rtx > 0, "nothing was repaired");
    // Measured 26 % with the cap (str0m judges it every 50 ms over the
    // last second, so it overshoots a little); 40 % without.
    assert!(
        share < 0.3,
        "retransmissions were {:.0} % of the video",
        share * 100.0
    );
    Ok(())
}

/// `n` publishers with a 500 kbit/s camera and a microphone, and a
/// subscriber on 20 Mbit/s that receives them all.
fn cameras_and_a_subscriber(n: usize) -> anyhow::Result<(NetSim, PeerId)> {
    let mut sim = NetSim::new(NetSim::config())?;
    for _ in 0..n {
        sim.add_publisher(
            Publish::video(Video::Single).with_audio(),
            Links::symmetric(10_000),
        )?;
    }
    let sub = sim.add_subscriber(Links::symmetric(20_000))?;
    Ok((sim, sub))
}

/// `track_paused` signals `sub` got with reason `server_load`.
fn load_pauses(sim: &NetSim, sub: PeerId) -> usize {
    sim.peer(sub)
        .signals_where(|s| {
            matches!(
                s,
                ServerSignal::TrackPaused {
                    reason: stamma_proto::PauseReason::ServerLoad,
                    ..
                }
            )
        })
        .count()
}

/// Feeds the worker `busy` of every 50 ms for `d`, as the driver does.
fn feed_duty(sim: &mut NetSim, d: Duration, busy: Duration) -> anyhow::Result<()> {
    let end = sim.now() + d;
    while sim.now() < end {
        sim.run_for(50 * MILLI)?;
        let now = sim.instant();
        sim.worker().note_busy(now, busy);
    }
    Ok(())
}

/// However long the worker stays saturated, the speaker's video keeps
/// flowing at its lowest layer while the other tiles are paused for server
/// load. Here that layer (500 kbit/s, one layer) costs twice the cap's
/// floor; before the cap made room for it, the speaker was paused with the
/// rest (behind 1 Mbit/s in the load tester, a 150 kbit/s layer measured
/// 220-245 kbit/s with its keyframes, and the stage was paused half the
/// time while the cap lasted).
#[test]
fn a_saturated_worker_keeps_the_speaker_flowing() -> anyhow::Result<()> {
    let (mut sim, sub) = cameras_and_a_subscriber(3)?;
    sim.set_speaking(0, Some(-30));
    sim.settle(10 * SECOND)?;
    sim.run_for(6 * SECOND)?;
    let speaker = sim.video_track_id(0).expect("the speaker's video");
    let others: Vec<String> = [1, 2]
        .iter()
        .filter_map(|&p| sim.video_track_id(p))
        .collect();
    assert_eq!(others.len(), 2);
    // Saturated for long enough that the cap is cut to its floor.
    feed_duty(&mut sim, 15 * SECOND, 48 * MILLI)?;
    let end = sim.now();
    assert_eq!(
        sim.worker().video_cap(),
        Some(stamma_sfu::load_shedder::FLOOR_BPS)
    );
    // Frames of track `t` in the last second before `end`.
    let frames = |sim: &NetSim, t: &str, end: Duration| {
        sim.peer(sub)
            .rx_track(t)
            .map_or(0, |r| r.frames_between(end - SECOND, end))
    };
    let speaker_frames = frames(&sim, &speaker, end);
    let other_frames: Vec<usize> = others.iter().map(|t| frames(&sim, t, end)).collect();
    eprintln!("last second: speaker {speaker_frames} frames, others {other_frames:?}");
    assert!(
        speaker_frames > 20,
        "the speaker flows: {speaker_frames} frames"
    );
    assert!(
        other_frames.iter().all(|&n| n == 0),
        "the other tiles are paused: {other_frames:?}"
    );
    let load_pauses = load_pauses(&sim, sub);
    assert!(load_pauses >= 2, "{load_pauses} pauses for server load");

    // Pinning every tile lifts the cap for two of them, not for all: a
    // client must not switch off what protects the worker.
    let mut all = vec![speaker.clone()];
    all.extend(others.iter().cloned());
    sim.signal(
        sub,
        ClientSignal::Subscription {
            track_ids: all.clone(),
            enabled: None,
            quality: None,
            width: None,
            height: None,
            pinned: Some(true),
        },
    )?;
    feed_duty(&mut sim, 5 * SECOND, 48 * MILLI)?;
    let end = sim.now();
    let flowing: Vec<usize> = all.iter().map(|t| frames(&sim, t, end)).collect();
    eprintln!("all pinned, last second: {flowing:?} frames");
    assert_eq!(
        flowing.iter().filter(|&&n| n > 20).count(),
        2,
        "two pinned tiles flow: {flowing:?}"
    );
    Ok(())
}

/// A worker whose thread is saturated caps its subscribers' video rather
/// than delay all media: grid tiles are paused with `server_load` (audio
/// and the remaining tiles keep flowing), and everything resumes once the
/// worker has time again. The duty cycle is fed as the driver would.
#[test]
fn a_saturated_worker_pauses_video_for_server_load_and_resumes_it() -> anyhow::Result<()> {
    let (mut sim, sub) = cameras_and_a_subscriber(6)?;
    sim.settle(10 * SECOND)?;
    sim.run_for(6 * SECOND)?;
    let tracks: Vec<String> = sim
        .peer(sub)
        .rx_video()
        .filter_map(|t| t.track_id.clone())
        .collect();
    assert_eq!(tracks.len(), 6, "all six tiles flow first");

    let saturated_at = sim.now();
    // Saturated long enough for two cuts, then busy but not saturated
    // (the cap holds).
    feed_duty(&mut sim, 2600 * MILLI, 48 * MILLI)?;
    feed_duty(&mut sim, 2 * SECOND, 35 * MILLI)?;
    let shed = sim.now();
    let paused = load_pauses(&sim, sub);
    assert!(paused > 0, "saturation paused video for server load");
    assert!(sim.worker().video_cap().is_some());
    let flowing = tracks
        .iter()
        .filter(|t| {
            sim.peer(sub)
                .rx_track(t)
                .is_some_and(|r| r.frames_between(shed - SECOND, shed) > 0)
        })
        .count();
    assert!(
        (1..6).contains(&flowing),
        "some tiles paused, not all: {flowing} of 6 flow"
    );
    let rate_before = sim
        .peer(sub)
        .rx_video()
        .map(|t| t.kbps_between(saturated_at - 2 * SECOND, saturated_at))
        .sum::<f64>();
    let rate_shed = sim
        .peer(sub)
        .rx_video()
        .map(|t| t.kbps_between(shed - SECOND, shed))
        .sum::<f64>();
    eprintln!(
        "video {rate_before:.0} kbit/s before, {rate_shed:.0} while shedding; {} pauses, {flowing} tiles flow",
        paused
    );
    assert!(
        rate_shed < rate_before * 0.8,
        "{rate_shed} vs {rate_before}"
    );

    // Time again: the cap is raised, then lifted, and every tile resumes.
    let idle_from = sim.now();
    let lifted = {
        let mut at = None;
        let end = sim.now() + 60 * SECOND;
        while sim.now() < end {
            feed_duty(&mut sim, SECOND, 10 * MILLI)?;
            if sim.worker().video_cap().is_none() {
                at = Some(sim.now());
                break;
            }
        }
        at.ok_or_else(|| anyhow::anyhow!("the cap was never lifted"))?
    };
    sim.run_for(3 * SECOND)?;
    let end = sim.now();
    for t in &tracks {
        let rx = sim.peer(sub).rx_track(t).expect("track");
        assert!(rx.frames_between(end - SECOND, end) > 20, "{t} flows again");
    }
    eprintln!("cap lifted {:?} after the load fell", lifted - idle_from);
    Ok(())
}

/// After a drop to 300 kbit/s and back, the subscriber climbs above the low
/// layer within 10 s at two drop timings where, before `EstimateStall`,
/// str0m's estimate stayed at 244 kbit/s for good (it stops probing after a
/// loss-limited episode): 6 of 6 runs failed at each, 0 of 16 fail now. A
/// third timing (700 ms) still fails in about half the runs, with or
/// without the restart, so it is not here: see the README.
#[test]
fn the_estimate_climbs_back_after_a_drop_at_timings_that_trapped_it() -> anyhow::Result<()> {
    for offset_ms in [100, 1700] {
        let mut sim = NetSim::new(NetSim::config())?;
        sim.add_publisher(Publish::video(Video::Simulcast), Links::symmetric(5_000))?;
        sim.add_subscriber(Links::new(5_000, 2_500))?;
        sim.settle(10 * SECOND)?;
        sim.run_to(8 * SECOND + offset_ms * MILLI)?;
        let track = sim
            .video_track_id(0)
            .expect("the publisher's video has a track id");
        let layer = |s: &NetSim| s.peer(1).rx_track(&track).and_then(|t| t.layer_at(s.now()));
        sim.set_downlink_kbps(1, 300);
        sim.run_until(|s| layer(s) == Some(0), 10 * SECOND)?;
        sim.run_for(4 * SECOND)?;
        let recover_at = sim.now();
        sim.set_downlink_kbps(1, 2_500);
        let up_at = sim
            .run_until(|s| layer(s).is_some_and(|l| l >= 1), 10 * SECOND)
            .map_err(|e| anyhow::anyhow!("drop {offset_ms} ms later: {e}"))?;
        eprintln!(
            "drop {offset_ms} ms later: up again {:?} after the recovery",
            up_at - recover_at
        );
    }
    Ok(())
}

/// Behind 1.5 Mbit/s an up-switch from the low to the middle layer is tried
/// with padding first (`IncreaseTrial`): the subscriber stays on its layer
/// while str0m pads the link up to the new layer's rate, and switches once
/// the estimate has held. Without the trial the switch comes one keyframe
/// after the request, with only str0m's own probes as padding.
#[test]
fn an_up_switch_on_a_thin_link_is_tried_with_padding_first() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    sim.add_publisher(Publish::video(Video::Simulcast), Links::symmetric(5_000))?;
    let sub = sim.add_subscriber(Links::new(5_000, 1_500))?;
    sim.settle(10 * SECOND)?;
    let track = sim
        .video_track_id(0)
        .expect("the publisher's video has a track id");
    let quality = |q| ClientSignal::Subscription {
        track_ids: vec![track.clone()],
        enabled: None,
        quality: Some(q),
        width: None,
        height: None,
        pinned: None,
    };
    sim.signal(sub, quality(VideoQuality::Low))?;
    sim.run_for(5 * SECOND)?;
    let layer = |s: &NetSim| {
        s.peer(sub)
            .rx_track(&track)
            .and_then(|t| t.layer_at(s.now()))
    };
    assert_eq!(layer(&sim), Some(0), "asked for the low layer");
    let (_, rtx_pt) = vp8_payload_types(&sim, sub);
    let rtx_before = sim.peer(sub).downlink.rtp_bytes_by_pt[rtx_pt];
    let asked = sim.now();
    sim.signal(sub, quality(VideoQuality::High))?;
    let up_at = sim.run_until(|s| layer(s).is_some_and(|l| l > 0), 10 * SECOND)?;
    let took = up_at - asked;
    let padding = sim.peer(sub).downlink.rtp_bytes_by_pt[rtx_pt] - rtx_before;
    eprintln!("up-switch {took:?} after the request, {padding} bytes of padding before it");
    assert!(
        took >= TRIAL_TIME,
        "switched {took:?} after the request, before a trial could end"
    );
    // Measured: the switch 1.23 s after the request, after 71 kB of
    // padding (retransmission payload type); without trials 0.34 s and
    // 9.6 kB (str0m's own probes).
    assert!(
        padding > 30_000,
        "only {padding} bytes of padding before the switch"
    );
    Ok(())
}

/// A keyframe reaches a thin link as evenly as the frames around it. str0m
/// lets 40 ms of its pacing rate out at once when its pacer was idle, and a
/// keyframe, several frames large, always finds it so: behind 1 Mbit/s the
/// first 4-5 kB arrived at the bottleneck together and queued the speaker's
/// audio behind them for over 30 ms, which str0m's estimator reads as
/// overuse (see `release_queue`). The worker now releases video into str0m
/// at the subscriber's video budget.
#[test]
fn keyframes_reach_a_thin_link_without_a_burst() -> anyhow::Result<()> {
    let mut sim = NetSim::new(NetSim::config())?;
    let speaker = sim.add_publisher(
        Publish::video(Video::Simulcast).with_audio(),
        Links::symmetric(5_000),
    )?;
    let sub = sim.add_subscriber(Links::new(5_000, 1_000))?;
    sim.settle(10 * SECOND)?;
    sim.set_speaking(speaker, Some(-30));
    let track = sim
        .video_track_id(speaker)
        .ok_or_else(|| anyhow::anyhow!("no video track"))?;
    // The middle layer fits the link: no probes, whose clusters queue by
    // design, and no increases tried with padding.
    sim.signal(
        sub,
        ClientSignal::Subscription {
            track_ids: vec![track.clone()],
            enabled: None,
            quality: Some(VideoQuality::Medium),
            width: None,
            height: None,
            pinned: None,
        },
    )?;
    // Past str0m's start-up probes.
    sim.run_for(8 * SECOND)?;
    let from = sim.now();
    sim.peer_mut(sub).downlink.max_queueing = Duration::ZERO;
    for _ in 0..6 {
        assert!(sim.request_keyframe(sub, &track)?, "no stream to ask on");
        sim.run_for(2 * SECOND)?;
    }
    let rx = sim
        .peer(sub)
        .rx_track(&track)
        .ok_or_else(|| anyhow::anyhow!("nothing received"))?;
    let keyframes: Vec<usize> = rx
        .frames
        .iter()
        .filter(|f| f.at >= from && f.keyframe)
        .map(|f| f.len)
        .collect();
    let kbps = rx.kbps_between(from, sim.now());
    let queued = sim.peer(sub).downlink.max_queueing;
    eprintln!(
        "keyframes {keyframes:?} at {kbps:.0} kbit/s of video; longest queue at the bottleneck {queued:?}"
    );
    assert!(keyframes.len() >= 3, "keyframes received: {keyframes:?}");
    // One 1.2 kB packet takes 10 ms at 1 Mbit/s; without the release queue
    // 41 ms.
    assert!(
        queued <= 30 * MILLI,
        "a datagram waited {queued:?} at the bottleneck"
    );
    Ok(())
}
