// The meeting page a join link opens: pre-join (name, devices, preview),
// then the meeting (grid, speaker, pinning, screen share, chat, hands,
// participants, host moderation) with reconnection after a network drop.
// No build step and no dependencies: the binary serves these files as they are.
import { Connection, FATAL_CODES } from "./connection.js";
import { E2ee, parseFragment, pickTransform } from "./e2ee/session.js";
import { lang, t } from "./i18n.js";

// ---- small helpers -------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

const SVG = {
  mic: '<path d="M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3"/>',
  micOff: '<path d="M12 3a3 3 0 0 0-3 3v6a3 3 0 0 0 6 0V6a3 3 0 0 0-3-3z"/><path d="M5 11a7 7 0 0 0 14 0M12 18v3M3 3l18 18"/>',
  cam: '<rect x="2" y="6" width="14" height="12" rx="2"/><path d="M16 10l6-3v10l-6-3z"/>',
  camOff: '<rect x="2" y="6" width="14" height="12" rx="2"/><path d="M16 10l6-3v10l-6-3zM2 3l19 18"/>',
  share: '<rect x="2" y="4" width="20" height="13" rx="2"/><path d="M8 21h8M12 17v4M12 14V8M9 11l3-3 3 3"/>',
  hand: '<path d="M7 11V5a1.5 1.5 0 0 1 3 0v5M10 10V3.5a1.5 1.5 0 0 1 3 0V10M13 10V5a1.5 1.5 0 0 1 3 0v7M16 12V8a1.5 1.5 0 0 1 3 0v6a7 7 0 0 1-7 7h-.5A6.5 6.5 0 0 1 6 17.5L4 14a1.5 1.5 0 0 1 2.6-1.5L7 13"/>',
  chat: '<path d="M4 4h16v12H8l-4 4z"/>',
  people: '<circle cx="9" cy="8" r="3.5"/><path d="M2 20a7 7 0 0 1 14 0M16 4.5a3.5 3.5 0 0 1 0 7M18 14a6 6 0 0 1 4 6"/>',
  leave: '<path d="M10 4H5a1 1 0 0 0-1 1v14a1 1 0 0 0 1 1h5M15 8l4 4-4 4M19 12H9"/>',
  pin: '<path d="M9 3h6l-1 6 4 4H6l4-4zM12 13v8"/>',
  lock: '<rect x="4" y="11" width="16" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 8 0v4"/>',
  unlock: '<rect x="4" y="11" width="16" height="10" rx="2"/><path d="M8 11V7a4 4 0 0 1 7.5-2"/>',
};
const icon = (name) => `<svg viewBox="0 0 24 24">${SVG[name]}</svg>`;

/** The token's claims, for display only (the server verifies the token). */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(escape(atob(part)));
    return JSON.parse(json);
  } catch {
    return {};
  }
}

function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  return ((parts[0] || "?")[0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
}

const timeFormat = new Intl.DateTimeFormat(lang === "sv" ? "sv-SE" : "en-GB", { hour: "2-digit", minute: "2-digit" });

// ---- state -----------------------------------------------------------------

const params = new URLSearchParams(location.search);
// The room secret of an end-to-end encrypted meeting rides in the URL
// fragment, which the browser never sends to the server.
const link = parseFragment(location.hash);
const S = {
  token: params.get("token") || "",
  room: decodeURIComponent(location.pathname.split("/").pop() || ""),
  claims: {},
  name: "",
  me: null, // my ParticipantInfo
  role: "attendee",
  canPublish: false,
  people: new Map(), // participant id -> {id, identity, name, role, hand, tracks: Map}
  media: new Map(), // track id -> {track, info}
  tiles: new Map(), // tile key -> tile
  local: { stream: null, mic: null, cam: null, screen: null, micOn: true, camOn: true, audioId: "", videoId: "" },
  pubs: { mic: null, cam: null, screen: null },
  hand: false,
  pinned: null,
  speaker: null,
  conn: null,
  phase: "prejoin", // prejoin, connecting, connected, reconnecting, ended
  reconnectToken: null,
  attempt: 0,
  reconnectSince: 0,
  everJoined: false,
  unread: 0,
  lastStats: null,
  quality: null,
  // End-to-end encryption: on when the link has a room secret.
  e2ee: null, // the current connection's E2ee (e2ee/session.js)
  e2eeMode: link.secret ? pickTransform(link.transform) : null,
  e2eeTotals: { decryptFailures: 0, encrypted: 0, decrypted: 0, droppedNoKey: 0 }, // of earlier connections
  e2eeBlocked: false, // the room requires E2EE and this link has no secret: we send nothing
  chatQueue: Promise.resolve(),
};
S.claims = claimsOf(S.token);

function setStatus(text, alert = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("alert", alert);
}

function announce(text) {
  const a = $("announcer");
  a.textContent = "";
  // A fresh text node is announced even when the text repeats.
  setTimeout(() => { a.textContent = text; }, 50);
}

function displayName(p) {
  return (p && (p.name || p.identity)) || "?";
}

const roleText = (r) => t(r === "host" ? "roleHost" : r === "speaker" ? "roleSpeaker" : "roleAttendee");

// ---- static strings --------------------------------------------------------

function translatePage() {
  document.documentElement.lang = lang;
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-label]")) e.setAttribute("aria-label", t(e.dataset.i18nLabel));
  $("room-title").textContent = S.room;
  $("prejoin-title").textContent = t("prejoinTitle", { room: S.room });
  document.title = `${S.room} – Stämma`;
  for (const [id, name] of [["btn-chat", "chat"], ["btn-people", "people"], ["btn-leave", "leave"]]) {
    $(id).querySelector(".icon").innerHTML = icon(name);
  }
}

// ---- pre-join --------------------------------------------------------------

