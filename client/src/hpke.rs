//! HPKE (RFC 9180), base mode, single-shot: encrypts an epoch secret to one
//! member's X25519 public key so the signaling server can relay it without
//! being able to read it.
//!
//! One suite only: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM
//! (0x0020, 0x0001, 0x0001), all of which browsers have in WebCrypto. A
//! single-shot seal uses sequence number 0, so the nonce is the base nonce.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};

use crate::kdf::{self, Hash, Prk};

pub const KEM_ID: u16 = 0x0020;
pub const KDF_ID: u16 = 0x0001;
pub const AEAD_ID: u16 = 0x0001;
/// Length of an X25519 public key, of `enc`, and of a private key.
pub const KEY_LEN: usize = 32;
const NK: usize = 16;
const NN: usize = 12;
const NT: usize = 16;
const NSECRET: usize = 32;
const VERSION: &[u8] = b"HPKE-v1";
/// suite_id of the KEM: "KEM" ‖ I2OSP(kem_id, 2).
const KEM_SUITE: [u8; 5] = [b'K', b'E', b'M', 0x00, 0x20];
/// suite_id of the key schedule: "HPKE" ‖ kem_id ‖ kdf_id ‖ aead_id.
const HPKE_SUITE: [u8; 10] = [b'H', b'P', b'K', b'E', 0x00, 0x20, 0x00, 0x01, 0x00, 0x01];
const MODE_BASE: u8 = 0x00;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("an X25519 key must be 32 bytes")]
    BadKeyLength,
    /// The peer's public key is unusable (e.g. a low-order point, whose
    /// shared secret would be all zeros; RFC 9180 §7.1.4).
    #[error("the X25519 key agreement failed")]
    Agreement,
    #[error("the HPKE ciphertext is shorter than its tag")]
    Truncated,
    /// Wrong recipient, or `enc`, info, aad or ciphertext altered.
    #[error("HPKE authentication failed")]
    Authentication,
    #[error("the crypto library refused an operation")]
    Crypto,
}

/// A member's X25519 key pair. The private half never leaves the client.
pub struct KeyPair {
    private: agreement::PrivateKey,
    public: [u8; KEY_LEN],
}

impl KeyPair {
    pub fn generate() -> Result<KeyPair, Error> {
        let private = agreement::PrivateKey::generate(&X25519).map_err(|_| Error::Crypto)?;
        KeyPair::from_private(private)
    }

    /// A key pair from its 32 private bytes (test vectors, stored keys).
    pub fn from_private_bytes(bytes: &[u8]) -> Result<KeyPair, Error> {
        if bytes.len() != KEY_LEN {
            return Err(Error::BadKeyLength);
        }
        let private =
            agreement::PrivateKey::from_private_key(&X25519, bytes).map_err(|_| Error::Crypto)?;
        KeyPair::from_private(private)
    }

    fn from_private(private: agreement::PrivateKey) -> Result<KeyPair, Error> {
        let pk = private.compute_public_key().map_err(|_| Error::Crypto)?;
        let public: [u8; KEY_LEN] = pk.as_ref().try_into().map_err(|_| Error::Crypto)?;
        Ok(KeyPair { private, public })
    }

    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    fn dh(&self, peer: &[u8]) -> Result<[u8; KEY_LEN], Error> {
        if peer.len() != KEY_LEN {
            return Err(Error::BadKeyLength);
        }
        agreement::agree(
            &self.private,
            UnparsedPublicKey::new(&X25519, peer),
            Error::Agreement,
            |secret| secret.try_into().map_err(|_| Error::Agreement),
        )
    }
}

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Prk {
    kdf::extract(Hash::Sha256, salt, &[VERSION, suite, label, ikm])
}

fn labeled_expand(
    suite: &[u8],
    prk: &Prk,
    label: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), Error> {
    let len = u16::try_from(out.len())
        .map_err(|_| Error::Crypto)?
        .to_be_bytes();
    kdf::expand(prk, &[&len, VERSION, suite, label, info], out).map_err(|_| Error::Crypto)
}

