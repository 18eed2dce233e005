//! Video waiting in a subscriber's send queue, and when to shed frames
//! instead of queueing more.
//!
//! str0m paces what we write at the subscriber's bandwidth estimate and
//! never drops a written packet. When the estimate falls below what is
//! being forwarded (congestion, or a down-switch still waiting for the
//! lower layer's keyframe), the queue, not the network, decides the latency:
//! on a simulated 2.5 → 0.3 Mbit/s drop, 27 kB of the old layer sat queued
//! and the lower layer's keyframe waited behind it for a second. So at each
//! frame start the worker asks whether the stream's queue is over the
//! limit; if so it sheds whole frames until the queue has drained, then
//! restarts the stream on a keyframe (the receiver sees a pause, never a
//! broken frame or a gap in sequence numbers).

use std::time::{Duration, Instant};

/// The queueing a video stream may add before frames are shed: beyond
/// this, a fresh frame is worth more than an old one. 300 ms gave a
/// 20-participant load test behind 1 Mbit/s links a p99 latency of 69–83 ms,
/// 150 ms 50 ms (without shedding: 243–388 ms).
pub const LIMIT: Duration = Duration::from_millis(150);

/// For this long after a keyframe, the queue may also hold that keyframe:
/// the burst it causes is inherent, and shedding the frames after it would
/// only ask for another keyframe (a loop on a thin link).
pub const KEYFRAME_ALLOWANCE_FOR: Duration = Duration::from_secs(2);

/// What str0m's pacer last reported for one outgoing stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendBacklog {
    pub queued_bytes: u64,
    /// How long the oldest unsent packet has waited.
    pub oldest_wait: Duration,
}

impl SendBacklog {
    /// Whether to shed from the next frame on: the queue takes longer than
    /// [`LIMIT`] (plus a recent keyframe's own drain time) to drain at the
    /// estimate, or its oldest packet has already waited that long (which
    /// also catches a subscriber whose estimate is shared by many streams).
    /// Packets older than a recent keyframe were judged when it was let in,
    /// so their age counts only from the keyframe.
    pub fn over_limit(&self, estimate_bps: u64, recent_keyframe: Option<RecentKeyframe>) -> bool {
        let (bytes, wait) = match recent_keyframe {
            Some(k) => (k.bytes, self.oldest_wait.min(k.age)),
            None => (0, self.oldest_wait),
        };
        let allowance = LIMIT.saturating_add(drain_time(bytes, estimate_bps));
        drain_time(self.queued_bytes, estimate_bps) > allowance || wait > allowance
    }

    /// Whether a shed stream may restart (on a keyframe): what is left
    /// drains within [`LIMIT`]. The age of the oldest packet is not asked:
    /// it stays high until the very last old packet leaves.
    pub fn may_restart(&self, estimate_bps: u64) -> bool {
        drain_time(self.queued_bytes, estimate_bps) <= LIMIT
    }
}

fn drain_time(bytes: u64, estimate_bps: u64) -> Duration {
    if estimate_bps == 0 {
        return if bytes == 0 {
            Duration::ZERO
        } else {
            Duration::MAX
        };
    }
    Duration::from_micros(bytes.saturating_mul(8_000_000) / estimate_bps)
}

/// A keyframe forwarded less than [`KEYFRAME_ALLOWANCE_FOR`] ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecentKeyframe {
    pub bytes: u64,
    pub age: Duration,
}

/// The latest keyframe of a layer: its size counts as allowed queue for
/// [`KEYFRAME_ALLOWANCE_FOR`] on every subscription forwarding that layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastKeyframe {
    at: Option<Instant>,
    bytes: u64,
    open: bool,
}

impl LastKeyframe {
    /// Account one received packet of the layer.
    pub fn packet(&mut self, now: Instant, starts_keyframe: bool, starts_frame: bool, len: usize) {
        if starts_keyframe {
            *self = LastKeyframe {
                at: Some(now),
                bytes: 0,
                open: true,
            };
        } else if starts_frame {
            self.open = false;
        }
        if self.open {
            self.bytes += len as u64;
        }
    }

