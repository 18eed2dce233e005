//! The admin REST API (`/api/v1`) against a real server and real clients:
//! who may call it, what its answers look like, and that its operations act
//! on live sessions (room limits, mute, removal, role changes, deletion, links).

use std::net::SocketAddr;
use std::time::Duration;

use stamma_client::peer::{MediaKind as PeerKind, Peer};
use stamma_client::signal::{SignalClient, SignalError, rtc_url};
use stamma_proto::grant::unix_now;
use stamma_proto::{
    ALL_ROOMS, ClientSignal, ErrorCode, Grant, MediaKind, PublishedTrack, Role, ServerSignal,
    TrackSource,
};
use stamma_tests::{KEY, Publish, SECRET, TestParticipant, TestServer, next_signal, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on every wait for a condition.
const WAIT: Duration = Duration::from_secs(20);

fn admin_token() -> String {
    Grant::new(KEY, ALL_ROOMS, "ops", Role::Host, 600)
        .mint(KEY, SECRET.as_bytes())
        .unwrap_or_default()
}

struct Reply {
    status: u16,
    content_type: String,
    headers: String,
    json: serde_json::Value,
}

/// One HTTP/1.1 request on loopback; `body` is sent as JSON when given.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok(Reply {
        status,
        content_type,
        headers: head.to_ascii_lowercase(),
        json: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    })
}

/// Assert an RFC 9457 problem with `status`.
fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status, status, "{}", r.json);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.json);
    assert_eq!(r.json["status"], status);
    for field in ["type", "title", "detail", "code"] {
        assert!(r.json[field].is_string(), "{field} in {}", r.json);
    }
}

async fn create_room(srv: &TestServer, body: &str) -> anyhow::Result<Reply> {
    call(
        srv.server.http_addr,
        "POST",
        "/api/v1/rooms",
        Some(&admin_token()),
        Some(body),
    )
    .await
}

async fn participants(srv: &TestServer, room: &str) -> anyhow::Result<serde_json::Value> {
    let r = call(
        srv.server.http_addr,
        "GET",
        &format!("/api/v1/rooms/{room}/participants"),
        Some(&admin_token()),
        None,
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.json);
    Ok(r.json["participants"].clone())
}

async fn wait_closed(c: &mut SignalClient) -> (Option<ErrorCode>, u16, String) {
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, c.recv()).await {
            Ok(Ok(ServerSignal::Error { code: c, .. })) => code = Some(c),
            Ok(Ok(_)) => {}
            Ok(Err(SignalError::Closed {
                code: close,
                reason,
            })) => return (code, close, reason),
            Ok(Err(e)) => panic!("unexpected signaling error {e}"),
            Err(_) => panic!("connection not closed in time"),
        }
    }
}