/// ExtractAndExpand of DHKEM (RFC 9180 §4.1): kem_context = enc ‖ pkR.
fn kem_shared_secret(dh: &[u8; KEY_LEN], enc: &[u8], pk_r: &[u8]) -> Result<[u8; NSECRET], Error> {
    let eae_prk = labeled_extract(&KEM_SUITE, b"", b"eae_prk", dh);
    let mut ctx = [0u8; 2 * KEY_LEN];
    ctx[..KEY_LEN].copy_from_slice(enc);
    ctx[KEY_LEN..].copy_from_slice(pk_r);
    let mut ss = [0u8; NSECRET];
    labeled_expand(&KEM_SUITE, &eae_prk, b"shared_secret", &ctx, &mut ss)?;
    Ok(ss)
}

/// The context's key and base nonce (RFC 9180 §5.1, base mode: empty PSK).
struct KeySchedule {
    key: [u8; NK],
    base_nonce: [u8; NN],
    #[cfg(test)]
    context: Vec<u8>,
    #[cfg(test)]
    secret: Vec<u8>,
}

fn key_schedule(shared_secret: &[u8], info: &[u8]) -> Result<KeySchedule, Error> {
    let psk_id_hash = labeled_extract(&HPKE_SUITE, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(&HPKE_SUITE, b"", b"info_hash", info);
    let mut context = [0u8; 1 + 2 * 32];
    context[0] = MODE_BASE;
    context[1..33].copy_from_slice(psk_id_hash.as_bytes());
    context[33..].copy_from_slice(info_hash.as_bytes());
    let secret = labeled_extract(&HPKE_SUITE, shared_secret, b"secret", b"");
    let mut ks = KeySchedule {
        key: [0; NK],
        base_nonce: [0; NN],
        #[cfg(test)]
        context: context.to_vec(),
        #[cfg(test)]
        secret: secret.as_bytes().to_vec(),
    };
    labeled_expand(&HPKE_SUITE, &secret, b"key", &context, &mut ks.key)?;
    labeled_expand(
        &HPKE_SUITE,
        &secret,
        b"base_nonce",
        &context,
        &mut ks.base_nonce,
    )?;
    Ok(ks)
}

fn aead_key(ks: &KeySchedule) -> Result<LessSafeKey, Error> {
    let key = UnboundKey::new(&aead::AES_128_GCM, &ks.key).map_err(|_| Error::Crypto)?;
    Ok(LessSafeKey::new(key))
}

/// What a seal produces: the encapsulated key and the ciphertext; the
/// recipient needs both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub enc: [u8; KEY_LEN],
    pub ciphertext: Vec<u8>,
}

/// Encrypts `plaintext` to the holder of `pk_r` (SealBase, RFC 9180 §6.1).
pub fn seal(pk_r: &[u8], info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Sealed, Error> {
    seal_with_ephemeral(&KeyPair::generate()?, pk_r, info, aad, plaintext)
}

/// `seal` with a given ephemeral key pair: deterministic, for the test
/// vectors and the fixture the browser twin checks. Reusing an ephemeral
/// key for two seals to the same recipient reuses a nonce; only tests do it.
pub(crate) fn seal_with_ephemeral(
    ephemeral: &KeyPair,
    pk_r: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, Error> {
    let dh = ephemeral.dh(pk_r)?;
    let enc = ephemeral.public;
    let ss = kem_shared_secret(&dh, &enc, pk_r)?;
    let ks = key_schedule(&ss, info)?;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + NT);
    ciphertext.extend_from_slice(plaintext);
    let tag = aead_key(&ks)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(ks.base_nonce),
            Aad::from(aad),
            &mut ciphertext,
        )
        .map_err(|_| Error::Crypto)?;
    ciphertext.extend_from_slice(tag.as_ref());
    Ok(Sealed { enc, ciphertext })
}

