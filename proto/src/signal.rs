//! Signals: the JSON messages of the WebSocket protocol, version 1.
//!
//! Every message is an object with a `"type"` field. See `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::grant::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Microphone,
    Camera,
    ScreenShare,
    ScreenShareAudio,
    Unknown,
}

impl TrackSource {
    pub fn default_for(kind: MediaKind) -> TrackSource {
        match kind {
            MediaKind::Audio => TrackSource::Microphone,
            MediaKind::Video => TrackSource::Camera,
        }
    }
}

/// A client's description of one m-line it publishes, sent with its offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTrack {
    pub mid: String,
    pub kind: MediaKind,
    #[serde(default = "unknown_source")]
    pub source: TrackSource,
    /// Full resolution of a camera or screen track (its top simulcast layer),
    /// so the server can match subscribers' tile sizes to layers. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

fn unknown_source() -> TrackSource {
    TrackSource::Unknown
}

/// A published track as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    pub id: String,
    pub participant_id: String,
    pub kind: MediaKind,
    pub source: TrackSource,
    pub muted: bool,
    /// Which m-line of the publisher's own connection carries it.
    pub mid: String,
}

/// A STUN/TURN server for the client's peer connection, in the shape of the
/// WebRTC `RTCIceServer` dictionary. TURN credentials are time-limited
/// (the TURN REST API scheme: the username carries the expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Server-assigned, unique per connection.
    pub id: String,
    /// From the join token; unique within the room.
    pub identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    pub tracks: Vec<TrackInfo>,
}

/// The most a subscriber wants of a video track; the server picks the layer
/// that fits the subscriber's bandwidth, never above this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoQuality {
    Low,
    Medium,
    High,
}

/// One entry of `speakers_changed`: someone speaking now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speaker {
    pub participant_id: String,
    pub track_id: String,
    /// Smoothed loudness, 0.0 (silence) to 1.0 (full scale).
    pub level: f32,
}

/// Whether the publisher should send one simulcast layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerState {
    /// The layer's rid; absent for a track sent without simulcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    pub active: bool,
}

/// Why a subscribed track is not being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The subscriber's estimated downlink cannot carry it.
    Bandwidth,
}

/// Maps an m-line of a server offer to the track it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedTrack {
    pub mid: String,
    pub track_id: String,
    pub participant_id: String,
    pub kind: MediaKind,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientSignal {
    /// First message: the protocol version the client speaks.
    Join {
        v: u32,
    },
    /// Client offer: publishes the tracks described (one per sending m-line).
    Offer {
        sdp: String,
        #[serde(default)]
        tracks: Vec<PublishedTrack>,
    },
    /// Answer to the server offer with the same `id`.
    Answer {
        id: u64,
        sdp: String,
    },
    Mute {
        track_id: String,
        muted: bool,
    },
    Unpublish {
        track_id: String,
    },
    /// Settings of tracks this participant is subscribed to, without
    /// renegotiating. `enabled: false` pauses delivery (a grid tile scrolled
    /// out of view); `quality` or `width`/`height` (the tile's size in device
    /// pixels) cap the video layer; `pinned` puts the track first when
    /// bandwidth is short. Absent fields keep their current value.
    Subscription {
        track_ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enabled: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quality: Option<VideoQuality>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pinned: Option<bool>,
    },
    Leave,
    Ping {
        ts: u64,
    },
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerSignal {
    Joined {
        v: u32,
        room: String,
        participant: ParticipantInfo,
        /// Everyone else already in the room, with their tracks.
        participants: Vec<ParticipantInfo>,
        /// TURN (and STUN) servers to use; empty when none is configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// The room requires end-to-end encryption (a room option set through
        /// the admin API); clients must not send media in clear.
        #[serde(default)]
        e2ee_required: bool,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
        reason: String,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track_id: String,
        participant_id: String,
    },
    TrackMuted {
        track_id: String,
        participant_id: String,
        muted: bool,
    },
    /// Server offer: adds or removes the tracks this participant receives.
    Offer {
        id: u64,
        sdp: String,
        tracks: Vec<SubscribedTrack>,
    },
    /// The server stopped delivering a subscribed track (show an avatar, not
    /// a frozen frame) until `track_resumed`.
    TrackPaused {
        track_id: String,
        participant_id: String,
        reason: PauseReason,
    },
    TrackResumed {
        track_id: String,
        participant_id: String,
    },
    /// Who is speaking, the dominant speaker first. Empty when nobody is.
    SpeakersChanged {
        speakers: Vec<Speaker>,
    },
    /// To a publisher: send only the active layers of this track (nobody
    /// receives the others). Inactive layers may be resumed at any time.
    PublishLayers {
        track_id: String,
        /// The track's m-line on the publisher's connection: a publisher
        /// may not know the id yet (the answer to its first offer can come
        /// before the server sees the m-line's media).
        mid: String,
        layers: Vec<LayerState>,
    },
    /// Answer to the client's offer; `tracks` gives the id assigned to each published m-line.
    Answer {
        sdp: String,
        tracks: Vec<TrackInfo>,
    },
    Pong {
        ts: u64,
    },
    /// The server is shutting down: it takes no new rooms, and closes the
    /// sessions still open `deadline_ms` milliseconds after this was sent
    /// (with `shutting_down`). The room goes on until then; clients may
    /// rejoin elsewhere at a moment that suits them.
    ServerDraining {
        deadline_ms: u64,
    },
    /// An administrator changed a participant's role (sent to the room and
    /// to the participant). `can_publish` is what the participant may do
    /// now; a participant that lost it has had its tracks unpublished.
    RoleChanged {
        participant_id: String,
        role: Role,
        can_publish: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a valid message. Fatal.
    BadMessage,
    /// A `type` this protocol version does not have.
    UnknownType,
    /// `join.v` is not a supported version. Fatal.
    UnsupportedVersion,
    /// A message over the size limit. Fatal.
    MessageTooLarge,
    /// A message other than `join` before `join`.
    NotJoined,
    AlreadyJoined,
    /// The token does not allow publishing.
    PublishNotAllowed,
    /// The SDP could not be parsed or negotiated.
    BadSdp,
    /// The answer refers to an offer that is no longer current.
    StaleAnswer,
    UnknownTrack,
    /// Too many messages. Fatal when sustained.
    RateLimited,
    RoomFull,
    /// Another connection joined with the same identity. Fatal.
    DuplicateIdentity,
    /// Nothing arrived for too long. Fatal.
    Timeout,
    /// The server failed. Fatal.
    Internal,
    /// The server is draining: it takes no new rooms (rooms already open
    /// still take joins). Fatal; try again on another server.
    Draining,
    /// The server's drain deadline passed with the session still open. Fatal.
    ShuttingDown,
    /// An administrator removed this participant. Fatal.
    Removed,
    /// An administrator deleted the room. Fatal.
    RoomClosed,
    /// The server holds as many rooms as it is configured for (`limits.max_rooms`)
    /// and this room is not one of them. Fatal; try another server.
    TooManyRooms,
}

impl ErrorCode {
    /// The code as it appears on the wire (snake_case), e.g. for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::PublishNotAllowed => "publish_not_allowed",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::StaleAnswer => "stale_answer",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::DuplicateIdentity => "duplicate_identity",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Draining => "draining",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Removed => "removed",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::TooManyRooms => "too_many_rooms",
        }
    }
}

