//! SFrame (RFC 9605): end-to-end encryption of one media frame.
//!
//! An SFrame ciphertext is `header ‖ ciphertext ‖ tag`. The header carries the
//! key id (KID) and the frame counter (CTR), each as a minimal big-endian
//! integer; the key and salt of a KID are derived from its base key with HKDF
//! (§4.4.2); the AEAD nonce is `salt XOR CTR`, and the associated data is
//! `header ‖ metadata`, where the metadata are bytes the application keeps in
//! clear next to the frame and wants authenticated (for us: the codec bytes the
//! SFU reads, see [`crate::e2ee`]).
//!
//! Only the AES-GCM suites are implemented: browsers have AES-GCM in WebCrypto
//! and nothing else SFrame names (the AES-CTR+HMAC suites exist for short
//! tags, which we do not need). See `docs/e2ee.md` for why this is our own code
//! on aws-lc-rs rather than the `sframe` crate.

use std::collections::HashMap;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::kdf::{self, Hash};

/// AEAD nonce length of both suites (Nn).
pub const NONCE_LEN: usize = 12;
/// AEAD tag length of both suites (Nt).
pub const TAG_LEN: usize = 16;
/// The longest header: config byte, 8 KID bytes, 8 CTR bytes.
pub const MAX_HEADER_LEN: usize = 17;
/// Counters a receiver remembers per KID; a frame whose CTR is this far or
/// further behind the newest one seen is refused. 128 frames are ~4 s of
/// 30 fps video or ~2.5 s of 20 ms audio: far more reordering than a jitter
/// buffer tolerates, so a legitimate frame is never refused.
pub const REPLAY_WINDOW: u64 = 128;

/// The SFrame cipher suites implemented (RFC 9605 §4.5, §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// AES_128_GCM_SHA256_128 (0x0004): the default.
    Aes128GcmSha256,
    /// AES_256_GCM_SHA512_128 (0x0005).
    Aes256GcmSha512,
}

impl CipherSuite {
    /// The suite's IANA value, which also enters the key derivation labels.
    pub fn id(self) -> u16 {
        match self {
            CipherSuite::Aes128GcmSha256 => 0x0004,
            CipherSuite::Aes256GcmSha512 => 0x0005,
        }
    }

    pub fn from_id(id: u16) -> Result<CipherSuite, Error> {
        match id {
            0x0004 => Ok(CipherSuite::Aes128GcmSha256),
            0x0005 => Ok(CipherSuite::Aes256GcmSha512),
            other => Err(Error::UnsupportedSuite(other)),
        }
    }

    /// AEAD key length (Nk).
    pub fn key_len(self) -> usize {
        match self {
            CipherSuite::Aes128GcmSha256 => 16,
            CipherSuite::Aes256GcmSha512 => 32,
        }
    }

    fn hash(self) -> Hash {
        match self {
            CipherSuite::Aes128GcmSha256 => Hash::Sha256,
            CipherSuite::Aes256GcmSha512 => Hash::Sha512,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            CipherSuite::Aes128GcmSha256 => &aead::AES_128_GCM,
            CipherSuite::Aes256GcmSha512 => &aead::AES_256_GCM,
        }
    }
}

/// Why an SFrame operation failed. Every failure on received data is one of
/// these; none panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("SFrame data ends inside its header")]
    TruncatedHeader,
    #[error("SFrame data is shorter than the authentication tag")]
    TruncatedCiphertext,
    #[error("no key for KID {0}")]
    UnknownKid(u64),
    #[error("frame {ctr} of KID {kid} was already received (replay)")]
    Replay { kid: u64, ctr: u64 },
    #[error("frame {ctr} of KID {kid} is older than the replay window")]
    TooOld { kid: u64, ctr: u64 },
    /// Wrong key, or header, metadata, ciphertext or tag altered.
    #[error("SFrame authentication failed")]
    Authentication,
    #[error("the frame counter of KID {0} is exhausted; a new key is needed")]
    CounterExhausted(u64),
    #[error("unsupported SFrame cipher suite {0:#06x}")]
    UnsupportedSuite(u16),
    #[error("a base key must not be empty")]
    EmptyBaseKey,
    #[error("the crypto library refused an operation")]
    Crypto,
}