let meterTimer = null;
let audioCtx = null;

function tokenMayPublish() {
  const c = S.claims;
  return c.role !== "attendee" && !(c.grants && c.grants.publish === false);
}

async function startPreview() {
  const constraints = {
    audio: S.local.audioId ? { deviceId: { exact: S.local.audioId } } : true,
    video: {
      width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24, max: 30 },
      ...(S.local.videoId ? { deviceId: { exact: S.local.videoId } } : {}),
    },
  };
  stopLocal();
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    S.local.stream = stream;
    S.local.mic = stream.getAudioTracks()[0] || null;
    S.local.cam = stream.getVideoTracks()[0] || null;
    $("preview").srcObject = stream;
    $("devices-note").hidden = true;
    await fillDevicePickers();
    startMeter(stream);
  } catch (err) {
    $("devices-note").textContent = t("devicesBlocked", { error: err.name || String(err) });
    $("devices-note").hidden = false;
  }
}

async function fillDevicePickers() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const fill = (select, kind, current) => {
    select.replaceChildren();
    for (const d of devices.filter((x) => x.kind === kind)) {
      select.append(el("option", { value: d.deviceId, text: d.label || d.deviceId.slice(0, 8), selected: d.deviceId === current }));
    }
    if (!select.options.length) select.append(el("option", { value: "", text: t("noDevice") }));
  };
  fill($("camera"), "videoinput", S.local.cam && S.local.cam.getSettings().deviceId);
  fill($("microphone"), "audioinput", S.local.mic && S.local.mic.getSettings().deviceId);
}

function startMeter(stream) {
  if (!stream.getAudioTracks().length) return;
  try {
    audioCtx = audioCtx || new AudioContext();
    const src = audioCtx.createMediaStreamSource(stream);
    const analyser = audioCtx.createAnalyser();
    analyser.fftSize = 512;
    src.connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    clearInterval(meterTimer);
    meterTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const x of buf) sum += x * x;
      $("level").value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
    }, 100);
  } catch {
    // No level meter without Web Audio; joining still works.
  }
}

function stopLocal() {
  for (const tr of [S.local.mic, S.local.cam]) if (tr) tr.stop();
  S.local.mic = S.local.cam = S.local.stream = null;
}

function showPrejoin() {
  const mayPublish = tokenMayPublish();
  $("name").value = S.claims.name || localStorage.getItem("stamma.name") || "";
  if (!mayPublish) {
    $("prejoin-note").textContent = t("prejoinAttendee");
    $("prejoin-note").hidden = false;
  } else {
    $("devices").hidden = false;
    S.preview = startPreview();
    $("camera").addEventListener("change", (e) => { S.local.videoId = e.target.value; S.preview = startPreview(); });
    $("microphone").addEventListener("change", (e) => { S.local.audioId = e.target.value; S.preview = startPreview(); });
  }
  $("prejoin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("name").value.trim();
    if (!name) {
      $("name-error").textContent = t("nameRequired");
      $("name-error").hidden = false;
      $("name").setAttribute("aria-invalid", "true");
      $("name").focus();
      return;
    }
    try { localStorage.setItem("stamma.name", name); } catch { /* private mode */ }
    S.name = name;
    $("join").disabled = true;
    $("join").textContent = t("joining");
    // A join before the camera and microphone are open would publish
    // nothing, and nothing would publish them later.
    if (S.preview) await S.preview;
    S.local.micOn = !$("join-muted").checked;
    S.local.camOn = !$("join-camera-off").checked;
    if (!S.local.camOn && S.local.cam) {
      S.local.cam.stop();
      S.local.cam = null;
    }
    clearInterval(meterTimer);
    enterMeeting();
  });
  $("name").focus();
}

// ---- connection lifecycle ----------------------------------------------------

function enterMeeting() {
  $("prejoin").hidden = true;
  $("ended").hidden = true;
  $("meeting").hidden = false;
  S.phase = "connecting";
  setStatus(t("statusConnecting"));
  connect();
}

function connect() {
  if (S.e2ee) {
    // Counters survive a reconnect; the keys do not (we rejoin as a newcomer).
    const old = S.e2ee.info;
    for (const k of Object.keys(S.e2eeTotals)) S.e2eeTotals[k] += old[k] || 0;
    S.e2ee.close();
    S.e2ee = null;
  }
  let e2ee = null;
  if (link.secret) {
    e2ee = new E2ee({
      secret: link.secret,
      mode: S.e2eeMode,
      send: (m) => conn.send(m),
      onChange: () => { if (S.e2ee === e2ee) renderE2ee(); },
    });
    S.e2ee = e2ee;
  }
  const conn = new Connection({
    token: S.reconnectToken || S.token,
    room: S.room,
    name: S.name,
    e2ee,
    handlers: {
      onSignal: (m) => { if (S.conn === conn) onSignal(m); },
      onTrack: (track, info) => { if (S.conn === conn) onRemoteTrack(track, info); },
      onClose: (c) => { if (S.conn === conn) onClosed(c); },
      onMediaState: (st) => { if (S.conn === conn) onMediaState(st); },
    },
  });
  S.conn = conn;
  S.pubs = { mic: null, cam: null, screen: null };
  conn.start();
}

const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 15000];
const RECONNECT_GIVE_UP_MS = 5 * 60_000;

async function onClosed({ code, reason, error, opened }) {
  if (S.phase === "ended") return;
  const ecode = error && error.code;
  if (ecode && FATAL_CODES.has(ecode)) return end(fatalMessage(error));
  if (!opened && !S.everJoined) {
    // The upgrade was refused; the browser hides why, so ask the same URL
    // without the upgrade: a bad token gets a 401 with a reason.
    const why = await diagnose(S.reconnectToken || S.token);
    if (why) return end(t("errToken", { message: why }));
  }
  if (!opened && S.reconnectToken) {
    // The reconnect token may have been refused; the link's own token still works.
    const why = await diagnose(S.reconnectToken);
    if (why) S.reconnectToken = null;
  }
  scheduleReconnect(`closed ${code}${reason ? " " + reason : ""}`);
}

