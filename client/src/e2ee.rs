//! End-to-end encryption of media frames as Stämma sends them: SFrame with a
//! codec-aware clear prefix, and the labels of the key schedule.
//!
//! A protected frame is `clear prefix ‖ SFrame header ‖ ciphertext ‖ tag`.
//! The clear prefix is the few codec bytes the SFU must read (the Opus TOC
//! byte; the VP8 frame tag, and on keyframes the start code and size); it
//! is SFrame's `metadata`, so it is authenticated though not encrypted. The
//! layout is drawn in `docs/e2ee.md`; `signaling/web/e2ee/sframe.js` is the
//! browser twin and must produce the same bytes.

use crate::kdf::{self, Hash, Prk};
use crate::sframe::{self, Decryptor, Encryptor};

/// The codec of a frame, which decides its clear prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// 1 byte: the TOC (config, stereo flag, frame count code).
    Opus,
    /// 10 bytes on keyframes (3-byte frame tag, start code 9d 01 2a, 2+2
    /// bytes width/height with scaling), 3 on delta frames (the frame tag).
    Vp8,
    /// No clear prefix: everything is ciphertext (chat text).
    Data,
}

/// VP8 (RFC 6386 §9.1): the frame tag is 3 bytes; a keyframe adds the start
/// code (3) and the dimensions (4).
const VP8_DELTA_PREFIX: usize = 3;
const VP8_KEYFRAME_PREFIX: usize = 10;

/// The prefix length the codec's rule asks for, from the first byte alone.
/// Both sides compute it from clear bytes: the sender from the frame, the
/// receiver from the start of the protected data (which is the same byte).
fn rule_len(codec: Codec, first: Option<u8>) -> usize {
    match (codec, first) {
        (Codec::Data, _) | (_, None) => 0,
        (Codec::Opus, Some(_)) => 1,
        // P bit (bit 0 of the frame tag): 0 = keyframe.
        (Codec::Vp8, Some(b)) if b & 0x01 == 0 => VP8_KEYFRAME_PREFIX,
        (Codec::Vp8, Some(_)) => VP8_DELTA_PREFIX,
    }
}