/// The SFrame header: key id and frame counter (RFC 9605 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kid: u64,
    pub ctr: u64,
}

/// Bytes of the minimal big-endian encoding of `v` (at least one).
fn be_len(v: u64) -> usize {
    (8 - (v.leading_zeros() as usize) / 8).max(1)
}

impl Header {
    /// Encodes into `out`, returning the encoded length.
    ///
    /// Config byte `X KKK Y CCC`: a value below 8 sits in its three bits;
    /// otherwise X (or Y) is set, the three bits hold the byte length minus
    /// one, and the value follows big-endian, KID first.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        let mut len = 1;
        let mut config = 0u8;
        for (value, shift) in [(self.kid, 4), (self.ctr, 0)] {
            if value < 8 {
                config |= (value as u8) << shift;
            } else {
                let n = be_len(value);
                config |= (0x08 | (n as u8 - 1)) << shift;
                out[len..len + n].copy_from_slice(&value.to_be_bytes()[8 - n..]);
                len += n;
            }
        }
        out[0] = config;
        len
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = self.encode(&mut buf);
        buf[..n].to_vec()
    }

    /// Decodes the header at the start of `data`, returning it and its
    /// length. Non-minimal encodings are accepted: the header is
    /// authenticated, so a rewritten header fails decryption anyway.
    pub fn decode(data: &[u8]) -> Result<(Header, usize), Error> {
        let config = *data.first().ok_or(Error::TruncatedHeader)?;
        let mut pos = 1;
        let mut read = |nibble: u8| -> Result<u64, Error> {
            if nibble & 0x08 == 0 {
                return Ok(u64::from(nibble & 0x07));
            }
            let n = usize::from(nibble & 0x07) + 1;
            let bytes = data.get(pos..pos + n).ok_or(Error::TruncatedHeader)?;
            pos += n;
            Ok(bytes.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
        };
        let kid = read(config >> 4)?;
        let ctr = read(config & 0x0f)?;
        Ok((Header { kid, ctr }, pos))
    }
}

/// The key and salt of one KID (RFC 9605 §4.4.2), ready for the AEAD.
struct FrameKey {
    suite: CipherSuite,
    key: LessSafeKey,
    salt: [u8; NONCE_LEN],
}

/// Raw output of the key derivation, for test vectors and the browser twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKeySalt {
    pub secret: Vec<u8>,
    pub key: Vec<u8>,
    pub salt: [u8; NONCE_LEN],
}

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";

/// `derive_key_salt(KID, base_key)` of RFC 9605 §4.4.2: HKDF-Extract with an
/// empty salt over the base key, then HKDF-Expand with the labels
/// `"SFrame 1.0 Secret key " ‖ KID ‖ suite` and `"SFrame 1.0 Secret salt " ‖
/// KID ‖ suite` (KID as 8 bytes, suite as 2 bytes, big-endian).
pub fn derive_key_salt(
    suite: CipherSuite,
    kid: u64,
    base_key: &[u8],
) -> Result<DerivedKeySalt, Error> {
    if base_key.is_empty() {
        return Err(Error::EmptyBaseKey);
    }
    let secret = kdf::extract(suite.hash(), &[], &[base_key]);
    let kid_be = kid.to_be_bytes();
    let suite_be = suite.id().to_be_bytes();
    let mut key = vec![0u8; suite.key_len()];
    kdf::expand(&secret, &[KEY_LABEL, &kid_be, &suite_be], &mut key).map_err(|_| Error::Crypto)?;
    let mut salt = [0u8; NONCE_LEN];
    kdf::expand(&secret, &[SALT_LABEL, &kid_be, &suite_be], &mut salt)
        .map_err(|_| Error::Crypto)?;
    Ok(DerivedKeySalt {
        secret: secret.as_bytes().to_vec(),
        key,
        salt,
    })
}

