//! What the meeting page needs besides media, end to end over signaling:
//! chat, raised hands, hosts' moderation, display names from the pre-join
//! page, shared links and rejoining with the reconnect token. The last test
//! runs `stamma-test-participant`, the Rust participant of the browser tests.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stamma_client::signal::{SignalClient, SignalError};
use stamma_proto::{
    ClientSignal, ErrorCode, Grant, MediaKind, ModerateAction, PROTOCOL_VERSION, ParticipantInfo,
    Role, ServerSignal,
};
use stamma_tests::{KEY, Publish, SECRET, TestParticipant, TestServer, expect_error, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(5);

async fn connect(srv: &TestServer, token: &str) -> SignalClient {
    SignalClient::connect(&srv.base, token)
        .await
        .expect("connect")
}

/// A joined signaling-only participant (it never answers offers: it needs none).
async fn joined(
    srv: &TestServer,
    room: &str,
    identity: &str,
    role: Role,
) -> (SignalClient, String) {
    let mut c = connect(srv, &srv.token(room, identity, role)).await;
    let (me, _) = c.join().await.expect("join");
    (c, me.id)
}

/// The next signal that `pick` accepts, skipping others (offers, joins).
async fn next_where<T>(c: &mut SignalClient, mut pick: impl FnMut(ServerSignal) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = tokio::time::timeout_at(deadline, c.recv())
            .await
            .expect("the awaited signal in time")
            .expect("signaling open");
        if let Some(t) = pick(s) {
            return t;
        }
    }
}

/// Errors are sent as they happen: none may be skipped on the way.
async fn next_error(c: &mut SignalClient) -> ErrorCode {
    next_where(c, |s| match s {
        ServerSignal::Error { code, .. } => Some(code),
        _ => None,
    })
    .await
}

async fn still_alive(c: &mut SignalClient) {
    c.send(&ClientSignal::Ping { ts: 7 }).await.expect("ping");
    next_where(c, |s| {
        matches!(s, ServerSignal::Pong { ts: 7 }).then_some(())
    })
    .await;
}

/// The error code and close code a session ends with.
async fn closed_with(c: &mut SignalClient) -> (Option<ErrorCode>, u16) {
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, c.recv()).await {
            Ok(Ok(ServerSignal::Error { code: e, .. })) => code = Some(e),
            Ok(Ok(_)) => {}
            Ok(Err(SignalError::Closed { code: close, .. })) => return (code, close),
            Ok(Err(e)) => panic!("unexpected signaling error {e}"),
            Err(_) => panic!("session not closed in time"),
        }
    }
}

/// The next `track_muted` (muted) as (track, participant).
async fn muted(c: &mut SignalClient) -> (String, String) {
    next_where(c, |s| match s {
        ServerSignal::TrackMuted {
            track_id,
            participant_id,
            muted: true,
        } => Some((track_id, participant_id)),
        _ => None,
    })
    .await
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("stdout readable")
        .expect("stdout open")
}

/// The server's count (from /healthz, which workers update about once a
/// second) reaches `n`.
async fn participants_become(srv: &TestServer, n: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = srv.participants().await?;
        if now == n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{now} participants, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn chat_is_echoed_to_everyone_including_the_sender_with_server_time() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (mut a, a_id) = joined(&srv, "chat", "anna", Role::Attendee).await;
    let (mut b, _) = joined(&srv, "chat", "bo", Role::Speaker).await;
    let before = unix_ms();
    a.send(&ClientSignal::Chat {
        text: " hej på er ".into(),
    })
    .await?;
    for c in [&mut a, &mut b] {
        let (from, text, ts) = next_where(c, |s| match s {
            ServerSignal::Chat {
                participant_id,
                text,
                ts_ms,
            } => Some((participant_id, text, ts_ms)),
            _ => None,
        })
        .await;
        assert_eq!((from.as_str(), text.as_str()), (a_id.as_str(), "hej på er"));
        assert!((before..=unix_ms()).contains(&ts), "ts_ms {ts}");
    }
    // Too long: refused to the sender alone, who stays in the room.
    a.send(&ClientSignal::Chat {
        text: "x".repeat(2001),
    })
    .await?;
    assert_eq!(next_error(&mut a).await, ErrorCode::BadMessage);
    still_alive(&mut a).await;
    a.send(&ClientSignal::Chat {
        text: "igen".into(),
    })
    .await?;
    let text = next_where(&mut b, |s| match s {
        ServerSignal::Chat { text, .. } => Some(text),
        _ => None,
    })
    .await;
    assert_eq!(text, "igen", "b got the refused message");
    Ok(())
}

