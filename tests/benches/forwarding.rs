//! The forwarding hot path: one video packet from a publisher goes through
//! the worker (SRTP decrypt, route, rewrite, SRTP encrypt per subscriber).
//!
//! cargo bench -p stamma-tests --bench forwarding

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stamma_tests::sim::SimRoom;

fn room(subscribers: usize) -> SimRoom {
    let mut room = SimRoom::new().expect("room");
    room.join(true).expect("publisher");
    for _ in 0..subscribers {
        room.join(false).expect("subscriber");
    }
    room.settle(Duration::from_secs(60)).expect("settled");
    // Start every forwarder on a keyframe.
    room.publish_packet(0, true, 1100);
    room.step().expect("step");
    room
}

fn forward_one_packet(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_video_packet");
    for subscribers in [1usize, 10, 49] {
        let mut r = room(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    r.publish_packet(0, false, 1100);
                    black_box(r.server_round())
                })
            },
        );
    }
    group.finish();
}

/// Ten packets arriving in one receive batch (one clock reading), as the
/// UDP driver hands them to the worker under load.
fn forward_batch_of_ten(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_video_batch_of_10");
    for subscribers in [10usize, 49] {
        let mut r = room(subscribers);
        group.throughput(Throughput::Elements(10 * subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    for _ in 0..10 {
                        r.publish_packet(0, false, 1100);
                    }
                    black_box(r.server_round())
                })
            },
        );
    }
    group.finish();
}

/// A batch of one packet from each of ten publishers in a room where all
/// 50 publish video: every subscriber's connection has 49 m-lines, which
/// str0m walks whenever it polls one (the cost that grows with room size).
fn forward_batch_in_a_room_of_50(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_video_batch_room_of_50");
    group.sample_size(20);
    let mut r = SimRoom::new().expect("room");
    for _ in 0..50 {
        r.join(true).expect("publisher");
    }
    r.settle(Duration::from_secs(120)).expect("settled");
    for i in 0..10 {
        r.publish_packet(i, true, 1100);
    }
    r.step().expect("step");
    group.throughput(Throughput::Elements(10 * 49));
    group.bench_function("10_publishers", |b| {
        b.iter(|| {
            for i in 0..10 {
                r.publish_packet(i, false, 1100);
            }
            black_box(r.server_round())
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    forward_one_packet,
    forward_batch_of_ten,
    forward_batch_in_a_room_of_50
);
criterion_main!(benches);
