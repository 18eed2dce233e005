//! The report: a summary table for the terminal, `--json` for machines and
//! `--html`, a self-contained page with charts over time (inline SVG, no
//! scripts, nothing fetched).

use std::collections::HashMap;

use serde::Serialize;

use crate::run::RunData;
use crate::scenario::Scenario;
use crate::stats::{Delta, RateSample, loss_pct, percentile, percentile_f64};

/// How the server under test was configured, as far as this tool knows.
#[derive(Debug, Clone, Default)]
pub struct ServerMode {
    /// `media.allocator`; `None` for a target that has no such setting.
    pub allocator: Option<bool>,
    pub bwe_initial_kbps: Option<u32>,
    /// True when this tool started the server with these settings; false
    /// when they were only stated on the command line for a running server.
    pub applied: bool,
}

/// A spread across subscribers.
#[derive(Debug, Serialize)]
pub struct Spread {
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        Spread {
            p95: percentile_f64(&mut v, 0.95).map(round2),
            max: v.iter().copied().reduce(f64::max).map(round2),
        }
    }
}

/// Share of received video time per simulcast layer, percent.
#[derive(Debug, Serialize)]
pub struct LayerShare {
    pub q: f64,
    pub h: f64,
    pub f: f64,
}

/// The stage (the speaker each subscriber shows large): share of its
/// watched time, percent, that the server reported paused, and that frames
/// of each simulcast layer were on screen. What is left to 100 is time the
/// tile waited for frames (a freeze, or a switch waiting for its keyframe).
#[derive(Debug, Serialize)]
pub struct StageShare {
    pub paused: f64,
    pub q: f64,
    pub h: f64,
    pub f: f64,
}

/// Per subscriber over the measurement window, kbit/s: mean and 95th
/// percentile of its 1-s rates, before the bottleneck (what the server
/// sent) and after it (what the subscriber got).
#[derive(Debug, Default)]
struct SubscriberRates {
    sent_mean: Vec<f64>,
    sent_p95: Vec<f64>,
    received_mean: Vec<f64>,
    received_p95: Vec<f64>,
}

impl SubscriberRates {
    fn from_samples(samples: &[RateSample]) -> SubscriberRates {
        #[derive(Default)]
        struct Acc {
            sent: u64,
            received: u64,
            us: u64,
            sent_kbps: Vec<f64>,
            received_kbps: Vec<f64>,
        }
        let mut by: HashMap<u32, Acc> = HashMap::new();
        for s in samples.iter().filter(|s| s.interval_us > 0) {
            let a = by.entry(s.subscriber).or_default();
            a.sent += s.server_sent;
            a.received += s.received;
            a.us += s.interval_us;
            a.sent_kbps
                .push(RateSample::kbps(s.server_sent, s.interval_us));
            a.received_kbps
                .push(RateSample::kbps(s.received, s.interval_us));
        }
        let mut r = SubscriberRates::default();
        for mut a in by.into_values() {
            r.sent_mean.push(RateSample::kbps(a.sent, a.us));
            r.received_mean.push(RateSample::kbps(a.received, a.us));
            r.sent_p95.extend(percentile_f64(&mut a.sent_kbps, 0.95));
            r.received_p95
                .extend(percentile_f64(&mut a.received_kbps, 0.95));
        }
        r
    }
}

#[derive(Debug, Serialize)]
pub struct P2 {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct P3 {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl P3 {
    /// Percentiles in milliseconds of samples in microseconds.
    fn of_us(samples: &mut [u32]) -> P3 {
        P3 {
            p50: ms(percentile(samples, 0.5)),
            p95: ms(percentile(samples, 0.95)),
            p99: ms(percentile(samples, 0.99)),
        }
    }