impl FrameKey {
    fn derive(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<FrameKey, Error> {
        let d = derive_key_salt(suite, kid, base_key)?;
        let key = UnboundKey::new(suite.aead(), &d.key).map_err(|_| Error::Crypto)?;
        Ok(FrameKey {
            suite,
            key: LessSafeKey::new(key),
            salt: d.salt,
        })
    }

    /// nonce = salt XOR CTR, the counter right-aligned in Nn bytes.
    fn nonce(&self, ctr: u64) -> Nonce {
        let mut n = self.salt;
        for (b, c) in n[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
            *b ^= c;
        }
        Nonce::assume_unique_for_key(n)
    }
}

/// Runs `f` with the AEAD's associated data `header ‖ metadata`. The common
/// case (our clear prefixes are at most 10 bytes) is built on the stack so a
/// frame costs no allocation beyond its output.
fn with_aad<R>(header: &[u8], metadata: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    const STACK: usize = 64;
    let len = header.len() + metadata.len();
    if len <= STACK {
        let mut buf = [0u8; STACK];
        buf[..header.len()].copy_from_slice(header);
        buf[header.len()..len].copy_from_slice(metadata);
        f(&buf[..len])
    } else {
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(header);
        buf.extend_from_slice(metadata);
        f(&buf)
    }
}

/// One sender's key: encrypts its frames under one KID with a counter that
/// only grows, so no (key, nonce) pair is ever used twice.
pub struct Encryptor {
    kid: u64,
    next_ctr: u64,
    key: FrameKey,
}

impl Encryptor {
    pub fn new(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<Encryptor, Error> {
        Ok(Encryptor {
            kid,
            next_ctr: 0,
            key: FrameKey::derive(suite, kid, base_key)?,
        })
    }

    /// Starts counting at `ctr` instead of 0. For test vectors, and for a
    /// sender that resumes a KID it used before (it must never go back).
    pub fn with_counter(mut self, ctr: u64) -> Encryptor {
        self.next_ctr = ctr;
        self
    }

    pub fn kid(&self) -> u64 {
        self.kid
    }

    pub fn suite(&self) -> CipherSuite {
        self.key.suite
    }

    /// The counter the next frame gets.
    pub fn next_counter(&self) -> u64 {
        self.next_ctr
    }

    /// Encrypts one frame, returning `header ‖ ciphertext ‖ tag`.
    pub fn encrypt(&mut self, metadata: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN + plaintext.len() + TAG_LEN);
        self.encrypt_into(metadata, plaintext, &mut out)?;
        Ok(out)
    }

    /// Appends `header ‖ ciphertext ‖ tag` of one frame to `out` (which may
    /// already hold a clear prefix). On error `out` is left as it was.
    pub fn encrypt_into(
        &mut self,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let ctr = self.next_ctr;
        // u64::MAX is never used, so the check is one comparison and the
        // counter can never wrap back onto a used nonce.
        if ctr == u64::MAX {
            return Err(Error::CounterExhausted(self.kid));
        }
        let header = Header { kid: self.kid, ctr };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        let start = out.len();
        out.reserve(hlen + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&hbuf[..hlen]);
        out.extend_from_slice(plaintext);
        let body = start + hlen;
        let sealed = with_aad(&hbuf[..hlen], metadata, |aad| {
            self.key.key.seal_in_place_separate_tag(
                self.key.nonce(ctr),
                Aad::from(aad),
                &mut out[body..],
            )
        });
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.next_ctr = ctr + 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::Crypto)
            }
        }
    }
}

/// Which counters of one KID were received: the newest, and a bitmap of the
/// `REPLAY_WINDOW` counters up to it (bit i = newest - i).
#[derive(Debug, Clone, Default)]
struct ReplayWindow {
    newest: Option<u64>,
    seen: u128,
}

