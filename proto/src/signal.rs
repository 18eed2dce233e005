//! Signals: the JSON messages of the WebSocket protocol, version 1.
//!
//! Every message is an object with a `"type"` field. See `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::grant::Role;

/// Longest display name a participant may give in `join`, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Longest chat message, in characters (after trimming).
pub const MAX_CHAT_CHARS: usize = 2000;

/// Largest `e2ee` payload relayed, in bytes: a public key with its proof or
/// a sealed secret is a few hundred bytes; this leaves room for a list.
pub const MAX_E2EE_PAYLOAD_BYTES: usize = 16 * 1024;

/// Whether an `e2ee` payload may be relayed: not empty, not over the limit.
pub fn e2ee_payload(payload: &str) -> Result<(), String> {
    if payload.is_empty() {
        return Err("e2ee payload is empty".into());
    }
    if payload.len() > MAX_E2EE_PAYLOAD_BYTES {
        return Err(format!(
            "e2ee payload is longer than {MAX_E2EE_PAYLOAD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// For `skip_serializing_if`: leave a false flag off the wire, so messages
/// stay as they were before the flag existed.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// The display name a participant gave in `join`: trimmed; `Ok(None)` when
/// nothing is left (the token's name stays). Refused when too long or when it
/// contains control characters (it is shown to everyone in the room).
pub fn display_name(raw: &str) -> Result<Option<String>, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(format!(
            "name is longer than {MAX_DISPLAY_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name contains control characters".into());
    }
    Ok(Some(name.to_owned()))
}

/// A chat message's text as it is delivered: trimmed, 1 to
/// [`MAX_CHAT_CHARS`] characters. Otherwise opaque (it may be ciphertext).
pub fn chat_text(raw: &str) -> Result<&str, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("chat text is empty".into());
    }
    if text.chars().count() > MAX_CHAT_CHARS {
        return Err(format!(
            "chat text is longer than {MAX_CHAT_CHARS} characters"
        ));
    }
    Ok(text)
}

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
    /// The participant has raised a hand (absent: lowered).
    #[serde(default, skip_serializing_if = "is_false")]
    pub hand_raised: bool,
    /// Order of joining in the room's life (1: the first to join). Unique
    /// within a room while it exists; E2EE clients derive key ids from it
    /// and let the lowest hand out keys.
    #[serde(default)]
    pub join_seq: u64,
}