/// How many leading bytes of `frame` stay in clear: the codec's rule, never
/// more than the frame.
pub fn clear_prefix_len(codec: Codec, frame: &[u8]) -> usize {
    rule_len(codec, frame.first().copied()).min(frame.len())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A media frame shorter than its clear prefix (an empty Opus packet, a
    /// VP8 keyframe under 10 bytes): no valid encoder makes one, and the
    /// receiver could not tell where the SFrame header starts, so it is
    /// refused rather than sent undecryptable.
    #[error("{codec:?} frame of {len} bytes is shorter than its clear prefix of {needed}")]
    FrameTooShort {
        codec: Codec,
        len: usize,
        needed: usize,
    },
    #[error(transparent)]
    SFrame(#[from] sframe::Error),
}

/// Encrypts one encoded frame: `prefix ‖ SFrame(header ‖ ct ‖ tag)` with the
/// prefix as authenticated metadata. One allocation: the output.
pub fn protect(enc: &mut Encryptor, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(frame.len() + sframe::MAX_HEADER_LEN + sframe::TAG_LEN);
    protect_into(enc, codec, frame, &mut out)?;
    Ok(out)
}

/// [`protect`] into `out` (cleared first), so a sender can reuse one buffer.
pub fn protect_into(
    enc: &mut Encryptor,
    codec: Codec,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let needed = rule_len(codec, frame.first().copied());
    if codec != Codec::Data && (frame.is_empty() || frame.len() < needed) {
        return Err(Error::FrameTooShort {
            codec,
            len: frame.len(),
            needed: needed.max(1),
        });
    }
    let (prefix, payload) = frame.split_at(needed);
    out.clear();
    out.extend_from_slice(prefix);
    enc.encrypt_into(prefix, payload, out)?;
    Ok(())
}

/// Decrypts what [`protect`] made: returns `prefix ‖ plaintext`, the frame
/// as the sender's encoder produced it.
pub fn unprotect(dec: &mut Decryptor, codec: Codec, data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(data.len());
    unprotect_into(dec, codec, data, &mut out)?;
    Ok(out)
}

/// [`unprotect`] into `out` (cleared first), so a receiver can reuse one buffer.
pub fn unprotect_into(
    dec: &mut Decryptor,
    codec: Codec,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let needed = rule_len(codec, data.first().copied());
    if data.len() < needed {
        return Err(sframe::Error::TruncatedHeader.into());
    }
    let (prefix, sframe_data) = data.split_at(needed);
    out.clear();
    out.extend_from_slice(prefix);
    dec.decrypt_into(prefix, sframe_data, out)?;
    Ok(())
}

/// The labels of Stämma's key schedule, in one place. The browser's copy is
/// `signaling/web/e2ee/labels.js`; a test checks the two are equal.
pub mod labels {
    /// HKDF info turning the room secret into the key that authenticates
    /// members' public keys.
    pub const JOIN_AUTH: &str = "stamma e2ee join auth";
    /// Prefix of the HMAC input over a member's public key.
    pub const PUBLIC_KEY_MAC: &str = "stamma e2ee pk";
    /// Prefix of the HKDF info deriving a sender's base key (followed by
    /// the participant id).
    pub const SENDER: &str = "stamma e2ee sender ";
    /// HKDF info ratcheting the epoch secret forward on a join.
    pub const RATCHET: &str = "stamma e2ee ratchet";
    /// HPKE info when an epoch secret is sealed to a member.
    pub const EPOCH: &str = "stamma e2ee epoch";
    /// HKDF info: epoch secret → the safety code members compare aloud.
    pub const SAFETY_CODE: &str = "stamma e2ee safety code";
}

/// Length of the room secret, an epoch secret, and keys derived from them.
pub const SECRET_LEN: usize = 32;

/// A fresh random secret (a room secret, an epoch secret); `None` only if
/// the system has no randomness to give.
pub fn random_secret() -> Option<[u8; SECRET_LEN]> {
    let mut s = [0u8; SECRET_LEN];
    aws_lc_rs::rand::fill(&mut s).ok()?;
    Some(s)
}

/// The key schedule's building blocks (the protocol that uses them, over
/// signaling, is the next step; see `docs/e2ee.md`).
pub mod schedule {
    use super::*;

    /// join_auth_key = HKDF-SHA256(salt = "", ikm = S, info = JOIN_AUTH, 32).
    pub fn join_auth_key(room_secret: &[u8]) -> Result<[u8; SECRET_LEN], kdf::KdfError> {
        let prk = kdf::extract(Hash::Sha256, &[], &[room_secret]);
        let mut out = [0u8; SECRET_LEN];
        kdf::expand(&prk, &[labels::JOIN_AUTH.as_bytes()], &mut out)?;
        Ok(out)
    }

    /// HMAC-SHA256(join_auth_key, PUBLIC_KEY_MAC ‖ participant_id ‖ pk).
    /// The public key is fixed-length and last, so the input is unambiguous.
    pub fn public_key_mac(join_auth_key: &[u8], participant_id: &str, pk: &[u8]) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, join_auth_key);
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(labels::PUBLIC_KEY_MAC.as_bytes());
        ctx.update(participant_id.as_bytes());
        ctx.update(pk);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Checks a public key's MAC in constant time.
    pub fn verify_public_key_mac(
        join_auth_key: &[u8],
        participant_id: &str,
        pk: &[u8],
        mac: &[u8],
    ) -> bool {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, join_auth_key);
        let mut msg =
            Vec::with_capacity(labels::PUBLIC_KEY_MAC.len() + participant_id.len() + pk.len());
        msg.extend_from_slice(labels::PUBLIC_KEY_MAC.as_bytes());
        msg.extend_from_slice(participant_id.as_bytes());
        msg.extend_from_slice(pk);
        aws_lc_rs::hmac::verify(&key, &msg, mac).is_ok()
    }

    /// A sender's SFrame base key: HKDF-Expand(E, SENDER ‖ participant_id, 32).
    pub fn sender_base_key(
        epoch_secret: &[u8; SECRET_LEN],
        participant_id: &str,
    ) -> Result<[u8; SECRET_LEN], kdf::KdfError> {
        let prk = Prk::from_bytes(Hash::Sha256, epoch_secret);
        let mut out = [0u8; SECRET_LEN];
        kdf::expand(
            &prk,
            &[labels::SENDER.as_bytes(), participant_id.as_bytes()],
            &mut out,
        )?;
        Ok(out)
    }

    /// The next epoch secret on a join: HKDF-Expand(E, RATCHET, 32).
    pub fn ratchet(epoch_secret: &[u8; SECRET_LEN]) -> Result<[u8; SECRET_LEN], kdf::KdfError> {
        let prk = Prk::from_bytes(Hash::Sha256, epoch_secret);
        let mut out = [0u8; SECRET_LEN];
        kdf::expand(&prk, &[labels::RATCHET.as_bytes()], &mut out)?;
        Ok(out)
    }

    /// The safety code of an epoch: 12 digits from
    /// HKDF-Expand(E, SAFETY_CODE, 5) read big-endian, mod 10^12, shown as
    /// `dddd dddd dddd`. Equal codes mean the members share the key.
    pub fn safety_code(epoch_secret: &[u8; SECRET_LEN]) -> Result<String, kdf::KdfError> {
        let prk = Prk::from_bytes(Hash::Sha256, epoch_secret);
        let mut out = [0u8; 5];
        kdf::expand(&prk, &[labels::SAFETY_CODE.as_bytes()], &mut out)?;
        let n = out.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)) % 1_000_000_000_000;
        let d = format!("{n:012}");
        Ok(format!("{} {} {}", &d[..4], &d[4..8], &d[8..]))
    }

    /// KID = (sender's join sequence number << 8) | generation.
    pub fn kid(join_seq: u64, generation: u8) -> u64 {
        (join_seq << 8) | u64::from(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sframe::CipherSuite;
    use serde_json::{Value, json};

    const SUITE: CipherSuite = CipherSuite::Aes128GcmSha256;

    fn pair(kid: u64) -> (Encryptor, Decryptor) {
        let base = [0x42u8; 32];
        let enc = Encryptor::new(SUITE, kid, &base).unwrap();
        let mut dec = Decryptor::new();
        dec.add_key(SUITE, kid, &base).unwrap();
        (enc, dec)
    }

    /// A VP8 keyframe: frame tag (P = 0, version 0, show_frame, first
    /// partition size), start code, 640x360, then "compressed" bytes.
    fn vp8_keyframe() -> Vec<u8> {
        let mut f = vec![0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
        f.extend((0..200u8).map(|i| i.wrapping_mul(7)));
        f
    }

    fn vp8_delta() -> Vec<u8> {
        let mut f = vec![0x31, 0x05, 0x00];
        f.extend((0..80u8).map(|i| i.wrapping_mul(3)));
        f
    }

    fn opus() -> Vec<u8> {
        let mut f = vec![0x78];
        f.extend((0..60u8).map(|i| i ^ 0x5a));
        f
    }

    #[test]
    fn clear_prefix_is_one_byte_for_opus_ten_for_vp8_keyframes_three_for_deltas() {
        assert_eq!(clear_prefix_len(Codec::Opus, &opus()), 1);
        assert_eq!(clear_prefix_len(Codec::Vp8, &vp8_keyframe()), 10);
        assert_eq!(clear_prefix_len(Codec::Vp8, &vp8_delta()), 3);
        assert_eq!(clear_prefix_len(Codec::Data, b"chat"), 0);
        // Never more than the frame.
        assert_eq!(clear_prefix_len(Codec::Vp8, &[0x50, 0x2a]), 2);
        assert_eq!(clear_prefix_len(Codec::Opus, &[]), 0);
    }

    #[test]
    fn protected_frames_keep_the_bytes_the_sfu_reads_and_hide_the_rest() {
        let (mut enc, mut dec) = pair(0x0100);
        for (codec, frame, clear) in [
            (Codec::Vp8, vp8_keyframe(), 10),
            (Codec::Vp8, vp8_delta(), 3),
            (Codec::Opus, opus(), 1),
        ] {
            let p = protect(&mut enc, codec, &frame).unwrap();
            // Layout: prefix ‖ header (config 0x9?: KID in 2 bytes) ‖ ct ‖ tag.
            assert_eq!(&p[..clear], &frame[..clear]);
            let (h, hlen) = sframe::Header::decode(&p[clear..]).unwrap();
            assert_eq!(h.kid, 0x0100);
            assert_eq!(
                p.len(),
                clear + hlen + (frame.len() - clear) + sframe::TAG_LEN
            );
            assert_ne!(
                &p[clear + hlen..clear + hlen + 16],
                &frame[clear..clear + 16]
            );
            assert_eq!(unprotect(&mut dec, codec, &p).unwrap(), frame);
        }
    }

    #[test]
    fn vp8_keyframe_bit_and_dimensions_and_opus_toc_survive_protection() {
        let (mut enc, _) = pair(1);
        let key = protect(&mut enc, Codec::Vp8, &vp8_keyframe()).unwrap();
        assert_eq!(key[0] & 0x01, 0, "P bit: keyframe");
        assert_eq!(&key[3..6], &[0x9d, 0x01, 0x2a], "start code");
        let width = u16::from_le_bytes([key[6], key[7]]) & 0x3fff;
        let height = u16::from_le_bytes([key[8], key[9]]) & 0x3fff;
        assert_eq!((width, height), (640, 360));
        let delta = protect(&mut enc, Codec::Vp8, &vp8_delta()).unwrap();
        assert_eq!(delta[0] & 0x01, 1, "P bit: delta frame");
        let audio = protect(&mut enc, Codec::Opus, &opus()).unwrap();
        assert_eq!(audio[0], 0x78, "Opus TOC");
    }

    #[test]
    fn an_altered_clear_prefix_fails_decryption() {
        let (mut enc, mut dec) = pair(7);
        let p = protect(&mut enc, Codec::Vp8, &vp8_keyframe()).unwrap();
        // Bytes 1..10: changing them keeps the P bit, so the layout is
        // found and authentication must catch it.
        for i in 1..10 {
            let mut bad = p.clone();
            bad[i] ^= 0x04;
            assert_eq!(
                unprotect(&mut dec, Codec::Vp8, &bad),
                Err(Error::SFrame(sframe::Error::Authentication)),
                "byte {i}"
            );
        }
        // Flipping the P bit moves where the receiver looks for the header.
        let mut bad = p.clone();
        bad[0] ^= 0x01;
        assert!(unprotect(&mut dec, Codec::Vp8, &bad).is_err());
        let a = protect(&mut enc, Codec::Opus, &opus()).unwrap();
        let mut bad = a.clone();
        bad[0] = 0x79;
        assert_eq!(
            unprotect(&mut dec, Codec::Opus, &bad),
            Err(Error::SFrame(sframe::Error::Authentication))
        );
        assert_eq!(unprotect(&mut dec, Codec::Vp8, &p).unwrap(), vp8_keyframe());
        assert_eq!(unprotect(&mut dec, Codec::Opus, &a).unwrap(), opus());
    }

    #[test]
    fn frames_shorter_than_their_prefix_are_refused_and_garbage_is_an_error() {
        let (mut enc, mut dec) = pair(7);
        assert!(matches!(
            protect(&mut enc, Codec::Vp8, &[0x50, 0, 0, 0x9d]),
            Err(Error::FrameTooShort { needed: 10, .. })
        ));
        assert!(matches!(
            protect(&mut enc, Codec::Opus, &[]),
            Err(Error::FrameTooShort { .. })
        ));
        // A chat message may be empty.
        let p = protect(&mut enc, Codec::Data, b"").unwrap();
        assert_eq!(unprotect(&mut dec, Codec::Data, &p).unwrap(), b"");
        for len in 0..12 {
            assert!(unprotect(&mut dec, Codec::Vp8, &vec![0u8; len]).is_err());
            assert!(unprotect(&mut dec, Codec::Opus, &vec![0xffu8; len]).is_err());
        }
    }

    #[test]
    fn key_schedule_labels_match_the_browser_copy() {
        let js = include_str!("../../signaling/web/e2ee/labels.js");
        for (name, value) in [
            ("JOIN_AUTH", labels::JOIN_AUTH),
            ("PUBLIC_KEY_MAC", labels::PUBLIC_KEY_MAC),
            ("SENDER", labels::SENDER),
            ("RATCHET", labels::RATCHET),
            ("EPOCH", labels::EPOCH),
            ("SAFETY_CODE", labels::SAFETY_CODE),
        ] {
            let line = format!("export const {name} = \"{value}\";");
            assert!(js.contains(&line), "labels.js lacks `{line}`");
        }
        // And nothing in labels.js that Rust lacks.
        assert_eq!(
            js.matches("export const ").count(),
            6,
            "labels.js has a label Rust lacks"
        );
    }

    #[test]
    fn safety_code_is_the_browsers() {
        // The browser's session.js gives this for an epoch secret of 32 × 0x01.
        assert_eq!(schedule::safety_code(&[1u8; 32]).unwrap(), "9840 4290 1053");
    }

    #[test]
    fn key_schedule_outputs_differ_per_sender_and_generation() {
        let s = [9u8; 32];
        let auth = schedule::join_auth_key(&s).unwrap();
        let pk = [3u8; 32];
        let mac = schedule::public_key_mac(&auth, "p1", &pk);
        assert!(schedule::verify_public_key_mac(&auth, "p1", &pk, &mac));
        assert!(!schedule::verify_public_key_mac(&auth, "p2", &pk, &mac));
        let e = [1u8; 32];
        assert_ne!(
            schedule::sender_base_key(&e, "a").unwrap(),
            schedule::sender_base_key(&e, "b").unwrap()
        );
        assert_ne!(schedule::ratchet(&e).unwrap(), e);
        assert_eq!(schedule::kid(3, 255), 0x3ff);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Frames and key-schedule outputs computed here, which the browser twin
    /// must reproduce byte for byte (tests/browser/e2ee.test.mjs).
    fn fixture() -> Value {
        let base_key = [0x42u8; 32];
        let mut frames = Vec::new();
        for (suite, kid) in [(SUITE, 0x0100u64), (CipherSuite::Aes256GcmSha512, 5)] {
            let mut enc = Encryptor::new(suite, kid, &base_key).unwrap();
            for (codec, name, frame) in [
                (Codec::Opus, "opus", opus()),
                (Codec::Vp8, "vp8", vp8_keyframe()),
                (Codec::Vp8, "vp8", vp8_delta()),
                (
                    Codec::Data,
                    "data",
                    b"hej \xc3\xa5\xc3\xa4\xc3\xb6".to_vec(),
                ),
            ] {
                let ctr = enc.next_counter();
                let p = protect(&mut enc, codec, &frame).unwrap();
                frames.push(json!({
                    "suite": suite.id(), "kid": kid, "ctr": ctr, "codec": name,
                    "frame": hex(&frame), "protected": hex(&p),
                }));
            }
        }
        let room_secret = [0x11u8; 32];
        let epoch = [0x22u8; 32];
        let auth = schedule::join_auth_key(&room_secret).unwrap();
        let pk = [0x33u8; 32];
        let eph = crate::hpke::KeyPair::from_private_bytes(&[0x44u8; 32]).unwrap();
        let rcpt = crate::hpke::KeyPair::from_private_bytes(&[0x55u8; 32]).unwrap();
        let aad = b"room-1\x00\x00\x00\x01";
        let sealed = crate::hpke::seal_with_ephemeral(
            &eph,
            rcpt.public_key(),
            labels::EPOCH.as_bytes(),
            aad,
            &epoch,
        )
        .unwrap();
        json!({
            "note": "generated by client/src/e2ee.rs (test fixture_matches_committed_file); STAMMA_UPDATE_FIXTURES=1 rewrites it",
            "base_key": hex(&base_key),
            "frames": frames,
            "schedule": {
                "room_secret": hex(&room_secret),
                "join_auth_key": hex(&auth),
                "participant_id": "p-1",
                "public_key": hex(&pk),
                "public_key_mac": hex(&schedule::public_key_mac(&auth, "p-1", &pk)),
                "epoch_secret": hex(&epoch),
                "sender_base_key": hex(&schedule::sender_base_key(&epoch, "p-1").unwrap()),
                "ratcheted": hex(&schedule::ratchet(&epoch).unwrap()),
            },
            "hpke": {
                "recipient_private_key": hex(&[0x55u8; 32]),
                "recipient_public_key": hex(rcpt.public_key()),
                "info": hex(labels::EPOCH.as_bytes()),
                "aad": hex(aad),
                "pt": hex(&epoch),
                "enc": hex(&sealed.enc),
                "ct": hex(&sealed.ciphertext),
            },
        })
    }

    #[test]
    fn fixture_matches_committed_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/sframe-rust-frames.json"
        );
        let want = serde_json::to_string_pretty(&fixture()).unwrap() + "\n";
        if std::env::var_os("STAMMA_UPDATE_FIXTURES").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "{path} is out of date: run with STAMMA_UPDATE_FIXTURES=1 and commit it"
        );
    }

    #[test]
    fn fixture_frames_decrypt() {
        let v = fixture();
        for f in v["frames"].as_array().unwrap() {
            let suite = CipherSuite::from_id(f["suite"].as_u64().unwrap() as u16).unwrap();
            let mut dec = Decryptor::new();
            dec.add_key(suite, f["kid"].as_u64().unwrap(), &[0x42u8; 32])
                .unwrap();
            let codec = match f["codec"].as_str().unwrap() {
                "opus" => Codec::Opus,
                "vp8" => Codec::Vp8,
                _ => Codec::Data,
            };
            let p: Vec<u8> = {
                let s = f["protected"].as_str().unwrap();
                (0..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                    .collect()
            };
            assert_eq!(
                hex(&unprotect(&mut dec, codec, &p).unwrap()),
                f["frame"].as_str().unwrap()
            );
        }
    }
}
