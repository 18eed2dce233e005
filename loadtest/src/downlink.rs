//! An emulated bottleneck in front of one subscriber: datagrams drain at a
//! fixed rate through a queue whose delay is bounded; what would wait longer
//! is dropped, as at a congested home router. The server's bandwidth
//! estimation sees the queueing delay and the loss through TWCC, as it would
//! on a real link.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub struct Downlink {
    bits_per_sec: u64,
    max_delay: Duration,
    busy_until: Option<Instant>,
    queue: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    pub dropped: u64,
}

impl Downlink {
    pub fn new(kbps: u32, max_delay: Duration) -> Downlink {
        Downlink {
            bits_per_sec: u64::from(kbps.max(1)) * 1000,
            max_delay,
            busy_until: None,
            queue: VecDeque::new(),
            dropped: 0,
        }
    }

    /// A datagram arrives at the bottleneck.
    pub fn push(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let start = self.busy_until.filter(|b| *b > now).unwrap_or(now);
        let leaves = start + self.transmission(data.len());
        if leaves.saturating_duration_since(now) > self.max_delay {
            self.dropped += 1;
            return;
        }
        self.busy_until = Some(leaves);
        self.queue.push_back((leaves, from, data.to_vec()));
    }

    /// How long `bytes` take to cross the link: a frame's latency can be no
    /// less, whatever the server does.
    pub fn transmission(&self, bytes: usize) -> Duration {
        Duration::from_micros(bytes as u64 * 8 * 1_000_000 / self.bits_per_sec)
    }

    /// The next datagram that has drained by `now`.
    pub fn pop(&mut self, now: Instant) -> Option<(Instant, SocketAddr, Vec<u8>)> {
        if self.queue.front()?.0 <= now {
            self.queue.pop_front()
        } else {
            None
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|q| q.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_at_the_rate_and_drops_past_the_delay_bound() {
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let t0 = Instant::now();
        // 1000 kbit/s: a 1250-byte datagram takes 10 ms.
        let mut d = Downlink::new(1000, Duration::from_millis(100));
        for _ in 0..20 {
            d.push(t0, from, &[0u8; 1250]);
        }
        assert_eq!(d.dropped, 10, "only 100 ms worth is queued");
        assert!(d.pop(t0 + Duration::from_millis(9)).is_none());
        assert!(d.pop(t0 + Duration::from_millis(10)).is_some());
        let mut n = 1;
        while d.pop(t0 + Duration::from_millis(100)).is_some() {
            n += 1;
        }
        assert_eq!(n, 10);
        assert!(d.next_due().is_none());
        assert_eq!(d.transmission(1250), Duration::from_millis(10));
    }
}
