//! The admin REST API under `/api/v1`: rooms, participants, join links.
//!
//! Every request carries `Authorization: Bearer <JWT>` with the admin grant
//! (a node-wide token has room `"*"`, see [`stamma_proto::ALL_ROOMS`]; a join
//! token with admin administers only its room). Errors are RFC 9457 problem
//! details. `openapi.json` next to this file describes all of it and is
//! served at `/api/v1/openapi.json`; a test keeps the two in step.

pub mod problem;

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stamma_proto::grant::MAX_NAME_BYTES;
use stamma_proto::{ALL_ROOMS, Grant, GrantError, Role, TrackInfo};
use stamma_sfu::admin::Reply;
use stamma_sfu::{AdminCommand, AdminError, Command, ParticipantSnapshot, WorkerHandle};
use tokio::sync::oneshot;
use tracing::info;

pub use problem::Problem;

use crate::AppState;
use crate::rooms::{DirectoryError, RoomSettings, RoomView};

/// The OpenAPI document, served as is.
pub const OPENAPI: &str = include_str!("openapi.json");
/// Where the API lives.
pub const PREFIX: &str = "/api/v1";
/// Largest request body: the bodies here are a few fields.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest name (room, identity, display name) accepted in a body, in
/// characters: 64 characters are at most 256 bytes, the token limit, so the
/// OpenAPI `maxLength` can state the rule exactly.
pub const MAX_BODY_NAME_CHARS: usize = 64;
/// Most participants a room option may allow.
pub const MAX_ROOM_PARTICIPANTS: usize = 10_000;
/// Longest lifetime of a join link's token.
pub const MAX_LINK_TTL_S: u64 = 30 * 24 * 3600;
pub const DEFAULT_LINK_TTL_S: u64 = 24 * 3600;

/// Settings of the admin API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Base of join links (`https://meet.example.org`); without it the
    /// request's `Host` header is used, with `http://`.
    pub public_url: Option<String>,
    /// How long a request waits for a media worker.
    pub worker_timeout: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            public_url: None,
            worker_timeout: Duration::from_secs(5),
        }
    }
}

