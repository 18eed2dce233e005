//! The simulated network on a virtual clock: media flows through rate-limited
//! links, the bottleneck holds, and runs repeat exactly.

use std::time::{Duration, Instant};

use stamma_tests::netsim::{LinkConfig, Links, NetConfig, NetSim, Publish, Video};

const SECOND: Duration = Duration::from_secs(1);

/// A publisher on a 5 Mbit/s link and subscribers with the given downlinks
/// (5 Mbit/s up), connected, at virtual time 1 s.
fn meeting(video: Video, downlinks: &[LinkConfig], net: NetConfig) -> anyhow::Result<NetSim> {
    meeting_with(NetSim::config(), video, downlinks, net)
}

fn meeting_with(
    config: stamma_sfu::SfuConfig,
    video: Video,
    downlinks: &[LinkConfig],
    net: NetConfig,
) -> anyhow::Result<NetSim> {
    let mut sim = NetSim::with_net(config, net)?;
    sim.add_publisher(Publish::video(video), Links::symmetric(5_000))?;
    for d in downlinks {
        sim.add_subscriber(Links {
            up: LinkConfig::kbps(5_000),
            down: *d,
        })?;
    }
    sim.settle(SECOND)?;
    sim.run_to(SECOND)?;
    Ok(sim)
}

/// Subscribers 1 and 2 on loss-free links got video without a stall from
/// `from` to now, with continuous sequence numbers and timestamps, and any
/// layer change on a keyframe.
fn assert_continuous_video(sim: &NetSim, from: Duration, min_fps: usize) {
    let track = sim
        .video_track_id(0)
        .expect("the publisher's video has a track id");
    let end = sim.now();
    for i in [1, 2] {
        let p = sim.peer(i);
        let rx = p.rx_track(&track).expect("subscribed to the video");
        let seq = rx.seq_report();
        let frames = rx.frames_between(from, end);
        eprintln!(
            "subscriber {i}: {frames} frames in {:?} ({} incomplete), {} kbit/s, \
             longest gap {:?}, layers {:?}, {seq:?}, link losses {}",
            end - from,
            rx.incomplete_frames(),
            p.downlink.kbps_between(from, end).round(),
            rx.max_frame_gap(from, end),
            rx.layer_timeline(),
            p.downlink.losses(),
        );
        assert_eq!(
            p.downlink.losses(),
            0,
            "subscriber {i}: the link lost packets"
        );
        let secs = (end - from).as_secs() as usize;
        assert!(
            frames >= secs * min_fps,
            "subscriber {i}: {frames} frames in {secs} s"
        );
        assert!(
            rx.max_frame_gap(from, end) < Duration::from_millis(200),
            "subscriber {i}: video stalled for {:?}",
            rx.max_frame_gap(from, end)
        );
        assert!(seq.continuous(), "subscriber {i}: {seq:?}");
        assert_eq!(rx.timestamp_regressions(), 0, "subscriber {i}");
        assert_eq!(rx.incomplete_frames(), 0, "subscriber {i}");
        for s in rx.layer_switches() {
            assert!(s.on_keyframe, "subscriber {i}: {s:?}");
        }
    }
}

/// Two subscribers on 5 Mbit/s links for 5 s of simulated time.
fn fast_links(video: Video, min_fps: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut sim = meeting(
        video,
        &[LinkConfig::kbps(5_000), LinkConfig::kbps(5_000)],
        NetConfig::default(),
    )?;
    let from = sim.now();
    sim.run_for(5 * SECOND)?;
    assert_continuous_video(&sim, from, min_fps);
    eprintln!(
        "{:?} simulated in {:?} ({} steps)",
        sim.now(),
        started.elapsed(),
        sim.stats.steps
    );
    Ok(())
}

#[test]
fn subscribers_on_fast_links_receive_video_continuously() -> anyhow::Result<()> {
    fast_links(Video::Single, 29)
}

/// Each subscriber gets one layer of the three, rewritten into one stream.
#[test]
fn simulcast_subscribers_on_fast_links_receive_video_continuously() -> anyhow::Result<()> {
    // The low layer has 15 fps.
    fast_links(Video::Simulcast, 14)
}