async function diagnose(token) {
  try {
    const q = `access_token=${encodeURIComponent(token)}&room=${encodeURIComponent(S.room)}`;
    const r = await fetch(`/rtc?${q}`, { cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      const body = await r.json().catch(() => ({}));
      return body.message || `HTTP ${r.status}`;
    }
  } catch {
    // Network down: not the token's fault.
  }
  return null;
}

function fatalMessage(e) {
  switch (e.code) {
    case "removed": return t("errRemoved");
    case "room_closed": return t("errRoomClosed");
    case "duplicate_identity": return t("errDuplicate");
    case "room_full": return t("errFull");
    default: return t("error", { message: e.message || e.code });
  }
}

function scheduleReconnect(why) {
  if (S.phase === "ended") return;
  if (S.phase !== "reconnecting") {
    S.phase = "reconnecting";
    S.reconnectSince = Date.now();
    S.attempt = 0;
    setStatus(t("statusReconnecting"), true);
    document.body.dataset.phase = "reconnecting";
    console.info("stamma: reconnecting:", why);
  }
  if (Date.now() - S.reconnectSince > RECONNECT_GIVE_UP_MS) return end(t("statusReconnecting"));
  const delay = RECONNECT_DELAYS_MS[Math.min(S.attempt, RECONNECT_DELAYS_MS.length - 1)];
  S.attempt += 1;
  clearRemote();
  setTimeout(() => { if (S.phase === "reconnecting") connect(); }, delay);
}

/** Abandon the current connection (its media failed) and join again. */
function dropAndReconnect(why) {
  const old = S.conn;
  S.conn = null;
  if (old) old.close(false);
  scheduleReconnect(why);
}

function end(message) {
  S.phase = "ended";
  document.body.dataset.phase = "ended";
  if (S.conn) { const c = S.conn; S.conn = null; c.close(true); }
  clearRemote();
  for (const tr of [S.local.mic, S.local.cam, S.local.screen]) if (tr) tr.stop();
  S.local.mic = S.local.cam = S.local.screen = null;
  $("meeting").hidden = true;
  $("ended").hidden = false;
  $("ended-message").textContent = message;
  setStatus(message, true);
  $("quality").hidden = true;
  renderE2ee();
  $("rejoin").focus();
}

let disconnectedTimer = null;
function onMediaState(state) {
  clearTimeout(disconnectedTimer);
  if (state === "connected" && S.phase === "connected") $("quality").hidden = false;
  if (state === "failed") dropAndReconnect("media connection failed");
  // ICE may recover by itself from "disconnected"; give it a moment first.
  if (state === "disconnected") disconnectedTimer = setTimeout(() => dropAndReconnect("media disconnected"), 8000);
}

// ---- signals ---------------------------------------------------------------

function onSignal(m) {
  switch (m.type) {
    case "joined": return onJoined(m);
    case "participant_joined": {
      if (S.e2ee) S.e2ee.participantJoined(m.participant);
      const p = addPerson(m.participant);
      announce(t("joinedAnnounce", { name: displayName(p) }));
      return render();
    }
    case "participant_left": {
      if (S.e2ee) S.e2ee.participantLeft(m.participant_id);
      const p = S.people.get(m.participant_id);
      S.people.delete(m.participant_id);
      for (const [tid, md] of S.media) if (md.info.participant_id === m.participant_id) dropMedia(tid);
      if (S.pinned === `p:${m.participant_id}`) S.pinned = null;
      if (p) announce(t("leftAnnounce", { name: displayName(p) }));
      return render();
    }
    case "track_published": {
      const p = S.people.get(m.track.participant_id);
      if (p) p.tracks.set(m.track.id, m.track);
      if (S.me && m.track.participant_id === S.me.id && S.conn) S.conn.learnTrack(m.track);
      return render();
    }
    case "track_unpublished": {
      const p = S.people.get(m.participant_id);
      if (p) p.tracks.delete(m.track_id);
      dropMedia(m.track_id);
      return render();
    }
    case "track_muted": return onTrackMuted(m);
    case "track_paused":
    case "track_resumed": {
      const md = S.media.get(m.track_id);
      if (md) {
        // A reason: "bandwidth" (this viewer's link) or "server_load".
        md.paused = m.type === "track_paused" ? m.reason || "bandwidth" : false;
      }
      return render();
    }
    case "speakers_changed": {
      const first = m.speakers && m.speakers[0];
      S.speaker = first ? first.participant_id : null;
      return render();
    }
    case "hand_raised": {
      const p = S.people.get(m.participant_id);
      if (p) {
        p.hand = m.raised;
        if (m.raised && p.id !== S.me?.id) announce(t("handAnnounce", { name: displayName(p) }));
      }
      if (S.me && m.participant_id === S.me.id) S.hand = m.raised;
      return render();
    }
    case "chat": return onChat(m);
    case "e2ee": return S.e2ee && typeof m.from === "string" && typeof m.payload === "string" && S.e2ee.signal(m.from, m.payload);
    case "role_changed": return onRoleChanged(m);
    case "publish_layers": return S.conn && S.conn.setLayers(m.mid, m.layers);
    case "server_draining": return setStatus(t("statusDraining"), true);
    case "published": return render();
    case "error":
      console.warn("stamma error", m.code, m.message);
      if (window.stamma.errors.length < 100) window.stamma.errors.push(m.code);
      if (FATAL_CODES.has(m.code)) return;
      setStatus(m.code === "publish_not_allowed" ? t("errPublish") : t("error", { message: m.message }), true);
      return;
    case "local_error":
      console.warn("stamma:", m.message);
      return setStatus(t("error", { message: m.message }), true);
    default:
      return;
  }
}

function addPerson(info) {
  const p = {
    id: info.id, identity: info.identity, name: info.name, role: info.role,
    hand: !!info.hand_raised, tracks: new Map((info.tracks || []).map((tr) => [tr.id, tr])),
  };
  S.people.set(p.id, p);
  return p;
}

function onJoined(m) {
  const wasReconnecting = S.phase === "reconnecting";
  S.phase = "connected";
  S.everJoined = true;
  document.body.dataset.phase = "connected";
  S.me = m.participant;
  S.role = m.participant.role;
  // A room that requires end-to-end encryption gets no media in clear from us.
  S.e2eeBlocked = !!m.e2ee_required && !link.secret;
  S.canPublish = S.role !== "attendee" && tokenMayPublish() && !S.e2eeBlocked;
  if (S.e2ee) S.e2ee.joined(m);
  if (m.reconnect_token) S.reconnectToken = m.reconnect_token;
  S.conn.setIceServers(m.ice_servers);
  S.people.clear();
  addPerson(m.participant);
  for (const p of m.participants) addPerson(p);
  setStatus(wasReconnecting ? t("statusReconnected") : t("statusConnected"));
  if (wasReconnecting) announce(t("statusReconnected"));
  if (S.e2eeBlocked) {
    stopLocal();
    $("meeting-note").textContent = t("e2eeRequired");
    $("meeting-note").hidden = false;
    setStatus(t("e2eeRequiredShort"), true);
  }
  renderE2ee();
  publishLocal();
  if (S.hand) S.conn.send({ type: "hand", raised: true });
  render();
  if (!wasReconnecting) $("stage").focus();
}

/** Publish what we have locally on the current connection (first join and after a reconnect). */
async function publishLocal() {
  if (!S.canPublish) return;
  const conn = S.conn;
  try {
    if (S.local.mic && S.local.mic.readyState === "live") {
      S.local.mic.enabled = S.local.micOn;
      S.pubs.mic = await conn.publish(S.local.mic, "microphone", { muted: !S.local.micOn });
    }
    if (S.local.camOn && S.local.cam && S.local.cam.readyState === "live") {
      S.pubs.cam = await conn.publish(S.local.cam, "camera");
    }
    if (S.local.screen && S.local.screen.readyState === "live") {
      S.pubs.screen = await conn.publish(S.local.screen, "screen_share");
    }
  } catch (err) {
    if (S.conn === conn) setStatus(t("error", { message: String(err.message || err) }), true);
  }
  render();
}

function onTrackMuted(m) {
  const p = S.people.get(m.participant_id);
  const tr = p && p.tracks.get(m.track_id);
  if (tr) tr.muted = m.muted;
  if (S.me && m.participant_id === S.me.id && m.muted) {
    // Only a host's mute reaches us about our own track.
    if (S.pubs.mic && S.pubs.mic.trackId === m.track_id && S.local.micOn) {
      S.local.micOn = false;
      if (S.local.mic) S.local.mic.enabled = false;
      S.pubs.mic.muted = true;
      setStatus(t("mutedByHost"), true);
      announce(t("mutedByHost"));
    }
    if (S.pubs.cam && S.pubs.cam.trackId === m.track_id && S.local.camOn) cameraOff();
  }
  render();
}

function onRoleChanged(m) {
  const p = S.people.get(m.participant_id);
  if (p) p.role = m.role;
  if (S.me && m.participant_id === S.me.id) {
    S.role = m.role;
    const could = S.canPublish;
    S.canPublish = m.can_publish && !S.e2eeBlocked;
    if (could && !m.can_publish) {
      // The server already unpublished our tracks; stop capturing.
      for (const pub of Object.values(S.pubs)) if (pub) pub.transceiver.sender.replaceTrack(null).catch(() => {});
      for (const tr of [S.local.mic, S.local.cam, S.local.screen]) if (tr) tr.stop();
      S.local.mic = S.local.cam = S.local.screen = null;
      S.pubs = { mic: null, cam: null, screen: null };
      announce(t("roleChangedAttendee"));
    } else if (!could && m.can_publish) {
      S.local.micOn = false;
      S.local.camOn = false;
      announce(t("roleChangedSpeaker"));
    }
  }
  render();
}

// ---- chat ------------------------------------------------------------------

function onChat(m) {
  const e2ee = S.e2ee;
  if (!e2ee) return showChat(m, m.text, false);
  // Decrypted in the order received, so messages keep their order.
  S.chatQueue = S.chatQueue.then(async () => {
    const text = await e2ee.decryptChat(String(m.text || ""));
    showChat(m, text === null ? t("chatEncrypted") : text, text === null);
  });
}

function showChat(m, text, undecryptable) {
  const p = S.people.get(m.participant_id);
  const when = new Date(m.ts_ms || Date.now());
  const li = el("li", {},
    el("p", { class: "meta" }, el("strong", { text: displayName(p) }), " ", el("time", { datetime: when.toISOString(), text: timeFormat.format(when) })),
    el("p", { class: `text${undecryptable ? " undecryptable" : ""}`, text }));
  $("chat-log").append(li);
  $("chat-empty").hidden = true;
  li.scrollIntoView({ block: "nearest" });
  if ($("chat-panel").hidden) {
    S.unread += 1;
    $("unread").textContent = String(S.unread);
    $("unread").hidden = false;
  }
}

/** Longest chat text the server relays, in characters (docs/protocol.md `chat`). */
const MAX_CHAT_CHARS = 2000;

async function sendChat(e) {
  e.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  const conn = S.conn;
  if (!text || !conn) return;
  if (!S.e2ee) {
    conn.send({ type: "chat", text });
    input.value = "";
    return;
  }
  // End-to-end encrypted: the server relays ciphertext, never the text.
  const sealed = await S.e2ee.encryptChat(text);
  if (sealed === null) return setStatus(t("chatNoKey"), true);
  if (sealed.length > MAX_CHAT_CHARS) return setStatus(t("chatTooLong"), true);
  if (S.conn !== conn) return;
  conn.send({ type: "chat", text: sealed });
  if (input.value.trim() === text) input.value = "";
}

// ---- local media controls ------------------------------------------------------

async function toggleMic() {
  if (!S.canPublish || !S.conn) return;
  if (!S.local.mic || S.local.mic.readyState !== "live") {
    try {
      const s = await navigator.mediaDevices.getUserMedia({ audio: S.local.audioId ? { deviceId: { exact: S.local.audioId } } : true });
      S.local.mic = s.getAudioTracks()[0];
      S.local.micOn = true;
      S.pubs.mic = await S.conn.publish(S.local.mic, "microphone");
    } catch (err) {
      setStatus(t("devicesBlocked", { error: err.name || String(err) }), true);
    }
    return render();
  }
  S.local.micOn = !S.local.micOn;
  S.local.mic.enabled = S.local.micOn;
  if (S.pubs.mic) S.conn.mute(S.pubs.mic, !S.local.micOn);
  render();
}

async function toggleCam() {
  if (!S.canPublish || !S.conn) return;
  if (S.local.camOn) return cameraOff();
  try {
    const s = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 24, max: 30 }, ...(S.local.videoId ? { deviceId: { exact: S.local.videoId } } : {}) },
    });
    S.local.cam = s.getVideoTracks()[0];
    S.local.camOn = true;
    if (S.pubs.cam) {
      await S.pubs.cam.transceiver.sender.replaceTrack(S.local.cam);
      S.conn.mute(S.pubs.cam, false);
    } else {
      S.pubs.cam = await S.conn.publish(S.local.cam, "camera");
    }
  } catch (err) {
    setStatus(t("devicesBlocked", { error: err.name || String(err) }), true);
  }
  render();
}

