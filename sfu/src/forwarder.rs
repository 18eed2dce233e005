//! Rewrites one track's packets for one subscriber.
//!
//! Outgoing sequence numbers start at 1 for every subscriber (so the SRTP
//! rollover counter starts at 0 without signaling it) and stay continuous when
//! the forwarder skips packets before a keyframe or, later, switches layers.

/// What the forwarder decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Send with this extended sequence number and RTP timestamp.
    Send { seq: u64, timestamp: u32 },
    /// Drop: waiting for a keyframe; the caller should make sure one was requested.
    NeedKeyframe,
    /// Drop: older than the point where forwarding started.
    Stale,
}

#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Video must start on a keyframe; audio starts anywhere.
    gate_on_keyframe: bool,
    started: bool,
    /// outgoing = incoming - seq_offset
    seq_offset: u64,
    /// Highest outgoing sequence number sent.
    last_seq: u64,
}

impl Forwarder {
    pub fn new(gate_on_keyframe: bool) -> Forwarder {
        Forwarder {
            gate_on_keyframe,
            started: false,
            seq_offset: 0,
            last_seq: 0,
        }
    }

    /// Start over at the next keyframe (e.g. after the source changed), keeping
    /// outgoing sequence numbers continuous.
    pub fn restart(&mut self) {
        self.started = false;
    }

    /// `seq` is the publisher's extended sequence number.
    pub fn forward(&mut self, seq: u64, timestamp: u32, starts_keyframe: bool) -> Forward {
        if !self.started {
            if self.gate_on_keyframe && !starts_keyframe {
                return Forward::NeedKeyframe;
            }
            self.started = true;
            self.seq_offset = seq.wrapping_sub(self.last_seq + 1);
        }
        if seq <= self.seq_offset {
            return Forward::Stale;
        }
        let out = seq - self.seq_offset;
        if out > self.last_seq {
            self.last_seq = out;
        }
        Forward::Send {
            seq: out,
            timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_of(f: Forward) -> u64 {
        match f {
            Forward::Send { seq, .. } => seq,
            other => panic!("expected send, got {other:?}"),
        }
    }

    #[test]
    fn video_waits_for_keyframe_then_numbers_from_one() {
        let mut f = Forwarder::new(true);
        assert_eq!(f.forward(70_000, 1, false), Forward::NeedKeyframe);
        assert_eq!(seq_of(f.forward(70_001, 2, true)), 1);
        assert_eq!(seq_of(f.forward(70_002, 2, false)), 2);
        // Reordered packet from before the start is stale, later gaps are kept.
        assert_eq!(f.forward(70_000, 1, false), Forward::Stale);
        assert_eq!(seq_of(f.forward(70_005, 3, false)), 5);
    }

    #[test]
    fn restart_keeps_sequence_continuous() {
        let mut f = Forwarder::new(true);
        assert_eq!(seq_of(f.forward(10, 0, true)), 1);
        assert_eq!(seq_of(f.forward(11, 0, false)), 2);
        f.restart();
        assert_eq!(f.forward(500, 0, false), Forward::NeedKeyframe);
        assert_eq!(seq_of(f.forward(501, 0, true)), 3);
    }

    #[test]
    fn audio_starts_immediately() {
        let mut f = Forwarder::new(false);
        assert_eq!(seq_of(f.forward(1_000_000, 960, false)), 1);
    }
}
