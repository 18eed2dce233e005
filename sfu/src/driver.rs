//! The IO edge: one thread per worker, each with its own UDP socket, its own
//! single-threaded tokio runtime and the clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};

use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::SfuError;
use crate::command::Command;
use crate::config::SfuConfig;
use crate::ice_tcp::TcpMedia;
use crate::worker::{Worker, WorkerCounts, WorkerStats};

/// Commands queued per worker before senders wait.
const COMMAND_QUEUE: usize = 4096;
/// Largest datagram read; anything longer is truncated and then fails to parse.
const RECV_BUFFER: usize = 2048;
/// Datagrams read in one go before timers and commands get a turn.
const RECV_BATCH: usize = 64;
/// Receive buffer asked for each worker's UDP socket. Linux's default
/// (208 KiB) holds about 90 datagrams of video, as each takes ~2.3 KiB of
/// buffer: measured with the load tester (meeting of 50), a worker busy
/// forwarding one burst let the next overflow it, 5 000 datagrams were
/// dropped in 30 s (0.4 % loss, all on the server's socket) and their
/// retransmissions made the p99 latency 400-600 ms. The kernel grants at
/// most `net.core.rmem_max` (then doubles it); see deploy/README.md.
const RECV_SOCKET_BUFFER: usize = 8 << 20;
/// Below this a warning tells the operator to raise `net.core.rmem_max`.
const RECV_SOCKET_BUFFER_WARN: usize = 2 << 20;
/// How often a worker adds its counters to the process's metrics. The packet
/// path only bumps plain integers in [`WorkerStats`]; the `metrics` registry
/// is touched here, a few dozen times per interval.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Live numbers of one worker, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerGauges {
    pub participants: AtomicU64,
    pub rooms: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_dropped: AtomicU64,
    pub rtp_forwarded: AtomicU64,
}

/// How signaling reaches one worker.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    pub index: usize,
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    pub gauges: Arc<WorkerGauges>,
}

impl WorkerHandle {
    /// Queue a command; fails only when the worker has stopped.
    pub async fn send(&self, command: Command) -> Result<(), Command> {
        self.commands.send(command).await.map_err(|e| e.0)
    }

    /// Queue a command without waiting (for use from `Drop`).
    pub fn try_send(&self, command: Command) -> bool {
        self.commands.try_send(command).is_ok()
    }
}

/// All workers of this node.
#[derive(Debug)]
pub struct MediaPlane {
    pub workers: Vec<WorkerHandle>,
}

impl MediaPlane {
    /// Bind every worker's socket, then start the worker threads.
    pub fn start(config: SfuConfig) -> Result<MediaPlane, SfuError> {
        if config.workers == 0 {
            return Err(SfuError::Config("at least one worker is needed".into()));
        }
        let provider = str0m::crypto::from_feature_flags();
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(SfuError::Certificate)?;
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let port = if config.first_port == 0 {
                0
            } else {
                config
                    .first_port
                    .checked_add(index as u16)
                    .ok_or_else(|| SfuError::Config("media port range overflows".into()))?
            };
            let addr = SocketAddr::new(config.bind_ip, port);
            let (std_socket, tcp_listener, local_addr) = bind_media(addr, config.ice_tcp)?;
            let candidate_addr = SocketAddr::new(
                config.public_ip.unwrap_or(config.bind_ip),
                local_addr.port(),
            );
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let gauges = Arc::new(WorkerGauges::default());
            let worker = Worker::new(
                config.clone(),
                local_addr,
                candidate_addr,
                cert.clone(),
                Instant::now(),
            );
            let g = gauges.clone();
            std::thread::Builder::new()
                .name(format!("stamma-worker-{index}"))
                .spawn(move || run_worker(index, worker, std_socket, tcp_listener, rx, g))
                .map_err(SfuError::Thread)?;
            info!(worker = index, addr = %local_addr, candidate = %candidate_addr, "media worker started");
            workers.push(WorkerHandle {
                index,
                local_addr,
                commands: tx,
                gauges,
            });
        }
        Ok(MediaPlane { workers })
    }
}

/// The UDP socket and, with ICE-TCP, a TCP listener on the same port. With
/// port 0 the OS picks the UDP port, and that port may already be taken for
/// TCP (by anyone's outgoing connection): then pick again.
fn bind_media(
    addr: SocketAddr,
    ice_tcp: bool,
) -> Result<
    (
        std::net::UdpSocket,
        Option<std::net::TcpListener>,
        SocketAddr,
    ),
    SfuError,
