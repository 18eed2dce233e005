// One attempt at being in the meeting: the signaling WebSocket and the
// RTCPeerConnection that carries the media (protocol v1, docs/protocol.md).
// The page makes a new Connection after a network drop and publishes the same
// local tracks again; nothing here outlives one attempt.

/** Error codes after which joining again cannot help. */
export const FATAL_CODES = new Set([
  "removed", "room_closed", "duplicate_identity", "unsupported_version",
  "room_full", "bad_message", "message_too_large", "rate_limited",
]);

/** Simulcast layers of a camera, lowest first (the server ranks q/h/f). */
const CAMERA_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

export class Connection {
  /**
   * @param {{token: string, room: string, name: string, handlers: object, e2ee?: object}} opts
   * handlers: onSignal(m), onTrack(track, info, transceiver), onClose({code, reason,
   * error, opened}), onMediaState(state). `e2ee` (e2ee/session.js), when the
   * link carries a room secret: every sender and receiver gets its transform.
   */
  constructor({ token, room, name, handlers, e2ee = null }) {
    this.token = token;
    this.room = room;
    this.name = name;
    this.h = handlers;
    this.e2ee = e2ee;
    const config = { iceServers: [], bundlePolicy: "max-bundle" };
    // Chromium's older encoded-streams API must be switched on for the whole
    // connection; RTCRtpScriptTransform needs no flag.
    if (e2ee && e2ee.mode === "streams") config.encodedInsertableStreams = true;
    this.pc = new RTCPeerConnection(config);
    this.midToTrack = new Map(); // mid -> SubscribedTrack
    this.published = new Map(); // mid -> {transceiver, kind, source, trackId, muted}
    this.lastError = null;
    this.opened = false;
    this.closed = false;
    this.negotiation = Promise.resolve();
    this.localOffers = 0; // offers we made: a server offer from before one is stale
    this.offering = false;
    // The server sends an unanswered offer again, unchanged; a copy of one
    // answered already is ignored.
    this.answeredOffer = -1;
    this.pc.ontrack = (e) => {
      // Here and now, before any frame: the older API refuses streams later,
      // and a receiver without its transform would hand ciphertext to the decoder.
      if (this.e2ee) this.e2ee.attachReceiver(e.receiver, e.track.kind);
      const info = this.midToTrack.get(e.transceiver.mid);
      if (info) this.h.onTrack(e.track, info, e.transceiver);
    };
    this.pc.onconnectionstatechange = () => this.h.onMediaState(this.pc.connectionState);
  }

