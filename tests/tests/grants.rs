//! Join tokens are enforced: before the WebSocket upgrade for bad tokens,
//! and in the room for what a valid token allows.

use stamma_client::peer::{MediaKind as PeerKind, Peer};
use stamma_client::signal::{SignalClient, SignalError, rtc_url};
use stamma_proto::grant::unix_now;
use stamma_proto::{
    ClientSignal, ErrorCode, Grant, MediaKind, PublishedTrack, Role, ServerSignal, TrackSource,
};
use stamma_tests::{KEY, SECRET, TestServer, expect_error, http_request, next_signal};

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

async fn refused(srv: &TestServer, query: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_request(srv.server.http_addr, &format!("/rtc?{query}"), &UPGRADE)
        .await
        .expect("http");
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, v)
}

#[tokio::test]
async fn expired_token_gets_401_saying_expired() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut g = Grant::new(KEY, "r", "alice", Role::Speaker, 60);
    g.exp = unix_now() - 3600;
    let t = g.mint(KEY, SECRET.as_bytes())?;
    let (status, body) = refused(&srv, &format!("access_token={t}")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "token_expired");
    assert!(body["message"].as_str().unwrap_or("").contains("expired"));
    Ok(())
}

#[tokio::test]
async fn badly_signed_token_gets_401_saying_signature() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let g = Grant::new(KEY, "r", "alice", Role::Host, 60);
    let t = g.mint(KEY, b"some-other-secret-also-32-bytes-long!!")?;
    let (status, body) = refused(&srv, &format!("access_token={t}")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "token_bad_signature");
    assert!(body["message"].as_str().unwrap_or("").contains("signature"));
    Ok(())
}

#[tokio::test]
async fn malformed_missing_and_unknown_key_tokens_get_401() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let (status, body) = refused(&srv, "access_token=hello.world").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_malformed"))
    );
    let (status, body) = refused(&srv, "").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );
    let other =
        Grant::new("other_key", "r", "a", Role::Host, 60).mint("other_key", SECRET.as_bytes())?;
    let (status, body) = refused(&srv, &format!("access_token={other}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_unknown_key"))
    );
    // The signaling client surfaces the refusal too.
    match SignalClient::connect(&srv.base, "garbage").await {
        Err(SignalError::Refused { status, .. }) => assert_eq!(status, 401),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("garbage token was accepted"),
    }
    Ok(())
}

#[tokio::test]
async fn token_for_room_a_cannot_join_room_b() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let t = srv.token("room-a", "alice", Role::Speaker);
    let (status, body) = refused(&srv, &format!("access_token={t}&room=room-b")).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "room_mismatch");
    // Without a room parameter the token joins its own room, never another.
    let mut c = SignalClient::connect_url(&rtc_url(&srv.base, &t, Some("room-a"))?).await?;
    let (_me, _) = c.join().await?;
    Ok(())
}

#[tokio::test]
async fn attendee_cannot_publish() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut c =
        SignalClient::connect(&srv.base, &srv.token("r", "citizen", Role::Attendee)).await?;
    c.join().await?;
    let (peer, _events) = Peer::new([127, 0, 0, 1].into()).await?;
    let mic = peer.add_track(PeerKind::Audio, "mic", "citizen").await?;
    let sdp = peer.create_offer().await?;
    let mid = peer.mid_of(&mic).await.unwrap_or_default();
    // Announced tracks are refused…
    c.send(&ClientSignal::Offer {
        sdp: sdp.clone(),
        tracks: vec![PublishedTrack {
            mid,
            kind: MediaKind::Audio,
            source: TrackSource::Microphone,
            width: None,
            height: None,
        }],
    })
    .await?;
    expect_error(&mut c, ErrorCode::PublishNotAllowed).await;
    // …and so is a sending m-line that is not announced.
    c.send(&ClientSignal::Offer {
        sdp,
        tracks: vec![],
    })
    .await?;
    expect_error(&mut c, ErrorCode::PublishNotAllowed).await;
    // The session goes on.
    c.send(&ClientSignal::Ping { ts: 7 }).await?;
    assert!(matches!(next(&mut c).await, ServerSignal::Pong { ts: 7 }));
    peer.close().await;
    Ok(())
}

#[tokio::test]
async fn speaker_with_publish_revoked_cannot_publish() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let mut g = Grant::new(KEY, "r", "bob", Role::Speaker, 60);
    g.grants.publish = false;
    let t = g.mint(KEY, SECRET.as_bytes())?;
    let mut c = SignalClient::connect(&srv.base, &t).await?;
    c.join().await?;
    let (peer, _events) = Peer::new([127, 0, 0, 1].into()).await?;
    peer.add_track(PeerKind::Video, "cam", "bob").await?;
    let sdp = peer.create_offer().await?;
    c.send(&ClientSignal::Offer {
        sdp,
        tracks: vec![],
    })
    .await?;
    expect_error(&mut c, ErrorCode::PublishNotAllowed).await;
    peer.close().await;
    Ok(())
}

async fn next(c: &mut SignalClient) -> ServerSignal {
    next_signal(c).await.expect("a signal")
}