#[tokio::test]
async fn api_refuses_missing_bad_and_expired_tokens_with_401_and_non_admins_with_403()
-> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let addr = srv.server.http_addr;
    let r = call(addr, "GET", "/api/v1/rooms", None, None).await?;
    assert_problem(&r, 401);
    assert!(r.headers.contains("www-authenticate: bearer"));
    let r = call(addr, "GET", "/api/v1/rooms", Some("not-a-jwt"), None).await?;
    assert_problem(&r, 401);
    assert_eq!(r.json["code"], "token_malformed");
    let mut expired = Grant::new(KEY, ALL_ROOMS, "ops", Role::Host, 60);
    expired.exp = unix_now() - 3600;
    let t = expired.mint(KEY, SECRET.as_bytes())?;
    let r = call(addr, "GET", "/api/v1/rooms", Some(&t), None).await?;
    assert_problem(&r, 401);
    assert_eq!(r.json["code"], "token_expired");
    let bad = Grant::new(KEY, ALL_ROOMS, "ops", Role::Host, 60)
        .mint(KEY, b"another-secret-another-secret-12345")?;
    assert_problem(
        &call(addr, "GET", "/api/v1/rooms", Some(&bad), None).await?,
        401,
    );

    // A speaker's join token is valid but not an admin's.
    let speaker = srv.token("r", "bob", Role::Speaker);
    let r = call(addr, "GET", "/api/v1/rooms", Some(&speaker), None).await?;
    assert_problem(&r, 403);
    // A host (admin grant) of room "r" administers "r" only.
    let host = srv.token("r", "hana", Role::Host);
    let r = call(
        addr,
        "POST",
        "/api/v1/rooms",
        Some(&host),
        Some(r#"{"name":"r"}"#),
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.json);
    let r = call(
        addr,
        "POST",
        "/api/v1/rooms",
        Some(&host),
        Some(r#"{"name":"x"}"#),
    )
    .await?;
    assert_problem(&r, 403);
    assert_problem(
        &call(addr, "GET", "/api/v1/rooms/x", Some(&host), None).await?,
        403,
    );
    assert_eq!(
        call(addr, "GET", "/api/v1/rooms/r", Some(&host), None)
            .await?
            .status,
        200
    );
    create_room(&srv, r#"{"name":"x"}"#).await?;
    let r = call(addr, "GET", "/api/v1/rooms", Some(&host), None).await?;
    let names: Vec<&str> = r.json["rooms"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["r"]);
    // A node-wide admin token joins no room.
    let url = rtc_url(&srv.base, &admin_token(), None)?;
    match SignalClient::connect_url(&url).await {
        Err(SignalError::Refused { status, .. }) => assert_eq!(status, 403),
        _ => panic!("an admin token must not join a room"),
    }
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_problem_details() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let addr = srv.server.http_addr;
    let t = admin_token();
    let t = Some(t.as_str());
    for (body, status) in [
        ("{not json", 400),
        (r#"{"name":"a","colour":1}"#, 422),
        (r#"{"name":"a","max_participants":0}"#, 422),
        (r#"{"name":"a\u0007"}"#, 422),
        (r#"{"name":"*"}"#, 422),
    ] {
        let r = call(addr, "POST", "/api/v1/rooms", t, Some(body)).await?;
        assert_problem(&r, status);
    }
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(100 * 1024));
    assert_problem(
        &call(addr, "POST", "/api/v1/rooms", t, Some(&big)).await?,
        413,
    );
    assert_problem(&call(addr, "POST", "/api/v1/rooms", t, None).await?, 415);
    assert_problem(
        &call(addr, "GET", "/api/v1/rooms/nope", t, None).await?,
        404,
    );
    assert_problem(&call(addr, "GET", "/api/v1/nothing", t, None).await?, 404);
    let r = call(addr, "PUT", "/api/v1/rooms", t, None).await?;
    assert_problem(&r, 405);
    assert!(r.headers.contains("allow:"), "{}", r.headers);
    assert_eq!(create_room(&srv, r#"{"name":"a"}"#).await?.status, 201);
    assert_problem(&create_room(&srv, r#"{"name":"a"}"#).await?, 409);
    let r = call(
        addr,
        "DELETE",
        "/api/v1/rooms/a/participants/PA_none",
        t,
        None,
    )
    .await?;
    assert_problem(&r, 404);
    assert_eq!(r.json["code"], "participant_not_found");
    Ok(())
}

/// Every operation in the OpenAPI document is routed (an unauthenticated call
/// gets 401, not 404/405), every other method on its paths gets 405, and the
/// document's paths are all the API has.
#[tokio::test]
async fn openapi_document_lists_exactly_the_routers_api_routes() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let addr = srv.server.http_addr;
    let r = call(addr, "GET", "/api/v1/openapi.json", None, None).await?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json,
        serde_json::from_str::<serde_json::Value>(stamma::api::OPENAPI)?
    );
    assert!(r.json["openapi"].as_str().unwrap_or("").starts_with("3."));
    let paths = r.json["paths"].as_object().expect("paths");
    let mut documented = Vec::new();
    for (path, item) in paths {
        let concrete = path
            .replace("{room}", "r")
            .replace("{participant_id}", "PA_x")
            .replace("{track_id}", "TR_x");
        for method in ["get", "post", "put", "patch", "delete"] {
            let m = method.to_ascii_uppercase();
            let r = call(addr, &m, &concrete, None, None).await?;
            if let Some(op) = item.get(method) {
                documented.push(format!("{m} {path}"));
                let public = op
                    .get("security")
                    .is_some_and(|s| s == &serde_json::json!([]));
                assert_eq!(r.status, if public { 200 } else { 401 }, "{m} {path}");
                for code in ["401", "403"] {
                    assert!(
                        public || op["responses"].get(code).is_some(),
                        "{m} {path} {code}"
                    );
                }
            } else {
                assert_problem(&r, 405);
            }
        }
    }
    documented.sort();
    let expected = [
        "DELETE /api/v1/rooms/{room}",
        "DELETE /api/v1/rooms/{room}/participants/{participant_id}",
        "GET /api/v1/openapi.json",
        "GET /api/v1/rooms",
        "GET /api/v1/rooms/{room}",
        "GET /api/v1/rooms/{room}/participants",
        "PATCH /api/v1/rooms/{room}/participants/{participant_id}",
        "POST /api/v1/rooms",
        "POST /api/v1/rooms/{room}/links",
        "POST /api/v1/rooms/{room}/participants/{participant_id}/tracks/{track_id}/mute",
    ];
    assert_eq!(documented, expected);
    // Neighbouring paths that are not documented are not routed.
    for p in [
        "/api/v1",
        "/api/v1/room",
        "/api/v1/rooms/r/tracks",
        "/api/v1/rooms/r/links/x",
    ] {
        assert_problem(&call(addr, "GET", p, None, None).await?, 404);
    }
    Ok(())
}

#[tokio::test]
async fn room_created_with_max_participants_1_refuses_a_second_join_with_room_full()
-> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let r = create_room(
        &srv,
        r#"{"name":"tiny","max_participants":1,"default_role":"attendee","e2ee_required":true}"#,
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["max_participants"], 1);
    assert_eq!(r.json["default_role"], "attendee");
    assert_eq!(r.json["e2ee_required"], true);
    assert_eq!(r.json["participants"], 0);

    let mut a = SignalClient::connect(&srv.base, &srv.token("tiny", "a", Role::Speaker)).await?;
    a.send(&ClientSignal::Join { v: 1, name: None }).await?;
    match next_signal(&mut a).await? {
        ServerSignal::Joined { e2ee_required, .. } => assert!(e2ee_required),
        other => panic!("expected joined, got {other:?}"),
    }
    let mut b = SignalClient::connect(&srv.base, &srv.token("tiny", "b", Role::Speaker)).await?;
    b.send(&ClientSignal::Join { v: 1, name: None }).await?;
    let (code, close, _) = wait_closed(&mut b).await;
    assert_eq!((code, close), (Some(ErrorCode::RoomFull), 1008));
    a.close().await;
    let addr = srv.server.http_addr;
    let t = admin_token();
    // The room stays, with its options, after its last session ended.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = call(addr, "GET", "/api/v1/rooms/tiny", Some(&t), None).await?;
        assert_eq!(r.status, 200, "{}", r.json);
        assert_eq!(r.json["max_participants"], 1);
        if r.json["participants"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sessions never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mute_tells_the_room_and_stops_forwarding() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let speaker = Publish {
        tone_hz: Some(440.0),
        video: true,
        ..Publish::default()
    };
    let a = TestParticipant::join(&srv.base, "m", "alice", Role::Speaker, speaker).await?;
    let b = TestParticipant::join(
        &srv.base,
        "m",
        "bob",
        Role::Speaker,
        Publish {
            tone_hz: None,
            video: false,
            ..Publish::default()
        },
    )
    .await?;
    let count = |kind| {
        b.received_from(&a.id, kind)
            .and_then(|t| b.with_received(&t, |r| r.packets))
            .unwrap_or(0)
    };
    wait_until(WAIT, "bob receives alice", || {
        count(MediaKind::Audio) > 20 && count(MediaKind::Video) > 10
    })
    .await?;

    // The list shows alice with her two tracks.
    let list = participants(&srv, "m").await?;
    let alice = list
        .as_array()
        .and_then(|l| l.iter().find(|p| p["id"] == a.id.as_str()))
        .expect("alice listed")
        .clone();
    assert_eq!(alice["identity"], "alice");
    assert_eq!(alice["role"], "speaker");
    assert!(alice["joined_at"].as_u64().unwrap_or(0) > 0);
    let audio = alice["tracks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["kind"] == "audio"))
        .and_then(|t| t["id"].as_str())
        .expect("audio track listed")
        .to_owned();

    let path = format!("/api/v1/rooms/m/participants/{}/tracks/{audio}/mute", a.id);
    let r = call(
        srv.server.http_addr,
        "POST",
        &path,
        Some(&admin_token()),
        None,
    )
    .await?;
    assert_eq!(r.status, 204, "{}", r.json);
    let muted = |s: &ServerSignal| matches!(s, ServerSignal::TrackMuted { track_id, muted: true, .. } if *track_id == audio);
    wait_until(WAIT, "bob and alice told of the mute", || {
        b.has_signal(muted).is_some() && a.has_signal(muted).is_some()
    })
    .await?;
    // Forwarding stops: while alice's video goes on (60 more packets,
    // about two seconds), her audio grows by at most what was in flight.
    let (audio_then, video_then) = (count(MediaKind::Audio), count(MediaKind::Video));
    wait_until(WAIT, "more video", || {
        count(MediaKind::Video) >= video_then + 60
    })
    .await?;
    let grown = count(MediaKind::Audio) - audio_then;
    assert!(
        grown <= 10,
        "audio still forwarded: {grown} packets after the mute"
    );
    let list = participants(&srv, "m").await?;
    let muted_listed = list.as_array().is_some_and(|l| {
        l.iter()
            .flat_map(|p| p["tracks"].as_array().into_iter().flatten())
            .any(|t| t["id"] == audio.as_str() && t["muted"] == true)
    });
    assert!(muted_listed);
    Ok(())
}

#[tokio::test]
async fn removed_participant_is_closed_with_removed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut a = SignalClient::connect(&srv.base, &srv.token("r", "a", Role::Speaker)).await?;
    let (me, _) = a.join().await?;
    let mut b = SignalClient::connect(&srv.base, &srv.token("r", "b", Role::Speaker)).await?;
    b.join().await?;
    let path = format!("/api/v1/rooms/r/participants/{}", me.id);
    let r = call(
        srv.server.http_addr,
        "DELETE",
        &path,
        Some(&admin_token()),
        None,
    )
    .await?;
    assert_eq!(r.status, 204, "{}", r.json);
    let (code, close, reason) = wait_closed(&mut a).await;
    assert_eq!((code, close), (Some(ErrorCode::Removed), 1008), "{reason}");
    // The others see it leave; a second removal finds nobody.
    loop {
        match next_signal(&mut b).await? {
            ServerSignal::ParticipantLeft { participant_id, .. } if participant_id == me.id => {
                break;
            }
            _ => {}
        }
    }
    let r = call(
        srv.server.http_addr,
        "DELETE",
        &path,
        Some(&admin_token()),
        None,
    )
    .await?;
    assert_problem(&r, 404);
    // A participant of another room is not reachable through this one.
    let mut c = SignalClient::connect(&srv.base, &srv.token("other", "c", Role::Speaker)).await?;
    let (c_me, _) = c.join().await?;
    let path = format!("/api/v1/rooms/r/participants/{}", c_me.id);
    assert_problem(
        &call(
            srv.server.http_addr,
            "DELETE",
            &path,
            Some(&admin_token()),
            None,
        )
        .await?,
        404,
    );
    Ok(())
}

async fn offer_audio(c: &mut SignalClient, peer: &Peer, identity: &str) -> anyhow::Result<()> {
    let mic = peer.add_track(PeerKind::Audio, "mic", identity).await?;
    let sdp = peer.create_offer().await?;
    let mid = peer.mid_of(&mic).await.unwrap_or_default();
    c.send(&ClientSignal::Offer {
        sdp,
        tracks: vec![PublishedTrack {
            mid,
            kind: MediaKind::Audio,
            source: TrackSource::Microphone,
            width: None,
            height: None,
        }],
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn attendee_promoted_to_speaker_can_publish() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c =
        SignalClient::connect(&srv.base, &srv.token("r", "citizen", Role::Attendee)).await?;
    let (me, _) = c.join().await?;
    let mut other =
        SignalClient::connect(&srv.base, &srv.token("r", "clerk", Role::Speaker)).await?;
    other.join().await?;
    // Before: refused.
    let (peer, _events) = Peer::new([127, 0, 0, 1].into()).await?;
    offer_audio(&mut c, &peer, "citizen").await?;
    loop {
        if let ServerSignal::Error { code, .. } = next_signal(&mut c).await? {
            assert_eq!(code, ErrorCode::PublishNotAllowed);
            break;
        }
    }
    peer.close().await;

    let path = format!("/api/v1/rooms/r/participants/{}", me.id);
    let r = call(
        srv.server.http_addr,
        "PATCH",
        &path,
        Some(&admin_token()),
        Some(r#"{"role":"speaker"}"#),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        (&r.json["role"], &r.json["can_publish"]),
        (&serde_json::json!("speaker"), &serde_json::json!(true))
    );
    let changed = |s: &ServerSignal| matches!(s, ServerSignal::RoleChanged { participant_id, role: Role::Speaker, can_publish: true } if *participant_id == me.id);
    for client in [&mut c, &mut other] {
        loop {
            if changed(&next_signal(client).await?) {
                break;
            }
        }
    }
    // After: the offer is answered and the room is told of the new track.
    let (peer, _events) = Peer::new([127, 0, 0, 1].into()).await?;
    offer_audio(&mut c, &peer, "citizen").await?;
    loop {
        match next_signal(&mut c).await? {
            ServerSignal::Answer { sdp, .. } => {
                peer.apply_answer(&sdp).await?;
                break;
            }
            ServerSignal::Error { code, message } => panic!("{code:?}: {message}"),
            _ => {}
        }
    }
    loop {
        match next_signal(&mut other).await? {
            ServerSignal::TrackPublished { track } if track.participant_id == me.id => break,
            _ => {}
        }
    }
    peer.close().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_room_closes_everyone_in_it_with_room_closed() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut clients = Vec::new();
    for id in ["a", "b"] {
        let mut c =
            SignalClient::connect(&srv.base, &srv.token("doomed", id, Role::Speaker)).await?;
        c.join().await?;
        clients.push(c);
    }
    let r = call(
        srv.server.http_addr,
        "DELETE",
        "/api/v1/rooms/doomed",
        Some(&admin_token()),
        None,
    )
    .await?;
    assert_eq!(r.status, 204, "{}", r.json);
    for c in &mut clients {
        let (code, close, _) = wait_closed(c).await;
        assert_eq!((code, close), (Some(ErrorCode::RoomClosed), 1008));
    }
    let r = call(
        srv.server.http_addr,
        "GET",
        "/api/v1/rooms/doomed",
        Some(&admin_token()),
        None,
    )
    .await?;
    assert_problem(&r, 404);
    Ok(())
}

#[tokio::test]
async fn join_link_token_joins_the_room_with_the_rooms_default_role() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    create_room(&srv, r#"{"name":"hearing","default_role":"attendee"}"#).await?;
    let r = call(
        srv.server.http_addr,
        "POST",
        "/api/v1/rooms/hearing/links",
        Some(&admin_token()),
        Some(r#"{"name":"Citizen","ttl_s":600}"#),
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.json);
    let token = r.json["token"].as_str().expect("token").to_owned();
    let url = r.json["url"].as_str().expect("url");
    assert_eq!(
        url,
        format!("http://{}/r/hearing?token={token}", srv.server.http_addr)
    );
    let exp = r.json["expires_at"].as_u64().unwrap_or(0);
    assert!((unix_now() + 590..=unix_now() + 610).contains(&exp));
    let mut c = SignalClient::connect(&srv.base, &token).await?;
    let (me, _) = c.join().await?;
    assert_eq!(
        (me.role, me.name.as_deref()),
        (Role::Attendee, Some("Citizen"))
    );
    assert!(me.identity.starts_with("guest-"));
    // A link made without an identity is shared: a second citizen with the
    // same link joins beside the first instead of replacing it.
    let mut c2 = SignalClient::connect(&srv.base, &token).await?;
    let (me2, _) = c2.join().await?;
    assert!(me2.identity.starts_with("guest-") && me2.identity != me.identity);
    let list = participants(&srv, "hearing").await?;
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert!(
        list.as_array()
            .into_iter()
            .flatten()
            .any(|p| p["id"] == me.id.as_str())
    );
    // Links are for rooms that exist.
    let r = call(
        srv.server.http_addr,
        "POST",
        "/api/v1/rooms/none/links",
        Some(&admin_token()),
        Some("{}"),
    )
    .await?;
    assert_problem(&r, 404);
    Ok(())
}
