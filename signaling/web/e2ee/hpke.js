// HPKE (RFC 9180) base mode, single-shot, on WebCrypto: the browser twin of
// client/src/hpke.rs. One suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// AES-128-GCM. A single-shot seal uses sequence number 0: nonce = base_nonce.
import { hkdfExtract, hkdfExpand } from "./sframe.js";

const subtle = globalThis.crypto.subtle;
const utf8 = new TextEncoder();
const VERSION = utf8.encode("HPKE-v1");
const KEM_SUITE = new Uint8Array([0x4b, 0x45, 0x4d, 0x00, 0x20]); // "KEM" ‖ 0x0020
const HPKE_SUITE = new Uint8Array([0x48, 0x50, 0x4b, 0x45, 0x00, 0x20, 0x00, 0x01, 0x00, 0x01]);
const NK = 16;
const NN = 12;
const NT = 16;
// PKCS#8 wrapping of a raw X25519 private key (WebCrypto imports no raw private keys).
const PKCS8_X25519 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20]);

export class HpkeError extends Error {
  constructor(kind, message) {
    super(message ?? kind);
    this.name = "HpkeError";
    this.kind = kind;
  }
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function b64urlDecode(s) {
  const b = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
}

/** { privateKey: CryptoKey, publicKey: Uint8Array(32) } */
export async function generateKeyPair() {
  const kp = await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
  return { privateKey: kp.privateKey, publicKey: new Uint8Array(await subtle.exportKey("raw", kp.publicKey)) };
}

/** A key pair from 32 private bytes (test vectors). */
export async function keyPairFromPrivateBytes(bytes) {
  if (bytes.length !== 32) throw new HpkeError("bad_key_length", "an X25519 key must be 32 bytes");
  const privateKey = await subtle.importKey("pkcs8", concat(PKCS8_X25519, bytes), { name: "X25519" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", privateKey);
  return { privateKey, publicKey: b64urlDecode(jwk.x) };
}

async function dh(privateKey, peer) {
  if (peer.length !== 32) throw new HpkeError("bad_key_length", "an X25519 key must be 32 bytes");
  try {
    const pub = await subtle.importKey("raw", peer, { name: "X25519" }, false, []);
    return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: pub }, privateKey, 256));
  } catch {
    // Includes low-order points (all-zero shared secret, RFC 9180 §7.1.4).
    throw new HpkeError("agreement", "the X25519 key agreement failed");
  }
}

const labeledExtract = (suite, salt, label, ikm) =>
  hkdfExtract("SHA-256", salt, concat(VERSION, suite, utf8.encode(label), ikm));
const labeledExpand = (suite, prk, label, info, len) =>
  hkdfExpand("SHA-256", prk, concat(new Uint8Array([len >> 8, len & 0xff]), VERSION, suite, utf8.encode(label), info), len);

async function kemSharedSecret(dhOut, enc, pkR) {
  const eaePrk = await labeledExtract(KEM_SUITE, new Uint8Array(0), "eae_prk", dhOut);
  return labeledExpand(KEM_SUITE, eaePrk, "shared_secret", concat(enc, pkR), 32);
}

/** Key schedule of base mode: { key, baseNonce, context, secret }. */
export async function keySchedule(sharedSecret, info) {
  const empty = new Uint8Array(0);
  const pskIdHash = await labeledExtract(HPKE_SUITE, empty, "psk_id_hash", empty);
  const infoHash = await labeledExtract(HPKE_SUITE, empty, "info_hash", info);
  const context = concat(new Uint8Array([0]), pskIdHash, infoHash);
  const secret = await labeledExtract(HPKE_SUITE, sharedSecret, "secret", empty);
  const key = await labeledExpand(HPKE_SUITE, secret, "key", context, NK);
  const baseNonce = await labeledExpand(HPKE_SUITE, secret, "base_nonce", context, NN);
  return { key, baseNonce, context, secret };
}

async function aesGcm(op, ks, aad, data) {
  const k = await subtle.importKey("raw", ks.key, "AES-GCM", false, [op]);
  return new Uint8Array(await subtle[op]({ name: "AES-GCM", iv: ks.baseNonce, additionalData: aad, tagLength: 128 }, k, data));
}

/** SealBase to `pkR`: { enc, ciphertext }. `ephemeral` only for tests (deterministic output). */
export async function seal(pkR, info, aad, plaintext, ephemeral) {
  const eph = ephemeral ?? (await generateKeyPair());
  const ss = await kemSharedSecret(await dh(eph.privateKey, pkR), eph.publicKey, pkR);
  const ks = await keySchedule(ss, info);
  return { enc: eph.publicKey, ciphertext: await aesGcm("encrypt", ks, aad, plaintext) };
}

/** OpenBase with `recipient` = { privateKey, publicKey }. */
export async function open(recipient, enc, info, aad, ciphertext) {
  if (ciphertext.length < NT) throw new HpkeError("truncated", "the HPKE ciphertext is shorter than its tag");
  const ss = await kemSharedSecret(await dh(recipient.privateKey, enc), enc, recipient.publicKey);
  const ks = await keySchedule(ss, info);
  try {
    return await aesGcm("decrypt", ks, aad, ciphertext);
  } catch {
    throw new HpkeError("authentication", "HPKE authentication failed");
  }
}

/** Exposed for the test vectors: Encap/Decap's shared secret. */
export async function sharedSecret(privateKey, peer, enc, pkR) {
  return kemSharedSecret(await dh(privateKey, peer), enc, pkR);
}
