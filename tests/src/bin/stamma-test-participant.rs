//! A Rust participant for the browser tests: joins a room with the test
//! harness's webrtc-rs stack, publishes the usual tone and synthetic video,
//! and reports what it receives, so a browser test can check that a page
//! and a non-browser client hear and see each other.
//!
//! ```text
//! stamma-test-participant --url ws://127.0.0.1:PORT/rtc --room R --token T --seconds N
//!     [--e2ee-secret SECRET]
//! ```
//!
//! With `--e2ee-secret` (the room secret of an end-to-end encrypted link,
//! the part after `#e2ee=`) it takes part in the key exchange, seals its
//! audio and video with SFrame and opens others' audio (docs/e2ee.md).
//!
//! Prints `READY <participant id>` once joined, then once a second a JSON
//! line `{"audio_packets", "video_frames", "audio_from", "video_from",
//! "tones", "decrypted", "decrypt_failures", "safety_code"}`: totals since
//! joining, the participant ids it has decoded audio and received video
//! frames from, the dominant frequency of the last second heard from each,
//! and (with E2EE) the audio packets opened and refused and the current
//! safety code. Exits 0 after N seconds or when its stdin ends (so it dies
//! with the test that spawned it); 1 if joining fails, 2 on bad arguments.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use stamma::links::e2ee_secret_bytes;
use stamma_client::media::dominant_frequency;
use stamma_client::signal::rtc_url;
use stamma_proto::MediaKind;
use stamma_tests::{E2ee, Publish, Route, TestParticipant};

const USAGE: &str = "usage: stamma-test-participant --url ws://HOST:PORT/rtc --room ROOM \
                     --token JWT --seconds N [--e2ee-secret SECRET]";

struct Args {
    url: String,
    room: String,
    token: String,
    seconds: u64,
    e2ee_secret: Option<[u8; 32]>,
}

fn parse_args() -> Result<Args, String> {
    let (mut url, mut room, mut token, mut seconds) = (None, None, None, None);
    let mut e2ee_secret = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = Some(value),
            "--room" => room = Some(value),
            "--token" => token = Some(value),
            "--e2ee-secret" => {
                let bytes = e2ee_secret_bytes(&value).map_err(|e| format!("--e2ee-secret: {e}"))?;
                e2ee_secret = Some(bytes);
            }
            "--seconds" => {
                seconds = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("--seconds {value:?} is not a number"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is missing")?,
        room: room.ok_or("--room is missing")?,
        token: token.ok_or("--token is missing")?,
        seconds: seconds.ok_or("--seconds is missing")?,
        e2ee_secret,
    })
}

/// One report line from what the participant has received so far.
fn report(p: &TestParticipant) -> serde_json::Value {
    let received = p.received.lock().unwrap_or_else(|e| e.into_inner());
    let (mut audio_packets, mut video_frames) = (0u64, 0u64);
    let (mut decrypted, mut decrypt_failures) = (0u64, 0u64);
    let (mut audio_from, mut video_from) = (BTreeSet::new(), BTreeSet::new());
    let mut tones = BTreeMap::new();
    for r in received.values() {
        match r.kind {
            Some(MediaKind::Audio) => {
                audio_packets += r.packets;
                decrypted += r.decrypted;
                decrypt_failures += r.decrypt_failures;
                if let Some(last) = r.pcm.len().checked_sub(48_000) {
                    let hz = dominant_frequency(&r.pcm[last..], 100.0, 4000.0, 5.0);
                    tones.insert(r.publisher_id.clone(), hz);
                }
                if !r.pcm.is_empty() {
                    audio_from.insert(r.publisher_id.clone());
                }
            }
            Some(MediaKind::Video) => {
                video_frames += r.frames;
                if r.frames > 0 {
                    video_from.insert(r.publisher_id.clone());
                }
            }
            None => {}
        }
    }
    serde_json::json!({
        "audio_packets": audio_packets,
        "video_frames": video_frames,
        "audio_from": audio_from,
        "video_from": video_from,
        "tones": tones,
        "decrypted": decrypted,
        "decrypt_failures": decrypt_failures,
        "safety_code": p.safety_code(),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr: stdout carries the report lines.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // rtc_url wants the server's base; the flag names the endpoint itself.
    let trimmed = args.url.trim_end_matches('/');
    let base = trimmed.strip_suffix("/rtc").unwrap_or(trimmed);
    let url = match rtc_url(base, &args.token, Some(&args.room)) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let publish = Publish {
        tone_hz: Some(440.0),
        video: true,
        e2ee: args.e2ee_secret.map(|secret| E2ee {
            room_secret: Some(secret),
            ..E2ee::default()
        }),
    };
    let p = match TestParticipant::join_url(&url, publish, Route::default()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("joining failed: {e:#}");
            return ExitCode::from(1);
        }
    };
    println!("READY {}", p.id);

    // Blocking stdin on its own thread: its end means the parent is gone.
    let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = std::io::sink();
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut sink);
        let _ = eof_tx.send(());
    });
    let end = tokio::time::sleep(Duration::from_secs(args.seconds));
    tokio::pin!(end);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = &mut eof => break,
            _ = tick.tick() => println!("{}", report(&p)),
        }
    }
    p.leave().await;
    ExitCode::SUCCESS
}
