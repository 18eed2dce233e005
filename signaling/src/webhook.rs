//! Webhooks: room, participant and track events POSTed as JSON to the
//! operator's endpoints, signed with HMAC-SHA256, retried with backoff.
//!
//! Each endpoint has its own bounded queue and delivery task, so a slow or
//! dead endpoint delays only itself, and the media path never waits: events
//! are handed over with `try_send` and dropped (counted, logged) when a queue
//! is full. Delivery per endpoint is in order.
//!
//! Signature: `Stamma-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`. The timestamp is signed so a receiver can refuse replays
//! (see [`verify_signature`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use serde::Serialize;
use stamma_proto::{ParticipantInfo, TrackInfo};
use stamma_sfu::{EventSink, MediaEvent};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Shortest signing secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    secret: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookConfigError {
    #[error("url {0:?} must be an http:// or https:// URL")]
    BadUrl(String),
    #[error("the signing secret must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
}

impl Endpoint {
    pub fn new(url: String, secret: String) -> Result<Endpoint, WebhookConfigError> {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(WebhookConfigError::BadUrl(url));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(WebhookConfigError::ShortSecret);
        }
        Ok(Endpoint { url, secret })
    }
}

/// How deliveries are queued and retried.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Events waiting per endpoint before new ones are dropped.
    pub queue: usize,
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each time up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Per request, connection included.
    pub timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            queue: 10_000,
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RoomStarted,
    RoomFinished,
    ParticipantJoined,
    ParticipantLeft,
    TrackPublished,
    TrackUnpublished,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RoomStarted => "room_started",
            EventKind::RoomFinished => "room_finished",
            EventKind::ParticipantJoined => "participant_joined",
            EventKind::ParticipantLeft => "participant_left",
            EventKind::TrackPublished => "track_published",
            EventKind::TrackUnpublished => "track_unpublished",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantRef {
    pub id: String,
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackRef {
    pub id: String,
    pub kind: stamma_proto::MediaKind,
    pub source: stamma_proto::TrackSource,
}

/// One event as POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Unique per event; the same across retries, so receivers can dedupe.
    pub id: String,
    pub event: EventKind,
    /// Unix milliseconds when it happened.
    pub created_at_ms: u64,
    pub room: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<ParticipantRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackRef>,
    /// Why a participant left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    pub fn new(event: EventKind, room: &str) -> Event {
        Event {
            id: format!("EV_{}", stamma_proto::random_token(16)),
            event,
            created_at_ms: unix_ms(SystemTime::now()),
            room: room.to_owned(),
            participant: None,
            track: None,
            reason: None,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `Stamma-Signature` header value for `body` signed at unix time `t`.
pub fn sign(secret: &str, t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Checks a `Stamma-Signature` header: the HMAC matches (in constant time)
/// and `t` is within `tolerance` of `now`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now_s.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let Some(tag) = decode_hex(v1) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    hmac::verify(&key, &msg, &tag).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Delivery counts (also exported as `stamma_webhooks_total{result}`).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events given up on after `max_attempts`, or refused with a 4xx.
    pub failed: AtomicU64,
    /// Events dropped because an endpoint's queue was full.
    pub dropped: AtomicU64,
}

/// The sending side; cheap to clone.
#[derive(Clone, Default)]
pub struct Webhooks {
    queues: Arc<Vec<mpsc::Sender<Arc<Event>>>>,
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Start one delivery task per endpoint (inside a Tokio runtime).
    pub fn start(endpoints: Vec<Endpoint>, delivery: Delivery) -> Webhooks {
        let stats = Arc::new(WebhookStats::default());
        let mut queues = Vec::new();
        if !endpoints.is_empty() {
            let client = reqwest::Client::builder()
                .timeout(delivery.timeout)
                .connect_timeout(delivery.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("stamma-webhooks/", env!("CARGO_PKG_VERSION")))
                .build();
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "webhook HTTP client could not be built; webhooks are off");
                    return Webhooks::default();
                }
            };
            for endpoint in endpoints {
                let (tx, rx) = mpsc::channel(delivery.queue.max(1));
                tokio::spawn(deliver(
                    client.clone(),
                    endpoint,
                    delivery.clone(),
                    rx,
                    stats.clone(),
                ));
                queues.push(tx);
            }
        }
        Webhooks {
            queues: Arc::new(queues),
            stats,
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Queue `event` for every endpoint; never waits.
    pub fn notify(&self, event: Event) {
        if self.queues.is_empty() {
            return;
        }
        let event = Arc::new(event);
        for q in self.queues.iter() {
            if q.try_send(event.clone()).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stamma_webhooks_total", "result" => "dropped").increment(1);
                debug!(
                    event = event.event.as_str(),
                    "webhook queue full; event dropped"
                );
            }
        }
    }
}

/// Events waiting between the media workers and the webhook queues.
const MEDIA_EVENT_QUEUE: usize = 4096;

/// An [`EventSink`] for the media plane whose events become webhooks.
pub fn forward_media_events(webhooks: Webhooks) -> EventSink {
    let (tx, mut rx) = mpsc::channel(MEDIA_EVENT_QUEUE);
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            webhooks.notify(Event::from_media(e));
        }
    });
    EventSink::new(tx)
}

