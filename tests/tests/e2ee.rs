//! End-to-end encryption through the SFU (SFrame, docs/e2ee.md): a
//! participant with the key hears the sender's tone; one with a valid token
//! but without the key decrypts nothing; and what the server forwards, seen
//! by a test tap after SRTP decryption, neither decodes to the tone nor
//! contains the plaintext.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use stamma_client::e2ee::{self, Codec, schedule};
use stamma_client::media::dominant_frequency;
use stamma_client::media::opus_tone::{ToneDecoder, encode_tone};
use stamma_client::sframe::{CipherSuite, Decryptor};
use stamma_proto::{MediaKind, Role};
use stamma_sfu::tap::MediaTap;
use stamma_tests::{E2ee, Publish, TestParticipant, TestServer, wait_until};

const TONE_HZ: f32 = 440.0;

fn hears_tone(f: Option<f32>) -> bool {
    f.is_some_and(|f| (f - TONE_HZ).abs() < 20.0)
}

#[tokio::test]
async fn encrypted_audio_is_the_tone_only_for_key_holders_and_opaque_to_the_server()
-> anyhow::Result<()> {
    let tap = Arc::new(MediaTap::new(10_000));
    let srv = {
        let tap = tap.clone();
        TestServer::start_with(1, move |c| c.media.tap = Some(tap)).await?
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xe2ee);
    let key: [u8; 32] = rng.random();
    let wrong: [u8; 32] = rng.random();
    let kid = schedule::kid(1, 0);
    let listen = |read| Publish {
        e2ee: Some(E2ee {
            read,
            ..E2ee::default()
        }),
        ..Publish::default()
    };
    let alice = TestParticipant::join(
        &srv.base,
        "secret-meeting",
        "alice",
        Role::Speaker,
        Publish {
            tone_hz: Some(TONE_HZ),
            e2ee: Some(E2ee {
                send: Some((kid, key)),
                ..E2ee::default()
            }),
            ..Publish::default()
        },
    )
    .await?;
    let bob = TestParticipant::join(
        &srv.base,
        "secret-meeting",
        "bob",
        Role::Speaker,
        listen(Some((kid, key))),
    )
    .await?;
    // A valid token without the room secret: the right key id, a wrong key.
    let eve = TestParticipant::join(
        &srv.base,
        "secret-meeting",
        "eve",
        Role::Attendee,
        listen(Some((kid, wrong))),
    )
    .await?;
    // No E2EE at all: decodes what arrives as if it were Opus.
    let mallory = TestParticipant::join(
        &srv.base,
        "secret-meeting",
        "mallory",
        Role::Attendee,
        Publish::default(),
    )
    .await?;

    wait_until(Duration::from_secs(20), "bob hears alice's tone", || {
        hears_tone(bob.heard_frequency(&alice.id))
    })
    .await?;
    wait_until(Duration::from_secs(10), "eve receives 100 packets", || {
        let (ok, failed) = decrypted(&eve, &alice.id);
        ok + failed >= 100
    })
    .await?;
    let (eve_ok, eve_failed) = decrypted(&eve, &alice.id);
    assert_eq!(eve_ok, 0, "a wrong key decrypts nothing");
    assert!(eve_failed >= 100, "eve received packets: {eve_failed}");
    wait_until(
        Duration::from_secs(10),
        "mallory receives 1 s of audio",
        || {
            mallory
                .received_from(&alice.id, MediaKind::Audio)
                .and_then(|t| mallory.with_received(&t, |r| r.packets))
                .is_some_and(|n| n >= 60)
        },
    )
    .await?;
    assert!(
        !hears_tone(mallory.heard_frequency(&alice.id)),
        "without the key the audio is not the tone: {:?}",
        mallory.heard_frequency(&alice.id)
    );
    let (bob_ok, bob_failed) = decrypted(&bob, &alice.id);
    assert!(
        bob_ok >= 50 && bob_failed == 0,
        "bob: {bob_ok} ok, {bob_failed} failed"
    );

    // What the SFU forwarded: opaque.
    let seen: Vec<Vec<u8>> = tap
        .take()
        .into_iter()
        .filter(|p| p.room == "secret-meeting" && p.kind == MediaKind::Audio)
        .map(|p| p.payload)
        .collect();
    assert!(seen.len() >= 100, "tapped {} audio payloads", seen.len());
    let plaintext = encode_tone(TONE_HZ, 250)?;
    // No 12-byte run of any plaintext frame (past its clear TOC byte) appears
    // in anything the server forwarded.
    for frame in &plaintext {
        for window in frame[1..].windows(12).step_by(6) {
            assert!(
                !seen.iter().any(|p| p.windows(12).any(|w| w == window)),
                "plaintext bytes reached the server"
            );
        }
    }
    // The Opus TOC byte is the one thing left in clear, as designed.
    assert!(seen.iter().all(|p| plaintext.iter().any(|f| f[0] == p[0])));
    let mut decoder = ToneDecoder::new()?;
    let mut pcm = Vec::new();
    let mut undecodable = 0;
    for p in &seen {
        if decoder.decode(p, &mut pcm).is_err() {
            undecodable += 1;
        }
    }
    let heard = (pcm.len() >= 48_000).then(|| dominant_frequency(&pcm, 100.0, 4000.0, 5.0));
    assert!(
        !hears_tone(heard),
        "the forwarded audio decodes to the tone ({heard:?}, {undecodable} undecodable)"
    );
    println!(
        "server saw {} audio payloads: {undecodable} undecodable as Opus, the rest decode to {heard:?} Hz, not {TONE_HZ}",
        seen.len()
    );
    drop((alice, bob, eve, mallory));
    Ok(())
}

