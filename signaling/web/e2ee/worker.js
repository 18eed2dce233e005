// The E2EE Worker: encrypts every outgoing encoded frame and decrypts every
// incoming one (SFrame with the codec-aware clear prefix, docs/e2ee.md), and
// encrypts and decrypts chat text. It holds the media keys; the page's main
// thread runs the key exchange and posts the keys here per sender KID.
//
// Frames reach us two ways, both on Chromium: RTCRtpScriptTransform (the
// standard; `rtctransform` events) or createEncodedStreams (the older API;
// the page transfers the streams in a message). Both end in `run` below.
//
// Messages from the page:
//   {type: "keys", add: [{kid, baseKey}], remove: [kid], send: {kid, baseKey} | null | undefined}
//   {type: "stream", operation: "encode" | "decode", kind: "audio" | "video", readable, writable}
//   {type: "chat", id, op: "encrypt" | "decrypt", data: Uint8Array}
// Messages to the page:
//   {type: "stats", ...counters}        (at most twice a second, when they changed)
//   {type: "chat", id, ok, data?, error?}
import {
  AES_128_GCM_SHA256_128, Codec, Decryptor, Encryptor, SFrameError, clearPrefixLen, decodeHeader, protect, unprotect,
} from "./sframe.js";

const SUITE = AES_128_GCM_SHA256_128;

/** Base keys of every sender and generation we may receive: kid (BigInt) -> Uint8Array(32). */
const receiveKeys = new Map();
/** The Decryptor of every live incoming stream (and chat's): each has its own replay windows. */
const decryptors = new Set();
/** Our current sender key. One Encryptor for all our streams and chat: they share a KID, hence a counter space. */
let sender = null; // {kid, encryptor} | null
let senderVersion = 0;

const stats = {
  encrypted: 0,
  decrypted: 0,
  // Outgoing frames dropped because no key is held yet: never sent in clear.
  droppedNoKey: 0,
  // Incoming frames that did not decrypt (unknown KID, authentication, replay, too short…): dropped.
  decryptFailures: 0,
  failureReasons: {},
  // Empty frames, passed through untouched (nothing to protect, nothing to read).
  passedEmpty: 0,
  // Keyframes asked for: of a remote sender after one of its video frames
  // was dropped, of our encoder after frames dropped for want of a key.
  keyFrameRequests: 0,
};
let statsDirty = false;

/** Counts a dropped incoming frame, by kind and reason ("video:unknown_kid"). */
function fail(kind, reason) {
  stats.decryptFailures += 1;
  const key = `${kind}:${reason}`;
  stats.failureReasons[key] = (stats.failureReasons[key] || 0) + 1;
  statsDirty = true;
}

setInterval(() => {
  if (!statsDirty) return;
  statsDirty = false;
  self.postMessage({ type: "stats", ...stats, failureReasons: { ...stats.failureReasons } });
}, 500);

const codecOf = (kind) => (kind === "audio" ? Codec.OPUS : Codec.VP8);

/** header ‖ … of an outgoing frame, or null to drop it. */
async function encryptFrame(codec, data) {
  if (data.length === 0) {
    stats.passedEmpty += 1;
    return data;
  }
  const s = sender;
  if (!s) {
    stats.droppedNoKey += 1;
    statsDirty = true;
    return null;
  }
  try {
    const out = await protect(s.encryptor, codec, data);
    stats.encrypted += 1;
    statsDirty = true;
    return out;
  } catch (e) {
    // frame_too_short (a VP8 keyframe under 10 bytes): no encoder makes
    // one, and a receiver could not parse it, so it is not sent in clear.
    stats.failureReasons[`send_${e.kind || "error"}`] = (stats.failureReasons[`send_${e.kind || "error"}`] || 0) + 1;
    statsDirty = true;
    return null;
  }
}

/** The frame as the sender's encoder made it, or null to drop it. */
async function decryptFrame(dec, codec, data) {
  const kind = codec === Codec.OPUS ? "audio" : "video";
  if (data.length === 0) {
    stats.passedEmpty += 1;
    return data;
  }
  const prefix = clearPrefixLen(codec, data);
  let header;
  try {
    header = decodeHeader(data.subarray(prefix));
  } catch (e) {
    fail(kind, e.kind || "truncated_header");
    return null;
  }
  if (!dec.hasKey(header.kid)) {
    const base = receiveKeys.get(header.kid);
    if (!base) {
      fail(kind, "unknown_kid");
      return null;
    }
    // Frames of one stream are transformed one at a time, so no second
    // addKey of the same KID can race this one and reset its window.
    await dec.addKey(SUITE, header.kid, base);
  }
  try {
    const out = await unprotect(dec, codec, data);
    stats.decrypted += 1;
    statsDirty = true;
    return out;
  } catch (e) {
    fail(kind, e instanceof SFrameError ? e.kind : "error");
    return null;
  }
}

/**
 * Pipes one stream of encoded frames through encryption or decryption.
 * `keyFrame` (optional; RTCRtpScriptTransform only) gets a keyframe: on a
 * receiver it asks the remote sender, since after a dropped video frame the
 * decoder cannot go on until the next keyframe; on a sender it asks our
 * encoder, when the frames dropped before we had a key included one.
 */
