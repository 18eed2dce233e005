//! Per-packet and per-tick work of layer selection: the forwarder's rewrite
//! (sequence, timestamp, VP8 picture id), the Allocator for a 50-person
//! grid, and the SpeakerDetector's per-packet update.
//!
//! cargo bench -p stamma-tests --bench layers

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use stamma_sfu::allocator::{Demand, Priority, allocate};
use stamma_sfu::forwarder::Forwarder;
use stamma_sfu::speaker::SpeakerDetector;
use str0m::rtp::Vp8Descriptor;

fn forwarder_rewrite(c: &mut Criterion) {
    let t0 = Instant::now();
    // X, I, L, T set; 15-bit picture id; TL0PICIDX; TID; VP8 delta header.
    let payload = [0x90u8, 0xE0, 0x81, 0x00, 0x07, 0x00, 0x01, 0, 0, 0];
    let mut f = Forwarder::new(true, 90_000);
    let d = Vp8Descriptor::parse(&payload).expect("descriptor");
    f.forward(t0, 1, 0, true, Some(&d));
    // A switch, so every later packet needs a picture id patch.
    f.restart();
    f.forward(t0, 5_000, 0, true, Some(&d));
    let mut seq = 5_000u64;
    c.bench_function("forwarder_rewrite_vp8_packet", |b| {
        b.iter(|| {
            seq += 1;
            let d = Vp8Descriptor::parse(black_box(&payload)).expect("descriptor");
            black_box(f.forward(t0, seq, 3000, false, Some(&d)))
        })
    });
}

fn allocator_grid_of_49(c: &mut Criterion) {
    let demands: Vec<Demand> = (0..49)
        .map(|i| Demand {
            priority: if i == 7 {
                Priority::Speaker
            } else {
                Priority::Grid
            },
            costs: [150_000, 500_000, 1_500_000],
            layers: 3,
            max_layer: if i == 7 { 2 } else { 0 },
            previous: Some(0),
        })
        .collect();
    let (mut order, mut out) = (Vec::new(), Vec::new());
    c.bench_function("allocate_49_tracks", |b| {
        b.iter(|| {
            black_box(allocate(
                black_box(3_000_000),
                &demands,
                &mut order,
                &mut out,
            ))
        })
    });
}

fn speaker_observe(c: &mut Criterion) {
    let mut d = SpeakerDetector::new();
    let t0 = Instant::now();
    for k in 0..50u32 {
        d.observe(k, 40, t0);
    }
    let mut n = 0u64;
    c.bench_function("speaker_observe_packet", |b| {
        b.iter(|| {
            n += 1;
            let now = t0 + Duration::from_millis(n / 50 * 20);
            d.observe(black_box((n % 50) as u32), 30, now)
        })
    });
}

criterion_group!(
    benches,
    forwarder_rewrite,
    allocator_grid_of_49,
    speaker_observe
);
criterion_main!(benches);
