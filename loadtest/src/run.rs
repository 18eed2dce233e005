//! A run: participants join at the ramp rate, the scenario plays for its
//! duration, everyone measures, everyone leaves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::peer::{PeerHandle, PeerSummary, Shared, TrackKey};
use crate::scenario::{ParticipantPlan, Subscribe};
use crate::server;
use crate::stats::Second;

/// How long everyone may take to connect after the last join started.
const CONNECT_GRACE: Duration = Duration::from_secs(20);
/// How long leaving may take before a participant is abandoned.
const LEAVE_GRACE: Duration = Duration::from_secs(20);

/// One participant's state while its session runs.
pub struct ParticipantRun {
    pub plan: ParticipantPlan,
    pub t0: Instant,
    pub peer: Option<PeerHandle>,
    pub summary: Option<PeerSummary>,
    /// Non-fatal errors the server reported.
    pub errors: Vec<String>,
    /// Whether this participant should receive anything at all.
    pub receives: bool,
}

/// How a participant's run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub index: u32,
    pub error: Option<String>,
    pub join_ms: Option<f64>,
    pub first_frame_ms: Vec<f64>,
    pub tracks_expected: usize,
    pub tracks_received: usize,
    pub missing: Vec<TrackKey>,
    pub tracks_paused: usize,
    pub server_errors: Vec<String>,
}

impl ParticipantRun {
    pub fn new(plan: ParticipantPlan, shared: &Shared) -> ParticipantRun {
        let sc = &shared.scenario;
        let others_publish = (0..sc.publishers_per_room()).any(|l| l != plan.local);
        ParticipantRun {
            plan,
            t0: Instant::now(),
            peer: None,
            summary: None,
            errors: Vec::new(),
            receives: others_publish && sc.subscribe != Subscribe::None,
        }
    }

    pub async fn finish(mut self, result: anyhow::Result<()>) -> Outcome {
        if self.summary.is_none()
            && let Some(p) = &self.peer
        {
            self.summary = Some(p.finish().await);
        }
        let mut o = Outcome {
            index: self.plan.index,
            error: result.err().map(|e| format!("{e:#}")),
            server_errors: self.errors,
            ..Outcome::default()
        };
        let Some(s) = self.summary else {
            o.error
                .get_or_insert_with(|| "never got a media connection".into());
            return o;
        };
        let joined_at = if self.receives {
            s.first_media_at
        } else {
            s.connected_at
        };
        match joined_at {
            Some(t) => {
                o.join_ms = Some(t.saturating_duration_since(self.t0).as_secs_f64() * 1000.0)
            }
            None => {
                o.error.get_or_insert_with(|| {
                    if s.connected_at.is_none() {
                        "media connection never came up".into()
                    } else {
                        "connected but never received media".into()
                    }
                });
            }
        }
        o.first_frame_ms = s.first_frame_ms;
        o.tracks_expected = s.tracks_expected;
        o.tracks_received = s.tracks_received;
        o.missing = s.missing;
        o.tracks_paused = s.tracks_paused;
        o
    }
}

pub type ParticipantFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

/// What the run produced, for the report.
pub struct RunData {
    pub seconds: Vec<Second>,
    pub outcomes: Vec<Outcome>,
    /// Seconds since start: when measuring began and ended.
    pub window: (f64, f64),
    pub server_cpu_seconds: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
}

pub async fn run(
    shared: Arc<Shared>,
    server_pid: Option<u32>,
    progress: bool,
    mut start_participant: impl FnMut(ParticipantPlan, watch::Receiver<bool>) -> ParticipantFuture,
) -> RunData {
    let sc = shared.scenario.clone();
    let collector = shared.collector.clone();
    let start = collector.start;
    let total = sc.total_participants();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_rss = Arc::new(std::sync::Mutex::new(None::<f64>));
    {
        let (c, go, peak) = (collector.clone(), sampling.clone(), peak_rss.clone());
        let me = std::process::id();
        tokio::spawn(async move {
            let mut last = server_pid.and_then(server::sample).map(|s| s.0);
            let mut last_me = server::sample(me).map(|s| s.0);
            let mut last_t = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while go.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = Instant::now();
                let wall = now.duration_since(last_t).as_secs_f64().max(1e-3);
                last_t = now;
                // The generator's own CPU tells whether it, not the server,
                // was the limit.
                if let Some((cpu, _)) = server::sample(me) {
                    if let Some(c0) = last_me {
                        c.record_loadgen(now, 100.0 * (cpu - c0) / wall);
                    }
                    last_me = Some(cpu);
                }
                let Some((cpu, rss)) = server_pid.and_then(server::sample) else {
                    continue;
                };
                if let Some(c0) = last {
                    c.record_server(now, 100.0 * (cpu - c0) / wall, rss);
                }
                let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                *p = Some(p.map_or(rss, |x: f64| x.max(rss)));
                last = Some(cpu);
            }
        });
    }
    let bar = if progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("joining");
    let mut tasks = JoinSet::new();
    let ramp = sc.ramp.max(0.01);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / ramp);
        tokio::time::sleep_until(at.into()).await;
        tasks.spawn(start_participant(sc.role_of(i), stop_rx.clone()));
        let joined = shared.joined.load(Ordering::Relaxed);
        bar.set_position(joined as u64);
        collector.record_joined(Instant::now(), joined);
    }
    // Wait for everyone's media connection, within bounds.
    let deadline = Instant::now() + CONNECT_GRACE;
    loop {
        let joined = shared.joined.load(Ordering::Relaxed);
        bar.set_position(joined as u64);
        collector.record_joined(Instant::now(), joined);
        if joined >= total || Instant::now() > deadline || tasks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the last joiners' subscriptions a moment to settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let measure_start = Instant::now();
    let cpu_start = server_pid.and_then(server::sample).map(|s| s.0);
    bar.set_prefix("running");
    bar.set_length(sc.duration.as_secs());
    bar.set_position(0);
    let end = measure_start + sc.duration;
    while Instant::now() < end {
        let step = end
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        tokio::time::sleep(step).await;
        let now = Instant::now();
        bar.set_position(now.saturating_duration_since(measure_start).as_secs());
        collector.record_joined(now, shared.joined.load(Ordering::Relaxed));
        if let Some((pps, loss, p99)) = collector.live(now) {
            bar.set_message(format!("{pps} pkt/s  loss {loss:.2}%  p99 {p99:.1} ms"));
        }
    }
    let measure_end = Instant::now();
    let cpu_end = server_pid.and_then(server::sample).map(|s| s.0);
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(total);
    let leave_by = tokio::time::Instant::now() + LEAVE_GRACE;
    while let Ok(Some(r)) = tokio::time::timeout_at(leave_by, tasks.join_next()).await {
        match r {
            Ok(o) => outcomes.push(o),
            Err(e) => outcomes.push(Outcome {
                error: Some(format!("participant task failed: {e}")),
                ..Outcome::default()
            }),
        }
    }
    for _ in 0..tasks.len() {
        outcomes.push(Outcome {
            error: Some("did not leave in time".into()),
            ..Outcome::default()
        });
    }
    tasks.abort_all();
    sampling.store(false, Ordering::Relaxed);
    let seconds = collector.take();
    let since = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    let peak = *peak_rss.lock().unwrap_or_else(|e| e.into_inner());
    RunData {
        seconds,
        outcomes,
        window: (since(measure_start), since(measure_end)),
        server_cpu_seconds: cpu_start.zip(cpu_end).map(|(a, b)| b - a),
        server_peak_rss_mb: peak,
    }
}