/** Camera off means off: the device is released, not just hidden. */
function cameraOff() {
  S.local.camOn = false;
  if (S.pubs.cam) {
    S.conn && S.conn.mute(S.pubs.cam, true);
    S.pubs.cam.transceiver.sender.replaceTrack(null).catch(() => {});
  }
  if (S.local.cam) S.local.cam.stop();
  S.local.cam = null;
  render();
}

async function toggleShare() {
  if (!S.canPublish || !S.conn) return;
  if (S.local.screen) return stopShare();
  try {
    const s = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
    const track = s.getVideoTracks()[0];
    S.local.screen = track;
    track.addEventListener("ended", () => stopShare());
    S.pubs.screen = await S.conn.publish(track, "screen_share");
  } catch (err) {
    setStatus(t("errScreen", { error: err.name || String(err) }), true);
    if (S.local.screen) S.local.screen.stop();
    S.local.screen = null;
  }
  render();
}

function stopShare() {
  const pub = S.pubs.screen;
  S.pubs.screen = null;
  if (S.local.screen) S.local.screen.stop();
  S.local.screen = null;
  if (pub && S.conn) S.conn.unpublish(pub).catch(() => {});
  render();
}

function toggleHand() {
  if (!S.conn) return;
  S.hand = !S.hand;
  S.conn.send({ type: "hand", raised: S.hand });
  render();
}