#[tokio::test]
async fn raised_hands_are_broadcast_once_and_shown_to_late_joiners() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (mut a, a_id) = joined(&srv, "hands", "anna", Role::Attendee).await;
    let (mut b, _) = joined(&srv, "hands", "bo", Role::Speaker).await;
    let hand = |raised| ClientSignal::Hand {
        raised,
        participant_id: None,
    };
    a.send(&hand(true)).await?;
    a.send(&hand(true)).await?;
    for c in [&mut a, &mut b] {
        let got = next_where(c, |s| match s {
            ServerSignal::HandRaised {
                participant_id,
                raised,
            } => Some((participant_id, raised)),
            _ => None,
        })
        .await;
        assert_eq!(got, (a_id.clone(), true));
    }
    let mut late = connect(&srv, &srv.token("hands", "cai", Role::Attendee)).await;
    let (_, others) = late.join().await?;
    let anna = others.iter().find(|p| p.id == a_id).expect("anna listed");
    assert!(anna.hand_raised);
    // Lowering is broadcast; the repeated raise above was not.
    a.send(&hand(false)).await?;
    for c in [&mut a, &mut b, &mut late] {
        let got = next_where(c, |s| match s {
            ServerSignal::HandRaised { raised, .. } => Some(raised),
            _ => None,
        })
        .await;
        assert!(!got, "the second raise was broadcast too");
    }
    // Another participant's hand is a host's to lower, nobody else's.
    b.send(&ClientSignal::Hand {
        raised: false,
        participant_id: Some(a_id.clone()),
    })
    .await?;
    assert_eq!(next_error(&mut b).await, ErrorCode::NotAllowed);
    Ok(())
}

#[tokio::test]
async fn moderate_from_a_speaker_is_not_allowed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (mut host, host_id) = joined(&srv, "mod", "host", Role::Host).await;
    let (mut s, _) = joined(&srv, "mod", "sam", Role::Speaker).await;
    for action in [ModerateAction::Mute, ModerateAction::Remove] {
        s.send(&ClientSignal::Moderate {
            action,
            participant_id: host_id.clone(),
            track_id: None,
        })
        .await?;
        assert_eq!(next_error(&mut s).await, ErrorCode::NotAllowed);
    }
    still_alive(&mut host).await;
    // A host cannot remove itself, nor reach someone who is not there.
    for (id, code) in [
        (host_id.as_str(), ErrorCode::BadMessage),
        ("PA_nobody", ErrorCode::UnknownParticipant),
    ] {
        host.send(&ClientSignal::Moderate {
            action: ModerateAction::Remove,
            participant_id: id.into(),
            track_id: None,
        })
        .await?;
        expect_error(&mut host, code).await;
    }
    Ok(())
}

#[tokio::test]
async fn host_mutes_a_track_then_all_and_the_target_and_room_are_told() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (mut host, _) = joined(&srv, "mute", "host", Role::Host).await;
    let (mut watcher, _) = joined(&srv, "mute", "wei", Role::Attendee).await;
    let target = TestParticipant::join(
        &srv.base,
        "mute",
        "tove",
        Role::Speaker,
        Publish {
            tone_hz: Some(440.0),
            video: true,
            ..Publish::default()
        },
    )
    .await?;
    let mut tracks = Vec::new();
    while tracks.len() < 2 {
        let t = next_where(&mut host, |s| match s {
            ServerSignal::TrackPublished { track } => Some(track),
            _ => None,
        })
        .await;
        tracks.push(t);
    }
    let audio = tracks
        .iter()
        .find(|t| t.kind == MediaKind::Audio)
        .expect("audio track");
    let video = tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("video track");
    host.send(&ClientSignal::Moderate {
        action: ModerateAction::Mute,
        participant_id: target.id.clone(),
        track_id: Some(audio.id.clone()),
    })
    .await?;
    for c in [&mut host, &mut watcher] {
        assert_eq!(muted(c).await, (audio.id.clone(), target.id.clone()));
    }
    // Without a track: everything (the audio is muted already, so only
    // the video is news).
    host.send(&ClientSignal::Moderate {
        action: ModerateAction::Mute,
        participant_id: target.id.clone(),
        track_id: None,
    })
    .await?;
    for c in [&mut host, &mut watcher] {
        assert_eq!(muted(c).await, (video.id.clone(), target.id.clone()));
    }
    // The publisher learns of both, so its page shows itself muted.
    wait_until(WAIT, "the target told of both mutes", || {
        [&audio.id, &video.id].iter().all(|id| {
            target
                .has_signal(|s| {
                    matches!(s, ServerSignal::TrackMuted { track_id, muted: true, .. } if track_id == *id)
                })
                .is_some()
        })
    })
    .await?;
    target.leave().await;
    Ok(())
}

