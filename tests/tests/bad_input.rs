//! Bad input of every kind gets a typed error or a silent drop; the server
//! never panics and live calls are unaffected.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stamma_client::peer::{MediaKind as PeerKind, Peer};
use stamma_client::signal::{SignalClient, SignalError};
use stamma_proto::{ClientSignal, ErrorCode, MediaKind, Role, ServerSignal};
use stamma_tests::{
    Publish, TestParticipant, TestServer, expect_error, next_signal as next, wait_until,
};

async fn expect_closed(c: &mut SignalClient, close_code: u16) {
    match next(c).await {
        Err(SignalError::Closed { code, .. }) => assert_eq!(code, close_code),
        other => panic!("expected close {close_code}, got {other:?}"),
    }
}

async fn still_alive(c: &mut SignalClient) {
    c.send(&ClientSignal::Ping { ts: 42 })
        .await
        .expect("send ping");
    match next(c).await {
        Ok(ServerSignal::Pong { ts: 42 }) => {}
        other => panic!("expected pong, got {other:?}"),
    }
}

async fn joined(srv: &TestServer, identity: &str) -> SignalClient {
    let mut c = SignalClient::connect(&srv.base, &srv.token("bad", identity, Role::Speaker))
        .await
        .expect("connect");
    c.join().await.expect("join");
    c
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_typed_errors() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c = SignalClient::connect(&srv.base, &srv.token("bad", "a", Role::Speaker)).await?;
    // Before join.
    c.send(&ClientSignal::Offer {
        sdp: "v=0".into(),
        tracks: vec![],
    })
    .await?;
    expect_error(&mut c, ErrorCode::NotJoined).await;
    c.join().await?;
    for (text, code) in [
        ("{not json", ErrorCode::BadMessage),
        ("[1,2,3]", ErrorCode::BadMessage),
        ("\"join\"", ErrorCode::BadMessage),
        (r#"{"type":42}"#, ErrorCode::BadMessage),
        (r#"{"type":"teleport"}"#, ErrorCode::UnknownType),
        (r#"{"type":"mute","track_id":"x"}"#, ErrorCode::BadMessage),
        (
            r#"{"type":"ping","ts":1,"extra":true}"#,
            ErrorCode::BadMessage,
        ),
        (r#"{"type":"join","v":1}"#, ErrorCode::AlreadyJoined),
        (
            r#"{"type":"mute","track_id":"nope","muted":true}"#,
            ErrorCode::UnknownTrack,
        ),
        (
            r#"{"type":"answer","id":99,"sdp":"v=0"}"#,
            ErrorCode::StaleAnswer,
        ),
    ] {
        c.send_text(text.into()).await?;
        expect_error(&mut c, code).await;
    }
    still_alive(&mut c).await;
    Ok(())
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_and_closed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c = SignalClient::connect(&srv.base, &srv.token("bad", "a", Role::Speaker)).await?;
    c.send(&ClientSignal::Join { v: 2, name: None }).await?;
    expect_error(&mut c, ErrorCode::UnsupportedVersion).await;
    expect_closed(&mut c, 1002).await;
    Ok(())
}

#[tokio::test]
async fn oversized_message_is_refused_and_closed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c = joined(&srv, "a").await;
    let huge = format!(
        r#"{{"type":"offer","sdp":"{}","tracks":[]}}"#,
        "a".repeat(stamma_proto::MAX_SIGNAL_BYTES)
    );
    c.send_text(huge).await?;
    expect_error(&mut c, ErrorCode::MessageTooLarge).await;
    expect_closed(&mut c, 1009).await;
    Ok(())
}

#[tokio::test]
async fn garbage_sdp_gets_bad_sdp_and_session_continues() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c = joined(&srv, "a").await;
    for sdp in [
        "",
        "hello",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n",
        &"m=video 1 2 3\r\n".repeat(1000),
        &format!(
            "v=0\r\n{}",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n".repeat(40)
        ),
    ] {
        c.send(&ClientSignal::Offer {
            sdp: sdp.into(),
            tracks: vec![],
        })
        .await?;
        expect_error(&mut c, ErrorCode::BadSdp).await;
    }
    still_alive(&mut c).await;
    Ok(())
}

#[tokio::test]
async fn message_floods_are_rate_limited_then_closed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c = joined(&srv, "flooder").await;
    for i in 0..500 {
        if c.send(&ClientSignal::Ping { ts: i }).await.is_err() {
            break;
        }
    }
    let mut limited = 0;
    let closed = loop {
        match next(&mut c).await {
            Ok(ServerSignal::Error {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            Ok(_) => {}
            Err(SignalError::Closed { code, .. }) => break code,
            Err(e) => panic!("{e}"),
        }
    };
    assert!(limited > 0, "flood was not rate limited");
    assert_eq!(closed, 1008);
    // A well-behaved client in the same room is unaffected.
    let mut ok = joined(&srv, "neighbour").await;
    still_alive(&mut ok).await;
    Ok(())
}

#[tokio::test]
async fn clients_vanishing_mid_handshake_leave_nothing_behind() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    // Connected, never joined.
    let c = SignalClient::connect(&srv.base, &srv.token("bad", "a", Role::Speaker)).await?;
    drop(c);
    // Joined, then gone.
    let c = joined(&srv, "b").await;
    drop(c);
    // Joined and offered, gone before ICE/DTLS finished.
    let mut c = joined(&srv, "c").await;
    let (peer, _ev) = Peer::new([127, 0, 0, 1].into()).await?;
    peer.add_track(PeerKind::Audio, "mic", "c").await?;
    let sdp = peer.create_offer().await?;
    c.send(&ClientSignal::Offer {
        sdp,
        tracks: vec![],
    })
    .await?;
    drop(c);
    peer.close().await;
    // Joined, answered a server offer… and vanished.
    let publisher = TestParticipant::join(
        &srv.base,
        "bad",
        "pub",
        Role::Speaker,
        Publish {
            tone_hz: Some(440.0),
            video: false,
            ..Publish::default()
        },
    )
    .await?;
    let mut d = joined(&srv, "d").await;
    loop {
        if let ServerSignal::Offer { .. } = next(&mut d).await? {
            break;
        }
    }
    drop(d);
    publisher.leave().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = srv.participants().await?;
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} participants left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_udp_datagrams_do_not_disturb_a_live_call() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let a = TestParticipant::join(
        &srv.base,
        "live",
        "a",
        Role::Speaker,
        Publish {
            tone_hz: Some(440.0),
            video: true,
            ..Publish::default()
        },
    )
    .await?;
    let b = TestParticipant::join(
        &srv.base,
        "live",
        "b",
        Role::Speaker,
        Publish {
            tone_hz: Some(660.0),
            video: false,
            ..Publish::default()
        },
    )
    .await?;
    let audio_at_b = || {
        b.received_from(&a.id, MediaKind::Audio)
            .and_then(|t| b.with_received(&t, |r| r.packets))
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(15), "audio a→b", || {
        audio_at_b() >= 25
    })
    .await?;

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let target = srv.media_addr();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let before = audio_at_b();
    let started = Instant::now();
    let mut buf = [0u8; 1500];
    for i in 0..10_000u32 {
        let len = rng.random_range(0..buf.len());
        rng.fill(&mut buf[..len]);
        // Some look like STUN, RTP or DTLS so they get past the first byte checks.
        match i % 4 {
            0 if len >= 20 => {
                buf[0] = 0;
                buf[1] = 1;
                buf[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            1 if len >= 12 => buf[0] = 0x80,
            2 if len >= 13 => buf[0] = 22,
            _ => {}
        }
        sock.send_to(&buf[..len], target).await?;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let blast = started.elapsed();
    // Audio keeps flowing: at least another second's worth arrives.
    wait_until(Duration::from_secs(5), "audio after the garbage", || {
        audio_at_b() >= before + 50
    })
    .await?;
    eprintln!(
        "10000 garbage datagrams sent in {blast:?}; audio packets at b: {before} -> {}",
        audio_at_b()
    );
    assert_eq!(srv.participants().await?, 2);
    // And a new participant can still join the live call.
    let c = TestParticipant::join(
        &srv.base,
        "live",
        "c",
        Role::Attendee,
        Publish {
            tone_hz: None,
            video: false,
            ..Publish::default()
        },
    )
    .await?;
    wait_until(Duration::from_secs(10), "newcomer hears a", || {
        c.received_from(&a.id, MediaKind::Audio)
            .and_then(|t| c.with_received(&t, |r| r.packets))
            .unwrap_or(0)
            > 10
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn silent_clients_are_timed_out() -> anyhow::Result<()> {
    let srv = TestServer::start_with(1, |c| {
        c.limits.join_timeout = Duration::from_millis(300);
        c.limits.idle_timeout = Duration::from_millis(500);
    })
    .await?;
    // Never sends join.
    let mut c = SignalClient::connect(&srv.base, &srv.token("bad", "mute", Role::Speaker)).await?;
    expect_error(&mut c, ErrorCode::Timeout).await;
    expect_closed(&mut c, 1008).await;
    // Joins, then goes quiet.
    let mut d = joined(&srv, "quiet").await;
    loop {
        match next(&mut d).await {
            Ok(ServerSignal::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::Timeout);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected a timeout error first, got {e}"),
        }
    }
    expect_closed(&mut d, 1008).await;
    Ok(())
}