  start() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = `access_token=${encodeURIComponent(this.token)}&room=${encodeURIComponent(this.room)}`;
    this.ws = new WebSocket(`${scheme}//${location.host}/rtc?${q}`);
    this.ws.onopen = () => {
      this.opened = true;
      const join = { type: "join", v: 1 };
      if (this.name) join.name = this.name;
      this.send(join);
      this.pingTimer = setInterval(() => this.send({ type: "ping", ts: Date.now() }), 15_000);
    };
    this.ws.onclose = (e) => this.finish(e.code, e.reason);
    this.ws.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (m.type === "error") {
        this.lastError = { ...m, at: Date.now() };
        // The server refused our offer: no answer will come.
        if (this.answerWaiter && (m.code === "bad_sdp" || m.code === "publish_not_allowed")) {
          this.answerWaiter.reject(new Error(m.message));
        }
      }
      if (m.type === "answer") {
        // The server answers before it offers again: offers from here on are fresh.
        this.offering = false;
        this.onAnswer(m);
      }
      else if (m.type === "offer") {
        // We are the impolite side: while our own offer is out the server
        // rolls its offer back and sends a new one after answering ours.
        // An offer queued behind one of ours is stale by the time it runs.
        if (!this.offering) {
          const seen = this.localOffers;
          this.negotiate(() => (seen === this.localOffers ? this.onOffer(m) : undefined));
        }
      } else this.h.onSignal(m);
    };
  }

  send(m) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
  }

  /** Leave on purpose (tells the server), or drop (as a network failure would). */
  close(leave = true) {
    if (leave) this.send({ type: "leave" });
    this.closed = true;
    clearInterval(this.pingTimer);
    try { this.ws && this.ws.close(1000); } catch { /* already closed */ }
    this.pc.close();
    if (this.e2ee) this.e2ee.close();
  }

  finish(code, reason) {
    if (this.finished) return;
    this.finished = true;
    clearInterval(this.pingTimer);
    this.pc.close();
    if (this.e2ee) this.e2ee.close();
    // A fatal error is the server's last word before it closes; an older
    // error was answered and the session went on.
    const error = this.lastError && Date.now() - this.lastError.at < 3000 ? this.lastError : null;
    this.h.onClose({ code, reason, error, opened: this.opened, byUs: this.closed });
  }

  setIceServers(servers) {
    if (!servers || !servers.length) return;
    const config = { ...this.pc.getConfiguration(), iceServers: servers };
    if (this.e2ee && this.e2ee.mode === "streams") config.encodedInsertableStreams = true;
    this.pc.setConfiguration(config);
  }

  // Every step that touches the signaling state runs in order, one at a time:
  // handled concurrently, the server's offer that follows its answer to ours
  // arrives while setRemoteDescription(answer) is pending, is dropped, and the
  // server waits for an answer forever.
  negotiate(step) {
    const run = this.negotiation.then(step);
    this.negotiation = run.catch((err) => {
      if (!this.finished) this.h.onSignal({ type: "local_error", message: `negotiation failed: ${err.name || err}` });
      console.error("negotiation failed", err && err.message);
    });
    return run;
  }

  async onOffer(m) {
    if (this.finished || this.pc.signalingState !== "stable" || m.id <= this.answeredOffer) return;
    for (const t of m.tracks) this.midToTrack.set(t.mid, t);
    await this.pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    this.answeredOffer = m.id;
    this.send({ type: "answer", id: m.id, sdp: this.pc.localDescription.sdp });
  }

  /** The answer to our offer. Handled at once, not queued: the step that sent
   *  the offer holds the queue until this settles it. */
  async onAnswer(m) {
    const waiter = this.answerWaiter;
    if (!waiter || this.finished) return;
    try {
      await this.pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
      for (const t of m.tracks || []) this.learnTrack(t);
      waiter.resolve();
      this.h.onSignal({ type: "published", tracks: m.tracks || [] });
    } catch (err) {
      waiter.reject(err);
    }
  }

  /** The server's id for one of our m-lines (from its answer or `track_published`). */
  learnTrack(t) {
    const pub = this.published.get(t.mid);
    if (pub && !pub.trackId) {
      pub.trackId = t.id;
      // A mute chosen before the server named the track.
      if (pub.muted) this.send({ type: "mute", track_id: t.id, muted: true });
    }
  }

  /** Offer what we send now; `tracks` describes every sending m-line. */
  async offer(register = () => {}) {
    this.localOffers += 1;
    this.offering = true;
    try {
      await this.sendOffer(register);
    } finally {
      this.offering = false;
    }
  }

  async sendOffer(register) {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    // Mids exist only once the offer is set; the caller files its publication now.
    register();
    const tracks = [];
    for (const [mid, p] of this.published) {
      if (p.transceiver.currentDirection === "stopped" || p.transceiver.direction === "inactive") continue;
      const d = { mid, kind: p.kind, source: p.source };
      if (p.width && p.height) Object.assign(d, { width: p.width, height: p.height });
      tracks.push(d);
    }
    let timer;
    const answered = new Promise((resolve, reject) => {
      this.answerWaiter = { resolve, reject };
      timer = setTimeout(() => reject(new Error("the server did not answer our offer")), 15_000);
    });
    this.send({ type: "offer", sdp: this.pc.localDescription.sdp, tracks });
    try {
      await answered;
    } catch (err) {
      // Back to the last agreed state, so the next offer starts clean.
      if (this.pc.signalingState === "have-local-offer") await this.pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      for (const [mid, p] of this.published) if (!p.trackId) this.published.delete(mid);
      throw err;
    } finally {
      clearTimeout(timer);
      this.answerWaiter = null;
    }
  }

  /**
   * Publish a local track. Cameras go out as three simulcast layers so each
   * subscriber gets the size its tile needs. Resolves to the publication.
   */
  publish(track, source, { muted = false } = {}) {
    return this.negotiate(async () => {
      const init = { direction: "sendonly" };
      const settings = track.getSettings ? track.getSettings() : {};
      if (source === "camera") init.sendEncodings = CAMERA_LAYERS.map((l) => ({ ...l }));
      const transceiver = this.pc.addTransceiver(track, init);
      // Before the offer, so no frame leaves unencrypted.
      if (this.e2ee) this.e2ee.attachSender(transceiver.sender, track.kind);
      if (source === "camera" || source === "screen_share") {
        // Text and slides stay sharp on a screen share; faces move on a camera.
        try { track.contentHint = source === "screen_share" ? "detail" : "motion"; } catch { /* optional */ }
      }
      const pub = {
        transceiver, kind: track.kind, source, trackId: null, muted,
        width: settings.width, height: settings.height,
      };
      await this.offer(() => this.published.set(transceiver.mid, pub));
      return pub;
    });
  }

  /** Stop sending a publication: its m-line goes inactive, and the server unpublishes it. */
  unpublish(pub) {
    return this.negotiate(async () => {
      if (!pub || this.finished) return;
      pub.transceiver.sender.replaceTrack(null).catch(() => {});
      pub.transceiver.direction = "inactive";
      for (const [mid, p] of this.published) if (p === pub) this.published.delete(mid);
      await this.offer();
    });
  }

  mute(pub, muted) {
    pub.muted = muted;
    if (pub.trackId) this.send({ type: "mute", track_id: pub.trackId, muted });
  }

  /** The server's `publish_layers`: send only what someone receives (dynacast). */
  async setLayers(mid, layers) {
    const pub = this.published.get(mid);
    if (!pub) return;
    const sender = pub.transceiver.sender;
    const params = sender.getParameters();
    if (!params.encodings) return;
    let changed = false;
    for (const enc of params.encodings) {
      const want = layers.find((l) => (l.rid ?? null) === (enc.rid ?? null));
      if (want && enc.active !== want.active) {
        enc.active = want.active;
        changed = true;
      }
    }
    if (changed) await sender.setParameters(params).catch(() => {});
  }
}
