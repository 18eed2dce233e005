//! What the participants measured, gathered once a second into a time
//! series. Peers keep their own counters on the packet path and hand over a
//! delta each second, so nothing is shared per packet.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One peer's measurements over about one second.
#[derive(Debug, Default)]
pub struct Delta {
    /// One-way frame latencies, microseconds.
    pub latency_us: Vec<u32>,
    /// The audio frames' among them: a video frame also waits for its own
    /// bytes to cross a bottleneck (a 10 KB keyframe takes 80 ms at
    /// 1 Mbit/s), an audio frame only for what is queued ahead of it.
    pub audio_latency_us: Vec<u32>,
    /// Each frame's latency less the time its own bytes take to cross the
    /// emulated bottleneck (equal to `latency_us` without one): the delay
    /// queues and pacing added, which no server can avoid for the frame's
    /// own transmission. The pass criterion judges this one.
    pub queued_us: Vec<u32>,
    /// RFC 3550 interarrival jitter of each receiving track, microseconds.
    pub jitter_us: Vec<u32>,
    /// RTP packets that reached the application (in delivered frames).
    pub packets: u64,
    /// RTP packets the sequence numbers say were sent to us.
    pub packets_expected: u64,
    pub frames: u64,
    pub frames_lost: u64,
    /// Received video frames, and the keyframes among them: each is several
    /// frames' worth of bytes, and every subscriber of the layer gets it.
    pub video_frames: u64,
    pub keyframes: u64,
    pub freezes: u64,
    /// Video frames from another simulcast layer than the frame before,
    /// without being a keyframe: a decoder cannot display them.
    pub bad_switches: u64,
    /// Frames whose length differs from what the sender sent (mixed up or
    /// cut short on the way).
    pub corrupt_frames: u64,
    /// Frames that did not decrypt (`--e2ee`).
    pub decrypt_failures: u64,
    /// UDP bytes received, all of them (media, RTCP, STUN).
    pub bytes: u64,
    /// Datagrams the emulated bottleneck dropped.
    pub shaper_drops: u64,
    /// Received frames whose simulcast layer differs from the frame before
    /// (good and bad switches).
    pub layer_switches: u64,
    /// Received video per simulcast layer (q, h, f), weighted by how long
    /// each frame is on screen (µs), so a 15 fps layer is not undercounted.
    pub layer_us: [u64; 3],
    /// Watched video track time (µs) and the part of it the server reported
    /// paused (`track_paused` .. `track_resumed`).
    pub video_track_us: u64,
    pub paused_us: u64,
    pub pause_events: u64,
    /// Pauses whose reason was `server_load` (the server short of CPU).
    pub load_pause_events: u64,
    pub resume_events: u64,
    /// First frames after a pause that skipped frames and were no keyframe.
    pub resumes_without_keyframe: u64,
    /// Publisher layers started or stopped on the server's `publish_layers`.
    pub publish_layer_changes: u64,
    /// `speakers_changed` signals received.
    pub speakers_changed: u64,
    /// Seconds sampled (outside the 2 s after a speaker rotation) in which a
    /// dominant speaker had been reported, and in how many of them it was one
    /// of the scenario's current speakers.
    pub dominant_checks: u64,
    pub dominant_matches: u64,
    /// The stage: the video of the speaker a subscriber shows large (the
    /// last dominant speaker it was told of). Watched time (µs), the part
    /// the server reported paused, and received time per layer (q, h, f),
    /// as in `video_track_us`, `paused_us` and `layer_us`.
    pub stage_us: u64,
    pub stage_paused_us: u64,
    pub stage_layer_us: [u64; 3],
    /// Per subscriber, about once a second: RTP bytes before and after the
    /// emulated bottleneck.
    pub rates: Vec<RateSample>,
}

/// One subscriber's received RTP over one report interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateSample {
    pub subscriber: u32,
    /// RTP bytes (SRTP, headers included) that reached the subscriber's
    /// socket: what the server pushed into the bottleneck.
    pub server_sent: u64,
    /// RTP bytes that left the bottleneck to the subscriber's WebRTC stack
    /// (equal to `server_sent` without `--downlink-kbps`).
    pub received: u64,
    /// Length of the interval, µs.
    pub interval_us: u64,
}

