//! HKDF (RFC 5869) as separate Extract and Expand steps over aws-lc-rs.
//!
//! SFrame (RFC 9605 §4.4.2) and HPKE (RFC 9180 §4) are specified in terms of
//! the two steps, with multi-part inputs, and their test vectors check the
//! intermediate pseudorandom key. aws-lc-rs's `hkdf::Prk` hides that key, so
//! Extract is HMAC written out (RFC 5869 §2.2 defines it as exactly that) and
//! Expand uses `hkdf::Prk::new_less_safe` on the bytes we hold.

use aws_lc_rs::{hkdf, hmac};

/// The largest hash output we use (SHA-512).
pub(crate) const MAX_HASH_LEN: usize = 64;

/// The hash of one HKDF instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    pub(crate) fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha512 => 64,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Hash::Sha256 => hkdf::HKDF_SHA256,
            Hash::Sha512 => hkdf::HKDF_SHA512,
        }
    }
}

/// A pseudorandom key: the output of Extract, `hash.len()` bytes of `bytes`.
#[derive(Clone)]
pub(crate) struct Prk {
    hash: Hash,
    bytes: [u8; MAX_HASH_LEN],
}

impl Prk {
    /// A PRK given as bytes (a 32-byte epoch secret used directly as the key
    /// of Expand, as the key schedule does). Callers pass `hash.len()`
    /// bytes; the types of `e2ee::schedule` enforce it.
    pub(crate) fn from_bytes(hash: Hash, bytes: &[u8]) -> Prk {
        let mut prk = Prk {
            hash,
            bytes: [0; MAX_HASH_LEN],
        };
        let n = bytes.len().min(MAX_HASH_LEN);
        prk.bytes[..n].copy_from_slice(&bytes[..n]);
        prk
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.hash.len()]
    }
}

/// HKDF-Extract(salt, ikm) where ikm is the concatenation of `ikm_parts`.
/// An empty salt is HMAC's zero-padded key, which RFC 5869 specifies for "no
/// salt".
pub(crate) fn extract(hash: Hash, salt: &[u8], ikm_parts: &[&[u8]]) -> Prk {
    let key = hmac::Key::new(hash.hmac(), salt);
    let mut ctx = hmac::Context::with_key(&key);
    for part in ikm_parts {
        ctx.update(part);
    }
    let tag = ctx.sign();
    Prk::from_bytes(hash, tag.as_ref())
}

/// The output length of an Expand, as aws-lc-rs wants it.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand(prk, info, out.len()) where info is the concatenation of
/// `info_parts`. Fails only when `out` is longer than 255 hash lengths,
/// which no caller here asks for.
pub(crate) fn expand(prk: &Prk, info_parts: &[&[u8]], out: &mut [u8]) -> Result<(), KdfError> {
    let prk = hkdf::Prk::new_less_safe(prk.hash.hkdf(), prk.as_bytes());
    prk.expand(info_parts, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| KdfError)
}

/// HKDF-Expand was asked for more than 255 hash lengths of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HKDF-Expand output too long")]
pub struct KdfError;

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 Appendix A.1 (SHA-256, basic case).
    #[test]
    fn extract_and_expand_match_rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let prk = extract(Hash::Sha256, &salt, &[&ikm[..11], &ikm[11..]]);
        assert_eq!(
            hex(prk.as_bytes()),
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
        );
        let mut okm = [0u8; 42];
        expand(&prk, &[&info[..3], &info[3..]], &mut okm).unwrap();
        assert_eq!(
            hex(&okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