> {
    let bind_err = |addr, source| SfuError::Bind { addr, source };
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind_err(addr, e))?;
        udp.set_nonblocking(true).map_err(|e| bind_err(addr, e))?;
        let local = udp.local_addr().map_err(|e| bind_err(addr, e))?;
        grow_receive_buffer(&udp, local);
        if !ice_tcp {
            return Ok((udp, None, local));
        }
        match std::net::TcpListener::bind(local) {
            Ok(tcp) => {
                tcp.set_nonblocking(true).map_err(|e| bind_err(local, e))?;
                return Ok((udp, Some(tcp), local));
            }
            Err(e) => last = Some(bind_err(local, e)),
        }
    }
    Err(last.unwrap_or(SfuError::Config("could not bind the media ports".into())))
}

/// Ask for [`RECV_SOCKET_BUFFER`]; a smaller grant is not fatal (the
/// kernel's limit decides), but it is worth a warning.
fn grow_receive_buffer(udp: &std::net::UdpSocket, local: SocketAddr) {
    let sock = socket2::SockRef::from(udp);
    if let Err(e) = sock.set_recv_buffer_size(RECV_SOCKET_BUFFER) {
        warn!(addr = %local, error = %e, "could not set the media socket's receive buffer");
    }
    match sock.recv_buffer_size() {
        Ok(n) if n < RECV_SOCKET_BUFFER_WARN => warn!(
            addr = %local,
            bytes = n,
            "media socket receive buffer is small: bursts will be dropped under load; raise net.core.rmem_max (see deploy/README.md)"
        ),
        Ok(n) => debug!(addr = %local, bytes = n, "media socket receive buffer"),
        Err(e) => debug!(addr = %local, error = %e, "media socket receive buffer unknown"),
    }
}

fn run_worker(
    index: usize,
    worker: Worker,
    socket: std::net::UdpSocket,
    tcp_listener: Option<std::net::TcpListener>,
    commands: mpsc::Receiver<Command>,
    gauges: Arc<WorkerGauges>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(worker = index, error = %e, "could not start worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let socket = match UdpSocket::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                error!(worker = index, error = %e, "could not register worker socket");
                return;
            }
        };
        let tcp = match tcp_listener.map(tokio::net::TcpListener::from_std) {
            Some(Ok(l)) => Some(TcpMedia::start(l)),
            Some(Err(e)) => {
                error!(worker = index, error = %e, "could not register the ICE-TCP listener");
                None
            }
            None => None,
        };
        worker_loop(index, worker, socket, tcp, commands, gauges).await;
    });
}

/// One worker's share of the process-wide metrics (names in README.md).
/// Handles are registered once, when the worker starts: register the
/// recorder before [`MediaPlane::start`] or these are no-ops.
/// Gauges are moved by this worker's change since its last export, so
/// several workers (and several servers in one test process) add up.
struct Exported {
    last_stats: WorkerStats,
    last_counts: WorkerCounts,
    rooms: Gauge,
    participants: Gauge,
    audio_tracks: Gauge,
    video_tracks: Gauge,
    subscriptions: Gauge,
    rtp_forwarded: Counter,
    rtp_forwarded_bytes: Counter,
    rtp_received: Counter,
    datagrams_dropped: Counter,
    nacks_received: Counter,
    plis_received: Counter,
    keyframe_requests_sent: Counter,
    layer_switches: Counter,
    frames_shed: Counter,
    audio_gated: Counter,
    streams_parked: Counter,
    streams_restored: Counter,
    offers_resent: Counter,
    load_cuts: Counter,
    shedding: Gauge,
    was_shedding: bool,
    duty: Histogram,
    joined: Counter,
    left: Counter,
    bandwidth_estimate: Histogram,
    loop_lag: Histogram,
}