pub fn router() -> Router<AppState> {
    let api = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{room}", get(get_room).delete(delete_room))
        .route("/rooms/{room}/participants", get(list_participants))
        .route(
            "/rooms/{room}/participants/{participant_id}",
            axum::routing::patch(update_participant).delete(remove_participant),
        )
        .route(
            "/rooms/{room}/participants/{participant_id}/tracks/{track_id}/mute",
            post(mute_track),
        )
        .route("/rooms/{room}/links", post(create_link))
        .fallback(|| async {
            Problem::not_found(
                "not_found",
                "no such API endpoint (see /api/v1/openapi.json)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(problem_for_plain_errors));
    Router::new().nest(PREFIX, api)
}

/// Errors produced below the handlers (an unknown method, a path segment
/// that is not UTF-8) come as text/plain; the API answers problem+json only.
async fn problem_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(problem::CONTENT_TYPE.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        t => t.to_owned(),
    };
    let mut fixed = Problem::for_status(status, detail).into_response();
    // Keep what the layer below said beyond the body (e.g. `Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

// ---- auth -------------------------------------------------------------

/// A verified token with the admin grant.
pub struct Admin(pub Grant);

impl Admin {
    /// Refuse (403) unless this token may administer `room`.
    fn check(&self, room: &str) -> Result<(), Problem> {
        if self.0.may_administer(room) {
            Ok(())
        } else {
            Err(Problem::forbidden(
                "this token administers another room only",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => "",
        };
        let grant = state.keys.verify(token).map_err(|e| {
            let status = match e {
                GrantError::Sign(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNAUTHORIZED,
            };
            Problem::new(status, e.code(), e.to_string())
        })?;
        if !grant.grants.admin {
            return Err(Problem::forbidden(
                "this token does not carry the admin grant",
            ));
        }
        Ok(Admin(grant))
    }
}

// ---- bodies -----------------------------------------------------------

/// `Json` whose rejections are problem details (400 syntax, 415 content
/// type, 413 size, 422 fields).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(req: Request<axum::body::Body>, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(json_problem(&e)),
        }
    }
}

fn json_problem(e: &JsonRejection) -> Problem {
    let status = e.status();
    let code = match e {
        JsonRejection::JsonDataError(_) => "invalid_body",
        JsonRejection::JsonSyntaxError(_) => "malformed_json",
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        _ => "bad_request",
    };
    Problem::new(status, code, e.body_text())
}

/// An optional field may be left out but not be `null` (the document says
/// so; an explicit null is more likely a client bug than a wish for the default).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A name given in a body: 1–64 characters, no control characters.
fn check_body_name(what: &str, v: &str) -> Result<(), Problem> {
    let chars = v.chars().count();
    if chars == 0 || chars > MAX_BODY_NAME_CHARS {
        return Err(Problem::unprocessable(format!(
            "{what} must be 1 to {MAX_BODY_NAME_CHARS} characters"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(Problem::unprocessable(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// A room name in a path: the token rules (no room can have another name).
fn room_in_path(admin: &Admin, room: &str) -> Result<(), Problem> {
    admin.check(room)?;
    let valid = !room.is_empty()
        && room.len() <= MAX_NAME_BYTES
        && !room.chars().any(char::is_control)
        && room != ALL_ROOMS;
    if valid { Ok(()) } else { Err(no_room(room)) }
}

fn no_room(room: &str) -> Problem {
    let mut shown: String = room.chars().filter(|c| !c.is_control()).take(64).collect();
    if shown.len() < room.len() {
        shown.push('…');
    }
    Problem::not_found("room_not_found", format!("no room {shown:?}"))
}

// ---- rooms ------------------------------------------------------------

#[derive(Debug, Serialize)]
struct RoomOut {
    name: String,
    participants: usize,
    created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_participants: Option<usize>,
    default_role: Role,
    e2ee_required: bool,
}

impl From<RoomView> for RoomOut {
    fn from(v: RoomView) -> Self {
        RoomOut {
            name: v.name,
            participants: v.sessions,
            created_at: v.created_at,
            max_participants: v.settings.max_participants,
            default_role: v.settings.default_role,
            e2ee_required: v.settings.e2ee_required,
        }
    }
}

#[derive(Debug, Serialize)]
struct RoomList {
    rooms: Vec<RoomOut>,
}

async fn list_rooms(admin: Admin, State(state): State<AppState>) -> Response {
    let rooms = state
        .rooms
        .list()
        .into_iter()
        .filter(|r| admin.0.may_administer(&r.name))
        .map(RoomOut::from)
        .collect();
    axum::Json(RoomList { rooms }).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: String,
    #[serde(default, deserialize_with = "present")]
    max_participants: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    default_role: Option<Role>,
    #[serde(default)]
    e2ee_required: bool,
}

async fn create_room(
    admin: Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<Response, Problem> {
    admin.check(&body.name)?;
    check_body_name("name", &body.name)?;
    if body.name == ALL_ROOMS {
        return Err(Problem::unprocessable(format!(
            "{ALL_ROOMS:?} is reserved for node-wide admin tokens"
        )));
    }
    if let Some(m) = body.max_participants
        && !(1..=MAX_ROOM_PARTICIPANTS).contains(&m)
    {
        return Err(Problem::unprocessable(format!(
            "max_participants must be 1 to {MAX_ROOM_PARTICIPANTS}"
        )));
    }
    let settings = RoomSettings {
        max_participants: body.max_participants,
        default_role: body.default_role.unwrap_or(Role::Speaker),
        e2ee_required: body.e2ee_required,
    };
    let view = state
        .rooms
        .create(&body.name, settings)
        .map_err(|e| match e {
            DirectoryError::Exists => Problem::new(
                StatusCode::CONFLICT,
                "room_exists",
                "a room of this name exists (created earlier, or someone is in it)",
            ),
            DirectoryError::Unavailable(_) => Problem::unavailable(e.to_string()),
        })?;
    info!(room = %view.name, max_participants = ?settings.max_participants, e2ee_required = settings.e2ee_required, "room created");
    Ok((StatusCode::CREATED, axum::Json(RoomOut::from(view))).into_response())
}

async fn get_room(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, Problem> {
    room_in_path(&admin, &room)?;
    let view = state.rooms.get(&room).ok_or_else(|| no_room(&room))?;
    Ok(axum::Json(RoomOut::from(view)).into_response())
}

async fn delete_room(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, Problem> {
    room_in_path(&admin, &room)?;
    // Forgotten first, so nobody is placed in it while it is being closed.
    let worker = state.rooms.remove(&room).ok_or_else(|| no_room(&room))?;
    let closed = ask(&state, &worker, |reply| AdminCommand::CloseRoom {
        room: room.clone(),
        reply,
    })
    .await?;
    info!(room = %room, participants = closed, "room deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- participants -----------------------------------------------------

#[derive(Debug, Serialize)]
struct ParticipantOut {
    id: String,
    identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    role: Role,
    can_publish: bool,
    tracks: Vec<TrackInfo>,
    joined_at: u64,
}

impl From<ParticipantSnapshot> for ParticipantOut {
    fn from(p: ParticipantSnapshot) -> Self {
        ParticipantOut {
            id: p.id,
            identity: p.identity,
            name: p.name,
            role: p.role,
            can_publish: p.can_publish,
            tracks: p.tracks,
            joined_at: p.joined_at,
        }
    }
}

#[derive(Debug, Serialize)]
struct ParticipantList {
    participants: Vec<ParticipantOut>,
}

/// The worker hosting `room`, after the access check.
fn room_worker(admin: &Admin, state: &AppState, room: &str) -> Result<WorkerHandle, Problem> {
    room_in_path(admin, room)?;
    let view = state.rooms.get(room).ok_or_else(|| no_room(room))?;
    state
        .rooms
        .worker(view.worker)
        .cloned()
        .ok_or_else(|| Problem::unavailable("the room's media worker is gone"))
}

/// Send an admin command to a worker and wait (bounded) for its answer.
async fn ask<T>(
    state: &AppState,
    worker: &WorkerHandle,
    make: impl FnOnce(Reply<T>) -> AdminCommand,
) -> Result<T, Problem> {
    let (tx, rx) = oneshot::channel();
    let command = Command::Admin(make(tx));
    let exchange = async {
        worker.send(command).await.ok()?;
        rx.await.ok()
    };
    let answer = tokio::time::timeout(state.api.worker_timeout, exchange)
        .await
        .map_err(|_| Problem::unavailable("the media worker did not answer in time"))?
        .ok_or_else(|| Problem::unavailable("the media worker stopped"))?;
    answer.map_err(|e| match e {
        AdminError::UnknownParticipant(_) => {
            Problem::not_found("participant_not_found", e.to_string())
        }
        AdminError::UnknownTrack(_) => Problem::not_found("track_not_found", e.to_string()),
    })
}

async fn list_participants(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, Problem> {
    let worker = room_worker(&admin, &state, &room)?;
    let list = ask(&state, &worker, |reply| AdminCommand::ListParticipants {
        room: room.clone(),
        reply,
    })
    .await?;
    let participants = list.into_iter().map(ParticipantOut::from).collect();
    Ok(axum::Json(ParticipantList { participants }).into_response())
}

async fn remove_participant(
    admin: Admin,
    State(state): State<AppState>,
    Path((room, participant_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let worker = room_worker(&admin, &state, &room)?;
    ask(&state, &worker, |reply| AdminCommand::RemoveParticipant {
        room: room.clone(),
        participant_id: participant_id.clone(),
        reply,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateParticipant {
    role: Role,
}

async fn update_participant(
    admin: Admin,
    State(state): State<AppState>,
    Path((room, participant_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateParticipant>,
) -> Result<Response, Problem> {
    let worker = room_worker(&admin, &state, &room)?;
    let p = ask(&state, &worker, |reply| AdminCommand::SetRole {
        room: room.clone(),
        participant_id: participant_id.clone(),
        role: body.role,
        reply,
    })
    .await?;
    Ok(axum::Json(ParticipantOut::from(p)).into_response())
}

async fn mute_track(
    admin: Admin,
    State(state): State<AppState>,
    Path((room, participant_id, track_id)): Path<(String, String, String)>,
) -> Result<Response, Problem> {
    let worker = room_worker(&admin, &state, &room)?;
    ask(&state, &worker, |reply| AdminCommand::MuteTrack {
        room: room.clone(),
        participant_id: participant_id.clone(),
        track_id: track_id.clone(),
        reply,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- join links -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLink {
    #[serde(default, deserialize_with = "present")]
    role: Option<Role>,
    #[serde(default, deserialize_with = "present")]
    identity: Option<String>,
    #[serde(default, deserialize_with = "present")]
    name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ttl_s: Option<u64>,
}

#[derive(Debug, Serialize)]
struct LinkOut {
    url: String,
    token: String,
    expires_at: u64,
}

async fn create_link(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
    parts_host: HostHeader,
    ApiJson(body): ApiJson<CreateLink>,
) -> Result<Response, Problem> {
    room_in_path(&admin, &room)?;
    let view = state.rooms.get(&room).ok_or_else(|| no_room(&room))?;
    if let Some(i) = &body.identity {
        check_body_name("identity", i)?;
    }
    if let Some(n) = &body.name {
        check_body_name("name", n)?;
    }
    let ttl = body.ttl_s.unwrap_or(DEFAULT_LINK_TTL_S);
    if !(1..=MAX_LINK_TTL_S).contains(&ttl) {
        return Err(Problem::unprocessable(format!(
            "ttl_s must be 1 to {MAX_LINK_TTL_S}"
        )));
    }
    let base = match &state.api.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => match parts_host.0 {
            Some(h) => format!("http://{h}"),
            None => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad_host",
                    "the Host header is missing or invalid and no public URL is configured",
                ));
            }
        },
    };
    let role = body.role.unwrap_or(view.settings.default_role);
    // Signed with the key that signed the admin's token: revoking that key
    // revokes the links it made.
    let kid = admin.0.iss.clone();
    let secret = state.keys.secret(&kid).ok_or_else(|| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "token_unknown_key",
            "API key was removed",
        )
    })?;
    // Without an identity the link is for anyone who gets it: shared, so
    // its users do not replace each other.
    let mut grant = crate::links::link_grant(&kid, &room, role, body.identity.as_deref(), ttl);
    grant.name = body.name;
    let token = grant
        .mint(&kid, secret)
        .map_err(|e| Problem::unprocessable(e.to_string()))?;
    let url = crate::links::join_url(&base, &room, &token);
    info!(room = %room, ?role, ttl_s = ttl, "join link created");
    let out = LinkOut {
        url,
        token,
        expires_at: grant.exp,
    };
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// The request's `Host`, if it looks like a host[:port] (it goes into a URL
/// handed to others, so nothing else passes).
pub struct HostHeader(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for HostHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            })
            .map(str::to_owned);
        Ok(HostHeader(host))
    }
}
