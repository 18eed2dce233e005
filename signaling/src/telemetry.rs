//! The process's metrics recorder, rendered by `GET /metrics`.
//!
//! `metrics` has one global recorder per process; tests start several
//! servers in one process, so it is installed once and every server shares
//! its handle (and its numbers: gauges are sums over the servers).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Downlink estimates, 100 kbit/s to 50 Mbit/s.
const BANDWIDTH_BUCKETS: [f64; 10] = [100e3, 250e3, 500e3, 1e6, 2e6, 3e6, 5e6, 10e6, 20e6, 50e6];
/// Worker timer lateness, 0.1 ms to 1 s.
const LAG_BUCKETS: [f64; 10] = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.25, 1.0,
];
/// The LoadShedder acts above 0.8 (see `stamma_sfu::load_shedder`).
const DUTY_BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Histogram samples pile up in the recorder until rendered or upkept;
/// without a scraper this bounds them.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the recorder (first call) and return the handle to render it.
pub fn install() -> PrometheusHandle {
    HANDLE.get_or_init(build).clone()
}

fn build() -> PrometheusHandle {
    let builder = PrometheusBuilder::new();
    // Both calls fail only on an empty bucket list.
    let builder = builder
        .set_buckets_for_metric(
            Matcher::Full("stamma_bandwidth_estimate_bps".into()),
            &BANDWIDTH_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("stamma_worker_loop_lag_seconds".into()),
                &LAG_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("stamma_worker_duty_ratio".into()),
                &DUTY_BUCKETS,
            )
        })
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        // Only when this code is embedded next to another recorder: ours
        // then renders nothing, which /metrics makes visible.
        tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
    }
    describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("stamma-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread");
    }
    handle
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("stamma_rooms", "Rooms open on this node");
    describe_gauge!("stamma_participants", "Participants in rooms on this node");
    describe_gauge!("stamma_tracks", "Published tracks, by kind");
    describe_gauge!("stamma_subscriptions", "Participants receiving a track");
    describe_gauge!("stamma_signaling_sessions", "Open signaling WebSockets");
    describe_gauge!("stamma_draining", "1 while the node drains (no new rooms)");
    describe_counter!(
        "stamma_rtp_forwarded_packets_total",
        "RTP packets sent to subscribers"
    );
    describe_counter!(
        "stamma_rtp_forwarded_bytes_total",
        "RTP payload bytes sent to subscribers (headers not counted)"
    );
    describe_counter!(
        "stamma_rtp_received_packets_total",
        "RTP packets received from publishers"
    );
    describe_counter!(
        "stamma_datagrams_dropped_total",
        "UDP datagrams of no participant, or that did not parse"
    );
    describe_counter!(
        "stamma_nacks_received_total",
        "NACKs received from subscribers"
    );
    describe_counter!(
        "stamma_plis_received_total",
        "Keyframe requests (PLI, FIR) received from subscribers"
    );
    describe_counter!(
        "stamma_keyframe_requests_sent_total",
        "Keyframe requests sent to publishers, after coalescing"
    );
    describe_counter!(
        "stamma_layer_switches_total",
        "Subscriptions switched from one simulcast layer to another"
    );
    describe_counter!(
        "stamma_video_shed_total",
        "Times a subscriber's video began shedding frames because its send queue held more than 150 ms"
    );
    describe_counter!(
        "stamma_audio_gated_packets_total",
        "Audio packets of idle microphones not forwarded (silence gate)"
    );
    describe_counter!(
        "stamma_streams_parked_total",
        "Outgoing streams taken out of the media stack after 2 s with nothing to send"
    );
    describe_counter!(
        "stamma_streams_restored_total",
        "Parked outgoing streams put back because a packet was forwarded on them"
    );
    describe_counter!(
        "stamma_offers_resent_total",
        "Server offers sent again because the client had not answered within 3 s"
    );
    describe_counter!(
        "stamma_load_shed_cuts_total",
        "Times a saturated worker set or lowered the cap on its subscribers' video"
    );
    describe_gauge!(
        "stamma_workers_shedding",
        "Workers holding a video cap because their thread is saturated"
    );
    describe_counter!(
        "stamma_signaling_errors_total",
        "Error signals sent, by code"
    );
    describe_counter!(
        "stamma_participants_joined_total",
        "Participants that joined a room"
    );
    describe_counter!(
        "stamma_participants_left_total",
        "Participants that left a room"
    );
    describe_histogram!(
        "stamma_bandwidth_estimate_bps",
        "Subscribers' downlink estimates, observed when the Allocator runs"
    );
    describe_histogram!(
        "stamma_worker_loop_lag_seconds",
        "How late a worker's timer fired against its deadline"
    );
    describe_histogram!(
        "stamma_worker_duty_ratio",
        "Share of each second a worker spent working rather than waiting for input"
    );
}