impl Exported {
    fn register() -> Exported {
        Exported {
            last_stats: WorkerStats::default(),
            last_counts: WorkerCounts::default(),
            rooms: metrics::gauge!("stamma_rooms"),
            participants: metrics::gauge!("stamma_participants"),
            audio_tracks: metrics::gauge!("stamma_tracks", "kind" => "audio"),
            video_tracks: metrics::gauge!("stamma_tracks", "kind" => "video"),
            subscriptions: metrics::gauge!("stamma_subscriptions"),
            rtp_forwarded: metrics::counter!("stamma_rtp_forwarded_packets_total"),
            rtp_forwarded_bytes: metrics::counter!("stamma_rtp_forwarded_bytes_total"),
            rtp_received: metrics::counter!("stamma_rtp_received_packets_total"),
            datagrams_dropped: metrics::counter!("stamma_datagrams_dropped_total"),
            nacks_received: metrics::counter!("stamma_nacks_received_total"),
            plis_received: metrics::counter!("stamma_plis_received_total"),
            keyframe_requests_sent: metrics::counter!("stamma_keyframe_requests_sent_total"),
            layer_switches: metrics::counter!("stamma_layer_switches_total"),
            frames_shed: metrics::counter!("stamma_video_shed_total"),
            audio_gated: metrics::counter!("stamma_audio_gated_packets_total"),
            streams_parked: metrics::counter!("stamma_streams_parked_total"),
            streams_restored: metrics::counter!("stamma_streams_restored_total"),
            offers_resent: metrics::counter!("stamma_offers_resent_total"),
            load_cuts: metrics::counter!("stamma_load_shed_cuts_total"),
            shedding: metrics::gauge!("stamma_workers_shedding"),
            was_shedding: false,
            duty: metrics::histogram!("stamma_worker_duty_ratio"),
            joined: metrics::counter!("stamma_participants_joined_total"),
            left: metrics::counter!("stamma_participants_left_total"),
            bandwidth_estimate: metrics::histogram!("stamma_bandwidth_estimate_bps"),
            loop_lag: metrics::histogram!("stamma_worker_loop_lag_seconds"),
        }
    }

    fn publish(&mut self, worker: &mut Worker) {
        let s = worker.stats();
        let l = self.last_stats;
        let moves = [
            (&self.rtp_forwarded, s.rtp_forwarded, l.rtp_forwarded),
            (
                &self.rtp_forwarded_bytes,
                s.rtp_forwarded_bytes,
                l.rtp_forwarded_bytes,
            ),
            (&self.rtp_received, s.rtp_in, l.rtp_in),
            (
                &self.datagrams_dropped,
                s.datagrams_dropped,
                l.datagrams_dropped,
            ),
            (&self.nacks_received, s.nacks_received, l.nacks_received),
            (&self.plis_received, s.plis_received, l.plis_received),
            (
                &self.keyframe_requests_sent,
                s.keyframe_requests,
                l.keyframe_requests,
            ),
            (&self.layer_switches, s.layer_switches, l.layer_switches),
            (&self.frames_shed, s.frames_shed, l.frames_shed),
            (&self.audio_gated, s.audio_gated, l.audio_gated),
            (&self.streams_parked, s.streams_parked, l.streams_parked),
            (
                &self.streams_restored,
                s.streams_restored,
                l.streams_restored,
            ),
            (&self.offers_resent, s.offers_resent, l.offers_resent),
            (&self.load_cuts, s.load_cuts, l.load_cuts),
            (&self.joined, s.participants_joined, l.participants_joined),
            (&self.left, s.participants_left, l.participants_left),
        ];
        for (counter, now, before) in moves {
            counter.increment(now.saturating_sub(before));
        }
        self.last_stats = s;
        let shedding = worker.video_cap().is_some();
        if shedding != self.was_shedding {
            self.was_shedding = shedding;
            self.shedding.increment(if shedding { 1.0 } else { -1.0 });
        }
        self.set_counts(worker.counts());
        for bps in worker.drain_bwe_samples() {
            self.bandwidth_estimate.record(bps as f64);
        }
    }

    fn set_counts(&mut self, c: WorkerCounts) {
        let l = self.last_counts;
        let moves = [
            (&self.rooms, c.rooms, l.rooms),
            (&self.participants, c.participants, l.participants),
            (&self.audio_tracks, c.audio_tracks, l.audio_tracks),
            (&self.video_tracks, c.video_tracks, l.video_tracks),
            (&self.subscriptions, c.subscriptions, l.subscriptions),
        ];
        for (gauge, now, before) in moves {
            gauge.increment(now as f64 - before as f64);
        }
        self.last_counts = c;
    }
}