#[tokio::test]
async fn without_e2ee_the_tap_sees_the_tone_so_the_opacity_test_can_fail() -> anyhow::Result<()> {
    let tap = Arc::new(MediaTap::new(10_000));
    let srv = {
        let tap = tap.clone();
        TestServer::start_with(1, move |c| c.media.tap = Some(tap)).await?
    };
    let alice = TestParticipant::join(
        &srv.base,
        "plain",
        "alice",
        Role::Speaker,
        Publish {
            tone_hz: Some(TONE_HZ),
            ..Publish::default()
        },
    )
    .await?;
    let bob =
        TestParticipant::join(&srv.base, "plain", "bob", Role::Speaker, Publish::default()).await?;
    wait_until(Duration::from_secs(20), "bob hears alice's tone", || {
        hears_tone(bob.heard_frequency(&alice.id))
    })
    .await?;
    let mut decoder = ToneDecoder::new()?;
    let mut pcm = Vec::new();
    for p in tap
        .take()
        .into_iter()
        .filter(|p| p.kind == MediaKind::Audio)
    {
        let _ = decoder.decode(&p.payload, &mut pcm);
    }
    assert!(pcm.len() >= 48_000);
    assert!(hears_tone(Some(dominant_frequency(
        &pcm, 100.0, 4000.0, 5.0
    ))));
    Ok(())
}

/// (decrypted, failed) audio packets `p` got from `from`.
fn decrypted(p: &TestParticipant, from: &str) -> (u64, u64) {
    p.received_from(from, MediaKind::Audio)
        .and_then(|t| p.with_received(&t, |r| (r.decrypted, r.decrypt_failures)))
        .unwrap_or_default()
}

fn generation(p: &TestParticipant) -> Option<u8> {
    p.e2ee_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .generation
}

#[tokio::test]
async fn keys_come_from_the_key_exchange_and_a_leaver_cannot_read_what_follows()
-> anyhow::Result<()> {
    let tap = Arc::new(MediaTap::new(20_000));
    let srv = {
        let tap = tap.clone();
        TestServer::start_with(1, move |c| c.media.tap = Some(tap)).await?
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5ec2e7);
    let secret: [u8; 32] = rng.random();
    let member = |tone_hz, room_secret| Publish {
        tone_hz,
        e2ee: Some(E2ee {
            room_secret: Some(room_secret),
            ..E2ee::default()
        }),
        ..Publish::default()
    };
    let room = "council";
    let alice = TestParticipant::join(
        &srv.base,
        room,
        "alice",
        Role::Speaker,
        member(Some(TONE_HZ), secret),
    )
    .await?;
    let bob =
        TestParticipant::join(&srv.base, room, "bob", Role::Speaker, member(None, secret)).await?;
    let mut carol = TestParticipant::join(
        &srv.base,
        room,
        "carol",
        Role::Speaker,
        member(None, secret),
    )
    .await?;
    // A valid token, but the link's secret is not hers: her public key does
    // not verify, so nobody hands her a key.
    let eve = TestParticipant::join(
        &srv.base,
        room,
        "eve",
        Role::Attendee,
        member(None, rng.random()),
    )
    .await?;
    for (name, p) in [("bob", &bob), ("carol", &carol)] {
        wait_until(
            Duration::from_secs(20),
            &format!("{name} hears alice"),
            || hears_tone(p.heard_frequency(&alice.id)),
        )
        .await?;
    }
    wait_until(Duration::from_secs(10), "eve receives 50 packets", || {
        decrypted(&eve, &alice.id).1 >= 50
    })
    .await?;
    assert_eq!(decrypted(&eve, &alice.id).0, 0, "eve decrypts nothing");
    assert_eq!(generation(&eve), None);
    wait_until(Duration::from_secs(5), "one generation for all", || {
        let g = generation(&alice);
        g.is_some() && g == generation(&bob) && g == generation(&carol)
    })
    .await?;
    let before = generation(&alice);

    // Carol leaves with the keys she held.
    let carol_keys = carol
        .e2ee_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .read
        .clone();
    let left_at = Instant::now();
    carol.send(stamma_proto::ClientSignal::Leave);
    carol.stop().await;
    wait_until(Duration::from_secs(10), "alice and bob rotate", || {
        let g = generation(&alice);
        g != before && g == generation(&bob)
    })
    .await?;
    let rotation = left_at.elapsed();
    let bob_before = decrypted(&bob, &alice.id).0;
    tap.take();
    // What the server forwards from now on, gathered while Bob hears it (a
    // packet tapped before `take` can still reach Bob after it).
    let mut after: Vec<Vec<u8>> = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "50 packets after the rotation, tapped and decrypted",
        || {
            after.extend(
                tap.take()
                    .into_iter()
                    .filter(|p| p.room == room && p.kind == MediaKind::Audio)
                    .map(|p| p.payload),
            );
            after.len() >= 50 && decrypted(&bob, &alice.id).0 >= bob_before + 50
        },
    )
    .await?;
    assert!(hears_tone(bob.heard_frequency(&alice.id)));
    let mut old = Decryptor::new();
    for (kid, key) in &carol_keys {
        old.add_key(CipherSuite::Aes128GcmSha256, *kid, key)?;
    }
    let opened = after
        .iter()
        .filter(|p| e2ee::unprotect(&mut old, Codec::Opus, p).is_ok())
        .count();
    assert_eq!(
        opened, 0,
        "the leaver's keys open media sent after the rotation"
    );
    println!(
        "rotation after a leave: {} ms (participant_left to both remaining members on generation {:?}); the leaver's {} keys opened 0 of {} later packets",
        rotation.as_millis(),
        generation(&alice),
        carol_keys.len(),
        after.len()
    );
    Ok(())
}
