// Browser tests of the meeting page, in Debian's Chromium driven by
// playwright-core, against a real `stamma dev` server:
//  1. three browsers join one room: each plays two remote videos and receives audio;
//     media runs over loopback
//  2. mute shows in the others within 2 s; a screen share appears for the others;
//     chat arrives; a raised hand shows; a host mutes someone; a dropped connection
//     reconnects; a closed browser's tile goes within 5 s
//  3. a browser and a Rust client (stamma-test-participant) receive each other's media
//  4. an attendee link has no publish controls and a forged publish is refused
//  5. screenshots of the pre-join page and the meeting; axe-core finds no serious or
//     critical violation on either
// Also: Swedish strings for a Swedish browser, keyboard-only joining and muting,
// a bad token refused with a reason, and no request to any origin but the server.
//
// usage: node room.test.mjs path/to/stamma path/to/stamma-test-participant
// Runs inside its own network namespace with only loopback when it can, so no
// packet leaves 127.0.0.0/8.
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 30_000;
const [stamma, rustParticipant] = process.argv.slice(2);
if (!stamma || !rustParticipant) {
  console.error("usage: node room.test.mjs path/to/stamma path/to/stamma-test-participant");
  process.exit(2);
}

// Re-run ourselves in a fresh network namespace (only `lo`) if we may.
if (!process.env.STAMMA_IN_NETNS) {
  const probe = spawnSync("unshare", ["-rn", "true"]);
  if (probe.status === 0) {
    const r = spawnSync(
      "unshare",
      ["-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', process.execPath, ...process.argv.slice(1)],
      { stdio: "inherit", env: { ...process.env, STAMMA_IN_NETNS: "1" } },
    );
    process.exit(r.status ?? 1);
  }
  console.warn("unshare -rn is not available; running in the host network namespace (loopback only)");
}

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const OUT = new URL("../../test-output/", import.meta.url);
mkdirSync(OUT, { recursive: true });

const serverLog = [];
const children = [];
let failed = false;

function fail(msg) {
  throw new Error(msg);
}

function step(name) {
  console.log(`--- ${name}`);
}

function startServer() {
  return new Promise((resolve, reject) => {
    const child = spawn(stamma, ["dev", "--http", "127.0.0.1:0", "--media-port", "0", "--room", "hearing"], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(child);
    const found = {};
    const timer = setTimeout(() => reject(new Error("stamma dev printed no join links")), STEP_TIMEOUT_MS);
    child.on("exit", (code) => reject(new Error(`stamma dev exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      serverLog.push(line);
      if (serverLog.length > 400) serverLog.shift();
      let m = line.match(/^Join as (host|guest|attendee):\s+(\S+)$/);
      if (m) found[m[1]] = m[2];
      m = line.match(/^\s+API (key|secret):\s+(\S+)/);
      if (m) found[m[1]] = m[2];
      if (found.host && found.guest && found.attendee && found.key && found.secret) {
        clearTimeout(timer);
        resolve({ child, ...found });
      }
    });
  });
}

/** A join URL made with `stamma link create`, the way an organiser makes one. */
function linkCreate(srv, args) {
  const base = new URL(srv.host).origin;
  const r = spawnSync(stamma, ["link", "create", "--room", "hearing", "--url", base, ...args], {
    env: { ...process.env, STAMMA_API_KEY: srv.key, STAMMA_API_SECRET: srv.secret },
    encoding: "utf8",
  });
  if (r.status !== 0) fail(`stamma link create failed: ${r.stderr}`);
  return r.stdout.trim();
}

async function waitFor(page, what, fn, arg, timeout = STEP_TIMEOUT_MS) {
  const t0 = Date.now();
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (e) {
    const status = await page.textContent("#status").catch(() => "?");
    const state = await page.evaluate(() => window.stamma && window.stamma.debug && window.stamma.debug()).catch(() => null);
    console.error(`${page.label} state: ${JSON.stringify(state, null, 1)}`);
    console.error(`--- last server log lines ---\n${serverLog.join("\n")}\n---`);
    fail(`${page.label}: ${what}: not reached in ${timeout} ms (page status: ${status}) ${e.message.split("\n")[0]}`);
  }
  return Date.now() - t0;
}

/** Inbound media as getStats reports it: per track, frames decoded and audio samples. */
const inbound = (page) => page.evaluate(async () => {
  const out = { video: {}, audio: {}, pair: null };
  if (!window.stamma.pc) return out;
  const stats = await window.stamma.pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") out.video[s.trackIdentifier || s.id] = s.framesDecoded || 0;
    if (s.type === "inbound-rtp" && s.kind === "audio") out.audio[s.trackIdentifier || s.id] = s.totalSamplesReceived || 0;
    if (s.type === "transport" && s.selectedCandidatePairId) {
      const p = byId.get(s.selectedCandidatePairId);
      const l = p && byId.get(p.localCandidateId);
      const r = p && byId.get(p.remoteCandidateId);
      if (l && r) out.pair = { local: l.address || l.ip, remote: r.address || r.ip, protocol: l.protocol };
    }
  });
  return out;
});

/** Whether `count` remote tracks of `kind` advanced between two samples a second apart. */
async function mediaFlows(page, kind, count) {
  const a = await inbound(page);
  await page.waitForTimeout(1000);
  const b = await inbound(page);
  const grew = Object.keys(b[kind]).filter((k) => b[kind][k] > (a[kind][k] || 0));
  return { ok: grew.length >= count, grew: grew.length, pair: b.pair };
}

async function expectMedia(page, count, audios = count) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let last;
  while (Date.now() < deadline) {
    const v = await mediaFlows(page, "video", count);
    const a = await mediaFlows(page, "audio", audios);
    last = { v, a };
    if (v.ok && a.ok) return v.pair;
  }
  console.error(`--- last server log lines ---\n${serverLog.join("\n")}\n---`);
  fail(`${page.label}: expected ${count} remote videos and ${audios} audios flowing, saw ${JSON.stringify(last)}`);
}

/** What a page receives from one participant: audio samples and energy, video frames. */
const fromParticipant = (page, pid) => page.evaluate(async (pid) => {
  const pc = window.stamma.pc;
  const mids = window.stamma.connection.midToTrack;
  const ours = new Set();
  for (const tr of pc.getTransceivers()) {
    const info = tr.mid && mids.get(tr.mid);
    if (info && info.participant_id === pid && tr.receiver.track) ours.add(tr.receiver.track.id);
  }
  const out = { samples: 0, energy: 0, frames: 0 };
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp" || !ours.has(s.trackIdentifier)) return;
    if (s.kind === "audio") { out.samples += s.totalSamplesReceived || 0; out.energy += s.totalAudioEnergy || 0; }
    if (s.kind === "video") out.frames += s.framesReceived || 0;
  });
  return out;
}, pid);

async function axeScan(page, name) {
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of result.violations) {
    console.log(`axe ${name}: ${v.impact} ${v.id}: ${v.help} (${v.nodes.length} nodes)`);
  }
  if (bad.length) {
    fail(`axe-core on the ${name} page: ${bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`).join("; ")}`);
  }
  console.log(`axe ${name}: no serious or critical violations (${result.violations.length} minor)`);
}

async function join(page, name, { keyboard = false } = {}) {
  await waitFor(page, "pre-join page", () => document.querySelector("#name") && !document.querySelector("#prejoin").hidden);
  if (keyboard) {
    // Keyboard only: the name field has focus on load; Enter submits.
    await page.keyboard.press("Control+A");
    await page.keyboard.type(name);
    await page.keyboard.press("Enter");
  } else {
    await page.fill("#name", name);
    await page.click("#join");
  }
  await waitFor(page, "joined", () => window.stamma.phase === "connected");
}

const remoteTiles = (page) => page.evaluate(() =>
  [...document.querySelectorAll("#stage .tile.remote")].map((t) => ({
    key: t.dataset.key, pid: t.dataset.pid, screen: t.classList.contains("screen"),
    playing: t.querySelector("video").videoWidth > 0 && !t.classList.contains("no-video"),
    muted: !t.querySelector(".badge.muted").hidden, hand: !t.querySelector(".badge.hand").hidden,
  })));

// ---- run ---------------------------------------------------------------------

const srv = await startServer();
const origin = new URL(srv.host).origin;
const speakerLink = linkCreate(srv, ["--role", "speaker"]);
const rustLink = linkCreate(srv, ["--role", "speaker", "--identity", "rust-client", "--name", "Rust"]);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--auto-accept-this-tab-capture",
    "--auto-select-desktop-capture-source=Entire screen",
  ],
});
const foreign = [];
async function newPage(label, locale = "en-GB") {
  const ctx = await browser.newContext({ locale, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  page.label = label;
  page.on("console", (m) => m.type() === "error" && console.error(`${label} console:`, m.text()));
  page.on("pageerror", (e) => console.error(`${label} page error:`, e.message));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:")) foreign.push(`${label}: ${u}`);
  });
  page.on("dialog", (d) => d.accept());
  // The `subscription` signals the page sends: what its tiles ask for.
  page.subs = [];
  page.on("websocket", (ws) => ws.on("framesent", (f) => {
    try {
      const m = JSON.parse(String(f.payload));
      if (m.type === "subscription") page.subs.push(m);
    } catch { /* not JSON */ }
  }));
  return page;
}

try {
  step("pre-join page");
  const anna = await newPage("host");
  await anna.goto(srv.host);
  await waitFor(anna, "camera preview plays", () => document.querySelector("#preview").videoWidth > 0);
  await waitFor(anna, "microphone level moves", () => document.querySelector("#level").value > 0);
  await waitFor(anna, "device pickers filled", () => document.querySelector("#camera").options.length > 0 && document.querySelector("#microphone").options.length > 0);
  await anna.screenshot({ path: new URL("prejoin.png", OUT).pathname });
  await axeScan(anna, "pre-join");

  step("three browsers join");
  await join(anna, "Anna Andersson");
  const bjorn = await newPage("speaker-b");
  await bjorn.goto(speakerLink);
  await join(bjorn, "Björn Berg", { keyboard: true });
  const cecilia = await newPage("speaker-c (sv)", "sv-SE");
  await cecilia.goto(speakerLink);
  await waitFor(cecilia, "Swedish strings", () => document.documentElement.lang === "sv" && document.querySelector("#join").textContent === "Gå med i mötet");
  await join(cecilia, "Cecilia Ek");
  const t0 = Date.now();
  for (const p of [anna, bjorn, cecilia]) {
    await waitFor(p, "two remote tiles play video", () =>
      [...document.querySelectorAll("#stage .tile.remote:not(.screen) video")].filter((v) => v.videoWidth > 0).length === 2);
    const pair = await expectMedia(p, 2);
    if (!pair || !pair.local.startsWith("127.") || !pair.remote.startsWith("127.")) {
      fail(`${p.label}: selected candidate pair is not on loopback: ${JSON.stringify(pair)}`);
    }
  }
  console.log(`all three play two remote videos and audios after ${Date.now() - t0} ms (loopback pairs)`);
  const ids = {};
  for (const [k, p] of [["anna", anna], ["bjorn", bjorn], ["cecilia", cecilia]]) ids[k] = await p.evaluate(() => window.stamma.me.id);
  await waitFor(anna, "connection quality shown", () => !document.querySelector("#quality").hidden);
  await anna.screenshot({ path: new URL("meeting-3.png", OUT).pathname });
  await axeScan(anna, "meeting");

  step("mute shows in the others within 2 s");
  await bjorn.focus("#btn-mic");
  await bjorn.keyboard.press("Space");
  await waitFor(bjorn, "Björn's microphone off", () => document.querySelector("#btn-mic").getAttribute("aria-pressed") === "false", undefined, 2000);
  for (const p of [anna, cecilia]) {
    const ms = await waitFor(p, "Björn shown muted", (pid) =>
      [...document.querySelectorAll(`#stage .tile[data-pid="${pid}"] .badge.muted`)].some((b) => !b.hidden), ids.bjorn, 2000);
    console.log(`${p.label} shows Björn muted after ${ms} ms`);
  }

  step("tiles ask for their size; tiles out of view ask for nothing");
  const tileSizes = await anna.evaluate(() => [...document.querySelectorAll("#stage .tile.remote video")].map((v) => ({
    id: v.dataset.trackId, w: Math.round(v.clientWidth * devicePixelRatio), h: Math.round(v.clientHeight * devicePixelRatio) })));
  for (const t of tileSizes) {
    const asked = anna.subs.filter((m) => m.track_ids.includes(t.id) && m.width).pop();
    if (!asked || Math.abs(asked.width - t.w) > t.w * 0.2 || Math.abs(asked.height - t.h) > t.h * 0.2) {
      fail(`tile ${t.id} is ${t.w}x${t.h} but asked for ${JSON.stringify(asked)}`);
    }
  }
  const before = anna.subs.length;
  // A short window: the second row of tiles scrolls out of view.
  await anna.setViewportSize({ width: 1280, height: 300 });
  const hiddenDeadline = Date.now() + 5000;
  while (!anna.subs.slice(before).some((m) => m.enabled === false)) {
    if (Date.now() > hiddenDeadline) fail(`no tile out of view paused its track: ${JSON.stringify(anna.subs.slice(before))}`);
    await anna.waitForTimeout(100);
  }
  await anna.setViewportSize({ width: 1280, height: 800 });
  await waitFor(anna, "all remote tiles play again", () =>
    [...document.querySelectorAll("#stage .tile.remote:not(.screen) video")].filter((v) => v.videoWidth > 0).length === 2);
  console.log(`tiles asked for ${tileSizes.map((t) => `${t.w}x${t.h}`).join(", ")}; out of view: ${JSON.stringify(anna.subs.slice(before).find((m) => m.enabled === false))}`);

  step("screen share");
  await cecilia.click("#btn-share");
  await waitFor(cecilia, "sharing", () => document.querySelector("#btn-share").getAttribute("aria-pressed") === "true");
  for (const p of [anna, bjorn]) {
    await waitFor(p, "screen share shown large", (pid) => {
      const t = document.querySelector(`#stage .tile.screen.featured[data-pid="${pid}"] video`);
      return t && t.videoWidth > 0;
    }, ids.cecilia);
  }
  await anna.screenshot({ path: new URL("meeting-screen-share.png", OUT).pathname });
  await cecilia.click("#btn-share");
  await waitFor(anna, "screen share gone", () => !document.querySelector("#stage .tile.screen"));

  step("chat");
  await anna.fill("#chat-input", "Välkomna till utfrågningen!");
  await anna.press("#chat-input", "Enter");
  for (const p of [bjorn, cecilia, anna]) {
    await waitFor(p, "chat message arrives", () =>
      [...document.querySelectorAll("#chat-log .text")].some((e) => e.textContent === "Välkomna till utfrågningen!"));
  }

  step("raise hand");
  await cecilia.click("#btn-hand");
  await waitFor(anna, "Cecilia's hand shows", (pid) =>
    !document.querySelector(`#stage .tile[data-pid="${pid}"] .badge.hand`).hidden &&
    !!document.querySelector(`#people li[data-pid="${pid}"] .badge.hand`), ids.cecilia);

  step("a host mutes a participant through the server");
  await anna.click(`#people li[data-pid="${ids.cecilia}"] .mod-mute`);
  await waitFor(cecilia, "Cecilia's microphone turned off", () => document.querySelector("#btn-mic").getAttribute("aria-pressed") === "false");
  await waitFor(bjorn, "Björn sees Cecilia muted", (pid) =>
    !document.querySelector(`#stage .tile[data-pid="${pid}"] .badge.muted`).hidden, ids.cecilia, 2000);

  step("reconnect after a network drop");
  await bjorn.evaluate(() => window.stamma.drop());
  await waitFor(bjorn, "reconnecting state shown", () => document.body.dataset.phase === "reconnecting" || window.stamma.phase === "connected");
  await waitFor(bjorn, "reconnected", () => window.stamma.phase === "connected");
  const bjornAgain = await bjorn.evaluate(() => window.stamma.me);
  if (bjornAgain.id === ids.bjorn) fail("reconnect should be a new session");
  ids.bjorn = bjornAgain.id;
  await waitFor(anna, "Björn's video again after reconnecting", (pid) => {
    const v = document.querySelector(`#stage .tile[data-pid="${pid}"] video`);
    return v && v.videoWidth > 0;
  }, ids.bjorn);
  // Cecilia's microphone is off (the host muted it): her audio is not forwarded.
  await expectMedia(bjorn, 2, 1);

  step("a closed browser's tile goes within 5 s");
  await cecilia.context().close();
  const goneMs = await waitFor(anna, "Cecilia's tile removed", (pid) => !document.querySelector(`#stage .tile[data-pid="${pid}"]`), ids.cecilia, 5000);
  console.log(`tile removed ${goneMs} ms after the browser closed`);

  step("a browser and a Rust client receive each other's media");
  const token = new URL(rustLink).searchParams.get("token");
  const wsUrl = `${origin.replace("http", "ws")}/rtc`;
  const rust = spawn(rustParticipant, ["--url", wsUrl, "--room", "hearing", "--token", token, "--seconds", "60"], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.push(rust);
  let rustId = null;
  let rustReport = null;
  createInterface({ input: rust.stdout }).on("line", (line) => {
    if (line.startsWith("READY ")) rustId = line.slice(6).trim();
    else if (line.startsWith("{")) { try { rustReport = JSON.parse(line); } catch { /* partial line */ } }
  });
  const rustDeadline = Date.now() + STEP_TIMEOUT_MS;
  while (!rustId) {
    if (Date.now() > rustDeadline) fail("stamma-test-participant did not join");
    await new Promise((r) => setTimeout(r, 100));
  }
  await waitFor(anna, "a tile for the Rust client", (pid) => !!document.querySelector(`#stage .tile[data-pid="${pid}"]`), rustId);
  // The Rust client's audio is real Opus (a 440 Hz tone), which Chromium
  // decodes; its video is synthetic VP8 (real payload headers, no image),
  // which Chromium receives as frames but cannot decode.
  const a1 = await fromParticipant(anna, rustId);
  await anna.waitForTimeout(1500);
  const a2 = await fromParticipant(anna, rustId);
  if (!(a2.samples > a1.samples && a2.energy > a1.energy && a2.frames > a1.frames)) {
    fail(`the browser does not receive the Rust client's media: ${JSON.stringify({ a1, a2 })}`);
  }
  console.log(`browser receives the Rust client: ${a2.samples - a1.samples} audio samples (energy ${(a2.energy - a1.energy).toFixed(3)}), ${a2.frames - a1.frames} video frames in 1.5 s`);
  while (!(rustReport && rustReport.audio_from.includes(ids.anna) && rustReport.video_from.includes(ids.anna))) {
    if (Date.now() > rustDeadline) fail(`the Rust client did not receive the browser's media: ${JSON.stringify(rustReport)} (host ${ids.anna}, rust ${rustId})`);
    await new Promise((r) => setTimeout(r, 200));
  }
  console.log(`Rust client receives the browser's audio and video: ${JSON.stringify(rustReport)}`);
  rust.stdin.end();

  step("attendee link: no publish controls, forged publish refused");
  const att = await newPage("attendee");
  await att.goto(srv.attendee);
  await waitFor(att, "attendee pre-join without devices", () => document.querySelector("#devices").hidden && !document.querySelector("#prejoin-note").hidden);
  await join(att, "Medborgare");
  await waitFor(att, "attendee sees and hears the speakers", () =>
    [...document.querySelectorAll("#stage .tile.remote video")].filter((v) => v.videoWidth > 0).length >= 2);
  const controls = await att.evaluate(() => ["#btn-mic", "#btn-cam", "#btn-share"].map((s) => document.querySelector(s).hidden));
  if (controls.some((hidden) => !hidden)) fail(`attendee sees publish controls: ${controls}`);
  if (!(await att.evaluate(() => !document.querySelector("#btn-hand").hidden))) fail("attendee cannot raise a hand");
  await att.evaluate(async () => {
    const s = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    for (const tr of s.getTracks()) window.stamma.pc.addTransceiver(tr, { direction: "sendonly" });
    // The page's own offer step rejects when the server refuses it.
    await window.stamma.connection.offer().catch(() => {});
  });
  await waitFor(att, "forged publish refused by the server", () => window.stamma.errors.includes("publish_not_allowed"));
  const attId = await att.evaluate(() => window.stamma.me.id);
  await anna.waitForTimeout(1000);
  if ((await remoteTiles(anna)).some((t) => t.pid === attId)) fail("the attendee's forged media reached the host");

  step("a tampered token is refused with a reason");
  const bad = await newPage("bad-token");
  // One character of the signature changed (to another character, whatever it was).
  await bad.goto(srv.host.replace(/token=([^.]+)\.([^.]+)\.(.)/, (_, h, p, c) => `token=${h}.${p}.${c === "x" ? "y" : "x"}`));
  await waitFor(bad, "pre-join page", () => !document.querySelector("#prejoin").hidden);
  await bad.fill("#name", "Mallory");
  await bad.click("#join");
  await waitFor(bad, "refused", () => window.stamma.phase === "ended" && /signature|token/i.test(document.querySelector("#ended-message").textContent));

  if (foreign.length) fail(`requests to other origins: ${foreign.join(", ")}`);
  console.log("browser tests passed");
} catch (e) {
  failed = true;
  console.error(e.message);
} finally {
  await browser.close().catch(() => {});
  for (const c of children) c.kill("SIGINT");
}
process.exit(failed ? 1 : 0);
