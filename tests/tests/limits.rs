//! Configured node limits hold: rooms per node and signaling message size.

use stamma_client::signal::{SignalClient, SignalError};
use stamma_proto::{ErrorCode, Role};
use stamma_tests::{TestServer, expect_error, next_signal};

async fn expect_closed(c: &mut SignalClient, close_code: u16) {
    match next_signal(c).await {
        Err(SignalError::Closed { code, .. }) => assert_eq!(code, close_code),
        other => panic!("expected close {close_code}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_at_max_rooms_refuses_a_new_room_but_not_an_open_one() -> anyhow::Result<()> {
    let srv = TestServer::start_with(1, |c| c.limits.max_rooms = 1).await?;
    let mut first = SignalClient::connect(&srv.base, &srv.token("one", "a", Role::Speaker)).await?;
    first.join().await?;
    let mut same = SignalClient::connect(&srv.base, &srv.token("one", "b", Role::Speaker)).await?;
    same.join().await?;

    let mut other = SignalClient::connect(&srv.base, &srv.token("two", "c", Role::Speaker)).await?;
    other
        .send(&stamma_proto::ClientSignal::Join {
            v: stamma_proto::PROTOCOL_VERSION,
            name: None,
        })
        .await?;
    expect_error(&mut other, ErrorCode::TooManyRooms).await;
    expect_closed(&mut other, 1013).await;

    // Once the open room empties, its place is free again.
    first.close().await;
    same.close().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = SignalClient::connect(&srv.base, &srv.token("two", "c", Role::Speaker)).await?;
        if c.join().await.is_ok() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "room two never admitted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_message_over_the_configured_size_is_refused() -> anyhow::Result<()> {
    let srv = TestServer::start_with(1, |c| c.limits.max_message_bytes = 4096).await?;
    let mut c = SignalClient::connect(&srv.base, &srv.token("big", "a", Role::Speaker)).await?;
    c.join().await?;
    c.send_text(format!(
        r#"{{"type":"offer","sdp":"{}","tracks":[]}}"#,
        "a".repeat(5000)
    ))
    .await?;
    expect_error(&mut c, ErrorCode::MessageTooLarge).await;
    expect_closed(&mut c, 1009).await;
    Ok(())
}