impl RateSample {
    pub fn kbps(bytes: u64, us: u64) -> f64 {
        if us == 0 {
            return 0.0;
        }
        bytes as f64 * 8.0 * 1000.0 / us as f64
    }
}

impl Delta {
    /// One received frame's one-way latency, and how long its own bytes
    /// take to cross the emulated bottleneck (0 without one).
    pub fn record_latency(&mut self, us: u64, own_transmission_us: u64, video: bool) {
        let queued = us.saturating_sub(own_transmission_us);
        self.queued_us.push(queued.min(u64::from(u32::MAX)) as u32);
        let us = us.min(u64::from(u32::MAX)) as u32;
        self.latency_us.push(us);
        if !video {
            self.audio_latency_us.push(us);
        }
    }

    pub fn add(&mut self, d: Delta) {
        self.latency_us.extend(d.latency_us);
        self.audio_latency_us.extend(d.audio_latency_us);
        self.queued_us.extend(d.queued_us);
        self.jitter_us.extend(d.jitter_us);
        self.packets += d.packets;
        self.packets_expected += d.packets_expected;
        self.frames += d.frames;
        self.frames_lost += d.frames_lost;
        self.video_frames += d.video_frames;
        self.keyframes += d.keyframes;
        self.freezes += d.freezes;
        self.bad_switches += d.bad_switches;
        self.corrupt_frames += d.corrupt_frames;
        self.decrypt_failures += d.decrypt_failures;
        self.bytes += d.bytes;
        self.shaper_drops += d.shaper_drops;
        self.layer_switches += d.layer_switches;
        for (a, b) in self.layer_us.iter_mut().zip(d.layer_us) {
            *a += b;
        }
        self.video_track_us += d.video_track_us;
        self.paused_us += d.paused_us;
        self.pause_events += d.pause_events;
        self.load_pause_events += d.load_pause_events;
        self.resume_events += d.resume_events;
        self.resumes_without_keyframe += d.resumes_without_keyframe;
        self.publish_layer_changes += d.publish_layer_changes;
        self.speakers_changed += d.speakers_changed;
        self.dominant_checks += d.dominant_checks;
        self.dominant_matches += d.dominant_matches;
        self.stage_us += d.stage_us;
        self.stage_paused_us += d.stage_paused_us;
        for (a, b) in self.stage_layer_us.iter_mut().zip(d.stage_layer_us) {
            *a += b;
        }
        self.rates.extend(d.rates);
    }
}

/// One second of the run.
#[derive(Debug, Default)]
pub struct Second {
    pub media: Delta,
    pub joined: usize,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// This load generator's own CPU, % of one core.
    pub loadgen_cpu_pct: Option<f64>,
}

pub struct Collector {
    pub start: Instant,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seconds: Vec<Second>,
}