function leave() {
  const c = S.conn;
  S.conn = null;
  if (c) c.close(true);
  end(t("statusLeft"));
}

// ---- remote media ----------------------------------------------------------------

function onRemoteTrack(track, info) {
  dropMedia(info.track_id);
  const md = { track, info, paused: false, audio: null };
  S.media.set(info.track_id, md);
  if (track.kind === "audio") {
    md.audio = el("audio", { autoplay: true });
    md.audio.srcObject = new MediaStream([track]);
    $("audio-sink").append(md.audio);
    md.audio.play().catch(() => {});
  }
  track.addEventListener("ended", () => { if (S.media.get(info.track_id) === md) dropMedia(info.track_id); render(); });
  render();
}

function dropMedia(trackId) {
  const md = S.media.get(trackId);
  if (!md) return;
  S.media.delete(trackId);
  if (md.audio) md.audio.remove();
  sentSubscription.delete(trackId);
}

function clearRemote() {
  for (const tid of [...S.media.keys()]) dropMedia(tid);
  S.people.clear();
  S.speaker = null;
  render();
}

function trackInfo(trackId) {
  for (const p of S.people.values()) {
    const tr = p.tracks.get(trackId);
    if (tr) return tr;
  }
  return null;
}

// ---- tiles and layout ------------------------------------------------------------

/** What the stage should show: one tile per publishing participant, one per screen share. */
function wantedTiles() {
  const want = [];
  for (const p of S.people.values()) {
    const isMe = S.me && p.id === S.me.id;
    if (isMe ? !S.canPublish : p.role === "attendee" && p.tracks.size === 0) continue;
    let cam = null;
    let mic = null;
    for (const tr of p.tracks.values()) {
      if (tr.kind === "video" && tr.source === "screen_share") {
        want.push({ key: `s:${tr.id}`, pid: p.id, screen: true, video: tr, isMe });
      } else if (tr.kind === "video" && !cam) cam = tr;
      else if (tr.kind === "audio" && tr.source !== "screen_share_audio" && !mic) mic = tr;
    }
    want.push({ key: `p:${p.id}`, pid: p.id, screen: false, video: cam, mic, isMe });
  }
  return want;
}

