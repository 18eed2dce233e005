//! The Stämma media plane: a selective forwarding unit on str0m.
//!
//! The core ([`Worker`], [`room`], [`participant`], [`track`], [`subscription`],
//! [`forwarder`], [`allocator`], [`speaker`], [`silence_gate`], [`load_shedder`]) is sans-IO: it takes datagrams, commands and the current time
//! and returns datagrams to send and signals for participants. The UDP socket,
//! the thread and the clock live in [`driver`].

pub mod admin;
pub mod allocator;
pub mod command;
pub mod config;
pub mod demux;
pub mod driver;
pub mod event;
pub mod forwarder;
pub mod ice_tcp;
pub mod load_shedder;
pub mod parked_stream;
pub mod participant;
pub mod release_queue;
pub mod room;
pub mod send_backlog;
pub mod silence_gate;
pub mod speaker;
pub mod subscription;
#[cfg(feature = "test-tap")]
pub mod tap;
pub mod track;
pub mod worker;

pub use admin::{AdminCommand, AdminError, ParticipantSnapshot, RoomOptions};
pub use command::{Command, JoinRequest, ToParticipant};
pub use config::SfuConfig;
pub use driver::{MediaPlane, WorkerHandle};
pub use event::{EventSink, MediaEvent};
pub use worker::Worker;

/// Errors starting the media plane.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("could not bind media UDP port {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("could not generate the DTLS certificate")]
    Certificate,
    #[error("invalid media configuration: {0}")]
    Config(String),
}
