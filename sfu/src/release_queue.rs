//! Video handed to a subscriber's connection no faster than its link
//! carries.
//!
//! str0m paces what we write at 1.1 times the subscriber's estimate, but
//! lets 40 ms of it out at once when its pacer has been idle. On a thin link
//! that idles between frames, the first 40 ms of a keyframe arrive at the
//! bottleneck together: behind 1 Mbit/s four 1.2 kB packets in the same
//! millisecond, a 37 ms queue, and the audio behind it waited 33 ms (load
//! tester, meeting-50 behind 1 Mbit/s, one subscriber's datagrams). str0m's
//! delay-based estimator reads that step as overuse and cuts to 0.85 times
//! the acknowledged rate, which on a link carrying little more than audio
//! (video paused) is a fraction of what the link holds: of 313 overuse
//! detections in 30 s, 137 came with under 200 kbit/s acknowledged, and
//! each cut paused the video just resumed. A queue per subscriber in front
//! of str0m releases video at the rate its budget allows, a packet at a
//! time, so a keyframe reaches the link as evenly as the frames after it.
//! Packets wait here only while what went before has not had its time on
//! the link; the rest pass straight through.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A packet may go while what went before clears the link within this
/// long: a couple of small packets together, never a burst.
pub const SLACK: Duration = Duration::from_millis(5);

/// Lowest release rate: below it a keyframe would take seconds and the
/// send backlog would shed it instead.
pub const MIN_RATE_BPS: u64 = 100_000;

/// Most packets one subscriber's queue holds; more is dropped (the send
/// backlog sheds frames long before, so this only bounds memory).
pub const MAX_HELD: usize = 1024;

/// Bytes per packet besides its payload on the link (RTP header with
/// extensions, SRTP tag, UDP, IP), to count what the link carries.
pub const PACKET_OVERHEAD: u64 = 60;

/// One subscriber's video waiting for the link. `K` names the stream a
/// packet belongs to (checked again when it is released: the stream may be
/// gone by then).
#[derive(Debug)]
pub struct ReleaseQueue<K, P> {
    held: VecDeque<Held<K, P>>,
    /// When what was released so far has cleared the link at `rate_bps`.
    free_at: Option<Instant>,
    /// None: no pacing (no estimate yet, or the Allocator is off).
    rate_bps: Option<u64>,
}

#[derive(Debug)]
struct Held<K, P> {
    stream: K,
    bytes: u64,
    since: Instant,
    packet: P,
}

impl<K, P> Default for ReleaseQueue<K, P> {
    fn default() -> Self {
        ReleaseQueue {
            held: VecDeque::new(),
            free_at: None,
            rate_bps: None,
        }
    }
}

impl<K: Copy + PartialEq, P> ReleaseQueue<K, P> {
    /// The rate to release at (the subscriber's video budget), or None to
    /// let everything through.
    pub fn set_rate(&mut self, bps: Option<u64>) {
        self.rate_bps = bps.map(|b| b.max(MIN_RATE_BPS));
    }

    /// A packet with `payload` bytes arrives at `now`: Some(packet) to write
    /// at once, None if it was queued (or dropped: the queue is full).
    pub fn offer(&mut self, now: Instant, stream: K, payload: usize, packet: P) -> Option<P> {
        let bytes = payload as u64 + PACKET_OVERHEAD;
        let Some(rate) = self.rate_bps else {
            return Some(packet);
        };
        if self.held.is_empty() && self.due(now) {
            self.account(now, rate, bytes);
            return Some(packet);
        }
        if self.held.len() < MAX_HELD {
            self.held.push_back(Held {
                stream,
                bytes,
                since: now,
                packet,
            });
        }
        None
    }

    /// The next queued packet whose time has come, with its stream.
    pub fn release(&mut self, now: Instant) -> Option<(K, P)> {
        if !self.due(now) {
            return None;
        }
        let h = self.held.pop_front()?;
        // Without a rate (pacing turned off) the queue simply empties.
        if let Some(rate) = self.rate_bps {
            self.account(now, rate, h.bytes);
        }
        Some((h.stream, h.packet))
    }

