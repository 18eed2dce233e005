//! The load tester against a real spawned server: a small meeting must come
//! out clean, and a choked downlink must fail the bounds with exit code 1.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(dir: &Path, name: &str, extra: &[&str]) -> (i32, Value, String) {
    let json = dir.join(format!("{name}.json"));
    let html = dir.join(format!("{name}.html"));
    let out = Command::new(env!("CARGO_BIN_EXE_stamma-loadtest"))
        .args(["--spawn", "--quiet", "--json"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .args(extra)
        .output()
        .expect("run stamma-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: Value = serde_json::from_str(&report).expect("report is JSON");
    let page = std::fs::read_to_string(&html).expect("html report");
    assert!(page.contains("<svg") && !page.contains("http://") && !page.contains("https://"));
    (out.status.code().unwrap_or(-1), report, stdout)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number: {v}"))
}

#[test]
fn six_participants_for_five_seconds_give_a_sane_clean_report() {
    let dir = tempdir("small");
    let (code, r, stdout) = run(
        &dir,
        "small",
        // What the tester reports, not the Allocator: its estimate starts
        // at 1 Mbit/s and takes seconds of probing to carry five videos, so
        // within 5 s some tiles would still be paused (that ramp is tested
        // on the virtual clock in tests/tests/layer_selection.rs).
        &[
            "--participants",
            "6",
            "--duration",
            "5s",
            "--ramp",
            "20",
            "--server-allocator",
            "off",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{r:#}");
    assert_eq!(r["passed"], true);
    assert_eq!(r["participants"], 6);
    assert_eq!(r["failed"], 0);
    // Everyone sees the five others and hears the three who speak (the
    // server's silence gate holds back idle microphones; one who stopped
    // speaking in the last 2 s is expected too, so up to 60).
    let expected = f(&r, &["tracks_expected"]);
    assert!(
        (45.0..=60.0).contains(&expected),
        "{expected} tracks expected"
    );
    assert_eq!(f(&r, &["tracks_received"]), expected);
    assert!(f(&r, &["loss_pct"]) < 2.0, "{r:#}");
    assert!(f(&r, &["frame_loss_pct"]) < 2.0, "{r:#}");
    let (p50, p99) = (f(&r, &["latency_ms", "p50"]), f(&r, &["latency_ms", "p99"]));
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 < 500.0,
        "latency {p50}/{p99}"
    );
    assert!(f(&r, &["join_ms", "p50"]) > 0.0);
    assert!(f(&r, &["first_frame_ms", "p50"]) > 0.0);
    // 6 × 5 videos at ~500 kbit/s and audio: roughly 15 Mbit/s, ~1500 pkt/s.
    let mbps = f(&r, &["forwarded_mbps"]);
    assert!((8.0..40.0).contains(&mbps), "{mbps} Mbit/s");
    assert!(f(&r, &["forwarded_pps"]) > 1000.0);
    assert!(f(&r, &["server_cpu_pct"]) > 0.0);
    assert!(f(&r, &["server_rss_mb"]) > 1.0);
    assert!(r["series"].as_array().is_some_and(|s| s.len() >= 5));
    // No bottleneck: every subscriber got what the server sent.
    assert_eq!(r["server_allocator"], "off");
    assert_eq!(r["server_mode_source"], "spawned");
    assert_eq!(f(&r, &["subscribers_measured"]), 6.0);
    let sent = f(&r, &["server_sent_kbps_mean", "max"]);
    assert!((1000.0..10_000.0).contains(&sent), "{sent} kbit/s");
    assert_eq!(sent, f(&r, &["received_kbps_mean", "max"]));
    assert!(r["sent_over_bottleneck"].is_null());
    // Whatever the server pauses is accounted, not lost.
    let paused = f(&r, &["tracks_paused_pct"]);
    assert!((0.0..=100.0).contains(&paused), "{paused}");
}

#[test]
fn with_e2ee_every_frame_is_encrypted_and_decrypts_with_simulcast_switches() {
    let dir = tempdir("e2ee");
    let (code, r, stdout) = run(
        &dir,
        "e2ee",
        &[
            "--participants",
            "4",
            "--duration",
            "4s",
            "--ramp",
            "20",
            "--simulcast",
            "--e2ee",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{r:#}");
    assert_eq!(r["decrypt_failures"], 0, "{r:#}");
    assert_eq!(f(&r, &["corrupt_frames"]), 0.0);
    // Layer switches still land on keyframes, read from the clear prefix.
    assert_eq!(f(&r, &["bad_layer_switches"]), 0.0);
    assert!(f(&r, &["tracks_received"]) >= 20.0, "{r:#}");
    assert!(stdout.contains("0 decrypt failures"), "{stdout}");
}

#[test]
fn a_choked_downlink_breaks_the_bounds_and_exits_1() {
    let dir = tempdir("choked");
    // Each subscriber receives two 500 kbit/s videos through 300 kbit/s:
    // with the allocator off the server sends them anyway (an allocator
    // would pause them instead, which is not what this test is about).
    let (code, r, stdout) = run(
        &dir,
        "choked",
        &[
            "--participants",
            "3",
            "--duration",
            "4s",
            "--downlink-kbps",
            "300",
            "--server-allocator",
            "off",
        ],
    );
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(r["passed"], false);
    assert_eq!(r["server_allocator"], "off");
    assert!(f(&r, &["downlink_drops"]) > 0.0);
    assert!(f(&r, &["loss_pct"]) > 1.0, "{r:#}");
    // The server pushed more than the link carries; the subscriber got at
    // most what the link drains.
    assert!(f(&r, &["sent_over_bottleneck"]) >= 1.0, "{r:#}");
    assert!(f(&r, &["server_sent_kbps_mean", "max"]) > 300.0);
    assert!(f(&r, &["received_kbps_mean", "max"]) <= 310.0, "{r:#}");
    let why = r["violations"].to_string();
    assert!(
        why.contains("loss") && why.contains("sent_over_bottleneck"),
        "{why}"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("stamma-lt-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