function makeTile(w) {
  const video = el("video", { muted: true, playsinline: true, autoplay: true });
  video.muted = true;
  const name = el("span", { class: "name" });
  const mutedBadge = el("span", { class: "badge muted", hidden: true });
  const handBadge = el("span", { class: "badge hand", hidden: true });
  const paused = el("p", { class: "paused", hidden: true, text: t("paused") });
  const avatar = el("div", { class: "avatar", "aria-hidden": "true" });
  const pin = el("button", { type: "button", class: "pin", "aria-pressed": "false" });
  pin.innerHTML = `<span class="icon" aria-hidden="true">${icon("pin")}</span>`;
  pin.addEventListener("click", () => {
    S.pinned = S.pinned === w.key ? null : w.key;
    render();
  });
  const root = el("figure", { class: `tile${w.screen ? " screen" : ""}${w.isMe ? " me" : " remote"}`, "data-key": w.key, "data-pid": w.pid },
    video, avatar, paused, el("figcaption", {}, name, mutedBadge, handBadge), pin);
  const tile = { key: w.key, root, video, name, mutedBadge, handBadge, paused, avatar, pin, trackId: null, srcTrack: null };
  video.dataset.key = w.key;
  sizeObserver.observe(video);
  visibilityObserver.observe(video);
  return tile;
}

function render() {
  renderTiles();
  renderPeople();
  renderControls();
}

function renderTiles() {
  const stage = $("stage");
  const want = wantedTiles();
  // As many columns as make a square-ish grid, fewer on a narrow screen.
  let cols = Math.max(1, Math.ceil(Math.sqrt(want.length)));
  if (stage.clientWidth && stage.clientWidth < 600) cols = Math.min(cols, 2);
  stage.style.setProperty("--cols", String(cols));
  const keys = new Set(want.map((w) => w.key));
  for (const [key, tile] of S.tiles) {
    if (!keys.has(key)) {
      sizeObserver.unobserve(tile.video);
      visibilityObserver.unobserve(tile.video);
      tile.root.remove();
      S.tiles.delete(key);
    }
  }
  // Featured: a screen share, else the pinned tile, else the active speaker
  // once the grid is big enough for the speaker to be lost in it.
  const screens = want.filter((w) => w.screen);
  let featured = screens.length ? screens[screens.length - 1].key : null;
  if (!featured && S.pinned && keys.has(S.pinned)) featured = S.pinned;
  if (!featured && S.speaker && want.length >= 3 && S.speaker !== S.me?.id) featured = `p:${S.speaker}`;

  want.forEach((w, i) => {
    let tile = S.tiles.get(w.key);
    if (!tile) {
      tile = makeTile(w);
      S.tiles.set(w.key, tile);
      stage.append(tile.root);
    }
    const p = S.people.get(w.pid);
    const who = displayName(p) + (w.isMe ? ` (${t("you")})` : "");
    const label = w.screen ? t("screenOf", { name: who }) : who;
    tile.name.textContent = label;
    tile.avatar.textContent = initials(displayName(p));
    tile.root.setAttribute("aria-label", label);
    // The track to show: ours from the camera or screen, others' as received.
    let track = null;
    let paused = false;
    if (w.isMe) {
      track = w.screen ? S.local.screen : S.local.camOn ? S.local.cam : null;
    } else if (w.video && !w.video.muted) {
      const md = S.media.get(w.video.id);
      if (md) { track = md.track; paused = md.paused; }
    }
    tile.trackId = !w.isMe && w.video ? w.video.id : null;
    tile.video.dataset.trackId = tile.trackId || "";
    if (tile.srcTrack !== track) {
      tile.srcTrack = track;
      tile.video.srcObject = track ? new MediaStream([track]) : null;
      if (track) tile.video.play().catch(() => {});
      if (tile.trackId) requestSubscription(tile.video, true);
    }
    tile.root.classList.toggle("no-video", !track || paused);
    tile.paused.hidden = !paused;
    if (paused) tile.paused.textContent = t(paused === "server_load" ? "pausedLoad" : "paused");
    const micMuted = w.isMe ? !(S.local.mic && S.local.micOn) : !w.mic || w.mic.muted;
    tile.mutedBadge.hidden = w.screen || !micMuted;
    tile.mutedBadge.textContent = t("muted");
    tile.handBadge.hidden = w.screen || !(p && p.hand);
    tile.handBadge.textContent = t("handRaised");
    const speaking = !w.screen && S.speaker === w.pid;
    tile.root.classList.toggle("speaking", speaking);
    if (speaking) tile.root.setAttribute("aria-description", t("speaking"));
    else tile.root.removeAttribute("aria-description");
    tile.root.classList.toggle("featured", w.key === featured);
    tile.root.style.order = w.key === featured ? "-1" : String(i);
    const pinned = S.pinned === w.key;
    tile.pin.setAttribute("aria-pressed", String(pinned));
    tile.pin.setAttribute("aria-label", t(pinned ? "unpin" : "pin", { name: label }));
    tile.pin.title = tile.pin.getAttribute("aria-label");
    const wasPinned = tile.pinnedSent;
    if (tile.trackId && wasPinned !== pinned && (wasPinned !== undefined || pinned)) {
      tile.pinnedSent = pinned;
      S.conn && S.conn.send({ type: "subscription", track_ids: [tile.trackId], pinned });
    }
  });
}

