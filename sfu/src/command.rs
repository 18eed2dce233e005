//! What signaling tells a worker, and what a worker tells a participant's session.

use stamma_proto::{ClientSignal, ErrorCode, Role, ServerSignal};
use tokio::sync::mpsc;

/// Capacity of a participant's outgoing signal queue. A session that cannot
/// keep up with this many queued signals is disconnected rather than buffered
/// without bound.
pub const SIGNAL_QUEUE: usize = 512;

/// A participant asking to enter a room on this worker.
#[derive(Debug)]
pub struct JoinRequest {
    /// Server-assigned id, unique on this node.
    pub participant_id: String,
    pub room: String,
    pub identity: String,
    pub name: Option<String>,
    pub role: Role,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// The token's admin grant: may moderate others (mute, remove, lower hands).
    pub can_admin: bool,
    /// Where the worker sends this participant's signals.
    pub signals: mpsc::Sender<ToParticipant>,
    /// The room's options (from the admin API; defaults for implicit rooms).
    pub room_options: crate::admin::RoomOptions,
}

#[derive(Debug)]
pub enum Command {
    Join(Box<JoinRequest>),
    /// A signal from the participant's WebSocket (offer, answer, mute, unpublish).
    Signal {
        participant_id: String,
        signal: ClientSignal,
    },
    /// The participant's session ended (leave, close or error).
    Leave {
        participant_id: String,
        reason: String,
    },
    Admin(crate::admin::AdminCommand),
}

/// Worker → session.
#[derive(Debug)]
pub enum ToParticipant {
    Signal(ServerSignal),
    /// Send this error, then close the connection.
    Close(ErrorCode, String),
}