function run({ operation, kind, readable, writable, keyFrame }) {
  const codec = codecOf(kind);
  const dec = operation === "decode" ? new Decryptor() : null;
  if (dec) decryptors.add(dec);
  const video = kind === "video";
  // Receivers back off (1 s, 2 s, … 30 s) while a sender's frames keep
  // failing, so one without the key is not asked for keyframes forever.
  let nextRequest = 0;
  let backoff = 1000;
  let droppedForKey = false;
  const requestKeyFrame = () => {
    stats.keyFrameRequests += 1;
    statsDirty = true;
    Promise.resolve().then(keyFrame).catch(() => { /* the decoder asks by itself, later */ });
  };
  const transform = new TransformStream({
    async transform(frame, controller) {
      const data = new Uint8Array(frame.data);
      const out = dec ? await decryptFrame(dec, codec, data) : await encryptFrame(codec, data);
      if (out === null) {
        if (dec && video && keyFrame && Date.now() >= nextRequest) {
          nextRequest = Date.now() + backoff;
          backoff = Math.min(backoff * 2, 30_000);
          requestKeyFrame();
        }
        if (!dec && video && !sender) droppedForKey = true;
        return;
      }
      if (dec) backoff = 1000;
      if (!dec && droppedForKey) {
        // The first frames went nowhere: without a fresh keyframe the
        // receivers could not decode until the encoder's next one.
        droppedForKey = false;
        if (keyFrame && frame.type === "delta") requestKeyFrame();
      }
      // protect/unprotect return a fresh array that owns its whole buffer.
      if (out !== data) frame.data = out.buffer;
      controller.enqueue(frame);
    },
  });
  readable
    .pipeThrough(transform)
    .pipeTo(writable)
    .catch(() => { /* the stream ended with its connection */ })
    .finally(() => { if (dec) decryptors.delete(dec); });
}

// The standard API: the page set `sender.transform`/`receiver.transform` to
// an RTCRtpScriptTransform made with this worker and {operation, kind}.
self.onrtctransform = (event) => {
  const t = event.transformer;
  const { operation, kind } = t.options || {};
  let keyFrame = null;
  if (operation === "decode" && typeof t.sendKeyFrameRequest === "function") keyFrame = () => t.sendKeyFrameRequest();
  if (operation === "encode" && typeof t.generateKeyFrame === "function") keyFrame = () => t.generateKeyFrame();
  run({ operation, kind, readable: t.readable, writable: t.writable, keyFrame });
};

const chatDecryptor = new Decryptor();
decryptors.add(chatDecryptor);
// Chat decryption runs one message at a time (addKey must not race itself).
let chatQueue = Promise.resolve();

async function chat(op, data) {
  if (op === "encrypt") {
    const s = sender;
    if (!s) throw new SFrameError("no_key", "no sender key yet");
    return protect(s.encryptor, Codec.DATA, data);
  }
  const h = decodeHeader(data);
  if (!chatDecryptor.hasKey(h.kid)) {
    const base = receiveKeys.get(h.kid);
    if (!base) throw new SFrameError("unknown_kid", `no key for KID ${h.kid}`);
    await chatDecryptor.addKey(SUITE, h.kid, base);
  }
  return unprotect(chatDecryptor, Codec.DATA, data);
}

async function setKeys({ add = [], remove = [], send }) {
  for (const kid of remove) {
    receiveKeys.delete(BigInt(kid));
    for (const d of decryptors) d.removeKey(kid);
  }
  for (const { kid, baseKey } of add) {
    const k = BigInt(kid);
    const old = receiveKeys.get(k);
    // The same key again keeps its replay windows (a reset would let a
    // replay through); a different one (a fresh epoch that reused the
    // generation) replaces the keys derived from the old.
    if (old && old.length === baseKey.length && old.every((b, i) => b === baseKey[i])) continue;
    receiveKeys.set(k, baseKey);
    for (const d of decryptors) d.removeKey(k);
  }
  if (send !== undefined) {
    const version = ++senderVersion;
    const next = send ? { kid: BigInt(send.kid), encryptor: await Encryptor.create(SUITE, BigInt(send.kid), send.baseKey) } : null;
    // A newer key posted while this one was being imported wins.
    if (version === senderVersion) sender = next;
  }
}

let keysQueue = Promise.resolve();

self.onmessage = (ev) => {
  const m = ev.data || {};
  if (m.type === "keys") {
    keysQueue = keysQueue.then(() => setKeys(m)).catch((e) => console.error("e2ee worker: keys", e && e.message));
  } else if (m.type === "stream") {
    run(m);
  } else if (m.type === "chat") {
    const job = () => chat(m.op, m.data).then(
      (data) => self.postMessage({ type: "chat", id: m.id, ok: true, data }),
      (e) => self.postMessage({ type: "chat", id: m.id, ok: false, error: (e && e.kind) || "error" }),
    );
    // Keys posted before this message apply to it.
    chatQueue = Promise.all([chatQueue, keysQueue]).then(job);
  }
};