impl ReplayWindow {
    fn check(&self, kid: u64, ctr: u64) -> Result<(), Error> {
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if ctr > newest {
            return Ok(());
        }
        let age = newest - ctr;
        if age >= REPLAY_WINDOW {
            return Err(Error::TooOld { kid, ctr });
        }
        if self.seen & (1u128 << age) != 0 {
            return Err(Error::Replay { kid, ctr });
        }
        Ok(())
    }

    /// Records `ctr`; only called after the frame authenticated, so forged
    /// frames cannot move the window.
    fn accept(&mut self, ctr: u64) {
        match self.newest {
            Some(newest) if ctr <= newest => self.seen |= 1u128 << (newest - ctr),
            Some(newest) => {
                let shift = ctr - newest;
                self.seen = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << shift
                } | 1;
                self.newest = Some(ctr);
            }
            None => {
                self.seen = 1;
                self.newest = Some(ctr);
            }
        }
    }
}

struct ReceiverKey {
    key: FrameKey,
    window: ReplayWindow,
}

/// The receiving side: keys for several KIDs (one per sender and
/// generation), each with its own replay window.
#[derive(Default)]
pub struct Decryptor {
    keys: HashMap<u64, ReceiverKey>,
}

impl Decryptor {
    pub fn new() -> Decryptor {
        Decryptor::default()
    }