/// What a host does to another participant with `moderate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModerateAction {
    /// Mute one track, or all of the participant's tracks. Only the
    /// participant itself can unmute (a host cannot turn a microphone on).
    Mute,
    /// Close the participant's session with `removed`.
    Remove,
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
    /// The server is short of CPU and pauses some video rather than delay
    /// everyone's media; it resumes as the load falls.
    ServerLoad,
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
    /// First message: the protocol version the client speaks and,
    /// optionally, the display name typed on the pre-join page (it replaces
    /// the token's `name`).
    Join {
        v: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
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
    /// A chat message to everyone in the room (opaque text: E2EE clients
    /// put ciphertext here).
    Chat {
        text: String,
    },
    /// Raise or lower your own hand; with another participant's id, a host
    /// lowers that participant's hand.
    Hand {
        raised: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        participant_id: Option<String>,
    },
    /// End-to-end encryption key exchange, relayed unread: to one
    /// participant (`to`), or to everyone else in the room. `payload` is
    /// opaque to the server (public keys, sealed secrets; docs/e2ee.md).
    E2ee {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        payload: String,
    },
    /// A host mutes (one track, or all tracks) or removes a participant.
    Moderate {
        action: ModerateAction,
        participant_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        track_id: Option<String>,
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
        /// A token for rejoining as the same identity after a lost
        /// connection (not shared, same room, role, grants and expiry).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconnect_token: Option<String>,
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
    /// A chat message, to everyone in the room including its sender (the
    /// echo confirms delivery). `ts_ms`: the server's clock, Unix ms.
    Chat {
        participant_id: String,
        text: String,
        ts_ms: u64,
    },
    /// An `e2ee` message from another participant, as it sent it.
    E2ee {
        from: String,
        payload: String,
    },
    /// A hand was raised or lowered (sent to everyone, the participant too).
    HandRaised {
        participant_id: String,
        raised: bool,
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
    /// The token lacks the grant this needs (`moderate` without admin).
    NotAllowed,
    /// No participant with that id in your room.
    UnknownParticipant,
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
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::UnknownParticipant => "unknown_participant",
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
        const KNOWN: [&str; 12] = [
            "join",
            "offer",
            "answer",
            "mute",
            "unpublish",
            "subscription",
            "chat",
            "hand",
            "moderate",
            "e2ee",
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
            ClientSignal::Join { v: 1, name: None }
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
            ErrorCode::NotAllowed,
            ErrorCode::UnknownParticipant,
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

    /// Each exact JSON parses to `signal` and `signal` serializes back to it.
    fn client_round_trip(json: &str, signal: ClientSignal) {
        assert_eq!(ClientSignal::parse(json), Ok(signal.clone()), "{json}");
        assert_eq!(serde_json::to_string(&signal).unwrap_or_default(), json);
    }

    fn server_round_trip(json: &str, signal: ServerSignal) {
        assert_eq!(signal.to_json(), json);
        let back: ServerSignal = serde_json::from_str(json).unwrap();
        assert_eq!(back, signal);
    }

    #[test]
    fn room_feature_client_signals_have_their_documented_shapes() {
        client_round_trip(
            r#"{"type":"join","v":1,"name":"Anna"}"#,
            ClientSignal::Join {
                v: 1,
                name: Some("Anna".into()),
            },
        );
        client_round_trip(
            r#"{"type":"chat","text":"hej"}"#,
            ClientSignal::Chat { text: "hej".into() },
        );
        client_round_trip(
            r#"{"type":"e2ee","payload":"pk:abc"}"#,
            ClientSignal::E2ee {
                to: None,
                payload: "pk:abc".into(),
            },
        );
        client_round_trip(
            r#"{"type":"e2ee","to":"PA_b","payload":"sealed"}"#,
            ClientSignal::E2ee {
                to: Some("PA_b".into()),
                payload: "sealed".into(),
            },
        );
        client_round_trip(
            r#"{"type":"hand","raised":true}"#,
            ClientSignal::Hand {
                raised: true,
                participant_id: None,
            },
        );
        client_round_trip(
            r#"{"type":"hand","raised":false,"participant_id":"PA_x"}"#,
            ClientSignal::Hand {
                raised: false,
                participant_id: Some("PA_x".into()),
            },
        );
        client_round_trip(
            r#"{"type":"moderate","action":"mute","participant_id":"PA_x","track_id":"TR_y"}"#,
            ClientSignal::Moderate {
                action: ModerateAction::Mute,
                participant_id: "PA_x".into(),
                track_id: Some("TR_y".into()),
            },
        );
        client_round_trip(
            r#"{"type":"moderate","action":"remove","participant_id":"PA_x"}"#,
            ClientSignal::Moderate {
                action: ModerateAction::Remove,
                participant_id: "PA_x".into(),
                track_id: None,
            },
        );
    }

    #[test]
    fn room_feature_client_signals_refuse_unknown_fields_and_actions() {
        for bad in [
            r#"{"type":"chat","text":"hej","to":"PA_x"}"#,
            r#"{"type":"chat"}"#,
            r#"{"type":"hand"}"#,
            r#"{"type":"moderate","action":"ban","participant_id":"PA_x"}"#,
            r#"{"type":"moderate","action":"mute"}"#,
            r#"{"type":"join","v":1,"name":7}"#,
        ] {
            assert_eq!(
                ClientSignal::parse(bad).map_err(|e| e.0),
                Err(ErrorCode::BadMessage),
                "{bad}"
            );
        }
    }

    #[test]
    fn room_feature_server_signals_have_their_documented_shapes() {
        server_round_trip(
            r#"{"type":"e2ee","from":"PA_a","payload":"sealed"}"#,
            ServerSignal::E2ee {
                from: "PA_a".into(),
                payload: "sealed".into(),
            },
        );
        server_round_trip(
            r#"{"type":"chat","participant_id":"PA_a","text":"hej","ts_ms":1732300000123}"#,
            ServerSignal::Chat {
                participant_id: "PA_a".into(),
                text: "hej".into(),
                ts_ms: 1_732_300_000_123,
            },
        );
        server_round_trip(
            r#"{"type":"hand_raised","participant_id":"PA_a","raised":true}"#,
            ServerSignal::HandRaised {
                participant_id: "PA_a".into(),
                raised: true,
            },
        );
        server_round_trip(
            r#"{"type":"error","code":"not_allowed","message":"hosts only"}"#,
            ServerSignal::error(ErrorCode::NotAllowed, "hosts only"),
        );
    }

    #[test]
    fn hand_raised_and_reconnect_token_appear_only_when_set() {
        let mut p = ParticipantInfo {
            id: "PA_a".into(),
            identity: "anna".into(),
            name: None,
            role: Role::Attendee,
            tracks: vec![],
            hand_raised: false,
            join_seq: 3,
        };
        let joined = |p: &ParticipantInfo, reconnect_token: Option<String>| ServerSignal::Joined {
            v: 1,
            room: "r".into(),
            participant: p.clone(),
            participants: vec![],
            ice_servers: vec![],
            e2ee_required: false,
            reconnect_token,
        };
        server_round_trip(
            r#"{"type":"joined","v":1,"room":"r","participant":{"id":"PA_a","identity":"anna","role":"attendee","tracks":[],"join_seq":3},"participants":[],"e2ee_required":false}"#,
            joined(&p, None),
        );
        p.hand_raised = true;
        server_round_trip(
            r#"{"type":"joined","v":1,"room":"r","participant":{"id":"PA_a","identity":"anna","role":"attendee","tracks":[],"hand_raised":true,"join_seq":3},"participants":[],"e2ee_required":false,"reconnect_token":"t.o.k"}"#,
            joined(&p, Some("t.o.k".into())),
        );
    }

    #[test]
    fn display_names_are_trimmed_bounded_and_printable() {
        assert_eq!(display_name("  Anna  "), Ok(Some("Anna".into())));
        assert_eq!(display_name(" \t "), Ok(None));
        // 64 characters of two bytes each: counted in characters.
        assert_eq!(display_name(&"ö".repeat(64)), Ok(Some("ö".repeat(64))));
        assert!(display_name(&"ö".repeat(65)).is_err());
        assert!(display_name("An\u{7}na").is_err());
        assert!(display_name("An\nna").is_err());
    }

    #[test]
    fn chat_text_is_trimmed_and_bounded() {
        assert_eq!(chat_text(" hej\n"), Ok("hej"));
        assert!(chat_text("   ").is_err());
        assert_eq!(chat_text(&"å".repeat(2000)).map(str::len), Ok(4000));
        assert!(chat_text(&"å".repeat(2001)).is_err());
        // Lines inside a message are the sender's business.
        assert_eq!(chat_text("a\nb"), Ok("a\nb"));
    }
}