impl Collector {
    pub fn new(start: Instant) -> Collector {
        Collector {
            start,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn second_of(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.start).as_secs() as usize
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means a peer panicked mid-update; the
        // numbers are still worth reporting.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    fn at(inner: &mut Inner, s: usize) -> &mut Second {
        if inner.seconds.len() <= s {
            inner.seconds.resize_with(s + 1, Second::default);
        }
        &mut inner.seconds[s]
    }

    pub fn record(&self, at: Instant, delta: Delta) {
        let s = self.second_of(at);
        self.with(|i| Self::at(i, s).media.add(delta));
    }

    pub fn record_server(&self, at: Instant, cpu_pct: f64, rss_mb: f64) {
        let s = self.second_of(at);
        self.with(|i| {
            let sec = Self::at(i, s);
            sec.server_cpu_pct = Some(cpu_pct);
            sec.server_rss_mb = Some(rss_mb);
        });
    }

    pub fn record_loadgen(&self, at: Instant, cpu_pct: f64) {
        let s = self.second_of(at);
        self.with(|i| Self::at(i, s).loadgen_cpu_pct = Some(cpu_pct));
    }

    pub fn record_joined(&self, at: Instant, joined: usize) {
        let s = self.second_of(at);
        self.with(|i| Self::at(i, s).joined = joined);
    }

    /// Seconds so far, for the live display: (packets/s, loss %, p99 ms) of
    /// the last complete second.
    pub fn live(&self, now: Instant) -> Option<(u64, f64, f64)> {
        let s = self.second_of(now).checked_sub(1)?;
        self.with(|i| {
            let sec = i.seconds.get_mut(s)?;
            let loss = loss_pct(sec.media.packets, sec.media.packets_expected);
            let p99 = percentile(&mut sec.media.latency_us, 0.99)? as f64 / 1000.0;
            Some((sec.media.packets, loss, p99))
        })
    }

    pub fn take(&self) -> Vec<Second> {
        self.with(|i| std::mem::take(&mut i.seconds))
    }
}

pub fn loss_pct(got: u64, expected: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    100.0 * expected.saturating_sub(got) as f64 / expected as f64
}

/// The `q` quantile (0..=1) by nearest rank; sorts `v`.
pub fn percentile<T: Ord + Copy>(v: &mut [T], q: f64) -> Option<T> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

pub fn percentile_f64(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// RFC 3550 §6.4.1 interarrival jitter, on frames: how much the gap between
/// arrivals differs from the gap between sends.
#[derive(Debug, Default, Clone, Copy)]
pub struct Jitter {
    last: Option<(Instant, u64)>,
    jitter_us: f64,
}

impl Jitter {
    pub fn update(&mut self, arrived: Instant, sent_us: u64) {
        if let Some((a, s)) = self.last {
            let da = arrived.saturating_duration_since(a).as_micros() as f64;
            let ds = sent_us as f64 - s as f64;
            self.jitter_us += ((da - ds).abs() - self.jitter_us) / 16.0;
        }
        self.last = Some((arrived, sent_us));
    }

    pub fn get_us(&self) -> u32 {
        self.jitter_us as u32
    }
}

/// A frame gap that a viewer sees as a freeze (the WebRTC stats rule:
/// longer than three frame intervals and at least 150 ms more than one).
pub fn is_freeze(gap: Duration, interval: Duration) -> bool {
    gap > (interval * 3).max(interval + Duration::from_millis(150))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_by_kind_and_less_own_transmission() {
        let mut d = Delta::default();
        d.record_latency(5_000, 0, false);
        d.record_latency(90_000, 80_000, true);
        d.record_latency(u64::MAX, 0, false);
        d.record_latency(1_000, 2_000, true);
        assert_eq!(d.latency_us, vec![5_000, 90_000, u32::MAX, 1_000]);
        assert_eq!(d.audio_latency_us, vec![5_000, u32::MAX]);
        assert_eq!(d.queued_us, vec![5_000, 10_000, u32::MAX, 0]);
        let mut total = Delta::default();
        total.add(d);
        assert_eq!(total.audio_latency_us.len(), 2);
        assert_eq!(total.queued_us.len(), 4);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50));
        assert_eq!(percentile(&mut v, 0.99), Some(99));
        assert_eq!(percentile(&mut v, 1.0), Some(100));
        assert_eq!(percentile::<u32>(&mut [], 0.5), None);
    }

    #[test]
    fn jitter_is_zero_for_even_arrivals_and_grows_with_wobble() {
        let t0 = Instant::now();
        let mut j = Jitter::default();
        for k in 0..50u64 {
            j.update(t0 + Duration::from_millis(20 * k), 20_000 * k);
        }
        assert_eq!(j.get_us(), 0);
        for k in 50..100u64 {
            let wobble = if k % 2 == 0 { 5 } else { 0 };
            j.update(t0 + Duration::from_millis(20 * k + wobble), 20_000 * k);
        }
        assert!((3_000..=6_000).contains(&j.get_us()), "{}", j.get_us());
    }

    #[test]
    fn freezes_follow_the_webrtc_rule() {
        let i = Duration::from_millis(33);
        assert!(!is_freeze(Duration::from_millis(100), i));
        assert!(is_freeze(Duration::from_millis(200), i));
        let slow = Duration::from_millis(66);
        assert!(!is_freeze(Duration::from_millis(200), slow));
    }
}