#[test]
fn a_300_kbps_downlink_never_delivers_more_than_300_kbps() -> anyhow::Result<()> {
    // The link model itself: the Allocator is off, so the server pushes the
    // full 500 kbit/s into the bottleneck.
    let mut config = NetSim::config();
    config.allocator = false;
    let mut sim = meeting_with(
        config,
        Video::Single,
        &[LinkConfig::kbps(5_000), LinkConfig::kbps(300)],
        NetConfig::default(),
    )?;
    let from = sim.now();
    sim.run_for(5 * SECOND)?;
    let (fast, slow) = (sim.peer(1), sim.peer(2));
    let series = slow.downlink.kbps_series();
    let buckets = &series[(from.as_millis() / 500) as usize..];
    eprintln!(
        "fast: {} kbit/s, dropped {}; slow: {:?} kbit/s per 500 ms, dropped {} of {}, \
         longest queueing {:?}",
        fast.downlink.kbps_between(from, sim.now()).round(),
        fast.downlink.dropped,
        buckets.iter().map(|k| k.round()).collect::<Vec<_>>(),
        slow.downlink.dropped,
        slow.downlink.offered,
        slow.downlink.max_queueing,
    );
    // A bucket may end with one datagram more than its share (1.2 kB per
    // 500 ms is 19 kbit/s); the IP/UDP overhead counted by the link but not
    // in the series more than covers it.
    for (n, kbps) in buckets.iter().enumerate() {
        assert!(*kbps <= 300.0 + 19.2, "bucket {n}: {kbps} kbit/s");
    }
    let mean = slow.downlink.kbps_between(from, sim.now());
    assert!(mean > 250.0, "the bottleneck is used: {mean} kbit/s");
    assert!(
        slow.downlink.dropped > 0,
        "500 kbit/s of video into a 300 kbit/s link must overflow its queue"
    );
    assert!(slow.downlink.max_queueing <= Duration::from_millis(250));
    assert!(fast.downlink.kbps_between(from, sim.now()) > 400.0);
    assert_eq!(fast.downlink.losses(), 0);
    Ok(())
}

/// Counts that depend only on virtual time, the media sources and the link
/// model. Not compared: str0m's random SSRCs and ICE credentials, nor link
/// bytes, which include DTLS handshakes whose size varies per run.
fn counts(sim: &NetSim) -> Vec<u64> {
    let mut v = vec![sim.now().as_nanos() as u64];
    for p in sim.peers() {
        v.extend([
            p.connected_at.map_or(0, |t| t.as_nanos() as u64),
            p.uplink.delivered,
            p.uplink.dropped,
            p.uplink.lost,
            p.downlink.delivered,
            p.downlink.dropped,
            p.downlink.lost,
            p.signals.len() as u64,
        ]);
        for t in &p.rx {
            v.extend([
                t.packets.len() as u64,
                t.packets.iter().map(|p| p.len as u64).sum(),
                t.packets.iter().map(|p| p.at.as_nanos() as u64).sum(),
                t.frames.len() as u64,
                t.frames.iter().filter(|f| f.complete).count() as u64,
            ]);
        }
        if let Some(pb) = &p.publisher {
            for l in &pb.layers {
                v.extend([
                    l.frames_sent,
                    l.keyframes_sent,
                    l.keyframe_requests.len() as u64,
                    l.activity.len() as u64,
                ]);
            }
        }
    }
    v
}

#[test]
fn identical_runs_produce_identical_counts() -> anyhow::Result<()> {
    let run = || -> anyhow::Result<Vec<u64>> {
        let mut sim = meeting(
            Video::Single,
            &[
                LinkConfig::kbps(5_000).with_loss(0.02),
                LinkConfig::kbps(400),
            ],
            NetConfig {
                seed: 7,
                ..NetConfig::default()
            },
        )?;
        sim.run_for(2 * SECOND)?;
        sim.set_downlink_kbps(2, 1_500);
        sim.run_for(2 * SECOND)?;
        Ok(counts(&sim))
    };
    let a = run()?;
    let b = run()?;
    eprintln!("{a:?}");
    assert_eq!(a, b);
    Ok(())
}
