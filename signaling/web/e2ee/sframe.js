// SFrame (RFC 9605) with Stämma's codec-aware clear prefix, on WebCrypto.
// The browser twin of client/src/sframe.rs and client/src/e2ee.rs: the same
// bytes, the same replay window, the same prefix rule (docs/e2ee.md).
//
// KID and CTR are BigInts: RFC 9605 allows 64-bit values, beyond a Number's
// 53 bits. A protected frame is `clear prefix ‖ header ‖ ciphertext ‖ tag`,
// the prefix being SFrame's authenticated `metadata`.

const subtle = globalThis.crypto.subtle;

export const AES_128_GCM_SHA256_128 = 0x0004;
export const AES_256_GCM_SHA512_128 = 0x0005;
const SUITES = new Map([
  [AES_128_GCM_SHA256_128, { id: 0x0004, hash: "SHA-256", hashLen: 32, keyLen: 16 }],
  [AES_256_GCM_SHA512_128, { id: 0x0005, hash: "SHA-512", hashLen: 64, keyLen: 32 }],
]);
export const NONCE_LEN = 12;
export const TAG_LEN = 16;
export const MAX_HEADER_LEN = 17;
// Counters remembered per KID (see sframe.rs REPLAY_WINDOW).
export const REPLAY_WINDOW = 128n;
const U64_MAX = (1n << 64n) - 1n;

/** A typed failure: `kind` names it (the Rust twin's error variant, snake_case). */
export class SFrameError extends Error {
  constructor(kind, message) {
    super(message ?? kind);
    this.name = "SFrameError";
    this.kind = kind;
  }
}

function suiteOf(id) {
  const s = SUITES.get(id);
  if (!s) throw new SFrameError("unsupported_suite", `unsupported SFrame cipher suite ${id}`);
  return s;
}

function concat(...parts) {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u64be(v) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v));
  return b;
}

const utf8 = new TextEncoder();

// --- HKDF as Extract and Expand (RFC 5869), over WebCrypto HMAC ---------------

