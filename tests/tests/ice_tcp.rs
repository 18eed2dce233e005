//! Passive ICE-TCP on the media port: a participant with no UDP at all
//! (webrtc-rs with only an active TCP candidate) meets a UDP participant.

use std::time::Duration;

use anyhow::Context;

use stamma_proto::{MediaKind, Role};
use stamma_tests::{Publish, Route, TestParticipant, TestServer, wait_until};
use tokio::io::AsyncWriteExt;

const TCP_ONLY: Route = Route {
    via: None,
    relay_only: false,
    tcp_only: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_only_participant_meets_a_udp_one() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    // Garbage on the TCP media port first: a zero or oversized frame length
    // ends that connection, a well-framed packet nobody owns is dropped, and
    // neither disturbs what follows.
    for bytes in [vec![0u8, 0], vec![0xff, 0xff, 1, 2, 3], {
        let mut v = vec![0u8, 100];
        v.extend(std::iter::repeat_n(0xabu8, 100));
        v
    }] {
        let mut s = tokio::net::TcpStream::connect(srv.media_addr()).await?;
        s.write_all(&bytes).await?;
    }
    let tone = |hz| Publish {
        tone_hz: Some(hz),
        video: true,
        ..Publish::default()
    };
    let tcp = TestParticipant::join_with(
        &srv.base,
        "tcp",
        "tcp",
        Role::Speaker,
        tone(440.0),
        TCP_ONLY,
    )
    .await?;
    let udp = TestParticipant::join(&srv.base, "tcp", "udp", Role::Speaker, tone(660.0)).await?;
    let video = |p: &TestParticipant, from: &str| {
        p.received_from(from, MediaKind::Video)
            .and_then(|t| p.with_received(&t, |r| r.packets))
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(30), "audio and video both ways", || {
        tcp.heard_frequency(&udp.id).is_some()
            && udp.heard_frequency(&tcp.id).is_some()
            && video(&tcp, &udp.id) >= 30
            && video(&udp, &tcp.id) >= 30
    })
    .await
    .with_context(|| {
        format!(
            "tcp heard {:?} and got {} video packets; udp heard {:?} and got {}",
            tcp.heard_frequency(&udp.id),
            video(&tcp, &udp.id),
            udp.heard_frequency(&tcp.id),
            video(&udp, &tcp.id),
        )
    })?;
    let (a, b) = (tcp.heard_frequency(&udp.id), udp.heard_frequency(&tcp.id));
    assert!(
        a.is_some_and(|f| (f - 660.0).abs() < 20.0),
        "tcp heard {a:?}"
    );
    assert!(
        b.is_some_and(|f| (f - 440.0).abs() < 20.0),
        "udp heard {b:?}"
    );
    Ok(())
}
