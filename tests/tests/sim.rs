//! The in-memory meeting: the sans-IO worker forwards a publisher's video to
//! every subscriber without any socket.

use std::time::Duration;

use stamma_client::media::Vp8Frames;
use stamma_proto::ClientSignal;
use stamma_tests::sim::SimRoom;

#[test]
fn simulated_publisher_reaches_every_subscriber() -> anyhow::Result<()> {
    let mut room = SimRoom::new()?;
    room.join(true)?;
    for _ in 0..5 {
        room.join(false)?;
    }
    room.settle(Duration::from_secs(20))?;
    // Delta frames first: the forwarders must hold them back until a keyframe.
    for _ in 0..3 {
        assert!(
            room.publish_packet(0, false, 1000),
            "publisher stream ready"
        );
        room.step()?;
    }
    for n in 0..50 {
        room.publish_packet(0, n % 25 == 0, 1000);
        room.step()?;
    }
    for _ in 0..10 {
        room.step()?;
    }
    for i in 1..6 {
        assert!(
            room.received(i) >= 45,
            "subscriber {i} got {}",
            room.received(i)
        );
        // Every subscriber's video starts on a keyframe.
        let firsts = &room.peers[i].first_payload;
        assert!(!firsts.is_empty());
        for first in firsts.values() {
            let info = stamma_client::media::Vp8Frames::parse(first).expect("vp8");
            assert!(info.keyframe, "subscriber {i} started on a delta frame");
        }
    }
    Ok(())
}

#[test]
fn server_round_emits_one_datagram_per_subscriber() -> anyhow::Result<()> {
    let mut room = SimRoom::new()?;
    room.join(true)?;
    for _ in 0..10 {
        room.join(false)?;
    }
    room.settle(Duration::from_secs(20))?;
    room.publish_packet(0, true, 1000);
    room.step()?;
    let mut counts = Vec::new();
    for _ in 0..20 {
        room.publish_packet(0, false, 1000);
        counts.push(room.server_round());
    }
    eprintln!("{counts:?}");
    assert!(counts.iter().all(|c| *c >= 10), "{counts:?}");
    Ok(())
}

#[test]
fn paused_subscription_gets_nothing_and_resumes_on_a_keyframe() -> anyhow::Result<()> {
    let mut room = SimRoom::new()?;
    room.join(true)?;
    room.join(false)?;
    room.join(false)?;
    room.settle(Duration::from_secs(20))?;
    let track = room.peers[1].subscribed.first().cloned().expect("offered");
    room.publish_packet(0, true, 1000);
    for _ in 0..3 {
        room.step()?;
    }
    assert!(
        room.received(1) >= 1,
        "the keyframe arrived before the pause"
    );
    room.signal(
        1,
        ClientSignal::Subscription {
            track_ids: vec![track.clone()],
            enabled: Some(false),
            quality: None,
            width: None,
            height: None,
            pinned: None,
        },
    );
    let before = (room.received(1), room.received(2));
    for _ in 0..20 {
        room.publish_packet(0, false, 1000);
        room.step()?;
    }
    for _ in 0..3 {
        room.step()?;
    }
    assert_eq!(
        room.received(1),
        before.0,
        "a paused subscription got packets"
    );
    assert!(
        room.received(2) >= before.1 + 18,
        "the other subscriber kept receiving"
    );
    room.signal(
        1,
        ClientSignal::Subscription {
            track_ids: vec![track],
            enabled: Some(true),
            quality: None,
            width: None,
            height: None,
            pinned: None,
        },
    );
    // Deltas after the resume are held back until the publisher's keyframe.
    for n in 0..20 {
        room.publish_packet(0, n == 5, 1000);
        room.step()?;
    }
    for _ in 0..3 {
        room.step()?;
    }
    let got: Vec<&Vec<u8>> = room.peers[1].payloads.values().flatten().collect();
    let resumed = &got[before.0 as usize..];
    assert!(
        resumed.len() >= 14,
        "resumed with {} packets",
        resumed.len()
    );
    let first = Vp8Frames::parse(resumed[0]).expect("vp8");
    assert!(first.keyframe, "resumed on a delta frame");
    Ok(())
}
