//! Webhooks: a real HTTP receiver gets every room, participant and track
//! event of a meeting, each signed (HMAC-SHA256, checked here), in order,
//! and a delivery it answers with 500 is retried with the same event id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use stamma::webhook::{Delivery, Endpoint, verify_signature};
use stamma_proto::Role;
use stamma_tests::{Publish, TestParticipant, TestServer, wait_until};

const SECRET: &str = "whsec-for-the-webhook-test";

#[derive(Debug, Clone)]
struct Delivered {
    event: String,
    id: String,
    attempt: u32,
    signed: bool,
    body: serde_json::Value,
}

#[derive(Default)]
struct Receiver {
    deliveries: Mutex<Vec<Delivered>>,
    /// Answer the first delivery with 500 (a receiver that was restarting).
    failed_once: Mutex<bool>,
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signed = verify_signature(
        SECRET,
        &h("stamma-signature"),
        &body,
        SystemTime::now(),
        Duration::from_secs(300),
    );
    let d = Delivered {
        event: h("stamma-event"),
        id: h("stamma-event-id"),
        attempt: h("stamma-delivery-attempt").parse().unwrap_or(0),
        signed,
        body: serde_json::from_slice(&body).unwrap_or_default(),
    };
    r.deliveries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(d);
    let mut failed = r.failed_once.lock().unwrap_or_else(|e| e.into_inner());
    if !*failed {
        *failed = true;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_and_a_failed_delivery_is_retried() -> anyhow::Result<()> {
    let receiver = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let endpoint = Endpoint::new(url, SECRET.into())?;
    let srv = TestServer::start_with(1, move |c| {
        c.webhooks = vec![endpoint];
        c.webhook_delivery = Delivery {
            retry_base: Duration::from_millis(50),
            ..Delivery::default()
        };
    })
    .await?;

    let alice = TestParticipant::join(
        &srv.base,
        "hooked",
        "alice",
        Role::Speaker,
        Publish {
            tone_hz: Some(440.0),
            video: false,
            ..Publish::default()
        },
    )
    .await?;
    let bob = TestParticipant::join(
        &srv.base,
        "hooked",
        "bob",
        Role::Speaker,
        Publish::default(),
    )
    .await?;
    let alice_id = alice.id.clone();
    let bob_id = bob.id.clone();
    let events = |r: &Receiver| -> Vec<Delivered> {
        r.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    wait_until(Duration::from_secs(20), "alice's track published", || {
        events(&receiver)
            .iter()
            .any(|d| d.event == "track_published")
    })
    .await?;
    alice.leave().await;
    bob.leave().await;
    wait_until(Duration::from_secs(20), "room_finished", || {
        events(&receiver).iter().any(|d| d.event == "room_finished")
    })
    .await?;

    let all = events(&receiver);
    assert!(
        all.iter().all(|d| d.signed),
        "unsigned or badly signed: {all:#?}"
    );
    // The first delivery got a 500 and came again, same id, next attempt.
    let first = &all[0];
    assert_eq!(first.attempt, 1);
    assert_eq!(
        all.iter()
            .filter(|d| d.id == first.id)
            .map(|d| d.attempt)
            .collect::<Vec<_>>(),
        vec![1, 2],
        "{all:#?}"
    );
    // Every event once (after dedupe by id), in the order it happened.
    let mut seen = HashMap::new();
    let mut order = Vec::new();
    for d in &all {
        if seen.insert(d.id.clone(), ()).is_none() {
            order.push(d.clone());
        }
    }
    let names: Vec<&str> = order.iter().map(|d| d.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"room_started"), "{names:?}");
    assert_eq!(names.last(), Some(&"room_finished"), "{names:?}");
    let count = |n: &str| names.iter().filter(|x| **x == n).count();
    assert_eq!(count("participant_joined"), 2, "{names:?}");
    assert_eq!(count("participant_left"), 2, "{names:?}");
    assert_eq!(count("track_published"), 1, "{names:?}");
    assert_eq!(count("track_unpublished"), 1, "{names:?}");
    for d in &order {
        assert_eq!(d.body["room"], "hooked");
        assert_eq!(d.body["event"], d.event.as_str());
    }
    let joined: Vec<&str> = order
        .iter()
        .filter(|d| d.event == "participant_joined")
        .filter_map(|d| d.body["participant"]["id"].as_str())
        .collect();
    assert_eq!(joined, vec![alice_id.as_str(), bob_id.as_str()]);
    let track = order
        .iter()
        .find(|d| d.event == "track_published")
        .map(|d| d.body.clone())
        .unwrap_or_default();
    assert_eq!(track["participant"]["id"], alice_id.as_str());
    assert_eq!(track["track"]["kind"], "audio");
    Ok(())
}