impl Event {
    fn from_media(e: MediaEvent) -> Event {
        let who = |p: ParticipantInfo| ParticipantRef {
            id: p.id,
            identity: p.identity,
            name: p.name,
        };
        let track_ref = |t: TrackInfo| TrackRef {
            id: t.id,
            kind: t.kind,
            source: t.source,
        };
        let (kind, room, participant, track, reason) = match e {
            MediaEvent::RoomStarted { room } => (EventKind::RoomStarted, room, None, None, None),
            MediaEvent::RoomFinished { room } => (EventKind::RoomFinished, room, None, None, None),
            MediaEvent::ParticipantJoined { room, participant } => (
                EventKind::ParticipantJoined,
                room,
                Some(participant),
                None,
                None,
            ),
            MediaEvent::ParticipantLeft {
                room,
                participant,
                reason,
            } => (
                EventKind::ParticipantLeft,
                room,
                Some(participant),
                None,
                Some(reason),
            ),
            MediaEvent::TrackPublished {
                room,
                participant,
                track,
            } => (
                EventKind::TrackPublished,
                room,
                Some(participant),
                Some(track),
                None,
            ),
            MediaEvent::TrackUnpublished {
                room,
                participant,
                track,
            } => (
                EventKind::TrackUnpublished,
                room,
                Some(participant),
                Some(track),
                None,
            ),
        };
        Event {
            participant: participant.map(who),
            track: track.map(track_ref),
            reason,
            ..Event::new(kind, &room)
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    endpoint: Endpoint,
    delivery: Delivery,
    mut rx: mpsc::Receiver<Arc<Event>>,
    stats: Arc<WebhookStats>,
) {
    while let Some(event) = rx.recv().await {
        let body = match serde_json::to_vec(&*event) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "webhook event does not serialize");
                continue;
            }
        };
        let mut wait = delivery.retry_base;
        for attempt in 1..=delivery.max_attempts.max(1) {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let r = client
                .post(&endpoint.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Stamma-Signature", sign(&endpoint.secret, t, &body))
                .header("Stamma-Event", event.event.as_str())
                .header("Stamma-Event-Id", &event.id)
                .header("Stamma-Delivery-Attempt", attempt.to_string())
                .body(body.clone())
                .send()
                .await;
            let retry = match r {
                Ok(resp) if resp.status().is_success() => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("stamma_webhooks_total", "result" => "delivered")
                        .increment(1);
                    false
                }
                // The receiver refused this event itself: retrying will not help,
                // except for the codes that mean "later".
                Ok(resp)
                    if resp.status().is_client_error()
                        && resp.status() != reqwest::StatusCode::REQUEST_TIMEOUT
                        && resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("stamma_webhooks_total", "result" => "refused").increment(1);
                    warn!(url = %endpoint.url, status = resp.status().as_u16(), event = event.event.as_str(), "webhook refused");
                    false
                }
                Ok(resp) => {
                    debug!(url = %endpoint.url, status = resp.status().as_u16(), attempt, "webhook delivery failed");
                    true
                }
                Err(e) => {
                    debug!(url = %endpoint.url, error = %e, attempt, "webhook delivery failed");
                    true
                }
            };
            if !retry {
                break;
            }
            if attempt == delivery.max_attempts.max(1) {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stamma_webhooks_total", "result" => "failed").increment(1);
                warn!(url = %endpoint.url, event = event.event.as_str(), attempts = attempt, "webhook given up");
                break;
            }
            stats.retried.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stamma_webhooks_total", "result" => "retried").increment(1);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(delivery.retry_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let body = br#"{"event":"room_started"}"#;
        let h = sign("whsec-0123456789abcdef", 1_800_000_000, body);
        let tol = Duration::from_secs(300);
        assert!(verify_signature(
            "whsec-0123456789abcdef",
            &h,
            body,
            now,
            tol
        ));
        assert!(!verify_signature(
            "whsec-other-secret-000",
            &h,
            body,
            now,
            tol
        ));
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &h,
            b"{}",
            now,
            tol
        ));
        let late = now + Duration::from_secs(301);
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &h,
            body,
            late,
            tol
        ));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1800000000,v1=zz"] {
            assert!(!verify_signature(
                "whsec-0123456789abcdef",
                bad,
                body,
                now,
                tol
            ));
        }
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // printf '1800000000.{}' | openssl dgst -sha256 -hmac whsec-0123456789abcdef
        assert_eq!(
            sign("whsec-0123456789abcdef", 1_800_000_000, b"{}"),
            "t=1800000000,v1=e80f385b41c1c0d6d5a2209f0ee60bb9c009c3b24c708ec31401c6018d2aadd9"
        );
    }

    #[test]
    fn endpoints_are_validated() {
        assert!(Endpoint::new("https://hooks.example.eu/stamma".into(), "s".repeat(16)).is_ok());
        assert!(Endpoint::new("http://127.0.0.1:9/x".into(), "s".repeat(16)).is_ok());
        for url in [
            "ftp://x",
            "https://",
            "http:///x",
            "hooks.example.eu",
            "https://a b",
        ] {
            assert!(
                matches!(
                    Endpoint::new(url.into(), "s".repeat(16)),
                    Err(WebhookConfigError::BadUrl(_))
                ),
                "{url}"
            );
        }
        assert_eq!(
            Endpoint::new("https://x".into(), "short".into()).unwrap_err(),
            WebhookConfigError::ShortSecret
        );
    }

    #[test]
    fn events_serialize_with_snake_case_names() {
        let mut e = Event::new(EventKind::ParticipantLeft, "town-hall");
        e.reason = Some("left".into());
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "participant_left");
        assert_eq!(v["room"], "town-hall");
        assert!(v["id"].as_str().unwrap().starts_with("EV_"));
        assert!(v.get("track").is_none());
    }
}
