//! One WebSocket signaling session: the protocol state machine between a
//! client and the worker that hosts its room.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use stamma_proto::{
    ClientSignal, ErrorCode, Grant, MAX_SIGNAL_BYTES, PROTOCOL_VERSION, ServerSignal,
};
use stamma_sfu::command::SIGNAL_QUEUE;
use stamma_sfu::{Command, JoinRequest, ToParticipant};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::AppState;
use crate::drain::Phase;
use crate::rooms::EnterError;

/// Session limits (documented in docs/protocol.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed between connecting and `join`.
    pub join_timeout: Duration,
    /// A session that sends nothing (not even `ping`) for this long is closed.
    pub idle_timeout: Duration,
    /// Sustained messages per second.
    pub rate_per_sec: f64,
    /// Burst allowance above the sustained rate.
    pub burst: f64,
    /// Messages refused for rate in a row before the session is closed.
    pub max_rate_violations: u32,
    /// Largest signaling message accepted (at most the protocol's
    /// `MAX_SIGNAL_BYTES`).
    pub max_message_bytes: usize,
    /// Rooms this node holds at once (a node's capacity is finite; past it,
    /// new rooms belong on another node). 0: no limit.
    pub max_rooms: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            join_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            rate_per_sec: 20.0,
            burst: 50.0,
            max_rate_violations: 50,
            max_message_bytes: MAX_SIGNAL_BYTES,
            max_rooms: 0,
        }
    }
}

/// WebSocket close codes (RFC 6455 §7.4.1).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

fn close_code_for(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::MessageTooLarge => close::TOO_BIG,
        ErrorCode::BadMessage | ErrorCode::UnsupportedVersion => close::PROTOCOL,
        ErrorCode::Internal => close::INTERNAL,
        ErrorCode::ShuttingDown => close::GOING_AWAY,
        ErrorCode::Draining | ErrorCode::TooManyRooms => close::TRY_AGAIN_LATER,
        _ => close::POLICY,
    }
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
    violations: u32,
}

impl TokenBucket {
    fn take(&mut self, limits: &Limits) -> bool {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * limits.rate_per_sec).min(limits.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.violations = 0;
            true
        } else {
            self.violations += 1;
            false
        }
    }
}

/// Why a session ends.
enum End {
    /// The client left or closed.
    Gone(&'static str),
    /// We close with an error.
    Error(ErrorCode, String),
}

struct Session {
    ws: WebSocket,
    grant: Grant,
    state: AppState,
    bucket: TokenBucket,
    /// The name typed on the pre-join page (`join.name`); wins over the token's.
    display_name: Option<String>,
}

/// Counts open sessions in `stamma_signaling_sessions`, however they end.
struct OpenSession;

impl OpenSession {
    fn new() -> OpenSession {
        metrics::gauge!("stamma_signaling_sessions").increment(1.0);
        OpenSession
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics::gauge!("stamma_signaling_sessions").decrement(1.0);
    }
}

fn count_error(code: ErrorCode) {
    metrics::counter!("stamma_signaling_errors_total", "code" => code.as_str()).increment(1);
}

/// The `server_draining` signal for a drain ending at `deadline`.
fn draining_signal(deadline: Instant) -> ServerSignal {
    let left = deadline.saturating_duration_since(Instant::now());
    ServerSignal::ServerDraining {
        deadline_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Run a session to its end.
pub async fn run(ws: WebSocket, grant: Grant, state: AppState) {
    let _open = OpenSession::new();
    let limits = state.limits.clone();
    let mut s = Session {
        ws,
        grant,
        bucket: TokenBucket {
            tokens: limits.burst,
            last: Instant::now(),
            violations: 0,
        },
        state,
        display_name: None,
    };
    let end = s.run().await;
    let (code, reason, text) = match &end {
        End::Gone(why) => (close::NORMAL, (*why).to_owned(), None),
        End::Error(code, msg) => (
            close_code_for(*code),
            format!("{code:?}"),
            Some(ServerSignal::error(*code, msg.clone()).to_json()),
        ),
    };
    if let End::Error(code, _) = &end {
        count_error(*code);
    }
    if let Some(text) = text {
        let _ = s.ws.send(Message::Text(text.into())).await;
    }
    let _ =
        s.ws.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.chars().take(100).collect::<String>()),
        })))
        .await;
    // Complete the closing handshake: read (and ignore) what the client still
    // sends until its close frame, so it sees a clean close rather than a reset.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(m)) = s.ws.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

impl Session {
    async fn send(&mut self, signal: &ServerSignal) -> Result<(), End> {
        if let ServerSignal::Error { code, .. } = signal {
            count_error(*code);
        }
        self.ws
            .send(Message::Text(signal.to_json().into()))
            .await
            .map_err(|_| End::Gone("send failed"))
    }