impl ClientSignal {
    /// Parse a client message, telling apart broken JSON, unknown types and bad fields.
    pub fn parse(text: &str) -> Result<ClientSignal, (ErrorCode, String)> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| (ErrorCode::BadMessage, format!("not valid JSON: {e}")))?;
        let Some(kind) = value
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
        else {
            return Err((
                ErrorCode::BadMessage,
                "message must be an object with a string \"type\"".into(),
            ));
        };
        const KNOWN: [&str; 8] = [
            "join",
            "offer",
            "answer",
            "mute",
            "unpublish",
            "subscription",
            "leave",
            "ping",
        ];
        if !KNOWN.contains(&kind.as_str()) {
            let mut shown: String = kind.chars().take(40).collect();
            if shown.len() < kind.len() {
                shown.push('…');
            }
            return Err((
                ErrorCode::UnknownType,
                format!("unknown message type {shown:?}"),
            ));
        }
        serde_json::from_value(value).map_err(|e| {
            (
                ErrorCode::BadMessage,
                format!("invalid {kind} message: {e}"),
            )
        })
    }
}

impl ServerSignal {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerSignal {
        ServerSignal::Error {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail; fall back to a fixed error anyway.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_distinguishes_bad_json_unknown_type_and_bad_fields() {
        assert_eq!(
            ClientSignal::parse("{").unwrap_err().0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            ClientSignal::parse(r#"{"type":"dance"}"#).unwrap_err().0,
            ErrorCode::UnknownType
        );
        assert_eq!(
            ClientSignal::parse(r#"{"type":"join"}"#).unwrap_err().0,
            ErrorCode::BadMessage
        );
        assert_eq!(
            ClientSignal::parse(r#"{"type":"join","v":1}"#).unwrap(),
            ClientSignal::Join { v: 1 }
        );
    }

    #[test]
    fn error_code_as_str_matches_the_wire_name() {
        for code in [
            ErrorCode::BadMessage,
            ErrorCode::UnknownType,
            ErrorCode::UnsupportedVersion,
            ErrorCode::MessageTooLarge,
            ErrorCode::NotJoined,
            ErrorCode::AlreadyJoined,
            ErrorCode::PublishNotAllowed,
            ErrorCode::BadSdp,
            ErrorCode::StaleAnswer,
            ErrorCode::UnknownTrack,
            ErrorCode::RateLimited,
            ErrorCode::RoomFull,
            ErrorCode::DuplicateIdentity,
            ErrorCode::Timeout,
            ErrorCode::Internal,
            ErrorCode::Draining,
            ErrorCode::ShuttingDown,
            ErrorCode::Removed,
            ErrorCode::RoomClosed,
            ErrorCode::TooManyRooms,
        ] {
            let wire = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn server_draining_serializes_with_its_deadline() {
        let s = ServerSignal::ServerDraining { deadline_ms: 1500 }.to_json();
        assert_eq!(s, r#"{"type":"server_draining","deadline_ms":1500}"#);
    }

    #[test]
    fn server_error_serializes_with_type_code_message() {
        let s = ServerSignal::error(ErrorCode::BadSdp, "nope").to_json();
        assert_eq!(s, r#"{"type":"error","code":"bad_sdp","message":"nope"}"#);
    }
}