function renderPeople() {
  const list = $("people");
  const isHost = S.role === "host";
  const items = [...S.people.values()].sort((a, b) => {
    const rank = (p) => (p.id === S.me?.id ? 0 : p.role === "host" ? 1 : p.role === "speaker" ? 2 : 3);
    return rank(a) - rank(b) || displayName(a).localeCompare(displayName(b));
  });
  list.replaceChildren(...items.map((p) => {
    const isMe = p.id === S.me?.id;
    const mic = [...p.tracks.values()].find((tr) => tr.kind === "audio");
    const name = displayName(p) + (isMe ? ` (${t("you")})` : "");
    const li = el("li", { "data-pid": p.id },
      el("span", { class: "who" }, name, " ", el("span", { class: "role", text: `· ${roleText(p.role)}` })),
      p.hand ? el("span", { class: "badge hand", text: t("handRaised") }) : null,
      mic && mic.muted ? el("span", { class: "badge muted", text: t("muted") }) : null);
    if (isHost && !isMe) {
      if (mic && !mic.muted) {
        li.append(el("button", { type: "button", class: "mod-mute", "aria-label": t("muteOther", { name }), text: t("muteShort"), onclick: () => moderate("mute", p.id, mic.id) }));
      }
      if (p.hand) {
        li.append(el("button", { type: "button", class: "mod-hand", "aria-label": t("lowerOther", { name }), text: t("lowerHand"), onclick: () => S.conn && S.conn.send({ type: "hand", raised: false, participant_id: p.id }) }));
      }
      li.append(el("button", {
        type: "button", class: "mod-remove danger", "aria-label": t("removeOther", { name }), text: "✕",
        onclick: () => { if (confirm(t("removeConfirm", { name }))) moderate("remove", p.id); },
      }));
    }
    return li;
  }));
  const n = S.people.size;
  $("people-title").textContent = t("people", { n });
  $("people-label").textContent = t("people", { n });
}

function moderate(action, participantId, trackId) {
  if (!S.conn) return;
  const m = { type: "moderate", action, participant_id: participantId };
  if (trackId) m.track_id = trackId;
  S.conn.send(m);
}

function setButton(id, { pressed, label, iconName, hidden, cls }) {
  const b = $(id);
  b.hidden = !!hidden;
  if (pressed !== undefined) b.setAttribute("aria-pressed", String(pressed));
  b.querySelector(".label").textContent = label;
  b.querySelector(".icon").innerHTML = icon(iconName);
  if (cls) b.classList.add(cls);
}

function renderControls() {
  const pub = !S.canPublish;
  const micOn = !!(S.local.mic && S.local.micOn);
  setButton("btn-mic", { pressed: micOn, label: t(micOn ? "micOn" : "micOff"), iconName: micOn ? "mic" : "micOff", hidden: pub, cls: "off-is-bad" });
  const camOn = !!(S.local.cam && S.local.camOn);
  setButton("btn-cam", { pressed: camOn, label: t(camOn ? "camOn" : "camOff"), iconName: camOn ? "cam" : "camOff", hidden: pub, cls: "off-is-bad" });
  const sharing = !!S.local.screen;
  setButton("btn-share", { pressed: sharing, label: t(sharing ? "stopShare" : "share"), iconName: "share", hidden: pub || !navigator.mediaDevices.getDisplayMedia, cls: "on-is-special" });
  setButton("btn-hand", { pressed: S.hand, label: t(S.hand ? "lowerHand" : "raiseHand"), iconName: "hand", cls: "on-is-special" });
}

function togglePanel(button, panel) {
  const open = panel.hidden;
  panel.hidden = !open;
  button.setAttribute("aria-expanded", String(open));
  $("sidebar").hidden = $("chat-panel").hidden && $("people-panel").hidden;
  if (panel.id === "chat-panel" && open) {
    S.unread = 0;
    $("unread").hidden = true;
    $("chat-input").focus();
  }
}

// ---- subscription sizes: tiles ask for the layer they can show ---------------------

const sentSubscription = new Map(); // track id -> {enabled, width, height}
const visible = new Map(); // video element -> bool
const pendingSubs = new Map(); // track id -> timer

const sizeObserver = new ResizeObserver((entries) => { for (const e of entries) requestSubscription(e.target); });
const visibilityObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    visible.set(e.target, e.isIntersecting);
    requestSubscription(e.target);
  }
}, { threshold: 0 });
document.addEventListener("visibilitychange", () => { for (const tile of S.tiles.values()) requestSubscription(tile.video); });

/** Tell the server the size of a tile in device pixels (debounced), or that nobody sees it. */
function requestSubscription(video, now = false) {
  const trackId = video.dataset.trackId;
  if (!trackId || !S.media.has(trackId)) return;
  clearTimeout(pendingSubs.get(trackId));
  pendingSubs.set(trackId, setTimeout(() => {
    pendingSubs.delete(trackId);
    if (!S.conn || !S.media.has(trackId) || video.dataset.trackId !== trackId) return;
    const dpr = window.devicePixelRatio || 1;
    const enabled = visible.get(video) !== false && !document.hidden && video.isConnected;
    const width = Math.max(1, Math.round(video.clientWidth * dpr));
    const height = Math.max(1, Math.round(video.clientHeight * dpr));
    const last = sentSubscription.get(trackId);
    const m = { type: "subscription", track_ids: [trackId] };
    let changed = false;
    if (!last || last.enabled !== enabled) { m.enabled = enabled; changed = true; }
    // Small changes do not move a layer; do not spend messages on them.
    if (enabled && (!last || Math.abs(last.width - width) > last.width * 0.15 || Math.abs(last.height - height) > last.height * 0.15)) {
      m.width = width;
      m.height = height;
      changed = true;
    }
    if (!changed) return;
    sentSubscription.set(trackId, { enabled, width: m.width ?? last?.width ?? 0, height: m.height ?? last?.height ?? 0 });
    S.conn.send(m);
  }, now ? 0 : 250));
}

// ---- connection quality -----------------------------------------------------------

