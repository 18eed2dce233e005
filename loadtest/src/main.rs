//! `stamma-loadtest`: simulated participants with real WebRTC (str0m, many
//! per thread), real Opus and VP8-sized simulcast video, measuring join
//! time, first frame, loss, jitter and one-way latency, and the server's
//! CPU and memory. See `--help`.

mod downlink;
mod janus;
mod janus_target;
mod peer;
mod report;
mod run;
mod scenario;
mod server;
mod stamma;
mod stats;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use stamma_client::media::opus_tone;

use crate::peer::Shared;
use crate::report::{Report, ServerMode};
use crate::scenario::{Preset, Scenario, Subscribe};
use crate::stats::Collector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Stamma,
    Janus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Parser)]
#[command(
    name = "stamma-loadtest",
    version,
    about = "Load test a Stämma server (or Janus) with simulated WebRTC participants"
)]
struct Args {
    /// A preset meeting; the options below override its parts.
    #[arg(long, value_enum, default_value = "custom")]
    scenario: Preset,
    /// Base URL of a running server (http://host:port).
    #[arg(long, conflicts_with = "spawn")]
    url: Option<String>,
    /// Start a local `stamma` on loopback for the run.
    #[arg(long)]
    spawn: bool,
    /// The `stamma` binary for --spawn (default: the one beside this tool).
    #[arg(long)]
    stamma_bin: Option<PathBuf>,
    /// Media workers of the spawned server (default: one per core).
    #[arg(long)]
    server_workers: Option<usize>,
    /// The server's layer allocator (off: every track's top layer to everyone,
    /// the baseline). Written into a --spawn server's config; for --url only
    /// recorded in the report.
    #[arg(long, value_enum, default_value = "on")]
    server_allocator: OnOff,
    /// The server's first bandwidth estimate per subscriber, kbit/s (as the
    /// allocator: --spawn sets it, --url only records it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(50..=100_000))]
    bwe_initial_kbps: Option<u32>,
    /// API key id and secret that mint join tokens (with --url).
    #[arg(long, env = "STAMMA_API_KEY")]
    api_key: Option<String>,
    #[arg(long, env = "STAMMA_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    /// Server process to measure CPU and memory of (automatic with --spawn).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Which SFU is under test.
    #[arg(long, value_enum, default_value = "stamma")]
    target: Target,
    /// Janus WebSocket API (with --target janus), e.g. ws://198.18.0.1:8188.
    #[arg(long)]
    janus_url: Option<String>,
    #[arg(long)]
    rooms: Option<usize>,
    /// Participants per room.
    #[arg(long)]
    participants: Option<usize>,
    /// Camera publishers per room.
    #[arg(long)]
    video_publishers: Option<usize>,
    /// Microphone publishers per room.
    #[arg(long)]
    audio_publishers: Option<usize>,
    /// What each participant watches: all, none, or N (all audio and a grid page of N videos).
    #[arg(long)]
    subscribe: Option<Subscribe>,
    /// Publish three simulcast layers (150/500/1500 kbit/s) instead of one 500 kbit/s layer.
    #[arg(long)]
    simulcast: bool,
    /// Encrypt every frame end to end (SFrame, AES-128-GCM, the clear prefix
    /// of docs/e2ee.md) and decrypt it at every receiver; reports
    /// decrypt_failures. Keys come from one random secret per run (the key
    /// exchange itself is not exercised here).
    #[arg(long)]
    e2ee: bool,
    /// How long to measure after everyone joined: 30s, 2m, 500ms.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Joins per second.
    #[arg(long)]
    ramp: Option<f64>,
    /// Emulate a bottleneck of this many kbit/s in front of every subscriber.
    #[arg(long)]
    downlink_kbps: Option<u32>,
    /// The bottleneck queue's longest delay before it drops, ms.
    #[arg(long, default_value_t = 250)]
    downlink_queue_ms: u64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Fail when packet loss exceeds this (percent).
    #[arg(long)]
    max_loss_pct: Option<f64>,
    /// Fail when the 99th percentile of one-way latency exceeds this.
    #[arg(long)]
    max_p99_latency_ms: Option<f64>,
    /// Threads that run the participants (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Local address for the participants' sockets (default: the route to the server).
    #[arg(long)]
    bind_ip: Option<IpAddr>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m, h)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut sc = Scenario::preset(self.scenario);
        if let Some(v) = self.rooms {
            sc.rooms = v;
        }
        if let Some(v) = self.participants {
            // A preset where everyone publishes keeps everyone publishing at
            // another size; a fixed panel (the hearing's 5) stays fixed.
            let all_video = sc.video_publishers == sc.participants;
            let all_audio = sc.audio_publishers == sc.participants;
            sc.participants = v;
            sc.video_publishers = if all_video {
                v
            } else {
                sc.video_publishers.min(v)
            };
            sc.audio_publishers = if all_audio {
                v
            } else {
                sc.audio_publishers.min(v)
            };
        }
        if let Some(v) = self.video_publishers {
            sc.video_publishers = v;
        }
        if let Some(v) = self.audio_publishers {
            sc.audio_publishers = v;
        }
        if let Some(v) = self.subscribe {
            sc.subscribe = v;
        }
        sc.simulcast |= self.simulcast;
        sc.e2ee |= self.e2ee;
        if let Some(v) = self.duration {
            sc.duration = v;
        }
        if let Some(v) = self.ramp {
            sc.ramp = v;
        }
        sc.downlink_kbps = self.downlink_kbps.or(sc.downlink_kbps);
        sc.downlink_queue = Duration::from_millis(self.downlink_queue_ms);
        if let Some(v) = self.max_loss_pct {
            sc.max_loss_pct = v;
        }
        if let Some(v) = self.max_p99_latency_ms {
            sc.max_p99_latency_ms = v;
        }
        if sc.rooms == 0 || sc.participants == 0 {
            bail!("--rooms and --participants must be at least 1");
        }
        if sc.total_participants() > 20_000 {
            bail!("at most 20000 participants in one process");
        }
        if sc.ramp.is_nan() || sc.ramp <= 0.0 {
            bail!("--ramp must be positive");
        }
        Ok(sc)
    }
}

