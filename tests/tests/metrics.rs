//! `/metrics` follows a meeting: participants, forwarded packets and typed
//! signaling errors show up in the Prometheus text format.
//!
//! One test in this file on purpose: the metrics recorder is per process,
//! and another server in the same process would add to the same numbers.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use stamma_client::signal::SignalClient;
use stamma_proto::{ErrorCode, MediaKind, Role};
use stamma_tests::{Publish, TestParticipant, TestServer, expect_error, http_get, wait_until};

/// The value of one series (`name` or `name{label="value"}`, exactly as
/// rendered), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok()).flatten()
    })
}

async fn scrape(srv: &TestServer) -> anyhow::Result<String> {
    let (status, body) = http_get(srv.server.http_addr, "/metrics").await?;
    if status != 200 {
        bail!("/metrics returned {status}");
    }
    Ok(body)
}

/// Scrape until `ok` holds for the series' value; fails after `timeout`.
async fn wait_metric(
    srv: &TestServer,
    series: &str,
    timeout: Duration,
    ok: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = scrape(srv).await?;
        let v = value(&text, series);
        if let Some(v) = v
            && ok(v)
        {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{series} is {v:?} after {timeout:?}; /metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_meeting_and_count_errors_by_code() -> anyhow::Result<()> {
    let srv = TestServer::start(1).await?;
    let publish = Publish {
        tone_hz: Some(440.0),
        video: true,
        ..Publish::default()
    };
    let a = TestParticipant::join(&srv.base, "metrics", "a", Role::Speaker, publish).await?;
    let b = TestParticipant::join(&srv.base, "metrics", "b", Role::Speaker, publish).await?;
    wait_until(Duration::from_secs(30), "media both ways", || {
        [(&a, &b.id), (&b, &a.id)].iter().all(|(p, other)| {
            p.received_from(other, MediaKind::Video)
                .and_then(|t| p.with_received(&t, |r| r.packets))
                .unwrap_or(0)
                > 10
        })
    })
    .await?;

    let t = Duration::from_secs(10);
    wait_metric(&srv, "stamma_participants", t, |v| v == 2.0).await?;
    wait_metric(&srv, "stamma_rooms", t, |v| v == 1.0).await?;
    wait_metric(&srv, "stamma_tracks{kind=\"video\"}", t, |v| v == 2.0).await?;
    wait_metric(&srv, "stamma_tracks{kind=\"audio\"}", t, |v| v == 2.0).await?;
    wait_metric(&srv, "stamma_subscriptions", t, |v| v == 4.0).await?;
    wait_metric(&srv, "stamma_participants_joined_total", t, |v| v == 2.0).await?;
    wait_metric(&srv, "stamma_signaling_sessions", t, |v| v == 2.0).await?;
    let forwarded = wait_metric(&srv, "stamma_rtp_forwarded_packets_total", t, |v| v > 0.0).await?;
    // Still flowing: the counter keeps growing.
    wait_metric(&srv, "stamma_rtp_forwarded_packets_total", t, |v| {
        v > forwarded
    })
    .await?;
    wait_metric(&srv, "stamma_rtp_forwarded_bytes_total", t, |v| v > 0.0).await?;
    wait_metric(&srv, "stamma_rtp_received_packets_total", t, |v| v > 0.0).await?;
    // Each video subscriber starts on a keyframe asked of its publisher.
    wait_metric(&srv, "stamma_keyframe_requests_sent_total", t, |v| v > 0.0).await?;
    let text = scrape(&srv).await?;
    assert!(
        text.contains("stamma_worker_loop_lag_seconds_bucket{le=\"0.001\"}"),
        "loop lag histogram with buckets:\n{text}"
    );
    // A worker with two participants works a small share of its time.
    assert!(
        text.contains("stamma_worker_duty_ratio_bucket{le=\"0.5\"}"),
        "duty cycle histogram with buckets:\n{text}"
    );
    assert_eq!(value(&text, "stamma_workers_shedding"), Some(0.0), "{text}");
    assert_eq!(value(&text, "stamma_draining"), Some(0.0), "{text}");

    // A malformed message: a typed error, counted by its code.
    let mut c =
        SignalClient::connect(&srv.base, &srv.token("metrics-err", "c", Role::Speaker)).await?;
    c.join().await.context("joining")?;
    c.send_text("{not json".into()).await?;
    expect_error(&mut c, ErrorCode::BadMessage).await;
    wait_metric(
        &srv,
        "stamma_signaling_errors_total{code=\"bad_message\"}",
        t,
        |v| v >= 1.0,
    )
    .await?;
    c.close().await;

    // Leaving is counted, and the gauges come back down.
    a.leave().await;
    wait_metric(&srv, "stamma_participants_left_total", t, |v| v >= 1.0).await?;
    wait_metric(&srv, "stamma_tracks{kind=\"video\"}", t, |v| v == 1.0).await?;
    b.leave().await;
    wait_metric(&srv, "stamma_participants", t, |v| v == 0.0).await?;
    wait_metric(&srv, "stamma_subscriptions", t, |v| v == 0.0).await?;
    wait_metric(&srv, "stamma_signaling_sessions", t, |v| v == 0.0).await?;
    Ok(())
}