#[tokio::test]
async fn host_removes_a_participant_who_is_closed_with_removed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (mut host, _) = joined(&srv, "rm", "host", Role::Host).await;
    let (mut target, target_id) = joined(&srv, "rm", "troll", Role::Attendee).await;
    let (mut watcher, _) = joined(&srv, "rm", "wei", Role::Attendee).await;
    host.send(&ClientSignal::Moderate {
        action: ModerateAction::Remove,
        participant_id: target_id.clone(),
        track_id: None,
    })
    .await?;
    assert_eq!(
        closed_with(&mut target).await,
        (Some(ErrorCode::Removed), 1008)
    );
    for c in [&mut host, &mut watcher] {
        let left = next_where(c, |s| match s {
            ServerSignal::ParticipantLeft { participant_id, .. } => Some(participant_id),
            _ => None,
        })
        .await;
        assert_eq!(left, target_id);
    }
    Ok(())
}

fn shared_token(room: &str, role: Role) -> String {
    let g = Grant {
        shared: true,
        ..Grant::new(KEY, room, "guest", role, 600)
    };
    g.mint(KEY, SECRET.as_bytes()).expect("mint")
}

#[tokio::test]
async fn one_shared_token_joins_many_with_identities_of_their_own() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let token = shared_token("hearing", Role::Attendee);
    let mut a = connect(&srv, &token).await;
    let (me_a, _) = a.join().await?;
    let mut b = connect(&srv, &token).await;
    let (me_b, others) = b.join().await?;
    assert!(me_a.identity.starts_with("guest-") && me_b.identity.starts_with("guest-"));
    assert_ne!(me_a.identity, me_b.identity);
    assert!(others.iter().any(|p| p.id == me_a.id));
    // Neither replaced the other.
    still_alive(&mut a).await;
    still_alive(&mut b).await;
    participants_become(&srv, 2).await?;
    Ok(())
}

#[tokio::test]
async fn reconnect_token_rejoins_as_the_same_identity_and_closes_the_old_session()
-> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let original = Grant::verify(&shared_token("r", Role::Speaker), |k| {
        (k == KEY).then_some(SECRET.as_bytes())
    })?;
    let mut old = connect(&srv, &shared_token("r", Role::Speaker)).await;
    let (me, _) = old.join_as(Some("Anna")).await?;
    let again = old.reconnect_token().expect("reconnect_token").to_owned();
    let g = srv_keys().verify(&again)?;
    assert!(!g.shared);
    assert_eq!(
        (g.sub.as_str(), g.room.as_str(), g.role, g.name.as_deref()),
        (me.identity.as_str(), "r", Role::Speaker, Some("Anna"))
    );
    assert_eq!(g.grants, original.grants);
    // Same expiry as the token it came from (both minted within a second).
    assert!(g.exp.abs_diff(original.exp) <= 1);

    let (mut watcher, _) = joined(&srv, "r", "wei", Role::Attendee).await;
    let mut new = connect(&srv, &again).await;
    let (me2, others) = new.join().await?;
    assert_eq!(
        (me2.identity.as_str(), me2.name.as_deref()),
        (me.identity.as_str(), Some("Anna"))
    );
    assert_ne!(me2.id, me.id);
    assert!(
        !others.iter().any(|p| p.id == me.id),
        "old session still listed"
    );
    // The newer session wins; the older one is told why and closed.
    assert_eq!(
        closed_with(&mut old).await,
        (Some(ErrorCode::DuplicateIdentity), 1008)
    );
    let left = next_where(&mut watcher, |s| match s {
        ServerSignal::ParticipantLeft { participant_id, .. } => Some(participant_id),
        _ => None,
    })
    .await;
    assert_eq!(left, me.id);
    still_alive(&mut new).await;
    participants_become(&srv, 2).await?;
    Ok(())
}