/// Decrypts what [`seal`] made for `recipient` (OpenBase, RFC 9180 §6.1).
pub fn open(
    recipient: &KeyPair,
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, Error> {
    if ciphertext.len() < NT {
        return Err(Error::Truncated);
    }
    let dh = recipient.dh(enc)?;
    let ss = kem_shared_secret(&dh, enc, &recipient.public)?;
    let ks = key_schedule(&ss, info)?;
    let mut buf = ciphertext.to_vec();
    let len = aead_key(&ks)?
        .open_in_place(
            Nonce::assume_unique_for_key(ks.base_nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| Error::Authentication)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const VECTORS: &str = include_str!("../tests/data/rfc9180-hpke-x25519-aes128.json");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc9180_base_mode_x25519_aes128_vector_passes() {
        let v: Value = serde_json::from_str(VECTORS).unwrap();
        let h = |k: &str| unhex(v[k].as_str().unwrap());
        assert_eq!(
            (
                v["kem_id"].as_u64(),
                v["kdf_id"].as_u64(),
                v["aead_id"].as_u64()
            ),
            (
                Some(u64::from(KEM_ID)),
                Some(u64::from(KDF_ID)),
                Some(u64::from(AEAD_ID))
            )
        );
        let eph = KeyPair::from_private_bytes(&h("skEm")).unwrap();
        let rcpt = KeyPair::from_private_bytes(&h("skRm")).unwrap();
        assert_eq!(eph.public_key().to_vec(), h("pkEm"));
        assert_eq!(rcpt.public_key().to_vec(), h("pkRm"));

        // Encap and Decap agree on the vector's shared secret.
        let ss = kem_shared_secret(&eph.dh(&h("pkRm")).unwrap(), &h("pkEm"), &h("pkRm")).unwrap();
        assert_eq!(ss.to_vec(), h("shared_secret"));
        let ss_r =
            kem_shared_secret(&rcpt.dh(&h("enc")).unwrap(), &h("enc"), rcpt.public_key()).unwrap();
        assert_eq!(ss_r, ss);

        let ks = key_schedule(&ss, &h("info")).unwrap();
        assert_eq!(ks.context, h("key_schedule_context"));
        assert_eq!(ks.secret, h("secret"));
        assert_eq!(ks.key.to_vec(), h("key"));
        assert_eq!(ks.base_nonce.to_vec(), h("base_nonce"));

        let e = &v["encryptions"][0];
        let eh = |k: &str| unhex(e[k].as_str().unwrap());
        assert_eq!(e["sequence_number"].as_u64(), Some(0));
        let sealed =
            seal_with_ephemeral(&eph, &h("pkRm"), &h("info"), &eh("aad"), &eh("pt")).unwrap();
        assert_eq!(sealed.enc.to_vec(), h("enc"));
        assert_eq!(sealed.ciphertext, eh("ct"));
        let pt = open(&rcpt, &h("enc"), &h("info"), &eh("aad"), &eh("ct")).unwrap();
        assert_eq!(pt, eh("pt"));
    }

    #[test]
    fn seal_and_open_round_trip_with_fresh_keys() {
        let rcpt = KeyPair::generate().unwrap();
        let s = seal(rcpt.public_key(), b"info", b"aad", b"epoch secret").unwrap();
        assert_eq!(
            open(&rcpt, &s.enc, b"info", b"aad", &s.ciphertext).unwrap(),
            b"epoch secret"
        );
        // Two seals of the same message differ (fresh ephemeral key each).
        let s2 = seal(rcpt.public_key(), b"info", b"aad", b"epoch secret").unwrap();
        assert_ne!(s.enc, s2.enc);
    }

    #[test]
    fn altered_enc_info_aad_or_ciphertext_and_the_wrong_recipient_are_refused() {
        let rcpt = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let s = seal(rcpt.public_key(), b"info", b"aad", b"epoch secret").unwrap();
        for i in 0..s.ciphertext.len() {
            let mut bad = s.ciphertext.clone();
            bad[i] ^= 1;
            assert_eq!(
                open(&rcpt, &s.enc, b"info", b"aad", &bad),
                Err(Error::Authentication)
            );
        }
        let mut enc = s.enc;
        enc[0] ^= 1;
        assert!(open(&rcpt, &enc, b"info", b"aad", &s.ciphertext).is_err());
        assert_eq!(
            open(&rcpt, &s.enc, b"infO", b"aad", &s.ciphertext),
            Err(Error::Authentication)
        );
        assert_eq!(
            open(&rcpt, &s.enc, b"info", b"aaD", &s.ciphertext),
            Err(Error::Authentication)
        );
        assert_eq!(
            open(&other, &s.enc, b"info", b"aad", &s.ciphertext),
            Err(Error::Authentication)
        );
        assert_eq!(
            open(&rcpt, &s.enc, b"info", b"aad", &s.ciphertext[..15]),
            Err(Error::Truncated)
        );
        assert_eq!(
            open(&rcpt, &s.enc[..31], b"info", b"aad", &s.ciphertext),
            Err(Error::BadKeyLength)
        );
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        // The all-zero point gives an all-zero shared secret.
        assert_eq!(seal(&[0u8; 32], b"", b"", b"x"), Err(Error::Agreement));
    }
}
