//! Cost of protecting and unprotecting one frame (SFrame AES-128-GCM with the
//! codec's clear prefix): a 1200-byte frame (a small video frame, or a large
//! audio one) and a 30 kB one (a keyframe at 720p).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stamma_client::e2ee::{Codec, protect, unprotect};
use stamma_client::sframe::{CipherSuite, Decryptor, Encryptor};

fn frame(len: usize) -> Vec<u8> {
    // A VP8 delta frame: P bit set, so a 3-byte clear prefix.
    let mut f = vec![0x31, 0x05, 0x00];
    f.extend((0..len - 3).map(|i| i as u8));
    f
}

fn bench(c: &mut Criterion) {
    let base = [0x42u8; 32];
    let suite = CipherSuite::Aes128GcmSha256;
    let mut g = c.benchmark_group("sframe");
    for len in [1200usize, 30_000] {
        let f = frame(len);
        g.throughput(Throughput::Bytes(len as u64));
        let mut enc = Encryptor::new(suite, 0x100, &base).expect("key");
        g.bench_with_input(BenchmarkId::new("protect", len), &f, |b, f| {
            b.iter(|| protect(&mut enc, Codec::Vp8, f).expect("protect"))
        });
        // Decrypting needs fresh counters (the replay window refuses
        // repeats), so the frames are made first and opened in order.
        let mut enc = Encryptor::new(suite, 0x100, &base).expect("key");
        g.bench_with_input(BenchmarkId::new("unprotect", len), &f, |b, f| {
            b.iter_batched(
                || {
                    let mut dec = Decryptor::new();
                    dec.add_key(suite, 0x100, &base).expect("key");
                    (dec, protect(&mut enc, Codec::Vp8, f).expect("protect"))
                },
                |(mut dec, p)| unprotect(&mut dec, Codec::Vp8, &p).expect("unprotect"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