async function measureQuality() {
  const conn = S.conn;
  if (!conn || S.phase !== "connected" || conn.pc.connectionState !== "connected") return;
  const stats = await conn.pc.getStats().catch(() => null);
  if (!stats) return;
  let rtt = null;
  let lost = 0;
  let received = 0;
  stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
    if (s.type === "inbound-rtp") {
      lost += s.packetsLost || 0;
      received += s.packetsReceived || 0;
    }
  });
  const prev = S.lastStats;
  S.lastStats = { lost, received };
  let loss = 0;
  if (prev) {
    const dl = lost - prev.lost;
    const dr = received - prev.received;
    loss = dl + dr > 0 ? Math.max(0, dl) / (dl + dr) : 0;
  }
  let q = "good";
  if (loss > 0.08 || (rtt !== null && rtt > 0.6)) q = "poor";
  else if (loss > 0.02 || (rtt !== null && rtt > 0.3)) q = "fair";
  S.quality = { q, loss, rtt };
  const e = $("quality");
  e.hidden = false;
  e.dataset.q = q;
  e.textContent = t("quality", { q: t(q === "good" ? "qualityGood" : q === "fair" ? "qualityFair" : "qualityPoor") });
}

// ---- end-to-end encryption ---------------------------------------------------------

function e2eeInfo() {
  if (!S.e2ee) return { enabled: !!link.secret, blocked: S.e2eeBlocked, transform: S.e2eeMode, ...S.e2eeTotals };
  const info = S.e2ee.info;
  for (const k of Object.keys(S.e2eeTotals)) info[k] = (info[k] || 0) + S.e2eeTotals[k];
  return info;
}

/** The padlock and safety code in the header: shown only while we hold the room's current key. */
function renderE2ee() {
  const box = $("e2ee");
  const info = S.e2ee && S.e2ee.info;
  if (!info || S.phase === "ended") {
    box.hidden = true;
    return;
  }
  const on = info.holdsKey;
  // Called on every counter update too: touch the DOM only when it changes.
  const shown = `${on}|${info.safetyCode}|${lang}`;
  if (!box.hidden && box.dataset.shown === shown) return;
  box.dataset.shown = shown;
  box.hidden = false;
  box.dataset.state = on ? "on" : "waiting";
  box.querySelector(".icon").innerHTML = icon(on ? "lock" : "unlock");
  $("e2ee-label").textContent = t(on ? "e2eeOn" : "e2eeWaiting");
  $("e2ee-code").hidden = !on;
  $("e2ee-code").textContent = on ? t("safetyCode", { code: info.safetyCode }) : "";
  box.title = on ? t("safetyCodeHelp") : "";
}

// ---- start -------------------------------------------------------------------------

function wireControls() {
  $("btn-mic").addEventListener("click", toggleMic);
  $("btn-cam").addEventListener("click", toggleCam);
  $("btn-share").addEventListener("click", toggleShare);
  $("btn-hand").addEventListener("click", toggleHand);
  $("btn-leave").addEventListener("click", leave);
  $("btn-chat").addEventListener("click", () => togglePanel($("btn-chat"), $("chat-panel")));
  $("btn-people").addEventListener("click", () => togglePanel($("btn-people"), $("people-panel")));
  $("chat-form").addEventListener("submit", sendChat);
  $("rejoin").addEventListener("click", () => location.reload());
  window.addEventListener("pagehide", () => { if (S.conn) S.conn.close(true); });
  setInterval(measureQuality, 2000);
  window.addEventListener("resize", () => renderTiles());
}

// For diagnostics and the browser tests: read-only views plus a simulated
// network drop (the connection dies without a goodbye, as on a lost network).
window.stamma = {
  get pc() { return S.conn && S.conn.pc; },
  get connection() { return S.conn; },
  errors: [],
  get phase() { return S.phase; },
  get me() { return S.me; },
  get quality() { return S.quality; },
  /** End-to-end encryption: on (with generation, safety code, counters) or off. decryptFailures: incoming frames dropped. */
  get e2ee() { return e2eeInfo(); },
  tiles: () => [...S.tiles.values()].map((tl) => ({ key: tl.key, remote: !tl.key.startsWith("p:" + (S.me && S.me.id)), trackId: tl.trackId })),
  drop: () => dropAndReconnect("simulated network drop"),
  debug: () => ({
    phase: S.phase, me: S.me && S.me.id, signaling: S.conn && S.conn.pc.signalingState, ice: S.conn && S.conn.pc.connectionState,
    people: [...S.people.values()].map((p) => ({ id: p.id, role: p.role, tracks: [...p.tracks.values()].map((tr) => `${tr.kind}/${tr.source}/${tr.id}${tr.muted ? "/muted" : ""}`) })),
    media: [...S.media.entries()].map(([id, md]) => `${id}:${md.track.kind}:${md.track.readyState}:${md.track.muted ? "nodata" : "data"}`),
    tiles: [...S.tiles.values()].map((tl) => `${tl.key}:${tl.trackId}:${tl.video.videoWidth}x${tl.video.videoHeight}`),
    mids: S.conn ? [...S.conn.midToTrack.entries()].map(([mid, tr]) => `${mid}=${tr.track_id}`) : [],
    pubs: Object.fromEntries(Object.entries(S.pubs).map(([k, p]) => [k, p && `${p.trackId}${p.muted ? "/muted" : ""}`])),
    local: { mic: S.local.mic && S.local.mic.readyState, micOn: S.local.micOn, cam: S.local.cam && S.local.cam.readyState, camOn: S.local.camOn },
  }),
};

translatePage();
wireControls();
render();
if (!S.token) {
  end(t("tokenMissing"));
} else if (link.error) {
  // A damaged key must not turn into a meeting without encryption.
  end(t("e2eeBadLink"));
} else if (link.secret && !S.e2eeMode) {
  end(t("e2eeUnsupported"));
} else {
  showPrejoin();
}