    /// When [`ReleaseQueue::release`] next has something; None while empty.
    pub fn next_release(&self) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        match (self.rate_bps, self.free_at) {
            (Some(_), Some(f)) => Some(f.checked_sub(SLACK).unwrap_or(f)),
            // Pacing was turned off: all of it is due.
            _ => self.held.front().map(|h| h.since),
        }
    }

    /// Bytes held for `stream`, and since when the oldest of them waits.
    pub fn held_for(&self, stream: K) -> (u64, Option<Instant>) {
        let mut bytes = 0;
        let mut oldest = None;
        for h in self.held.iter().filter(|h| h.stream == stream) {
            bytes += h.bytes;
            oldest = oldest.or(Some(h.since));
        }
        (bytes, oldest)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn due(&self, now: Instant) -> bool {
        self.rate_bps.is_none() || self.free_at.is_none_or(|f| f <= now + SLACK)
    }

    fn account(&mut self, now: Instant, rate: u64, bytes: u64) {
        let start = self.free_at.map_or(now, |f| f.max(now));
        let on_link = Duration::from_micros(bytes.saturating_mul(8_000_000) / rate);
        self.free_at = Some(start + on_link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A queue releasing at `bps`, and the time it starts at.
    fn paced(bps: u64) -> (Instant, ReleaseQueue<u8, u32>) {
        let mut q = ReleaseQueue::default();
        q.set_rate(Some(bps));
        (Instant::now(), q)
    }

    #[test]
    fn without_a_rate_everything_passes() {
        let now = Instant::now();
        let mut q: ReleaseQueue<u8, u32> = ReleaseQueue::default();
        for i in 0..100 {
            assert_eq!(q.offer(now, 1, 1200, i), Some(i));
        }
        assert!(q.is_empty());
        assert_eq!(q.next_release(), None);
    }

    #[test]
    fn a_keyframe_leaves_at_the_rate_not_at_once() {
        let (t0, mut q) = paced(480_000);
        // Nine 1140-byte packets (1200 on the link: 20 ms each at 480 kbit/s)
        // arrive together.
        let passed: Vec<u32> = (0..9).filter_map(|i| q.offer(t0, 1, 1140, i)).collect();
        assert_eq!(passed, vec![0], "only the first goes at once");
        assert_eq!(q.len(), 8);
        // Released one by one, each when the one before has cleared the link.
        let mut sent = vec![(0u32, Duration::ZERO)];
        let mut now = t0;
        for _ in 0..1000 {
            let Some(at) = q.next_release() else { break };
            now = now.max(at);
            while let Some((s, p)) = q.release(now) {
                assert_eq!(s, 1);
                sent.push((p, now - t0));
            }
        }
        let order: Vec<u32> = sent.iter().map(|s| s.0).collect();
        assert_eq!(order, (0..9).collect::<Vec<_>>(), "in order");
        // Each leaves when the one before is through but SLACK.
        for w in sent.windows(2) {
            let gap = w[1].1 - w[0].1;
            assert!(gap >= 14 * MS && gap <= 21 * MS, "gap {gap:?}");
        }
        let last = sent[8].1;
        assert!(last >= 155 * MS && last <= 161 * MS, "last at {last:?}");
        assert!(q.is_empty());
    }

    #[test]
    fn packets_within_the_rate_pass_straight_through() {
        let (t0, mut q) = paced(1_000_000);
        // A 150 kbit/s layer: a 1250-byte frame every 66 ms.
        for i in 0..30u32 {
            let now = t0 + 66 * MS * i;
            assert_eq!(q.offer(now, 1, 1250, i), Some(i));
        }
        assert!(q.is_empty());
    }

    #[test]
    fn while_anything_waits_later_packets_queue_behind_it_whatever_their_stream() {
        let (t0, mut q) = paced(200_000);
        assert_eq!(q.offer(t0, 1, 1140, 0), Some(0));
        assert_eq!(q.offer(t0, 1, 1140, 1), None);
        // Much later than its own turn would be, but 1 still waits: first
        // it goes, then 2.
        let later = t0 + 200 * MS;
        assert_eq!(q.offer(later, 2, 100, 2), None);
        assert_eq!(q.release(later), Some((1, 1)));
        assert_eq!(q.release(later), None, "1 takes 48 ms of the link");
        assert_eq!(q.release(later + 44 * MS), Some((2, 2)));
    }

    #[test]
    fn held_bytes_are_counted_per_stream() {
        let (t0, mut q) = paced(100_000);
        q.offer(t0, 1, 940, 0);
        q.offer(t0, 1, 940, 1);
        q.offer(t0 + MS, 2, 440, 2);
        q.offer(t0 + 2 * MS, 1, 940, 3);
        assert_eq!(q.held_for(1), (2000, Some(t0)));
        assert_eq!(q.held_for(2), (500, Some(t0 + MS)));
        assert_eq!(q.held_for(3), (0, None));
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn turning_pacing_off_empties_the_queue_at_once() {
        let (t0, mut q) = paced(100_000);
        for i in 0..5 {
            q.offer(t0, 1, 1140, i);
        }
        q.set_rate(None);
        let rest: Vec<u32> = std::iter::from_fn(|| q.release(t0).map(|r| r.1)).collect();
        assert_eq!(rest, vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_queue_is_bounded() {
        let (t0, mut q) = paced(100_000);
        for i in 0..(MAX_HELD as u32 + 10) {
            q.offer(t0, 1, 1140, i);
        }
        assert_eq!(q.len(), MAX_HELD);
    }
}