    fn text(&self) -> String {
        format!(
            "{} / {} / {} ms",
            opt(self.p50),
            opt(self.p95),
            opt(self.p99)
        )
    }
}

#[derive(Debug, Serialize)]
pub struct SecondRow {
    pub t: usize,
    pub joined: usize,
    pub pps: u64,
    pub mbps: f64,
    pub loss_pct: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub jitter_p99_ms: Option<f64>,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub loadgen_cpu_pct: Option<f64>,
    /// Share of watched video track time the server reported paused.
    pub paused_pct: f64,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub participant: u32,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub rooms: usize,
    pub participants: usize,
    pub publishers: usize,
    pub simulcast: bool,
    pub duration_s: f64,
    pub joined: usize,
    pub failed: usize,
    pub tracks_expected: usize,
    pub tracks_received: usize,
    /// Tracks the server reported paused at the end (or resumed less than
    /// a second before): neither expected nor missing.
    pub tracks_paused_at_end: usize,
    pub loss_pct: f64,
    pub frame_loss_pct: f64,
    pub freezes: u64,
    /// Video frames that switched simulcast layer without a keyframe
    /// (undecodable): must be 0.
    pub bad_layer_switches: u64,
    /// Frames that arrived with another length than they were sent: must be 0.
    pub corrupt_frames: u64,
    /// Frames that did not decrypt: must be 0 (`--e2ee` runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decrypt_failures: Option<u64>,
    /// Received video frames on another simulcast layer than the frame
    /// before (with or without a keyframe).
    pub layer_switches: u64,
    /// Received video frames, and the keyframes among them.
    pub video_frames: u64,
    pub keyframes: u64,
    /// Received video time per layer, percent (simulcast runs only): what
    /// the server chose to forward.
    pub layer_share_pct: Option<LayerShare>,
    /// Share of watched (subscribed and not paused by the participant)
    /// video track-seconds that the server reported paused
    /// (`track_paused` .. `track_resumed`). Paused time is not loss.
    pub tracks_paused_pct: f64,
    pub pause_events: u64,
    /// Of `pause_events`, those the server made because it was short of
    /// CPU (`server_load`), not of the subscriber's bandwidth.
    pub load_pause_events: u64,
    pub resume_events: u64,
    /// Video picked up after a pause on a frame that was no keyframe
    /// (undecodable until the next one; loss of the keyframe can cause it).
    pub resumes_without_keyframe: u64,
    /// Simulcast layers publishers stopped or restarted on `publish_layers`
    /// (dynacast).
    pub publish_layer_changes: u64,
    /// `speakers_changed` signals received, all participants together.
    pub speakers_changed: u64,
    /// Share of sampled seconds in which the reported dominant speaker was
    /// one of the scenario's current speakers (the 2 s after each rotation
    /// not sampled); `None` if no speaker was ever reported.
    pub dominant_speaker_match_pct: Option<f64>,
    pub stage_pct: Option<StageShare>,
    pub jitter_ms: P2,
    pub latency_ms: P3,
    /// Audio frames only.
    pub audio_latency_ms: P3,
    /// Latency less each frame's own transmission time at the emulated
    /// bottleneck (equal to `latency_ms` without one); the p99 bound applies
    /// to this: a 17 KB keyframe needs 133 ms to cross 1 Mbit/s on any
    /// server.
    pub queued_latency_ms: P3,
    pub join_ms: P2,
    pub first_frame_ms: P2,
    pub forwarded_packets: u64,
    pub forwarded_pps: f64,
    pub forwarded_mbps: f64,
    pub server_cpu_pct: Option<f64>,
    pub server_cpu_seconds: Option<f64>,
    pub server_rss_mb: Option<f64>,
    /// This load generator's CPU, % of one core: near the machine's cores,
    /// the generator (not the server) may be what broke.
    pub loadgen_cpu_pct: Option<f64>,
    /// The server's `media.allocator` ("on"/"off"; null for other targets).
    pub server_allocator: Option<String>,
    pub server_bwe_initial_kbps: Option<u32>,
    /// Whether those settings were written into the config of a server this
    /// tool started ("spawned"), or only stated for a running one ("stated").
    pub server_mode_source: String,
    pub downlink_kbps: Option<u32>,
    pub downlink_drops: u64,
    /// Subscribers with a measured rate.
    pub subscribers_measured: usize,
    /// Across subscribers (p95 and max of): each subscriber's mean RTP rate
    /// over the measurement window as it arrived at its socket, before the
    /// emulated bottleneck: what the server pushed into it, kbit/s.
    pub server_sent_kbps_mean: Spread,
    /// Across subscribers: each one's 95th percentile 1-s rate, before the
    /// bottleneck, kbit/s.
    pub server_sent_kbps_p95: Spread,
    /// As `server_sent_*`, after the bottleneck: what the subscriber got.
    pub received_kbps_mean: Spread,
    pub received_kbps_p95: Spread,
    /// With `--downlink-kbps N`: subscribers whose mean server-sent rate
    /// exceeded N (each one is a violation: the server sent more than the
    /// link carries).
    pub sent_over_bottleneck: Option<usize>,
    pub max_loss_pct: f64,
    pub max_p99_latency_ms: f64,
    pub passed: bool,
    /// Why it did not pass, in words.
    pub violations: Vec<String>,
    pub failures: Vec<Failure>,
    /// Up to 20 expected tracks not flowing at the end: "receiver <- sender audio|video".
    pub missing_tracks: Vec<String>,
    /// Non-fatal errors the server sent participants (e.g. rate limits).
    pub server_errors: usize,
    pub load_generator_cores: usize,
    pub series: Vec<SecondRow>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v}"))
}

fn ms(us: Option<u32>) -> Option<f64> {
    us.map(|u| (u as f64 / 1000.0 * 100.0).round() / 100.0)
}

/// What the latency bound judges: behind an emulated bottleneck, latency
/// beyond each frame's own transmission.
fn bounded_latency(downlink_kbps: Option<u32>) -> &'static str {
    if downlink_kbps.is_some() {
        "p99 beyond transmission"
    } else {
        "p99"
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    100.0 * part as f64 / whole as f64
}

impl Report {
    pub fn build(sc: &Scenario, target: &str, server: &ServerMode, data: RunData) -> Report {
        let (w0, w1) = data.window;
        let secs = (w1 - w0).max(1e-3);
        // Whole seconds inside the measurement window.
        let first = w0.ceil() as usize;
        let last = (w1.floor() as usize).max(first);
        let mut total = Delta::default();
        let mut cpu = Vec::new();
        let mut gen_cpu: Vec<f64> = Vec::new();
        let mut series = Vec::new();
        for (t, s) in data.seconds.into_iter().enumerate() {
            let mut m = s.media;
            let row = SecondRow {
                t,
                joined: s.joined,
                pps: m.packets,
                mbps: round2(m.bytes as f64 * 8.0 / 1e6),
                loss_pct: round2(loss_pct(m.packets, m.packets_expected)),
                latency_p50_ms: ms(percentile(&mut m.latency_us, 0.5)),
                latency_p99_ms: ms(percentile(&mut m.latency_us, 0.99)),
                jitter_p99_ms: ms(percentile(&mut m.jitter_us, 0.99)),
                server_cpu_pct: s.server_cpu_pct.map(round2),
                server_rss_mb: s.server_rss_mb.map(round2),
                loadgen_cpu_pct: s.loadgen_cpu_pct.map(round2),
                paused_pct: round2(pct(m.paused_us, m.video_track_us)),
            };
            series.push(row);
            if (first..last).contains(&t) {
                if let Some(c) = s.server_cpu_pct {
                    cpu.push(c);
                }
                if let Some(c) = s.loadgen_cpu_pct {
                    gen_cpu.push(c);
                }
                total.add(m);
            }
        }
        let window_secs = (last - first).max(1) as f64;
        let outcomes = data.outcomes;
        let mut join: Vec<f64> = outcomes.iter().filter_map(|o| o.join_ms).collect();
        let mut first_frame: Vec<f64> = outcomes
            .iter()
            .flat_map(|o| o.first_frame_ms.iter().copied())
            .collect();
        let failures: Vec<Failure> = outcomes
            .iter()
            .filter_map(|o| {
                o.error.as_ref().map(|e| Failure {
                    participant: o.index,
                    error: e.clone(),
                })
            })
            .collect();
        let tracks_expected = outcomes.iter().map(|o| o.tracks_expected).sum();
        let tracks_received = outcomes.iter().map(|o| o.tracks_received).sum();
        let rates = SubscriberRates::from_samples(&total.rates);
        let over = sc.downlink_kbps.map(|n| {
            rates
                .sent_mean
                .iter()
                .filter(|&&k| k > f64::from(n))
                .count()
        });
        let layer_time: u64 = total.layer_us.iter().sum();
        let layer_pct = |i: usize| round2(pct(total.layer_us[i], layer_time));
        let loss = round2(loss_pct(total.packets, total.packets_expected));
        let frame_loss = round2(loss_pct(total.frames, total.frames + total.frames_lost));
        let latency_ms = P3::of_us(&mut total.latency_us);
        let queued_latency_ms = P3::of_us(&mut total.queued_us);
        let p99 = queued_latency_ms.p99;
        let mut violations = Vec::new();
        if !failures.is_empty() {
            violations.push(format!("{} participants failed", failures.len()));
        }
        if tracks_received < tracks_expected {
            violations.push(format!(
                "{} of {tracks_expected} expected tracks not flowing at the end",
                tracks_expected - tracks_received
            ));
        }
        if total.decrypt_failures > 0 {
            violations.push(format!("{} frames did not decrypt", total.decrypt_failures));
        }
        if total.corrupt_frames > 0 {
            violations.push(format!(
                "{} frames arrived corrupt (not as sent)",
                total.corrupt_frames
            ));
        }
        if total.bad_switches > 0 {
            violations.push(format!(
                "{} video frames switched simulcast layer without a keyframe",
                total.bad_switches
            ));
        }
        if let (Some(n), Some(k)) = (sc.downlink_kbps, over)
            && k > 0
        {
            let max = rates.sent_mean.iter().copied().fold(0.0, f64::max);
            violations.push(format!(
                "sent_over_bottleneck: {k} of {} subscribers were sent more than {n} kbit/s on average (max {} kbit/s)",
                rates.sent_mean.len(),
                round2(max)
            ));
        }
        if loss > sc.max_loss_pct {
            violations.push(format!("loss {loss}% > {}%", sc.max_loss_pct));
        }
        match p99 {
            Some(p) if p > sc.max_p99_latency_ms => violations.push(format!(
                "latency {} {p} ms > {} ms",
                bounded_latency(sc.downlink_kbps),
                sc.max_p99_latency_ms
            )),
            None if total.frames == 0 && sc.total_participants() > 1 => {
                violations.push("no frames were received".into())
            }
            _ => {}
        }
        Report {
            scenario: sc.name.clone(),
            target: target.into(),
            rooms: sc.rooms,
            participants: sc.total_participants(),
            publishers: sc.rooms * sc.publishers_per_room(),
            simulcast: sc.simulcast,
            duration_s: round2(secs),
            joined: outcomes.iter().filter(|o| o.join_ms.is_some()).count(),
            failed: failures.len(),
            tracks_expected,
            tracks_received,
            tracks_paused_at_end: outcomes.iter().map(|o| o.tracks_paused).sum(),
            loss_pct: loss,
            frame_loss_pct: frame_loss,
            freezes: total.freezes,
            bad_layer_switches: total.bad_switches,
            corrupt_frames: total.corrupt_frames,
            decrypt_failures: sc.e2ee.then_some(total.decrypt_failures),
            layer_switches: total.layer_switches,
            video_frames: total.video_frames,
            keyframes: total.keyframes,
            layer_share_pct: (sc.simulcast && layer_time > 0).then(|| LayerShare {
                q: layer_pct(0),
                h: layer_pct(1),
                f: layer_pct(2),
            }),
            tracks_paused_pct: round2(pct(total.paused_us, total.video_track_us)),
            pause_events: total.pause_events,
            load_pause_events: total.load_pause_events,
            resume_events: total.resume_events,
            resumes_without_keyframe: total.resumes_without_keyframe,
            publish_layer_changes: total.publish_layer_changes,
            speakers_changed: total.speakers_changed,
            dominant_speaker_match_pct: (total.dominant_checks > 0)
                .then(|| round2(pct(total.dominant_matches, total.dominant_checks))),
            stage_pct: (total.stage_us > 0).then(|| {
                let share = |us| round2(pct(us, total.stage_us));
                StageShare {
                    paused: share(total.stage_paused_us),
                    q: share(total.stage_layer_us[0]),
                    h: share(total.stage_layer_us[1]),
                    f: share(total.stage_layer_us[2]),
                }
            }),
            jitter_ms: P2 {
                p50: ms(percentile(&mut total.jitter_us, 0.5)),
                p99: ms(percentile(&mut total.jitter_us, 0.99)),
            },
            latency_ms,
            audio_latency_ms: P3::of_us(&mut total.audio_latency_us),
            queued_latency_ms,
            join_ms: P2 {
                p50: percentile_f64(&mut join, 0.5).map(round2),
                p99: percentile_f64(&mut join, 0.99).map(round2),
            },
            first_frame_ms: P2 {
                p50: percentile_f64(&mut first_frame, 0.5).map(round2),
                p99: percentile_f64(&mut first_frame, 0.99).map(round2),
            },
            forwarded_packets: total.packets,
            forwarded_pps: round2(total.packets as f64 / window_secs),
            forwarded_mbps: round2(total.bytes as f64 * 8.0 / 1e6 / window_secs),
            server_cpu_pct: (!cpu.is_empty())
                .then(|| round2(cpu.iter().sum::<f64>() / cpu.len() as f64)),
            server_cpu_seconds: data.server_cpu_seconds.map(round2),
            server_rss_mb: data.server_peak_rss_mb.map(round2),
            loadgen_cpu_pct: (!gen_cpu.is_empty())
                .then(|| round2(gen_cpu.iter().sum::<f64>() / gen_cpu.len() as f64)),
            server_allocator: server
                .allocator
                .map(|on| if on { "on" } else { "off" }.to_string()),
            server_bwe_initial_kbps: server.bwe_initial_kbps,
            server_mode_source: if server.applied { "spawned" } else { "stated" }.into(),
            downlink_kbps: sc.downlink_kbps,
            downlink_drops: total.shaper_drops,
            subscribers_measured: rates.sent_mean.len(),
            server_sent_kbps_mean: Spread::of(rates.sent_mean),
            server_sent_kbps_p95: Spread::of(rates.sent_p95),
            received_kbps_mean: Spread::of(rates.received_mean),
            received_kbps_p95: Spread::of(rates.received_p95),
            sent_over_bottleneck: over,
            max_loss_pct: sc.max_loss_pct,
            max_p99_latency_ms: sc.max_p99_latency_ms,
            passed: violations.is_empty(),
            violations,
            failures,
            missing_tracks: outcomes
                .iter()
                .flat_map(|o| {
                    o.missing.iter().map(move |k| {
                        let kind = if k.video { "video" } else { "audio" };
                        format!("{} <- {} {kind}", o.index, k.sender)
                    })
                })
                .take(20)
                .collect(),
            server_errors: outcomes.iter().map(|o| o.server_errors.len()).sum(),
            load_generator_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            series,
        }
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            (
                "scenario",
                format!("{} (target {})", self.scenario, self.target),
            ),
            (
                "participants",
                format!(
                    "{} in {} room(s), {} publishers, joined {}, failed {}",
                    self.participants, self.rooms, self.publishers, self.joined, self.failed
                ),
            ),
            ("measured for", format!("{} s", self.duration_s)),
            (
                "tracks received / expected",
                format!(
                    "{} / {}  ({} paused by the server at the end)",
                    self.tracks_received, self.tracks_expected, self.tracks_paused_at_end
                ),
            ),
            ("packet loss", format!("{} %", self.loss_pct)),
            (
                "frame loss",
                format!(
                    "{} %  ({} freezes, {} layer switches without a keyframe, {} corrupt, {} resumed without a keyframe)",
                    self.frame_loss_pct,
                    self.freezes,
                    self.bad_layer_switches,
                    self.corrupt_frames,
                    self.resumes_without_keyframe
                ),
            ),
            (
                "end-to-end encryption",
                match self.decrypt_failures {
                    Some(n) => format!("SFrame on every frame, {n} decrypt failures"),
                    None => "off".into(),
                },
            ),
            (
                "video paused by the server",
                format!(
                    "{} % of watched video time  ({} pauses, {} of them for server load; {} resumes)",
                    self.tracks_paused_pct,
                    self.pause_events,
                    self.load_pause_events,
                    self.resume_events
                ),
            ),
            (
                "layers",
                format!(
                    "{}{} switches; publishers changed {} layers (dynacast)",
                    self.layer_share_pct
                        .as_ref()
                        .map_or(String::new(), |l| format!(
                            "q / h / f {} / {} / {} % of video time, ",
                            l.q, l.h, l.f
                        )),
                    self.layer_switches,
                    self.publish_layer_changes
                ),
            ),
            (
                "keyframes",
                format!(
                    "{} of {} received video frames ({} %)",
                    self.keyframes,
                    self.video_frames,
                    round2(pct(self.keyframes, self.video_frames))
                ),
            ),
            (
                "active speaker",
                format!(
                    "{} speakers_changed; dominant is a scenario speaker in {} % of seconds",
                    self.speakers_changed,
                    opt(self.dominant_speaker_match_pct)
                ),
            ),
            (
                "stage (speaker shown large)",
                self.stage_pct.as_ref().map_or("-".into(), |s| {
                    format!(
                        "paused {} %; q / h / f {} / {} / {} % of its time",
                        s.paused, s.q, s.h, s.f
                    )
                }),
            ),
            ("latency p50 / p95 / p99", self.latency_ms.text()),
            ("audio latency p50/p95/p99", self.audio_latency_ms.text()),
            (
                "beyond transmission p50/p95/p99",
                if self.downlink_kbps.is_some() {
                    self.queued_latency_ms.text()
                } else {
                    "- (no emulated bottleneck)".into()
                },
            ),
            (
                "jitter p50 / p99",
                format!(
                    "{} / {} ms",
                    opt(self.jitter_ms.p50),
                    opt(self.jitter_ms.p99)
                ),
            ),
            (
                "join p50 / p99",
                format!("{} / {} ms", opt(self.join_ms.p50), opt(self.join_ms.p99)),
            ),
            (
                "first frame p50 / p99",
                format!(
                    "{} / {} ms",
                    opt(self.first_frame_ms.p50),
                    opt(self.first_frame_ms.p99)
                ),
            ),
            (
                "forwarded",
                format!(
                    "{} pkt/s, {} Mbit/s",
                    self.forwarded_pps, self.forwarded_mbps
                ),
            ),
            (
                "server",
                format!(
                    "CPU {} % ({} CPU-s), peak RSS {} MiB",
                    opt(self.server_cpu_pct),
                    opt(self.server_cpu_seconds),
                    opt(self.server_rss_mb)
                ),
            ),
            (
                "server config",
                format!(
                    "allocator {}, bwe_initial_kbps {} ({})",
                    self.server_allocator.as_deref().unwrap_or("n/a"),
                    self.server_bwe_initial_kbps
                        .map_or("default".to_string(), |k| k.to_string()),
                    if self.server_mode_source == "spawned" {
                        "written into the spawned server's config"
                    } else {
                        "as stated on the command line; a running server's config is not checked"
                    }
                ),
            ),
            (
                "subscriber kbit/s p95 / max",
                format!(
                    "server sent {} / {} (mean), {} / {} (1-s p95); received {} / {} (mean), {} / {} (1-s p95); {} subscribers",
                    opt(self.server_sent_kbps_mean.p95),
                    opt(self.server_sent_kbps_mean.max),
                    opt(self.server_sent_kbps_p95.p95),
                    opt(self.server_sent_kbps_p95.max),
                    opt(self.received_kbps_mean.p95),
                    opt(self.received_kbps_mean.max),
                    opt(self.received_kbps_p95.p95),
                    opt(self.received_kbps_p95.max),
                    self.subscribers_measured
                ),
            ),
            (
                "load generator",
                format!(
                    "CPU {} % on {} cores",
                    opt(self.loadgen_cpu_pct),
                    self.load_generator_cores
                ),
            ),
        ];
        if let Some(k) = self.downlink_kbps {
            rows.push((
                "downlink",
                format!(
                    "{k} kbit/s per subscriber, {} datagrams dropped, {} subscribers sent more on average",
                    self.downlink_drops,
                    self.sent_over_bottleneck.unwrap_or(0)
                ),
            ));
        }
        rows.push((
            "result",
            if self.passed {
                format!(
                    "PASSED (loss ≤ {} %, {} ≤ {} ms)",
                    self.max_loss_pct,
                    bounded_latency(self.downlink_kbps),
                    self.max_p99_latency_ms
                )
            } else {
                format!("FAILED: {}", self.violations.join("; "))
            },
        ));
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        for f in self.failures.iter().take(5) {
            out.push_str(&format!(
                "  participant {} failed: {}\n",
                f.participant, f.error
            ));
        }
        out
    }

