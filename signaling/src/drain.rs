//! Graceful drain: stop taking new rooms, tell everyone in a room, and end
//! when the rooms are empty or the deadline passes.
//!
//! The phases move one way: `Serving` → `Draining` → `Closing`. Sessions
//! follow them through [`Drain::subscribe`]: on `Draining` each sends its
//! client `server_draining`; on `Closing` each ends with `shutting_down`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::rooms::RoomDirectory;

/// After the deadline, how long closed sessions get to leave their rooms.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// No new rooms; sessions still open at `deadline` are closed.
    Draining {
        deadline: Instant,
    },
    /// The deadline passed: every session ends now.
    Closing,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every room emptied before the deadline.
    Empty,
    /// The deadline passed; sessions were closed. `rooms_left` rooms were
    /// still open after the grace given to close them (0 normally).
    DeadlinePassed { rooms_left: usize },
}

#[derive(Debug)]
pub struct Drain {
    phase: watch::Sender<Phase>,
    timeout: Duration,
    rooms: Arc<RoomDirectory>,
}

impl Drain {
    pub fn new(timeout: Duration, rooms: Arc<RoomDirectory>) -> Drain {
        // Shows the gauge (at 0) before any drain; an increment, not a set,
        // so a second server in one process does not reset another's.
        metrics::gauge!("stamma_draining").increment(0.0);
        Drain {
            phase: watch::Sender::new(Phase::Serving),
            timeout,
            rooms,
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn is_draining(&self) -> bool {
        self.phase() != Phase::Serving
    }

    /// Follows the phase (for sessions).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Drain and return when done. Calling it again (or concurrently) waits
    /// for the same drain with the same deadline.
    pub async fn run(&self) -> DrainOutcome {
        // Refuse first, so a session that sees the new phase is refused too.
        if self.phase() == Phase::Serving {
            self.rooms.refuse_new_rooms();
        }
        let mut started = false;
        self.phase.send_if_modified(|p| {
            if *p == Phase::Serving {
                *p = Phase::Draining {
                    deadline: Instant::now() + self.timeout,
                };
                started = true;
            }
            started
        });
        if started {
            metrics::gauge!("stamma_draining").set(1.0);
            info!(
                rooms = self.rooms.occupied_count(),
                timeout_s = self.timeout.as_secs(),
                "draining: no new rooms; waiting for the open ones to empty"
            );
        }
        let mut count = self.rooms.watch_occupied();
        if let Phase::Draining { deadline } = self.phase() {
            let emptied = tokio::time::timeout_at(deadline, count.wait_for(|n| *n == 0)).await;
            if matches!(emptied, Ok(Ok(_))) {
                info!("drained: every room is empty");
                return DrainOutcome::Empty;
            }
            self.phase.send_replace(Phase::Closing);
            warn!(
                rooms = self.rooms.occupied_count(),
                "drain deadline passed; closing the remaining sessions"
            );
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, count.wait_for(|n| *n == 0)).await;
        DrainOutcome::DeadlinePassed {
            rooms_left: self.rooms.occupied_count(),
        }
    }
}