async function hmac(hash, key, data) {
  const k = await subtle.importKey("raw", key, { name: "HMAC", hash }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", k, data));
}

/** HKDF-Extract. WebCrypto refuses an empty HMAC key, so "no salt" is HashLen zeros (RFC 5869 §2.2: the same thing). */
export async function hkdfExtract(hash, salt, ikm) {
  const hashLen = hash === "SHA-512" ? 64 : 32;
  return hmac(hash, salt.length ? salt : new Uint8Array(hashLen), ikm);
}

/** HKDF-Expand: T(i) = HMAC(PRK, T(i-1) ‖ info ‖ i). */
export async function hkdfExpand(hash, prk, info, length) {
  const k = await subtle.importKey("raw", prk, { name: "HMAC", hash }, false, ["sign"]);
  const out = new Uint8Array(length);
  let t = new Uint8Array(0);
  for (let i = 1, at = 0; at < length; i++) {
    t = new Uint8Array(await subtle.sign("HMAC", k, concat(t, info, new Uint8Array([i]))));
    out.set(t.subarray(0, Math.min(t.length, length - at)), at);
    at += t.length;
  }
  return out;
}

// --- Header (RFC 9605 §4.3) ---------------------------------------------------

function beLen(v) {
  let n = 1;
  while (v >> BigInt(8 * n) > 0n) n++;
  return n;
}

/** Encodes KID and CTR: config byte `X KKK Y CCC`, then KID, then CTR (minimal big-endian). */
export function encodeHeader(kid, ctr) {
  kid = BigInt(kid);
  ctr = BigInt(ctr);
  const out = [0];
  let config = 0;
  for (const [value, shift] of [[kid, 4], [ctr, 0]]) {
    if (value < 8n) {
      config |= Number(value) << shift;
    } else {
      const n = beLen(value);
      config |= (0x08 | (n - 1)) << shift;
      for (let i = n - 1; i >= 0; i--) out.push(Number((value >> BigInt(8 * i)) & 0xffn));
    }
  }
  out[0] = config;
  return new Uint8Array(out);
}

/** Decodes the header at the start of `data`: { kid, ctr, length }. */
export function decodeHeader(data) {
  if (data.length < 1) throw new SFrameError("truncated_header", "SFrame data ends inside its header");
  const config = data[0];
  let pos = 1;
  const read = (nibble) => {
    if ((nibble & 0x08) === 0) return BigInt(nibble & 0x07);
    const n = (nibble & 0x07) + 1;
    if (pos + n > data.length) throw new SFrameError("truncated_header", "SFrame data ends inside its header");
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(data[pos + i]);
    pos += n;
    return v;
  };
  const kid = read(config >> 4);
  const ctr = read(config & 0x0f);
  return { kid, ctr, length: pos };
}

// --- Keys (RFC 9605 §4.4.2) -----------------------------------------------------

/** derive_key_salt: { secret, key, salt } as bytes. */
export async function deriveKeySalt(suiteId, kid, baseKey) {
  const s = suiteOf(suiteId);
  if (!baseKey.length) throw new SFrameError("empty_base_key", "a base key must not be empty");
  const secret = await hkdfExtract(s.hash, new Uint8Array(0), baseKey);
  const tail = concat(u64be(BigInt(kid)), new Uint8Array([s.id >> 8, s.id & 0xff]));
  const key = await hkdfExpand(s.hash, secret, concat(utf8.encode("SFrame 1.0 Secret key "), tail), s.keyLen);
  const salt = await hkdfExpand(s.hash, secret, concat(utf8.encode("SFrame 1.0 Secret salt "), tail), NONCE_LEN);
  return { secret, key, salt };
}

async function frameKey(suiteId, kid, baseKey) {
  const d = await deriveKeySalt(suiteId, kid, baseKey);
  const key = await subtle.importKey("raw", d.key, "AES-GCM", false, ["encrypt", "decrypt"]);
  return { key, salt: d.salt };
}

/** nonce = salt XOR CTR, the counter right-aligned. */
function nonceOf(salt, ctr) {
  const n = salt.slice();
  const c = u64be(ctr);
  for (let i = 0; i < 8; i++) n[NONCE_LEN - 8 + i] ^= c[i];
  return n;
}

/** One sender's key; the counter only grows, so no nonce repeats. */
export class Encryptor {
  static async create(suiteId, kid, baseKey, firstCounter = 0n) {
    const e = new Encryptor();
    e.suite = suiteOf(suiteId).id;
    e.kid = BigInt(kid);
    e.nextCtr = BigInt(firstCounter);
    e.fk = await frameKey(suiteId, e.kid, baseKey);
    return e;
  }

  /** header ‖ ciphertext ‖ tag. The counter is taken before the first await, so concurrent calls never share one. */
  async encrypt(metadata, plaintext) {
    const ctr = this.nextCtr;
    if (ctr >= U64_MAX) throw new SFrameError("counter_exhausted", `the frame counter of KID ${this.kid} is exhausted`);
    this.nextCtr = ctr + 1n;
    const header = encodeHeader(this.kid, ctr);
    const ct = await subtle.encrypt(
      { name: "AES-GCM", iv: nonceOf(this.fk.salt, ctr), additionalData: concat(header, metadata), tagLength: 128 },
      this.fk.key,
      plaintext,
    );
    return concat(header, new Uint8Array(ct));
  }
}

/** Received counters of one KID: the newest and a bitmap of the window up to it (bit i = newest - i). */
class ReplayWindow {
  constructor() {
    this.newest = -1n;
    this.seen = 0n;
  }
  check(kid, ctr) {
    if (this.newest < 0n || ctr > this.newest) return;
    const age = this.newest - ctr;
    if (age >= REPLAY_WINDOW) throw new SFrameError("too_old", `frame ${ctr} of KID ${kid} is older than the replay window`);
    if ((this.seen >> age) & 1n) throw new SFrameError("replay", `frame ${ctr} of KID ${kid} was already received`);
  }
  accept(ctr) {
    if (this.newest >= 0n && ctr <= this.newest) {
      this.seen |= 1n << (this.newest - ctr);
    } else {
      const shift = this.newest < 0n ? REPLAY_WINDOW : ctr - this.newest;
      this.seen = shift >= REPLAY_WINDOW ? 1n : ((this.seen << shift) | 1n) & ((1n << REPLAY_WINDOW) - 1n);
      this.newest = ctr;
    }
  }
}

/** Keys of several KIDs, each with its own replay window. */
export class Decryptor {
  constructor() {
    this.keys = new Map();
  }
  async addKey(suiteId, kid, baseKey) {
    kid = BigInt(kid);
    this.keys.set(kid, { fk: await frameKey(suiteId, kid, baseKey), window: new ReplayWindow() });
  }
  removeKey(kid) {
    return this.keys.delete(BigInt(kid));
  }
  hasKey(kid) {
    return this.keys.has(BigInt(kid));
  }
  /** Plaintext of `header ‖ ciphertext ‖ tag`. */
  async decrypt(metadata, sframe) {
    const h = decodeHeader(sframe);
    if (sframe.length - h.length < TAG_LEN) throw new SFrameError("truncated_ciphertext", "SFrame data is shorter than the tag");
    const entry = this.keys.get(h.kid);
    if (!entry) throw new SFrameError("unknown_kid", `no key for KID ${h.kid}`);
    entry.window.check(h.kid, h.ctr);
    let pt;
    try {
      pt = await subtle.decrypt(
        {
          name: "AES-GCM",
          iv: nonceOf(entry.fk.salt, h.ctr),
          additionalData: concat(sframe.subarray(0, h.length), metadata),
          tagLength: 128,
        },
        entry.fk.key,
        sframe.subarray(h.length),
      );
    } catch {
      throw new SFrameError("authentication", "SFrame authentication failed");
    }
    // Checked again: another decrypt of the same counter may have finished meanwhile.
    entry.window.check(h.kid, h.ctr);
    entry.window.accept(h.ctr);
    return new Uint8Array(pt);
  }
}

// --- Codec-aware clear prefix (e2ee.rs) -----------------------------------------

export const Codec = Object.freeze({ OPUS: "opus", VP8: "vp8", DATA: "data" });

function ruleLen(codec, first) {
  if (codec === Codec.DATA || first === undefined) return 0;
  if (codec === Codec.OPUS) return 1;
  if (codec === Codec.VP8) return (first & 0x01) === 0 ? 10 : 3; // P bit 0 = keyframe
  throw new SFrameError("unknown_codec", `unknown codec ${codec}`);
}

/** Leading bytes that stay in clear: Opus TOC (1); VP8 keyframe 10, delta 3; never more than the frame. */
export function clearPrefixLen(codec, frame) {
  return Math.min(ruleLen(codec, frame[0]), frame.length);
}

/** prefix ‖ SFrame(prefix as metadata). */
export async function protect(encryptor, codec, frame) {
  const needed = ruleLen(codec, frame[0]);
  if (codec !== Codec.DATA && (frame.length === 0 || frame.length < needed)) {
    throw new SFrameError("frame_too_short", `${codec} frame of ${frame.length} bytes is shorter than its clear prefix`);
  }
  const prefix = frame.subarray(0, needed);
  return concat(prefix, await encryptor.encrypt(prefix, frame.subarray(needed)));
}

/** prefix ‖ plaintext: the frame as the sender's encoder made it. */
export async function unprotect(decryptor, codec, data) {
  const needed = ruleLen(codec, data[0]);
  if (data.length < needed) throw new SFrameError("truncated_header", "protected frame shorter than its clear prefix");
  const prefix = data.subarray(0, needed);
  return concat(prefix, await decryptor.decrypt(prefix, data.subarray(needed)));
}