    /// Adds (or replaces, with a fresh replay window) the key of `kid`.
    pub fn add_key(&mut self, suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<(), Error> {
        let key = FrameKey::derive(suite, kid, base_key)?;
        self.keys.insert(
            kid,
            ReceiverKey {
                key,
                window: ReplayWindow::default(),
            },
        );
        Ok(())
    }

    /// Forgets the key of `kid`; returns whether there was one.
    pub fn remove_key(&mut self, kid: u64) -> bool {
        self.keys.remove(&kid).is_some()
    }

    pub fn has_key(&self, kid: u64) -> bool {
        self.keys.contains_key(&kid)
    }

    /// Decrypts `header ‖ ciphertext ‖ tag` with the given metadata,
    /// returning the plaintext.
    pub fn decrypt(&mut self, metadata: &[u8], sframe: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(sframe.len());
        self.decrypt_into(metadata, sframe, &mut out)?;
        Ok(out)
    }

    /// Appends the plaintext of `sframe` to `out` (which may already hold a
    /// clear prefix). On error `out` is left as it was.
    pub fn decrypt_into(
        &mut self,
        metadata: &[u8],
        sframe: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let (header, hlen) = Header::decode(sframe)?;
        let ciphertext = &sframe[hlen..];
        if ciphertext.len() < TAG_LEN {
            return Err(Error::TruncatedCiphertext);
        }
        let entry = self
            .keys
            .get_mut(&header.kid)
            .ok_or(Error::UnknownKid(header.kid))?;
        // Refuse replays before spending an AEAD operation on them.
        entry.window.check(header.kid, header.ctr)?;
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let opened = with_aad(&sframe[..hlen], metadata, |aad| {
            entry
                .key
                .key
                .open_in_place(
                    entry.key.nonce(header.ctr),
                    Aad::from(aad),
                    &mut out[start..],
                )
                .map(|pt| pt.len())
        });
        match opened {
            Ok(pt_len) => {
                out.truncate(start + pt_len);
                entry.window.accept(header.ctr);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::Authentication)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../tests/data/rfc9605-sframe.json");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).unwrap()
    }

    #[test]
    fn header_vectors_of_rfc9605_encode_and_decode() {
        let v = vectors();
        let cases = v["header"].as_array().unwrap();
        assert_eq!(cases.len(), 289);
        for case in cases {
            let kid = case["kid"].as_u64().unwrap();
            let ctr = case["ctr"].as_u64().unwrap();
            let encoded = unhex(case["encoded"].as_str().unwrap());
            assert_eq!(Header { kid, ctr }.to_vec(), encoded, "kid {kid} ctr {ctr}");
            assert_eq!(
                Header::decode(&encoded).unwrap(),
                (Header { kid, ctr }, encoded.len())
            );
        }
    }

    #[test]
    fn encryption_vectors_of_rfc9605_pass_for_both_gcm_suites() {
        let v = vectors();
        let cases = v["sframe"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let h = |k: &str| unhex(case[k].as_str().unwrap());
            let suite =
                CipherSuite::from_id(case["cipher_suite"].as_u64().unwrap() as u16).unwrap();
            let kid = case["kid"].as_u64().unwrap();
            let ctr = case["ctr"].as_u64().unwrap();
            let d = derive_key_salt(suite, kid, &h("base_key")).unwrap();
            assert_eq!(d.secret, h("sframe_secret"));
            assert_eq!(d.key, h("sframe_key"));
            assert_eq!(d.salt.to_vec(), h("sframe_salt"));
            let key = FrameKey::derive(suite, kid, &h("base_key")).unwrap();
            let mut nonce = key.salt;
            nonce[4..]
                .iter_mut()
                .zip(ctr.to_be_bytes())
                .for_each(|(b, c)| *b ^= c);
            assert_eq!(nonce.to_vec(), h("nonce"));

            let mut enc = Encryptor::new(suite, kid, &h("base_key"))
                .unwrap()
                .with_counter(ctr);
            let ct = enc.encrypt(&h("metadata"), &h("pt")).unwrap();
            assert_eq!(ct, h("ct"), "suite {suite:?}");
            assert_eq!(enc.next_counter(), ctr + 1);

            let mut dec = Decryptor::new();
            dec.add_key(suite, kid, &h("base_key")).unwrap();
            assert_eq!(dec.decrypt(&h("metadata"), &h("ct")).unwrap(), h("pt"));
        }
    }

    fn pair() -> (Encryptor, Decryptor) {
        let base = [7u8; 16];
        let enc = Encryptor::new(CipherSuite::Aes128GcmSha256, 0x1234, &base).unwrap();
        let mut dec = Decryptor::new();
        dec.add_key(CipherSuite::Aes128GcmSha256, 0x1234, &base)
            .unwrap();
        (enc, dec)
    }

    #[test]
    fn any_altered_byte_of_header_ciphertext_tag_or_metadata_fails_authentication() {
        let (mut enc, mut dec) = pair();
        let meta = b"clear";
        let ct = enc.encrypt(meta, b"a frame of media").unwrap();
        let (_, hlen) = Header::decode(&ct).unwrap();
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            let err = dec.decrypt(meta, &bad).unwrap_err();
            // A flipped header bit may change the KID or CTR (then the key
            // is unknown or the nonce differs) or make the header longer.
            if i < hlen {
                assert!(
                    matches!(
                        err,
                        Error::Authentication
                            | Error::UnknownKid(_)
                            | Error::TruncatedHeader
                            | Error::TruncatedCiphertext
                    ),
                    "byte {i}: {err:?}"
                );
            } else {
                assert_eq!(err, Error::Authentication, "byte {i}");
            }
        }
        for i in 0..meta.len() {
            let mut bad = *meta;
            bad[i] ^= 0x80;
            assert_eq!(dec.decrypt(&bad, &ct), Err(Error::Authentication));
        }
        // Nothing above moved the replay window: the real frame still opens.
        assert_eq!(dec.decrypt(meta, &ct).unwrap(), b"a frame of media");
    }

    #[test]
    fn a_replayed_frame_is_refused() {
        let (mut enc, mut dec) = pair();
        let ct = enc.encrypt(b"", b"x").unwrap();
        dec.decrypt(b"", &ct).unwrap();
        assert_eq!(
            dec.decrypt(b"", &ct),
            Err(Error::Replay {
                kid: 0x1234,
                ctr: 0
            })
        );
    }

    #[test]
    fn reordered_frames_inside_the_window_open_and_older_ones_are_refused() {
        let (mut enc, mut dec) = pair();
        let frames: Vec<Vec<u8>> = (0..200).map(|_| enc.encrypt(b"", b"f").unwrap()).collect();
        // Newest first: 199 opens, then 72..=198 still fit in the window.
        dec.decrypt(b"", &frames[199]).unwrap();
        for ctr in (72..199).rev() {
            dec.decrypt(b"", &frames[ctr]).unwrap();
        }
        assert_eq!(
            dec.decrypt(b"", &frames[71]),
            Err(Error::TooOld {
                kid: 0x1234,
                ctr: 71
            })
        );
        assert_eq!(
            dec.decrypt(b"", &frames[100]),
            Err(Error::Replay {
                kid: 0x1234,
                ctr: 100
            })
        );
    }

    #[test]
    fn a_frame_of_an_unknown_kid_is_refused() {
        let base = [1u8; 16];
        let mut enc = Encryptor::new(CipherSuite::Aes128GcmSha256, 9, &base).unwrap();
        let mut dec = Decryptor::new();
        dec.add_key(CipherSuite::Aes128GcmSha256, 8, &base).unwrap();
        let ct = enc.encrypt(b"", b"x").unwrap();
        assert_eq!(dec.decrypt(b"", &ct), Err(Error::UnknownKid(9)));
        assert!(dec.remove_key(8));
        assert!(!dec.has_key(8));
    }

    #[test]
    fn a_receiver_with_another_base_key_opens_nothing() {
        let mut enc = Encryptor::new(CipherSuite::Aes128GcmSha256, 3, &[1u8; 16]).unwrap();
        let mut dec = Decryptor::new();
        dec.add_key(CipherSuite::Aes128GcmSha256, 3, &[2u8; 16])
            .unwrap();
        let ct = enc.encrypt(b"", b"secret").unwrap();
        assert_eq!(dec.decrypt(b"", &ct), Err(Error::Authentication));
    }

    #[test]
    fn short_and_truncated_input_is_an_error_not_a_panic() {
        let (mut enc, mut dec) = pair();
        let ct = enc.encrypt(b"", b"payload").unwrap();
        assert_eq!(dec.decrypt(b"", &[]), Err(Error::TruncatedHeader));
        // KID 0x1234 needs two bytes after the config byte.
        assert_eq!(dec.decrypt(b"", &ct[..2]), Err(Error::TruncatedHeader));
        for len in 3..ct.len() {
            assert!(dec.decrypt(b"", &ct[..len]).is_err(), "len {len}");
        }
        // Every two-byte input decodes or fails cleanly.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = dec.decrypt(b"", &[a, b]);
            }
        }
    }

    #[test]
    fn the_counter_never_wraps() {
        let mut enc = Encryptor::new(CipherSuite::Aes128GcmSha256, 1, &[1u8; 16])
            .unwrap()
            .with_counter(u64::MAX - 1);
        enc.encrypt(b"", b"last").unwrap();
        assert_eq!(enc.encrypt(b"", b"x"), Err(Error::CounterExhausted(1)));
    }

    #[test]
    fn long_metadata_is_authenticated_too() {
        let (mut enc, mut dec) = pair();
        let meta = [5u8; 300];
        let ct = enc.encrypt(&meta, b"x").unwrap();
        assert_eq!(dec.decrypt(&meta, &ct).unwrap(), b"x");
        let mut bad = meta;
        bad[299] = 0;
        let ct = enc.encrypt(&meta, b"y").unwrap();
        assert_eq!(dec.decrypt(&bad, &ct), Err(Error::Authentication));
    }

    #[test]
    fn an_empty_base_key_is_refused() {
        assert!(matches!(
            Encryptor::new(CipherSuite::Aes128GcmSha256, 1, &[]),
            Err(Error::EmptyBaseKey)
        ));
        assert_eq!(CipherSuite::from_id(1), Err(Error::UnsupportedSuite(1)));
    }
}