    /// The keyframe, if it was forwarded recently.
    pub fn recent(&self, now: Instant) -> Option<RecentKeyframe> {
        let age = now.saturating_duration_since(self.at?);
        (age < KEYFRAME_ALLOWANCE_FOR).then_some(RecentKeyframe {
            bytes: self.bytes,
            age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Bytes that take `d` to send at `bps`.
    fn bytes_for(d: Duration, bps: u64) -> u64 {
        (d.as_micros() as u64) * bps / 8_000_000
    }

    fn backlog(queued_bytes: u64, wait: Duration) -> SendBacklog {
        SendBacklog {
            queued_bytes,
            oldest_wait: wait,
        }
    }

    fn keyframe(bytes: u64, age: Duration) -> Option<RecentKeyframe> {
        Some(RecentKeyframe { bytes, age })
    }

    #[test]
    fn a_queue_that_drains_within_the_limit_is_fine() {
        let bps = 300_000;
        let b = backlog(bytes_for(LIMIT - 10 * MS, bps), LIMIT / 2);
        assert!(!b.over_limit(bps, None));
        assert!(b.may_restart(bps));
    }

    #[test]
    fn an_estimate_collapse_sheds_at_once() {
        // The simulated 2.5 -> 0.3 Mbit/s drop: 9.5 kB queued, the oldest
        // packet 131 ms old, when the estimate fell from 906 to 246 kbit/s.
        let b = backlog(9_546, 131 * MS);
        assert!(!b.over_limit(906_000, None));
        assert!(b.over_limit(246_000, None));
        assert!(!b.may_restart(246_000));
        assert!(backlog(bytes_for(LIMIT, 246_000), 10 * LIMIT).may_restart(246_000));
    }

    #[test]
    fn old_packets_shed_even_when_the_bytes_look_small() {
        // One stream of many: its share of the estimate is small, so its
        // packets wait long though its bytes would drain fast at the total.
        assert!(backlog(3_000, LIMIT + 50 * MS).over_limit(2_000_000, None));
    }

    #[test]
    fn a_recent_keyframe_may_sit_in_the_queue() {
        // A 10 kB keyframe at 246 kbit/s takes 325 ms: the deltas after it
        // are not shed for it (that would ask for another keyframe).
        let bps = 246_000;
        let queued = 10_000 + bytes_for(LIMIT - 20 * MS, bps);
        let wait = LIMIT + 300 * MS;
        assert!(!backlog(queued, wait).over_limit(bps, keyframe(10_000, wait)));
        assert!(backlog(queued, wait).over_limit(bps, None));
        // Beyond the keyframe's own time, it is congestion again.
        let more = queued + bytes_for(100 * MS, bps);
        assert!(backlog(more, wait).over_limit(bps, keyframe(10_000, wait)));
    }

    #[test]
    fn packets_from_before_a_restart_count_their_wait_from_the_keyframe() {
        // The old backlog let the keyframe in 30 ms ago; the first packets
        // have waited 760 ms, but that was judged then.
        let b = backlog(8_700 + bytes_for(LIMIT / 2, 258_000), 760 * MS);
        assert!(!b.over_limit(258_000, keyframe(8_700, 30 * MS)));
        // Without the keyframe that age is congestion.
        assert!(b.over_limit(258_000, None));
    }

    #[test]
    fn no_estimate_means_any_queue_is_too_much() {
        assert!(backlog(1, Duration::ZERO).over_limit(0, None));
        assert!(!backlog(0, Duration::ZERO).over_limit(0, None));
        // A keyframe's allowance at a zero estimate is unbounded, not an overflow.
        assert!(!backlog(1, Duration::ZERO).over_limit(0, keyframe(1, MS)));
        assert!(!backlog(1, Duration::ZERO).may_restart(0));
    }

    #[test]
    fn the_last_keyframe_counts_its_packets_and_expires() {
        let t0 = Instant::now();
        let mut k = LastKeyframe::default();
        assert_eq!(k.recent(t0), None);
        k.packet(t0, true, true, 1000);
        k.packet(t0, false, false, 1000);
        k.packet(t0, false, false, 500);
        // The next frame is not part of it.
        k.packet(t0, false, true, 800);
        k.packet(t0, false, false, 800);
        assert_eq!(k.recent(t0 + 100 * MS), keyframe(2500, 100 * MS));
        assert_eq!(k.recent(t0 + KEYFRAME_ALLOWANCE_FOR), None);
        k.packet(t0 + 3 * KEYFRAME_ALLOWANCE_FOR, true, true, 700);
        assert_eq!(
            k.recent(t0 + 3 * KEYFRAME_ALLOWANCE_FOR),
            keyframe(700, Duration::ZERO)
        );
    }
}
