//! HTTP routes: health, readiness, metrics, the signaling WebSocket, the room page.

use axum::Json;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use stamma_proto::{GrantError, MAX_SIGNAL_BYTES};
use std::sync::atomic::Ordering;

use crate::{AppState, session, web};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/rtc", get(rtc))
        .route("/r/{room}", get(room_page))
        .route("/assets/{file}", get(asset))
        .route("/assets/e2ee/{file}", get(e2ee_asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .merge(crate::api::router())
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let participants: u64 = state
        .rooms
        .workers()
        .iter()
        .map(|w| w.gauges.participants.load(Ordering::Relaxed))
        .sum();
    Json(json!({
        "status": "ok",
        "workers": state.rooms.workers().len(),
        "rooms": state.rooms.room_count(),
        "participants": participants,
    }))
    .into_response()
}

/// Whether a load balancer should send new meetings here: not while draining.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.drain.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
            .into_response()
    } else {
        Json(json!({ "status": "ready" })).into_response()
    }
}

/// Prometheus text exposition format.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct RtcQuery {
    access_token: Option<String>,
    /// The room the client means to join; refused if the token is for another.
    room: Option<String>,
}

/// `GET /rtc`: the token is checked before the WebSocket upgrade, so a bad
/// token gets a plain HTTP 401 with a body that says why.
async fn rtc(
    State(state): State<AppState>,
    Query(q): Query<RtcQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = q.access_token.or(bearer).unwrap_or_default();
    let grant = match state.keys.verify(&token) {
        Ok(g) => g,
        Err(e) => {
            let status = match e {
                GrantError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNAUTHORIZED,
            };
            return error(status, e.code(), e.to_string());
        }
    };
    if grant.room == stamma_proto::ALL_ROOMS {
        let msg = "a node-wide admin token is for the admin API; it joins no room";
        return error(StatusCode::FORBIDDEN, "admin_token", msg);
    }
    if let Some(room) = q.room
        && room != grant.room
    {
        return error(
            StatusCode::FORBIDDEN,
            "room_mismatch",
            "this token is for another room",
        );
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "websocket_required",
                format!("GET /rtc must be a WebSocket upgrade: {e}"),
            );
        }
    };
    upgrade
        // Frames above our limit are read (up to this cap) so the client gets a
        // typed `message_too_large` error instead of a bare disconnect.
        .max_message_size(state.limits.max_message_bytes.min(MAX_SIGNAL_BYTES) * 2)
        .max_frame_size(state.limits.max_message_bytes.min(MAX_SIGNAL_BYTES) * 2)
        .on_upgrade(move |ws| session::run(ws, grant, state))
}

async fn room_page(Path(room): Path<String>) -> Response {
    if room.is_empty() || room.len() > 256 || room.chars().any(char::is_control) {
        return error(StatusCode::BAD_REQUEST, "bad_room", "invalid room name");
    }
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                web::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::HeaderName::from_static("permissions-policy"),
                "camera=(self), microphone=(self), display-capture=(self)",
            ),
        ],
        Html(web::ROOM_PAGE),
    )
        .into_response()
}

/// The page's scripts and styles. `no-cache` (revalidate) rather than a long
/// lifetime: the files have no content hash in their names, and a browser
/// must not run an old script against a new server.
async fn asset(Path(file): Path<String>) -> Response {
    serve_asset(&file)
}

/// The end-to-end encryption modules, which import one another by relative
/// path. `{file}` is one path segment, so nothing outside the table is reachable.
async fn e2ee_asset(Path(file): Path<String>) -> Response {
    serve_asset(&format!("e2ee/{file}"))
}

fn serve_asset(name: &str) -> Response {
    match web::asset(name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            a.body,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such asset"),
    }
}