fn srv_keys() -> stamma::ApiKeys {
    let mut k = stamma::ApiKeys::default();
    k.insert(KEY, SECRET).expect("key");
    k
}

#[tokio::test]
async fn join_name_replaces_the_tokens_and_bad_names_are_refused_without_closing()
-> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (mut watcher, _) = joined(&srv, "names", "wei", Role::Host).await;
    let mut g = Grant::new(KEY, "names", "bo", Role::Speaker, 600);
    g.name = Some("Token Name".into());
    let mut c = connect(&srv, &g.mint(KEY, SECRET.as_bytes())?).await;
    for bad in ["Bo\u{7}".to_owned(), "ö".repeat(65)] {
        c.send(&ClientSignal::Join {
            v: PROTOCOL_VERSION,
            name: Some(bad),
        })
        .await?;
        expect_error(&mut c, ErrorCode::BadMessage).await;
    }
    let (me, _) = c.join_as(Some("  Bo Ek ")).await?;
    assert_eq!(me.name.as_deref(), Some("Bo Ek"));
    let seen: ParticipantInfo = next_where(&mut watcher, |s| match s {
        ServerSignal::ParticipantJoined { participant } => Some(participant),
        _ => None,
    })
    .await;
    assert_eq!((seen.id, seen.name.as_deref()), (me.id, Some("Bo Ek")));
    // A blank name keeps the token's.
    let mut g = Grant::new(KEY, "names", "cai", Role::Speaker, 600);
    g.name = Some("Cai".into());
    let mut c2 = connect(&srv, &g.mint(KEY, SECRET.as_bytes())?).await;
    let (me2, _) = c2.join_as(Some("   ")).await?;
    assert_eq!(me2.name.as_deref(), Some("Cai"));
    Ok(())
}

#[tokio::test]
async fn test_participant_binary_reports_the_media_it_receives() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let peer = TestParticipant::join(
        &srv.base,
        "bin",
        "rust-peer",
        Role::Speaker,
        Publish {
            tone_hz: Some(660.0),
            video: true,
            ..Publish::default()
        },
    )
    .await?;
    let ws = format!("ws://{}/rtc", srv.server.http_addr);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_stamma-test-participant"))
        .args(["--url", &ws, "--room", "bin", "--seconds", "20", "--token"])
        .arg(srv.token("bin", "bin-peer", Role::Speaker))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready: String = next_line(&mut lines).await;
    let bin_id = ready.strip_prefix("READY ").expect("READY line").to_owned();
    assert!(bin_id.starts_with("PA_"), "{ready}");
    let mut last = serde_json::Value::Null;
    for _ in 0..15 {
        let line: String = next_line(&mut lines).await;
        last = serde_json::from_str(&line)?;
        let has = |k: &str| {
            last[k]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == peer.id.as_str()))
        };
        if has("audio_from") && has("video_from") {
            break;
        }
    }
    assert!(last["audio_packets"].as_u64().unwrap_or(0) > 0, "{last}");
    assert!(last["video_frames"].as_u64().unwrap_or(0) > 0, "{last}");
    assert_eq!(last["audio_from"], serde_json::json!([peer.id]), "{last}");
    assert_eq!(last["video_from"], serde_json::json!([peer.id]), "{last}");
    // And the other way: the binary publishes.
    wait_until(WAIT, "media from the binary", || {
        peer.received_from(&bin_id, MediaKind::Audio).is_some()
            && peer.received_from(&bin_id, MediaKind::Video).is_some()
    })
    .await?;
    // Closing its stdin ends it, cleanly.
    drop(stdin);
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(status.success(), "{status}");
    peer.leave().await;
    Ok(())
}