/// The local address that routes to `url`'s host: the participants' ICE
/// candidates must be reachable from the server.
async fn route_to(url: &str) -> anyhow::Result<IpAddr> {
    let rest = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or_default();
    let host_port = if rest.contains(':') {
        rest.to_string()
    } else {
        format!("{rest}:80")
    };
    let addr = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} has no address"))?;
    // Connecting a UDP socket sends nothing; it only asks the kernel's route.
    let probe = std::net::UdpSocket::bind((if addr.is_ipv4() { "0.0.0.0" } else { "::" }, 0))?;
    probe.connect(addr)?;
    Ok(probe.local_addr()?.ip())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(main_async(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn main_async(args: Args) -> anyhow::Result<bool> {
    let sc = args.scenario()?;
    let mut spawned = None;
    let (url, server_pid) = match (&args.url, args.spawn, args.target) {
        (_, true, Target::Stamma) => {
            let bin = server::find_stamma(args.stamma_bin.as_deref())?;
            let opts = server::SpawnOptions {
                workers: args.server_workers,
                allocator: args.server_allocator == OnOff::On,
                bwe_initial_kbps: args.bwe_initial_kbps,
            };
            let s = server::spawn(&bin, &opts).await?;
            let r = (s.url.clone(), Some(s.pid));
            spawned = Some(s);
            r
        }
        (Some(u), false, Target::Stamma) => (u.clone(), args.server_pid),
        (_, _, Target::Janus) => (
            args.janus_url
                .clone()
                .context("--target janus needs --janus-url")?,
            args.server_pid,
        ),
        (None, false, Target::Stamma) => bail!("give --url of a running server, or --spawn"),
    };
    let bind_ip = match args.bind_ip {
        Some(ip) => ip,
        None => route_to(&url).await?,
    };
    let frames = 500; // a 10 s loop
    let to_arc = |v: Vec<Option<Vec<u8>>>| -> Vec<Option<Arc<[u8]>>> {
        v.into_iter().map(|p| p.map(Arc::from)).collect()
    };
    let speech = to_arc(opus_tone::encode_dtx(true, frames).context("encoding Opus speech")?);
    let silence = to_arc(opus_tone::encode_dtx(false, frames).context("encoding Opus silence")?);
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .context("generating the DTLS certificate")?;
    let start = Instant::now();
    let total = sc.total_participants();
    let shared = Arc::new(Shared {
        epoch: start,
        scenario: sc.clone(),
        collector: Arc::new(Collector::new(start)),
        speech,
        silence,
        cert,
        bind_ip,
        activity: (0..total)
            .map(|_| Default::default())
            .collect::<Vec<[(AtomicU64, AtomicU64); 2]>>(),
        joined: AtomicUsize::new(0),
        e2ee_secret: if sc.e2ee {
            Some(
                stamma_client::e2ee::random_secret()
                    .context("no randomness for the E2EE secret")?,
            )
        } else {
            None
        },
    });
    let progress = !args.quiet;
    if progress {
        eprintln!(
            "{}: {} participants in {} room(s) against {url}, {} s",
            sc.name,
            total,
            sc.rooms,
            sc.duration.as_secs()
        );
    }
    let data = match args.target {
        Target::Stamma => {
            let (key, secret) = match &spawned {
                Some(s) => (s.api_key.clone(), s.api_secret.clone()),
                None => (
                    args.api_key
                        .clone()
                        .context("--api-key is needed with --url")?,
                    args.api_secret
                        .clone()
                        .context("--api-secret is needed with --url")?,
                ),
            };
            let target = Arc::new(stamma::StammaTarget {
                url: url.clone(),
                api_key: key,
                api_secret: secret,
            });
            let sh = shared.clone();
            run::run(shared.clone(), server_pid, progress, move |plan, stop| {
                Box::pin(stamma::participant(target.clone(), sh.clone(), plan, stop))
            })
            .await
        }
        Target::Janus => {
            let target = Arc::new(janus_target::JanusTarget {
                url: url.clone(),
                audio_mids: Default::default(),
            });
            let sh = shared.clone();
            run::run(shared.clone(), server_pid, progress, move |plan, stop| {
                Box::pin(janus_target::participant(
                    target.clone(),
                    sh.clone(),
                    plan,
                    stop,
                ))
            })
            .await
        }
    };
    let target_name = match args.target {
        Target::Stamma => "stamma",
        Target::Janus => "janus",
    };
    let mode = ServerMode {
        allocator: (args.target == Target::Stamma).then_some(args.server_allocator == OnOff::On),
        bwe_initial_kbps: args.bwe_initial_kbps,
        applied: spawned.is_some(),
    };
    let report = Report::build(&sc, target_name, &mode, data);
    println!("{}", report.table());
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.html {
        std::fs::write(p, report.html()).with_context(|| format!("writing {}", p.display()))?;
    }
    drop(spawned);
    Ok(report.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(args: &[&str]) -> Scenario {
        let mut all = vec!["stamma-loadtest"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)
            .expect("arguments parse")
            .scenario()
            .expect("valid scenario")
    }

    #[test]
    fn resizing_a_preset_keeps_its_shape() {
        let m = scenario(&["--scenario", "meeting-50", "--participants", "20"]);
        assert_eq!(
            (m.participants, m.video_publishers, m.audio_publishers),
            (20, 20, 20)
        );
        let h = scenario(&["--scenario", "hearing", "--participants", "60"]);
        assert_eq!(
            (h.participants, h.video_publishers, h.audio_publishers),
            (60, 5, 5)
        );
        let a = scenario(&["--scenario", "audio-300", "--participants", "100"]);
        assert_eq!(
            (a.participants, a.video_publishers, a.audio_publishers),
            (100, 0, 100)
        );
        let c = scenario(&["--participants", "3", "--subscribe", "none", "--simulcast"]);
        assert_eq!(c.subscribe, Subscribe::None);
        assert!(c.simulcast && c.video_publishers == 3);
    }

    #[test]
    fn the_allocator_is_on_unless_turned_off() {
        let parse = |a: &[&str]| {
            let mut all = vec!["stamma-loadtest"];
            all.extend_from_slice(a);
            Args::try_parse_from(all).map_err(|e| e.to_string())
        };
        let on = parse(&[]).expect("defaults parse");
        assert_eq!(
            (on.server_allocator, on.bwe_initial_kbps),
            (OnOff::On, None)
        );
        let off = parse(&["--server-allocator", "off", "--bwe-initial-kbps", "800"])
            .expect("allocator off parses");
        assert_eq!(
            (off.server_allocator, off.bwe_initial_kbps),
            (OnOff::Off, Some(800))
        );
        assert!(parse(&["--server-allocator", "maybe"]).is_err());
        assert!(parse(&["--bwe-initial-kbps", "10"]).is_err());
    }

    #[test]
    fn bad_arguments_are_refused() {
        let parse = |a: &[&str]| {
            let mut all = vec!["stamma-loadtest"];
            all.extend_from_slice(a);
            Args::try_parse_from(all)
                .map_err(|e| e.to_string())
                .and_then(|a| a.scenario().map_err(|e| e.to_string()))
        };
        assert!(parse(&["--participants", "0"]).is_err());
        assert!(parse(&["--ramp", "0"]).is_err());
        assert!(parse(&["--subscribe", "some"]).is_err());
        assert!(parse(&["--duration", "5 parsecs"]).is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("-1s").is_err());
    }
}
