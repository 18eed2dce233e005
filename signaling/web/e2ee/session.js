// End-to-end encryption for one connection to a meeting: the key exchange
// over `e2ee` signals (docs/e2ee.md, "On the wire") on the main thread, and
// the Worker (worker.js) that encrypts and decrypts the frames with the keys
// we post to it. The room secret comes from the link's URL fragment, which
// browsers never send to the server; the server relays our messages unread.
//
// Each Connection gets its own E2ee: a reconnect is a new participant (new
// id, new join_seq), which the others treat as a newcomer.
import { generateKeyPair, open, seal } from "./hpke.js";
import { joinAuthKey, kid, publicKeyMac, ratchet, senderBaseKey, verifyPublicKeyMac } from "./schedule.js";
import { hkdfExpand } from "./sframe.js";
import * as labels from "./labels.js";

/** How long the previous generation's keys still decrypt frames in flight. */
export const GRACE_MS = 3000;
/**
 * How long a joiner waits for a key holder to answer before it concludes
 * there is none (everyone present lacks the room secret) and draws the
 * first epoch secret itself.
 */
export const FIRST_KEY_WAIT_MS = 2000;

const utf8 = new TextEncoder();
const SECRET_LEN = 32;

export function b64urlEncode(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Bytes of unpadded base64url, or null if it is not that (or not `len` bytes long). */
export function b64urlDecode(s, len) {
  if (typeof s !== "string" || !/^[A-Za-z0-9_-]*$/.test(s) || s.length % 4 === 1) return null;
  try {
    const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
    const out = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return len === undefined || out.length === len ? out : null;
  } catch {
    return null;
  }
}

const equalBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * What the link's fragment asks for: `#e2ee=<base64url of 32 bytes>`, and
 * optionally `transform=script|streams` (which encoded-transform API to use).
 * { secret: Uint8Array | null, error: bool, transform: string | null }
 */
export function parseFragment(hash) {
  const params = new URLSearchParams(String(hash || "").replace(/^#/, ""));
  const raw = params.get("e2ee");
  const transform = params.get("transform");
  if (raw === null) return { secret: null, error: false, transform };
  const secret = b64urlDecode(raw, SECRET_LEN);
  return { secret, error: !secret, transform };
}

/**
 * The encoded-transform API to use here: RTCRtpScriptTransform (the
 * standard; default) or createEncodedStreams (Chromium's older API), or
 * null when the browser has neither.
 */
export function pickTransform(requested) {
  const script = typeof globalThis.RTCRtpScriptTransform === "function";
  const streams = typeof RTCRtpSender !== "undefined" && typeof RTCRtpSender.prototype.createEncodedStreams === "function";
  if (requested === "streams" && streams) return "streams";
  if (script) return "script";
  return streams ? "streams" : null;
}

/** The safety code of epoch secret E: 12 digits from HKDF-Expand(E, SAFETY_CODE, 5), as "dddd dddd dddd". */
export async function safetyCode(epochSecret) {
  const b = await hkdfExpand("SHA-256", epochSecret, utf8.encode(labels.SAFETY_CODE), 5);
  let n = 0n;
  for (const x of b) n = (n << 8n) | BigInt(x);
  const digits = (n % 10n ** 12n).toString().padStart(12, "0");
  return `${digits.slice(0, 4)} ${digits.slice(4, 8)} ${digits.slice(8)}`;
}

/** The aad of a sealed epoch secret: room name (UTF-8) ‖ generation. */
function sealAad(room, gen) {
  const r = utf8.encode(room);
  const out = new Uint8Array(r.length + 1);
  out.set(r);
  out[r.length] = gen;
  return out;
}

/** Whether generation `a` is newer than `b`: mod 256, 1 to 127 ahead (as client/src/key_exchange.rs). */
export function newerGeneration(a, b) {
  const d = (a - b) & 0xff;
  return d >= 1 && d <= 127;
}

export class E2ee {
  /**
   * @param {{secret: Uint8Array, mode: "script"|"streams", send: (m: object) => void, onChange: () => void}} opts
   * `send` sends a signal on the connection; `onChange` is called when
   * the generation, safety code or counters change.
   */
  constructor({ secret, mode, send, onChange }) {
    this.mode = mode;
    this.sendSignal = send;
    this.onChange = onChange;
    this.closed = false;
    this.me = null; // {id, joinSeq}
    this.room = "";
    this.people = new Map(); // id -> {id, joinSeq, pk, verified, rejected}
    this.pendingHellos = new Map(); // id -> payload, for a hello that beat its participant_joined
    this.epoch = null; // {secret, gen, code}
    this.gens = new Map(); // generation -> KIDs whose receive keys the worker holds
    this.timers = new Set();
    this.attached = new WeakSet();
    this.stats = { decryptFailures: 0, failureReasons: {}, encrypted: 0, decrypted: 0, droppedNoKey: 0, keyFrameRequests: 0 };
    this.leftAt = null; // when the last participant_left arrived
    this.adoptedAt = null; // when we last moved to a new generation
    this.chatWaiters = new Map();
    this.chatIds = 0;
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "stamma-e2ee" });
    this.worker.onmessage = (ev) => this.fromWorker(ev.data || {});
    this.worker.onerror = (e) => console.error("e2ee worker failed:", e.message);
    // Every step of the key exchange runs in order, one at a time: each
    // awaits WebCrypto, and interleaved steps would see half-made state.
    this.queue = Promise.resolve();
    this.run(async () => {
      this.joinAuth = await joinAuthKey(secret);
      this.keyPair = await generateKeyPair();
    });
  }

  run(step) {
    this.queue = this.queue.then(() => (this.closed ? undefined : step())).catch((e) => {
      console.warn("e2ee:", e && (e.kind || e.message || e));
    });
    return this.queue;
  }

  later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
  }

  close() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const w of this.chatWaiters.values()) w(null);
    this.chatWaiters.clear();
    this.worker.terminate();
  }

  /** What the page and the tests see. */
  get info() {
    return {
      enabled: true,
      transform: this.mode,
      generation: this.epoch ? this.epoch.gen : null,
      safetyCode: this.epoch ? this.epoch.code : null,
      holdsKey: !!this.epoch,
      verifiedPeers: [...this.people.values()].filter((p) => p.verified).map((p) => p.id),
      leftAt: this.leftAt,
      adoptedAt: this.adoptedAt,
      ...this.stats,
    };
  }

  // ---- frame transforms ------------------------------------------------------

  /** Encrypt what this sender sends. Call before it sends anything. */
  attachSender(sender, kind) {
    this.attach(sender, "encode", kind);
  }

  /** Decrypt what this receiver receives. Call in `ontrack`: the older API refuses later. */
  attachReceiver(receiver, kind) {
    this.attach(receiver, "decode", kind);
  }

  attach(endpoint, operation, kind) {
    if (this.attached.has(endpoint)) return;
    this.attached.add(endpoint);
    if (this.mode === "script") {
      endpoint.transform = new RTCRtpScriptTransform(this.worker, { operation, kind });
    } else {
      const { readable, writable } = endpoint.createEncodedStreams();
      this.worker.postMessage({ type: "stream", operation, kind, readable, writable }, [readable, writable]);
    }
  }

  fromWorker(m) {
    if (m.type === "stats") {
      for (const k of Object.keys(this.stats)) if (k in m) this.stats[k] = m[k];
      this.onChange();
    } else if (m.type === "chat") {
      const w = this.chatWaiters.get(m.id);
      this.chatWaiters.delete(m.id);
      if (w) w(m.ok ? m.data : null);
    }
  }

  chat(op, data) {
    if (this.closed) return Promise.resolve(null);
    const id = ++this.chatIds;
    return new Promise((resolve) => {
      this.chatWaiters.set(id, resolve);
      this.worker.postMessage({ type: "chat", id, op, data });
    });
  }

  /** Chat text as SFrame under our current key (no clear prefix), base64url; null without a key. */
  async encryptChat(text) {
    if (!this.epoch) return null;
    const data = await this.chat("encrypt", utf8.encode(text));
    return data ? b64urlEncode(data) : null;
  }

  /** The text of an encrypted chat message, or null if it does not decrypt. */
  async decryptChat(text) {
    const data = b64urlDecode(text);
    if (!data || !data.length) return null;
    const plain = await this.chat("decrypt", data);
    if (!plain) return null;
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(plain);
    } catch {
      return null;
    }
  }

  // ---- signals -----------------------------------------------------------------

  send(body, to) {
    const m = { type: "e2ee", payload: JSON.stringify(body) };
    if (to) m.to = to;
    this.sendSignal(m);
  }

  hello(to) {
    return (async () => {
      const mac = await publicKeyMac(this.joinAuth, this.me.id, this.keyPair.publicKey);
      this.send({ t: "hello", pk: b64urlEncode(this.keyPair.publicKey), mac: b64urlEncode(mac) }, to);
    })();
  }

  addPerson(info) {
    if (!info || !info.id || (this.me && info.id === this.me.id)) return;
    if (!this.people.has(info.id)) {
      this.people.set(info.id, { id: info.id, joinSeq: Number(info.join_seq) || 0, pk: null, verified: false, rejected: false });
    }
  }

  /** `joined`: say hello to the room; alone, draw the first epoch secret. */
  joined(m) {
    this.run(async () => {
      this.room = m.room;
      this.me = { id: m.participant.id, joinSeq: Number(m.participant.join_seq) || 0 };
      for (const p of m.participants || []) this.addPerson(p);
      await this.hello();
      if (this.people.size === 0) {
        await this.adopt(crypto.getRandomValues(new Uint8Array(SECRET_LEN)), 0);
      } else {
        this.later(FIRST_KEY_WAIT_MS, () => this.run(() => this.firstKeyFallback()));
      }
    });
  }

  /** Nobody with the room secret and a key answered: if we are the oldest who has the secret, we start. */
  async firstKeyFallback() {
    if (this.epoch || !this.isLowestVerified()) return;
    const secret = crypto.getRandomValues(new Uint8Array(SECRET_LEN));
    await this.sendKeys(this.verifiedPeers(), secret, 0);
    await this.adopt(secret, 0);
  }

  participantJoined(info) {
    this.run(async () => {
      this.addPerson(info);
      const pending = this.pendingHellos.get(info.id);
      this.pendingHellos.delete(info.id);
      if (pending) await this.onHello(info.id, pending);
    });
  }

  /** Someone left: the designated member moves everyone to a fresh secret the leaver never sees. */
  participantLeft(id) {
    this.leftAt = Date.now();
    this.run(async () => {
      this.people.delete(id);
      this.pendingHellos.delete(id);
      if (!this.epoch || !this.isLowestVerified()) return;
      const secret = crypto.getRandomValues(new Uint8Array(SECRET_LEN));
      const gen = (this.epoch.gen + 1) & 0xff;
      // Keys out first, then our own switch: the others can open theirs
      // while our first frames under the new key are on their way.
      await this.sendKeys(this.verifiedPeers(), secret, gen);
      await this.adopt(secret, gen);
    });
  }

  /** An `e2ee` signal from another participant. */
  signal(from, payload) {
    let body;
    try {
      body = JSON.parse(payload);
    } catch {
      return;
    }
    if (!body || typeof body !== "object") return;
    this.run(async () => {
      if (body.t === "hello") await this.onHello(from, body);
      else if (body.t === "key") await this.onKey(from, body);
    });
  }

  async onHello(from, body) {
    const p = this.people.get(from);
    if (!p) {
      // Its participant_joined is still on its way (or it already left).
      if (this.pendingHellos.size < 64) this.pendingHellos.set(from, body);
      return;
    }
    const pk = b64urlDecode(body.pk, 32);
    const mac = b64urlDecode(body.mac, 32);
    if (!pk || !mac) return;
    if (p.verified) return; // one key per participant: a second hello changes nothing
    if (!(await verifyPublicKeyMac(this.joinAuth, from, pk, mac))) {
      // No room secret (or a server substituting its key): it never gets a key.
      p.rejected = true;
      this.onChange();
      return;
    }
    p.pk = pk;
    p.verified = true;
    if (p.joinSeq <= this.me.joinSeq) return; // an older member answering our hello
    // A newcomer: answer, and ratchet so it cannot read what was said before it came.
    await this.hello(from);
    if (!this.epoch) return;
    const designated = this.isLowestVerified(from);
    const secret = await ratchet(this.epoch.secret);
    const gen = (this.epoch.gen + 1) & 0xff;
    // The newcomer needs the key; the others ratchet by themselves, but
    // get it too: one that was still waiting for its own key when this
    // hello came (itself a newcomer) could not ratchet, and catches up.
    // The Rust client does the same.
    if (designated) await this.sendKeys(this.verifiedPeers(), secret, gen);
    await this.adopt(secret, gen);
  }

  async onKey(from, body) {
    const p = this.people.get(from);
    if (!p || !p.verified) return;
    const gen = body.gen;
    if (!Number.isInteger(gen) || gen < 0 || gen > 255) return;
    const enc = b64urlDecode(body.enc, 32);
    const ct = b64urlDecode(body.ct, SECRET_LEN + 16);
    if (!enc || !ct) return;
    let secret;
    try {
      secret = await open(this.keyPair, enc, utf8.encode(labels.EPOCH), sealAad(this.room, gen), ct);
    } catch (e) {
      console.warn("e2ee: a key did not open:", e.kind || e.message);
      return;
    }
    if (secret.length !== SECRET_LEN) return;
    const cur = this.epoch;
    // Same generation, another secret: two members moved at once (a join
    // and a leave crossing); the designated member's secret wins.
    const fromAuthority = cur && gen === cur.gen && !equalBytes(secret, cur.secret) && this.isAuthority(p);
    if (!cur || newerGeneration(gen, cur.gen) || fromAuthority) await this.adopt(secret, gen);
  }

  // ---- keys ----------------------------------------------------------------------

  verifiedPeers() {
    return [...this.people.values()].filter((p) => p.verified);
  }

  /** Whether we have the lowest join_seq among members that proved the room secret (`except` left out). */
  isLowestVerified(except) {
    return this.verifiedPeers().every((p) => p.id === except || p.joinSeq > this.me.joinSeq);
  }

  /** Whether `p` is the designated member: the lowest join_seq of the verified members and us. */
  isAuthority(p) {
    return p.joinSeq < this.me.joinSeq && this.verifiedPeers().every((q) => q.joinSeq >= p.joinSeq);
  }

  async sendKeys(peers, secret, gen) {
    const info = utf8.encode(labels.EPOCH);
    const aad = sealAad(this.room, gen);
    for (const p of peers) {
      const { enc, ciphertext } = await seal(p.pk, info, aad, secret);
      this.send({ t: "key", gen, enc: b64urlEncode(enc), ct: b64urlEncode(ciphertext) }, p.id);
    }
  }

  /** Move to epoch secret `secret`, generation `gen`: every member's receive key, our send key, the safety code. */
  async adopt(secret, gen) {
    const prev = this.epoch;
    const members = [this.me, ...this.people.values()];
    const add = [];
    for (const p of members) add.push({ kid: kid(p.joinSeq, gen), baseKey: await senderBaseKey(secret, p.id) });
    const code = await safetyCode(secret);
    if (this.closed) return;
    const kids = add.map((k) => k.kid);
    this.gens.set(gen, kids);
    this.epoch = { secret, gen, code };
    this.adoptedAt = Date.now();
    this.worker.postMessage({ type: "keys", add, send: add[0] });
    if (prev && prev.gen !== gen) {
      // The previous generation decrypts frames still in flight for a while.
      const old = this.gens.get(prev.gen);
      this.later(GRACE_MS, () => {
        if (this.gens.get(prev.gen) !== old || (this.epoch && this.epoch.gen === prev.gen)) return;
        this.gens.delete(prev.gen);
        this.worker.postMessage({ type: "keys", remove: old });
      });
    }
    this.onChange();
  }
}
