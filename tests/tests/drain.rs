//! Graceful drain: no new rooms, `/readyz` 503, participants told with
//! `server_draining`; done when the rooms empty, or at the deadline, which
//! closes whoever is left.

use std::time::Duration;

use stamma_client::signal::{SignalClient, SignalError};
use stamma_proto::{ClientSignal, ErrorCode, PROTOCOL_VERSION, Role, ServerSignal};
use stamma_tests::{TestServer, expect_error, http_get};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(10);

async fn joined(srv: &TestServer, room: &str, identity: &str) -> anyhow::Result<SignalClient> {
    let mut c = SignalClient::connect(&srv.base, &srv.token(room, identity, Role::Speaker)).await?;
    c.join().await?;
    Ok(c)
}

/// Read signals until one matches; fails after [`WAIT`] or if the connection ends.
async fn wait_signal(
    c: &mut SignalClient,
    what: &str,
    f: impl Fn(&ServerSignal) -> bool,
) -> anyhow::Result<ServerSignal> {
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout(deadline.saturating_duration_since(Instant::now()), c.recv()).await {
            Err(_) => anyhow::bail!("no {what} within {WAIT:?}"),
            Ok(Err(e)) => anyhow::bail!("connection ended waiting for {what}: {e}"),
            Ok(Ok(s)) if f(&s) => return Ok(s),
            Ok(Ok(_)) => {}
        }
    }
}

/// Read signals until the connection closes; its close code.
async fn close_code(c: &mut SignalClient) -> anyhow::Result<u16> {
    let deadline = Instant::now() + WAIT;
    loop {
        match timeout(deadline.saturating_duration_since(Instant::now()), c.recv()).await {
            Err(_) => anyhow::bail!("not closed within {WAIT:?}"),
            Ok(Err(SignalError::Closed { code, .. })) => return Ok(code),
            Ok(Err(e)) => anyhow::bail!("connection failed instead of closing: {e}"),
            Ok(Ok(_)) => {}
        }
    }
}

async fn readyz(srv: &TestServer) -> anyhow::Result<(u16, String)> {
    http_get(srv.server.http_addr, "/readyz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_rooms_tells_participants_and_ends_when_rooms_empty() -> anyhow::Result<()>
{
    let srv = TestServer::start_with(1, |c| c.drain_timeout = Duration::from_secs(60)).await?;
    let (status, body) = readyz(&srv).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\""), "{body}");

    let mut a = joined(&srv, "open", "a").await?;
    let drained = tokio::spawn(srv.server.drain());

    // The participant in a room is told, with the time left.
    let s = wait_signal(&mut a, "server_draining", |s| {
        matches!(s, ServerSignal::ServerDraining { .. })
    })
    .await?;
    let ServerSignal::ServerDraining { deadline_ms } = s else {
        unreachable!()
    };
    assert!(
        deadline_ms > 0 && deadline_ms <= 60_000,
        "deadline_ms {deadline_ms}"
    );
    let (status, body) = readyz(&srv).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    let (status, _) = http_get(srv.server.http_addr, "/healthz").await?;
    assert_eq!(status, 200, "still alive while draining");

    // A new room is refused with a typed error, then the socket closes
    // with 1013 (try again later).
    let mut late = SignalClient::connect(&srv.base, &srv.token("new", "b", Role::Speaker)).await?;
    late.send(&ClientSignal::Join {
        v: PROTOCOL_VERSION,
        name: None,
    })
    .await?;
    expect_error(&mut late, ErrorCode::Draining).await;
    assert_eq!(close_code(&mut late).await?, 1013);

    // The open room still takes joins, and the newcomer is told too.
    let mut c = joined(&srv, "open", "c").await?;
    wait_signal(&mut c, "server_draining", |s| {
        matches!(s, ServerSignal::ServerDraining { .. })
    })
    .await?;
    wait_signal(&mut a, "participant_joined", |s| {
        matches!(s, ServerSignal::ParticipantJoined { .. })
    })
    .await?;
    assert!(!drained.is_finished(), "a room is still open");

    // The last ones leave: the drain is done.
    for p in [&mut a, &mut c] {
        p.send(&ClientSignal::Leave).await?;
        assert_eq!(close_code(p).await?, 1000);
    }
    let outcome = timeout(WAIT, drained).await??;
    assert_eq!(outcome, stamma::DrainOutcome::Empty);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_a_lingering_participant() -> anyhow::Result<()> {
    let srv = TestServer::start_with(1, |c| c.drain_timeout = Duration::from_millis(500)).await?;
    let mut a = joined(&srv, "lingering", "a").await?;
    let drained = tokio::spawn(srv.server.drain());
    wait_signal(&mut a, "server_draining", |s| {
        matches!(s, ServerSignal::ServerDraining { .. })
    })
    .await?;
    // Not leaving: at the deadline the server closes the session, saying why.
    let s = wait_signal(&mut a, "shutting_down error", |s| {
        matches!(s, ServerSignal::Error { .. })
    })
    .await?;
    assert!(
        matches!(
            s,
            ServerSignal::Error {
                code: ErrorCode::ShuttingDown,
                ..
            }
        ),
        "{s:?}"
    );
    assert_eq!(close_code(&mut a).await?, 1001);
    let outcome = timeout(WAIT, drained).await??;
    assert_eq!(
        outcome,
        stamma::DrainOutcome::DeadlinePassed { rooms_left: 0 }
    );
    Ok(())
}
