// The browser's E2EE modules (signaling/web/e2ee/) against the same data as
// the Rust tests: RFC 9605 and RFC 9180 test vectors, and frames and key
// schedule outputs that client/src/e2ee.rs wrote (sframe-rust-frames.json),
// which these modules must decrypt and reproduce byte for byte.
//
// usage: node tests/browser/e2ee.test.mjs   (Node 20+, no packages needed)
// Exits non-zero when a check fails.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as sf from "../../signaling/web/e2ee/sframe.js";
import * as hpke from "../../signaling/web/e2ee/hpke.js";
import * as schedule from "../../signaling/web/e2ee/schedule.js";

const data = (name) => {
  const text = readFileSync(fileURLToPath(new URL(`../../client/tests/data/${name}`, import.meta.url)), "utf8");
  // KID and CTR reach 2^64 - 1, past a Number's precision: read them as strings, then BigInt.
  return JSON.parse(text.replace(/"(kid|ctr)": (\d+)/g, '"$1": "$2"'));
};
const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (b) => parseInt(b, 16));
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

let failures = 0;
let passed = 0;
async function test(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}\n     ${e.stack ?? e}`);
  }
}
function eq(a, b, what = "") {
  const sa = a instanceof Uint8Array ? hex(a) : String(a);
  const sb = b instanceof Uint8Array ? hex(b) : String(b);
  if (sa !== sb) throw new Error(`${what}: ${sa} != ${sb}`);
}
async function rejects(promiseOrFn, kind, what = "") {
  try {
    await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
  } catch (e) {
    if (kind && e.kind !== kind) throw new Error(`${what}: expected ${kind}, got ${e.kind ?? e}`);
    return;
  }
  throw new Error(`${what}: expected an error ${kind ?? ""}`);
}

const sframeVectors = data("rfc9605-sframe.json");
const hpkeVector = data("rfc9180-hpke-x25519-aes128.json");
const rust = data("sframe-rust-frames.json");

await test("RFC 9605 header vectors encode and decode", () => {
  eq(sframeVectors.header.length, 289, "count");
  for (const v of sframeVectors.header) {
    const kid = BigInt(v.kid);
    const ctr = BigInt(v.ctr);
    eq(sf.encodeHeader(kid, ctr), unhex(v.encoded), `encode ${kid} ${ctr}`);
    const h = sf.decodeHeader(unhex(v.encoded));
    eq(h.kid, kid, "kid");
    eq(h.ctr, ctr, "ctr");
    eq(h.length, v.encoded.length / 2, "length");
  }
});

await test("RFC 9605 encryption vectors pass for both AES-GCM suites", async () => {
  eq(sframeVectors.sframe.length, 2, "count");
  for (const v of sframeVectors.sframe) {
    const kid = BigInt(v.kid);
    const ctr = BigInt(v.ctr);
    const d = await sf.deriveKeySalt(v.cipher_suite, kid, unhex(v.base_key));
    eq(d.secret, unhex(v.sframe_secret), "secret");
    eq(d.key, unhex(v.sframe_key), "key");
    eq(d.salt, unhex(v.sframe_salt), "salt");
    const enc = await sf.Encryptor.create(v.cipher_suite, kid, unhex(v.base_key), ctr);
    eq(await enc.encrypt(unhex(v.metadata), unhex(v.pt)), unhex(v.ct), `ct suite ${v.cipher_suite}`);
    const dec = new sf.Decryptor();
    await dec.addKey(v.cipher_suite, kid, unhex(v.base_key));
    eq(await dec.decrypt(unhex(v.metadata), unhex(v.ct)), unhex(v.pt), "pt");
  }
});

await test("RFC 9180 base mode X25519/AES-128-GCM vector passes", async () => {
  const v = hpkeVector;
  const eph = await hpke.keyPairFromPrivateBytes(unhex(v.skEm));
  const rcpt = await hpke.keyPairFromPrivateBytes(unhex(v.skRm));
  eq(eph.publicKey, unhex(v.pkEm), "pkEm");
  eq(rcpt.publicKey, unhex(v.pkRm), "pkRm");
  const ss = await hpke.sharedSecret(eph.privateKey, unhex(v.pkRm), unhex(v.pkEm), unhex(v.pkRm));
  eq(ss, unhex(v.shared_secret), "encap shared_secret");
  eq(await hpke.sharedSecret(rcpt.privateKey, unhex(v.enc), unhex(v.enc), rcpt.publicKey), ss, "decap");
  const ks = await hpke.keySchedule(ss, unhex(v.info));
  eq(ks.context, unhex(v.key_schedule_context), "context");
  eq(ks.secret, unhex(v.secret), "secret");
  eq(ks.key, unhex(v.key), "key");
  eq(ks.baseNonce, unhex(v.base_nonce), "base_nonce");
  const e = v.encryptions[0];
  const sealed = await hpke.seal(unhex(v.pkRm), unhex(v.info), unhex(e.aad), unhex(e.pt), eph);
  eq(sealed.enc, unhex(v.enc), "enc");
  eq(sealed.ciphertext, unhex(e.ct), "ct");
  eq(await hpke.open(rcpt, unhex(v.enc), unhex(v.info), unhex(e.aad), unhex(e.ct)), unhex(e.pt), "open");
});

await test("HPKE refuses altered ciphertext, info, aad, a wrong recipient and a low-order key", async () => {
  const rcpt = await hpke.generateKeyPair();
  const other = await hpke.generateKeyPair();
  const info = new TextEncoder().encode("info");
  const aad = new TextEncoder().encode("aad");
  const s = await hpke.seal(rcpt.publicKey, info, aad, new Uint8Array([1, 2, 3]));
  eq(await hpke.open(rcpt, s.enc, info, aad, s.ciphertext), new Uint8Array([1, 2, 3]), "round trip");
  const bad = s.ciphertext.slice();
  bad[0] ^= 1;
  await rejects(hpke.open(rcpt, s.enc, info, aad, bad), "authentication", "ct");
  await rejects(hpke.open(rcpt, s.enc, aad, aad, s.ciphertext), "authentication", "info");
  await rejects(hpke.open(rcpt, s.enc, info, info, s.ciphertext), "authentication", "aad");
  await rejects(hpke.open(other, s.enc, info, aad, s.ciphertext), "authentication", "recipient");
  await rejects(hpke.open(rcpt, s.enc, info, aad, s.ciphertext.subarray(0, 15)), "truncated", "short");
  await rejects(hpke.seal(new Uint8Array(32), info, aad, s.ciphertext), "agreement", "low order");
});

async function pair(kid = 0x1234n) {
  const base = new Uint8Array(16).fill(7);
  const enc = await sf.Encryptor.create(sf.AES_128_GCM_SHA256_128, kid, base);
  const dec = new sf.Decryptor();
  await dec.addKey(sf.AES_128_GCM_SHA256_128, kid, base);
  return { enc, dec };
}

await test("any altered byte of header, ciphertext, tag or metadata fails", async () => {
  const { enc, dec } = await pair();
  const meta = new TextEncoder().encode("clear");
  const ct = await enc.encrypt(meta, new TextEncoder().encode("a frame of media"));
  const { length } = sf.decodeHeader(ct);
  for (let i = 0; i < ct.length; i++) {
    const bad = ct.slice();
    bad[i] ^= 1;
    const kinds = i < length ? undefined : "authentication";
    await rejects(dec.decrypt(meta, bad), kinds, `byte ${i}`);
  }
  const badMeta = meta.slice();
  badMeta[0] ^= 0x80;
  await rejects(dec.decrypt(badMeta, ct), "authentication", "metadata");
  eq(new TextDecoder().decode(await dec.decrypt(meta, ct)), "a frame of media", "original still opens");
});

await test("replays, too-old frames, unknown KIDs and garbage are refused", async () => {
  const { enc, dec } = await pair();
  const frames = [];
  for (let i = 0; i < 200; i++) frames.push(await enc.encrypt(new Uint8Array(0), new Uint8Array([i])));
  await dec.decrypt(new Uint8Array(0), frames[199]);
  for (let i = 198; i >= 72; i--) await dec.decrypt(new Uint8Array(0), frames[i]);
  await rejects(dec.decrypt(new Uint8Array(0), frames[71]), "too_old", "71");
  await rejects(dec.decrypt(new Uint8Array(0), frames[100]), "replay", "100");
  await rejects(dec.decrypt(new Uint8Array(0), frames[199]), "replay", "199");
  const other = await pair(9n);
  await rejects(dec.decrypt(new Uint8Array(0), await other.enc.encrypt(new Uint8Array(0), new Uint8Array([1]))), "unknown_kid");
  await rejects(dec.decrypt(new Uint8Array(0), new Uint8Array(0)), "truncated_header", "empty");
  await rejects(dec.decrypt(new Uint8Array(0), frames[0].subarray(0, 2)), "truncated_header", "2 bytes");
  for (let len = 3; len < frames[0].length; len++) await rejects(dec.decrypt(new Uint8Array(0), frames[0].subarray(0, len)), undefined, `len ${len}`);
});

const vp8Key = () => unhex(rust.frames.find((f) => f.codec === "vp8" && f.frame.startsWith("50")).frame);

await test("clear prefix: Opus 1, VP8 keyframe 10, VP8 delta 3, never more than the frame", () => {
  eq(sf.clearPrefixLen(sf.Codec.OPUS, new Uint8Array([0x78, 1, 2])), 1, "opus");
  eq(sf.clearPrefixLen(sf.Codec.VP8, vp8Key()), 10, "keyframe");
  eq(sf.clearPrefixLen(sf.Codec.VP8, new Uint8Array([0x31, 5, 0, 9, 9])), 3, "delta");
  eq(sf.clearPrefixLen(sf.Codec.VP8, new Uint8Array([0x50, 0x2a])), 2, "short");
  eq(sf.clearPrefixLen(sf.Codec.DATA, new Uint8Array([1, 2])), 0, "data");
});

await test("protect keeps the VP8 keyframe bit, start code and size and the Opus TOC; a tampered prefix fails", async () => {
  const { enc, dec } = await pair();
  const key = await sf.protect(enc, sf.Codec.VP8, vp8Key());
  eq(key[0] & 1, 0, "P bit");
  eq(key.subarray(3, 6), new Uint8Array([0x9d, 0x01, 0x2a]), "start code");
  eq((key[6] | (key[7] << 8)) & 0x3fff, 640, "width");
  eq((key[8] | (key[9] << 8)) & 0x3fff, 360, "height");
  for (let i = 1; i < 10; i++) {
    const bad = key.slice();
    bad[i] ^= 4;
    await rejects(sf.unprotect(dec, sf.Codec.VP8, bad), "authentication", `prefix byte ${i}`);
  }
  eq(await sf.unprotect(dec, sf.Codec.VP8, key), vp8Key(), "round trip");
  const audio = await sf.protect(enc, sf.Codec.OPUS, new Uint8Array([0x78, 1, 2, 3]));
  eq(audio[0], 0x78, "TOC");
  const badToc = audio.slice();
  badToc[0] = 0x79;
  await rejects(sf.unprotect(dec, sf.Codec.OPUS, badToc), "authentication", "TOC");
  await rejects(sf.protect(enc, sf.Codec.VP8, new Uint8Array([0x50, 0, 0, 0x9d])), "frame_too_short", "short keyframe");
  await rejects(sf.protect(enc, sf.Codec.OPUS, new Uint8Array(0)), "frame_too_short", "empty opus");
});

await test("frames the Rust client protected decrypt here, and this module protects them to the same bytes", async () => {
  const base = unhex(rust.base_key);
  const decs = new Map();
  const encs = new Map();
  for (const f of rust.frames) {
    const k = `${f.suite}/${f.kid}`;
    if (!decs.has(k)) {
      const d = new sf.Decryptor();
      await d.addKey(f.suite, BigInt(f.kid), base);
      decs.set(k, d);
      encs.set(k, await sf.Encryptor.create(f.suite, BigInt(f.kid), base));
    }
    eq(await sf.unprotect(decs.get(k), f.codec, unhex(f.protected)), unhex(f.frame), `decrypt ${k} ctr ${f.ctr}`);
    const enc = encs.get(k);
    eq(enc.nextCtr, BigInt(f.ctr), "counter");
    eq(await sf.protect(enc, f.codec, unhex(f.frame)), unhex(f.protected), `encrypt ${k} ctr ${f.ctr}`);
  }
  eq(rust.frames.length, 8, "frames");
});

await test("key schedule and HPKE agree with the Rust client", async () => {
  const s = rust.schedule;
  const auth = await schedule.joinAuthKey(unhex(s.room_secret));
  eq(auth, unhex(s.join_auth_key), "join_auth_key");
  const mac = await schedule.publicKeyMac(auth, s.participant_id, unhex(s.public_key));
  eq(mac, unhex(s.public_key_mac), "public key mac");
  eq(await schedule.verifyPublicKeyMac(auth, s.participant_id, unhex(s.public_key), mac), true, "verify");
  eq(await schedule.verifyPublicKeyMac(auth, "someone else", unhex(s.public_key), mac), false, "verify other");
  eq(await schedule.senderBaseKey(unhex(s.epoch_secret), s.participant_id), unhex(s.sender_base_key), "sender key");
  eq(await schedule.ratchet(unhex(s.epoch_secret)), unhex(s.ratcheted), "ratchet");
  eq(schedule.kid(3, 255), 0x3ffn, "kid");
  const h = rust.hpke;
  const rcpt = await hpke.keyPairFromPrivateBytes(unhex(h.recipient_private_key));
  eq(rcpt.publicKey, unhex(h.recipient_public_key), "recipient pk");
  eq(await hpke.open(rcpt, unhex(h.enc), unhex(h.info), unhex(h.aad), unhex(h.ct)), unhex(h.pt), "open Rust's seal");
  const eph = await hpke.keyPairFromPrivateBytes(new Uint8Array(32).fill(0x44));
  const sealed = await hpke.seal(rcpt.publicKey, unhex(h.info), unhex(h.aad), unhex(h.pt), eph);
  eq(sealed.ciphertext, unhex(h.ct), "same seal as Rust");
});

console.log(`${passed} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