async fn worker_loop(
    index: usize,
    mut worker: Worker,
    socket: UdpSocket,
    mut tcp: Option<TcpMedia>,
    mut commands: mpsc::Receiver<Command>,
    gauges: Arc<WorkerGauges>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut exported = Exported::register();
    let mut next_export = Instant::now() + METRICS_INTERVAL;
    // Duty cycle for the metrics: time spent working since the last export.
    let (mut busy_since_export, mut last_export) = (Duration::ZERO, Instant::now());
    loop {
        let deadline = worker.next_timeout(Instant::now());
        // When this loop turn's work began: set as each branch wakes, so
        // the wait for input is not counted as work.
        let woke: Instant;
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                woke = Instant::now();
                match r {
                    Ok((n, source)) => {
                        // One clock reading for the batch: subscribers then get
                        // one clock advance per batch, not per packet.
                        let now = Instant::now();
                        worker.handle_datagram(now, source, &buf[..n]);
                        // Drain what else is queued before looking at timers.
                        for _ in 1..RECV_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, source)) => worker.handle_datagram(now, source, &buf[..n]),
                                Err(_) => break,
                            }
                        }
                        worker.flush(now);
                    }
                    // ICMP port unreachable and the like surface here on Linux; not fatal.
                    Err(e) => debug!(worker = index, error = %e, "recv failed"),
                }
            }
            c = commands.recv() => {
                woke = Instant::now();
                match c {
                    Some(c) => worker.handle_command(Instant::now(), c),
                    None => break,
                }
            }
            Some(e) = async {
                match tcp.as_mut() {
                    Some(t) => t.events.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                woke = Instant::now();
                if let Some(t) = tcp.as_mut() {
                    // Batched as UDP is: one clock reading and one flush.
                    let now = Instant::now();
                    let (mut next, mut taken) = (Some(e), 0);
                    while let Some(e) = next.take() {
                        if let Some((source, packet)) = t.on_event(e) {
                            worker.handle_tcp_packet(now, source, &packet);
                        }
                        taken += 1;
                        if taken < RECV_BATCH {
                            next = t.events.try_recv().ok();
                        }
                    }
                    worker.flush(now);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                woke = now;
                // Loop lag: how late the timer fired against its deadline
                // (a busy or starved worker thread shows here first).
                exported
                    .loop_lag
                    .record(now.saturating_duration_since(deadline).as_secs_f64());
                worker.handle_timeout(now);
            }
        }
        for t in worker.outbox().drain(..) {
            if t.proto == Protocol::Tcp {
                if !tcp
                    .as_ref()
                    .is_some_and(|c| c.send(t.destination, &t.contents))
                {
                    debug!(worker = index, to = %t.destination, "TCP media packet dropped");
                }
                continue;
            }
            let r = match socket.try_send_to(&t.contents, t.destination) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    socket.send_to(&t.contents, t.destination).await
                }
                r => r,
            };
            if let Err(e) = r {
                debug!(worker = index, error = %e, to = %t.destination, "send failed");
            }
        }
        let s = worker.stats();
        gauges
            .participants
            .store(worker.participant_count() as u64, Ordering::Relaxed);
        gauges
            .rooms
            .store(worker.room_count() as u64, Ordering::Relaxed);
        gauges.datagrams_in.store(s.datagrams_in, Ordering::Relaxed);
        gauges
            .datagrams_dropped
            .store(s.datagrams_dropped, Ordering::Relaxed);
        gauges
            .rtp_forwarded
            .store(s.rtp_forwarded, Ordering::Relaxed);
        let now = Instant::now();
        let busy = now.saturating_duration_since(woke);
        worker.note_busy(now, busy);
        busy_since_export += busy;
        if now >= next_export {
            next_export = now + METRICS_INTERVAL;
            let window = now.saturating_duration_since(last_export).as_secs_f64();
            exported
                .duty
                .record((busy_since_export.as_secs_f64() / window.max(1e-3)).min(1.0));
            (busy_since_export, last_export) = (Duration::ZERO, now);
            exported.publish(&mut worker);
        }
    }
    // A stopped worker holds nothing: take its share out of the gauges.
    exported.publish(&mut worker);
    if exported.was_shedding {
        exported.shedding.decrement(1.0);
    }
    exported.set_counts(WorkerCounts::default());
    info!(worker = index, "media worker stopped");
}