    pub fn html(&self) -> String {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        let charts = [
            chart(
                "Forwarded packets/s (received by subscribers)",
                &self.series,
                |r| Some(r.pps as f64),
            ),
            chart("Received Mbit/s", &self.series, |r| Some(r.mbps)),
            chart("Latency p99 (ms)", &self.series, |r| r.latency_p99_ms),
            chart("Packet loss (%)", &self.series, |r| Some(r.loss_pct)),
            chart("Server CPU (% of one core)", &self.series, |r| {
                r.server_cpu_pct
            }),
            chart("Server RSS (MiB)", &self.series, |r| r.server_rss_mb),
            chart(
                "Watched video paused by the server (%)",
                &self.series,
                |r| Some(r.paused_pct),
            ),
            chart("Load generator CPU (% of one core)", &self.series, |r| {
                r.loadgen_cpu_pct
            }),
            chart("Participants connected", &self.series, |r| {
                Some(r.joined as f64)
            }),
        ]
        .join("\n");
        let verdict = if self.passed { "passed" } else { "failed" };
        let table = escape(&self.table());
        let json = escape(&json);
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stämma load test: {scenario}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; max-width: 70rem; }}
pre {{ background: #f4f4f4; padding: 1rem; overflow-x: auto; }}
.passed {{ color: #11631e; }} .failed {{ color: #a40e0e; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; }}
figcaption {{ font-weight: 600; margin-bottom: .25rem; }}
svg text {{ font-size: 11px; fill: #444; }}
</style></head><body>
<h1>Stämma load test: {scenario} — <span class="{verdict}">{verdict}</span></h1>
<pre>{table}</pre>
<h2>Over time (one point per second)</h2>
{charts}
<h2>Raw report</h2>
<details><summary>JSON</summary><pre>{json}</pre></details>
</body></html>
"#,
            scenario = escape(&self.scenario),
        )
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as inline SVG.
fn chart(title: &str, rows: &[SecondRow], value: impl Fn(&SecondRow) -> Option<f64>) -> String {
    let (w, h, pad) = (460.0, 180.0, 40.0);
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| value(r).map(|v| (r.t as f64, v)))
        .collect();
    let max_t = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_v = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| {
            let x = pad + t / max_t * (w - pad - 10.0);
            let y = h - 20.0 - v / max_v * (h - 30.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        r##"<figure><figcaption>{title}</figcaption><svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{title}">
<line x1="{pad}" y1="{y0}" x2="{xe}" y2="{y0}" stroke="#999"/><line x1="{pad}" y1="10" x2="{pad}" y2="{y0}" stroke="#999"/>
<text x="2" y="14">{top:.1}</text><text x="2" y="{y0}">0</text><text x="{xe}" y="{yl}" text-anchor="end">{max_t:.0} s</text>
<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{pts}"/></svg></figure>"##,
        title = escape(title),
        y0 = h - 20.0,
        xe = w - 10.0,
        yl = h - 5.0,
        top = max_v / 1.1,
        pts = path.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run whose every frame took 100 ms, `own_us` of it its own
    /// transmission at the bottleneck (0: no bottleneck).
    fn report_of(downlink_kbps: Option<u32>, own_us: u64) -> Report {
        let mut sc = Scenario::preset(crate::scenario::Preset::Custom);
        sc.downlink_kbps = downlink_kbps;
        let mut media = Delta::default();
        for _ in 0..100 {
            media.record_latency(100_000, own_us, true);
        }
        media.frames = 100;
        media.packets = 100;
        media.packets_expected = 100;
        let seconds = vec![
            crate::stats::Second::default(),
            crate::stats::Second {
                media,
                ..Default::default()
            },
            crate::stats::Second::default(),
        ];
        let data = RunData {
            seconds,
            outcomes: Vec::new(),
            window: (1.0, 2.0),
            server_cpu_seconds: None,
            server_peak_rss_mb: None,
        };
        let server = ServerMode {
            allocator: None,
            bwe_initial_kbps: None,
            applied: false,
        };
        Report::build(&sc, "test", &server, data)
    }

    #[test]
    fn behind_a_bottleneck_the_latency_bound_leaves_out_a_frames_own_transmission() {
        let shaped = report_of(Some(1000), 80_000);
        assert_eq!(shaped.latency_ms.p99, Some(100.0));
        assert_eq!(shaped.queued_latency_ms.p99, Some(20.0));
        assert!(shaped.passed, "{:?}", shaped.violations);
        // The same latencies with no bottleneck to explain them fail.
        let unshaped = report_of(None, 0);
        assert!(!unshaped.passed);
        assert!(
            unshaped.violations[0].starts_with("latency p99 100 ms > 50"),
            "{:?}",
            unshaped.violations
        );
    }

    #[test]
    fn subscriber_rates_are_per_subscriber_before_and_after_the_bottleneck() {
        let sample = |subscriber, sent_kbit: u64, received_kbit: u64| RateSample {
            subscriber,
            server_sent: sent_kbit * 1000 / 8,
            received: received_kbit * 1000 / 8,
            interval_us: 1_000_000,
        };
        let mut samples = Vec::new();
        for k in 0..20 {
            samples.push(sample(1, 400 + k, 300));
            samples.push(sample(2, 200, 200));
        }
        samples.push(sample(2, 2000, 300));
        let r = SubscriberRates::from_samples(&samples);
        let mut sent = r.sent_mean.clone();
        sent.sort_by(f64::total_cmp);
        assert_eq!(sent.len(), 2);
        assert!(
            (sent[0] - (200.0 * 20.0 + 2000.0) / 21.0).abs() < 1e-6,
            "{sent:?}"
        );
        assert!((sent[1] - 409.5).abs() < 1e-6, "{sent:?}");
        let mut p95 = r.sent_p95.clone();
        p95.sort_by(f64::total_cmp);
        assert_eq!(p95, vec![200.0, 418.0]);
        assert!(r.received_mean.iter().all(|&k| k <= 305.0));
        let s = Spread::of(r.sent_mean);
        assert_eq!(s.max, Some(409.5));
    }
}
