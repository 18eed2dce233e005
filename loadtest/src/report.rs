//! The report: a summary table for the terminal, `--json` for machines and
//! `--html`, a self-contained page with charts over time (inline SVG, no
//! scripts, nothing fetched).

use serde::Serialize;

use crate::run::RunData;
use crate::scenario::Scenario;
use crate::stats::{Delta, loss_pct, percentile, percentile_f64};

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
    pub loss_pct: f64,
    pub frame_loss_pct: f64,
    pub freezes: u64,
    /// Video frames that switched simulcast layer without a keyframe
    /// (undecodable): must be 0.
    pub bad_layer_switches: u64,
    /// Frames that arrived with another length than they were sent: must be 0.
    pub corrupt_frames: u64,
    pub jitter_ms: P2,
    pub latency_ms: P3,
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
    pub downlink_kbps: Option<u32>,
    pub downlink_drops: u64,
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

fn ms(us: Option<u32>) -> Option<f64> {
    us.map(|u| (u as f64 / 1000.0 * 100.0).round() / 100.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Report {
    pub fn build(sc: &Scenario, target: &str, data: RunData) -> Report {
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
        let loss = round2(loss_pct(total.packets, total.packets_expected));
        let frame_loss = round2(loss_pct(total.frames, total.frames + total.frames_lost));
        let p99 = ms(percentile(&mut total.latency_us, 0.99));
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
        if loss > sc.max_loss_pct {
            violations.push(format!("loss {loss}% > {}%", sc.max_loss_pct));
        }
        match p99 {
            Some(p) if p > sc.max_p99_latency_ms => {
                violations.push(format!("latency p99 {p} ms > {} ms", sc.max_p99_latency_ms))
            }
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
            loss_pct: loss,
            frame_loss_pct: frame_loss,
            freezes: total.freezes,
            bad_layer_switches: total.bad_switches,
            corrupt_frames: total.corrupt_frames,
            jitter_ms: P2 {
                p50: ms(percentile(&mut total.jitter_us, 0.5)),
                p99: ms(percentile(&mut total.jitter_us, 0.99)),
            },
            latency_ms: P3 {
                p50: ms(percentile(&mut total.latency_us, 0.5)),
                p95: ms(percentile(&mut total.latency_us, 0.95)),
                p99,
            },
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
            downlink_kbps: sc.downlink_kbps,
            downlink_drops: total.shaper_drops,
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
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v}"));
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
                format!("{} / {}", self.tracks_received, self.tracks_expected),
            ),
            ("packet loss", format!("{} %", self.loss_pct)),
            (
                "frame loss",
                format!(
                    "{} %  ({} freezes, {} layer switches without a keyframe, {} corrupt)",
                    self.frame_loss_pct, self.freezes, self.bad_layer_switches, self.corrupt_frames
                ),
            ),
            (
                "latency p50 / p95 / p99",
                format!(
                    "{} / {} / {} ms",
                    opt(self.latency_ms.p50),
                    opt(self.latency_ms.p95),
                    opt(self.latency_ms.p99)
                ),
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
                    "{k} kbit/s per subscriber, {} datagrams dropped",
                    self.downlink_drops
                ),
            ));
        }
        rows.push((
            "result",
            if self.passed {
                format!(
                    "PASSED (loss ≤ {} %, p99 ≤ {} ms)",
                    self.max_loss_pct, self.max_p99_latency_ms
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