    /// Next client message, with size, type and rate checks.
    /// `Ok(None)` means a message was refused but the session goes on.
    async fn recv(&mut self) -> Result<Option<ClientSignal>, End> {
        let msg = match self.ws.recv().await {
            None => return Err(End::Gone("disconnected")),
            Some(Err(_)) => return Err(End::Gone("connection error")),
            Some(Ok(m)) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return Err(End::Error(
                    ErrorCode::BadMessage,
                    "binary messages are not part of the protocol; send JSON text".into(),
                ));
            }
            Message::Ping(_) | Message::Pong(_) => return Ok(None),
            Message::Close(_) => return Err(End::Gone("closed")),
        };
        let max = self.state.limits.max_message_bytes;
        if text.len() > max {
            return Err(End::Error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds the limit of {max} bytes",
                    text.len()
                ),
            ));
        }
        if !self.bucket.take(&self.state.limits) {
            if self.bucket.violations >= self.state.limits.max_rate_violations {
                return Err(End::Error(
                    ErrorCode::RateLimited,
                    "too many messages; closing".into(),
                ));
            }
            self.send(&ServerSignal::error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second; message dropped",
                    self.state.limits.rate_per_sec
                ),
            ))
            .await?;
            return Ok(None);
        }
        match ClientSignal::parse(&text) {
            Ok(s) => Ok(Some(s)),
            // A message that does not parse is refused; the session goes on.
            Err((code, message)) => {
                self.send(&ServerSignal::error(code, message)).await?;
                Ok(None)
            }
        }
    }

    async fn run(&mut self) -> End {
        // The drain sender lives in `state`, so `changed` cannot fail while we run.
        let mut phase = self.state.drain.subscribe();
        // Phase 1: wait for join.
        let deadline = Instant::now() + self.state.limits.join_timeout;
        loop {
            if *phase.borrow_and_update() == Phase::Closing {
                return shutting_down();
            }
            let r = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.recv()) => r,
                _ = phase.changed() => continue,
            };
            let signal = match r {
                Err(_) => {
                    return End::Error(ErrorCode::Timeout, "no join message in time".into());
                }
                Ok(Err(end)) => return end,
                Ok(Ok(None)) => continue,
                Ok(Ok(Some(s))) => s,
            };
            match signal {
                ClientSignal::Join { v, name } if v == PROTOCOL_VERSION => {
                    match name.as_deref().map(stamma_proto::display_name).transpose() {
                        Ok(name) => {
                            self.display_name = name.flatten();
                            break;
                        }
                        // A name the page should not have let through: say
                        // so and let the person try another.
                        Err(why) => {
                            if let Err(e) = self
                                .send(&ServerSignal::error(ErrorCode::BadMessage, why))
                                .await
                            {
                                return e;
                            }
                        }
                    }
                }
                ClientSignal::Join { v, .. } => {
                    return End::Error(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                        ),
                    );
                }
                ClientSignal::Ping { ts } => {
                    if let Err(e) = self.send(&ServerSignal::Pong { ts }).await {
                        return e;
                    }
                }
                ClientSignal::Leave => return End::Gone("left"),
                _ => {
                    if let Err(e) = self
                        .send(&ServerSignal::error(
                            ErrorCode::NotJoined,
                            "send join first",
                        ))
                        .await
                    {
                        return e;
                    }
                }
            }
        }
        // Phase 2: in the room.
        let room = self.grant.room.clone();
        let entered = match self.state.rooms.enter(&room) {
            Ok(e) => e,
            Err(e @ EnterError::Draining) => {
                return End::Error(
                    ErrorCode::Draining,
                    format!("{e}; join again (a load balancer sends you to another)"),
                );
            }
            Err(e @ EnterError::NoWorker) => return End::Error(ErrorCode::Internal, e.to_string()),
            Err(e @ EnterError::TooManyRooms) => {
                return End::Error(ErrorCode::TooManyRooms, e.to_string());
            }
        };
        let worker = entered.worker;
        let participant_id = format!("PA_{}", stamma_proto::random_token(12));
        let end = self
            .in_room(&worker, &participant_id, entered.options, &mut phase)
            .await;
        let reason = match &end {
            End::Gone(why) => (*why).to_owned(),
            End::Error(code, _) => format!("{code:?}"),
        };
        let _ = worker
            .send(Command::Leave {
                participant_id: participant_id.clone(),
                reason,
            })
            .await;
        self.state.rooms.leave(&entered.ticket);
        end
    }

    async fn in_room(
        &mut self,
        worker: &stamma_sfu::WorkerHandle,
        participant_id: &str,
        room_options: stamma_sfu::RoomOptions,
        phase: &mut watch::Receiver<Phase>,
    ) -> End {
        let (tx, mut rx) = mpsc::channel(SIGNAL_QUEUE);
        let g = &self.grant;
        let identity = g.session_identity();
        let name = self.display_name.clone().or_else(|| g.name.clone());
        let mut reconnect_token = self.reconnect_token(&identity, name.as_deref());
        let join = JoinRequest {
            participant_id: participant_id.to_owned(),
            room: g.room.clone(),
            identity: identity.clone(),
            name,
            role: g.role,
            can_publish: g.can_publish(),
            can_subscribe: g.grants.subscribe,
            can_admin: g.grants.admin,
            signals: tx,
            room_options,
        };
        if worker.send(Command::Join(Box::new(join))).await.is_err() {
            return End::Error(ErrorCode::Internal, "media worker stopped".into());
        }
        info!(participant = participant_id, room = %g.room, identity = %identity, "session joined");
        let idle = self.state.limits.idle_timeout;
        let mut last_heard = Instant::now();
        // `server_draining` goes out after `joined`, never before it.
        let mut joined = false;
        let mut owe_draining = None;
        if let Phase::Draining { deadline } = *phase.borrow_and_update() {
            owe_draining = Some(deadline);
        }
        loop {
            tokio::select! {
                _ = phase.changed() => {
                    let now = *phase.borrow_and_update();
                    match now {
                        Phase::Serving => {}
                        Phase::Draining { deadline } if joined => {
                            if let Err(e) = self.send(&draining_signal(deadline)).await {
                                return e;
                            }
                        }
                        Phase::Draining { deadline } => owe_draining = Some(deadline),
                        Phase::Closing => return shutting_down(),
                    }
                }
                out = rx.recv() => match out {
                    Some(ToParticipant::Signal(mut s)) => {
                        if let ServerSignal::Joined { ice_servers, reconnect_token: token, .. } = &mut s {
                            let now = std::time::SystemTime::now();
                            ice_servers.extend(
                                self.state.turn.iter().map(|t| t.credentials(participant_id, now)),
                            );
                            *token = reconnect_token.take();
                        }
                        if let Err(e) = self.send(&s).await {
                            return e;
                        }
                        if matches!(s, ServerSignal::Joined { .. }) {
                            joined = true;
                            if let Some(deadline) = owe_draining.take()
                                && let Err(e) = self.send(&draining_signal(deadline)).await
                            {
                                return e;
                            }
                        }
                    }
                    Some(ToParticipant::Close(code, message)) => return End::Error(code, message),
                    // The worker dropped us (e.g. we could not keep up with its signals).
                    None => return End::Error(ErrorCode::Internal, "the media server ended this session".into()),
                },
                r = tokio::time::timeout_at(last_heard + idle, self.recv()) => {
                    let signal = match r {
                        Err(_) => return End::Error(ErrorCode::Timeout, format!("nothing received for {} s", idle.as_secs())),
                        Ok(Err(end)) => return end,
                        Ok(Ok(None)) => { last_heard = Instant::now(); continue; }
                        Ok(Ok(Some(s))) => s,
                    };
                    last_heard = Instant::now();
                    match signal {
                        ClientSignal::Join { .. } => {
                            if let Err(e) = self.send(&ServerSignal::error(ErrorCode::AlreadyJoined, "already joined")).await {
                                return e;
                            }
                        }
                        ClientSignal::Ping { ts } => {
                            if let Err(e) = self.send(&ServerSignal::Pong { ts }).await {
                                return e;
                            }
                        }
                        ClientSignal::Leave => return End::Gone("left"),
                        // Offer, answer, mute, unpublish, chat, hand, moderate: the worker
                        // owns the room and enforces the grants (publish, admin).
                        other => {
                            let cmd = Command::Signal { participant_id: participant_id.to_owned(), signal: other };
                            if worker.send(cmd).await.is_err() {
                                return End::Error(ErrorCode::Internal, "media worker stopped".into());
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Session {
    /// A token for rejoining as `identity` after a lost connection: the
    /// original's room, role, grants and expiry (a reconnect never extends
    /// a token's life), not shared, so the identity stays. `None` (and the
    /// client cannot rejoin as itself) if it cannot be signed.
    fn reconnect_token(&self, identity: &str, name: Option<&str>) -> Option<String> {
        let g = &self.grant;
        let secret = self.state.keys.secret(&g.iss)?;
        let again = Grant {
            sub: identity.to_owned(),
            name: name.map(str::to_owned),
            nbf: None,
            iat: stamma_proto::grant::unix_now(),
            shared: false,
            ..g.clone()
        };
        match again.mint(&g.iss, secret) {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(error = %e, "could not sign a reconnect token");
                None
            }
        }
    }
}

fn shutting_down() -> End {
    End::Error(
        ErrorCode::ShuttingDown,
        "the server is shutting down; join again".into(),
    )
}
