// What the browser tests share: a private network namespace, a `stamma dev`
// server and its links, Chromium with fake devices, page helpers, axe-core.
import { spawn, spawnSync } from "node:child_process";
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

export const STEP_TIMEOUT_MS = 30_000;

/**
 * Re-run this script in a fresh network namespace (only `lo`) if we may, so
 * no packet leaves 127.0.0.0/8. Returns only inside the namespace (or when
 * namespaces are unavailable); the outer process exits with the inner one.
 */
export function enterNetns() {
  if (process.env.STAMMA_IN_NETNS) return;
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

export const OUT = new URL("../../test-output/", import.meta.url);
mkdirSync(OUT, { recursive: true });

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

/** The server's last log lines, printed when a step fails. */
export const serverLog = [];
/** Processes to stop at the end. */
export const children = [];

export function fail(msg) {
  throw new Error(msg);
}

export function step(name) {
  console.log(`--- ${name}`);
}

const LINK_LINES = [
  [/^Join as host:\s+(\S+)$/, "host"],
  [/^Join as guest:\s+(\S+)$/, "guest"],
  [/^Join as attendee:\s+(\S+)$/, "attendee"],
  [/^Join with E2EE \(host\):\s+(\S+)$/, "e2eeHost"],
  [/^\s+API key:\s+(\S+)/, "key"],
  [/^\s+API secret:\s+(\S+)/, "secret"],
];

/**
 * `stamma dev` on loopback for `room`: resolves with its links and API key
 * once it printed all of them. Its whole log goes to
 * test-output/server-<room>.log (a failed step prints only the tail; set
 * RUST_LOG=info,stamma_sfu::worker=debug to see the Allocator's rounds).
 */
export function startServer(stamma, room) {
  const logFile = createWriteStream(new URL(`server-${room}.log`, OUT));
  return new Promise((resolve, reject) => {
    const child = spawn(stamma, ["dev", "--http", "127.0.0.1:0", "--media-port", "0", "--room", room], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(child);
    const found = { stamma, room };
    const timer = setTimeout(() => reject(new Error("stamma dev printed no join links")), STEP_TIMEOUT_MS);
    child.on("exit", (code) => reject(new Error(`stamma dev exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      serverLog.push(line);
      logFile.write(`${line}\n`);
      if (serverLog.length > 400) serverLog.shift();
      for (const [re, name] of LINK_LINES) {
        const m = line.match(re);
        if (m) found[name] = m[1];
      }
      if (LINK_LINES.every(([, name]) => found[name])) {
        clearTimeout(timer);
        found.origin = new URL(found.host).origin;
        resolve({ child, ...found });
      }
    });
  });
}

/** A node-wide admin token for the REST API (`stamma token create --admin`). */
export function adminToken(srv) {
  const r = spawnSync(srv.stamma, ["token", "create", "--admin", "--ttl", "10m"], {
    env: { ...process.env, STAMMA_API_KEY: srv.key, STAMMA_API_SECRET: srv.secret },
    encoding: "utf8",
  });
  if (r.status !== 0) fail(`stamma token create --admin failed: ${r.stderr}`);
  return r.stdout.trim();
}

/** A join URL made with `stamma link create`, the way an organiser makes one. */
export function linkCreate(srv, args) {
  const r = spawnSync(srv.stamma, ["link", "create", "--room", srv.room, "--url", srv.origin, ...args], {
    env: { ...process.env, STAMMA_API_KEY: srv.key, STAMMA_API_SECRET: srv.secret },
    encoding: "utf8",
  });
  if (r.status !== 0) fail(`stamma link create failed: ${r.stderr}`);
  return r.stdout.trim();
}

/**
 * A WAV file of a sine tone for Chromium's fake microphone
 * (`--use-file-for-fake-audio-capture`, which loops it): `toneSeconds` of
 * tone (a whole number of periods, so the loop has no click), then
 * `silenceSeconds` of digital silence; 48 kHz mono 16-bit. Written into
 * test-output/, never committed.
 */
export function toneWav(hz, { toneSeconds = 2, silenceSeconds = 0 } = {}) {
  const rate = 48_000;
  const tone = rate * toneSeconds;
  const n = rate * (toneSeconds + silenceSeconds);
  const buf = Buffer.alloc(44 + 2 * n);
  buf.write("RIFF", 0);
  buf.writeUInt32LE(36 + 2 * n, 4);
  buf.write("WAVEfmt ", 8);
  buf.writeUInt32LE(16, 16);
  buf.writeUInt16LE(1, 20); // PCM
  buf.writeUInt16LE(1, 22); // mono
  buf.writeUInt32LE(rate, 24);
  buf.writeUInt32LE(rate * 2, 28);
  buf.writeUInt16LE(2, 32);
  buf.writeUInt16LE(16, 34);
  buf.write("data", 36);
  buf.writeUInt32LE(2 * n, 40);
  for (let i = 0; i < tone; i++) buf.writeInt16LE(Math.round(10_000 * Math.sin((2 * Math.PI * hz * i) / rate)), 44 + 2 * i);
  const path = new URL(`tone-${hz}hz-${toneSeconds}s-${silenceSeconds}s.wav`, OUT).pathname;
  writeFileSync(path, buf);
  return path;
}

/** Chromium with fake devices; `fakeAudio` a WAV file for the microphone instead of its beeps. */
export function launchChromium({ fakeAudio } = {}) {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      ...(fakeAudio ? [`--use-file-for-fake-audio-capture=${fakeAudio}`] : []),
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
}

/**
 * A page in a context of its own, labelled for the logs. Console errors are
 * printed and the last 200 console lines kept (`page.logs`); a request to any
 * origin but `srv.origin` is recorded in `foreign`; dialogs are accepted.
 */
export async function openPage(browser, srv, foreign, label, locale = "en-GB") {
  const ctx = await browser.newContext({ locale, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  page.label = label;
  page.logs = [];
  page.on("console", (m) => {
    if (m.type() === "error") console.error(`${label} console:`, m.text());
    if (page.logs.length < 200) page.logs.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => console.error(`${label} page error:`, e.message));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(srv.origin) && !u.startsWith("data:") && !u.startsWith("blob:")) foreign.push(`${label}: ${u}`);
  });
  page.on("dialog", (d) => d.accept());
  return page;
}

/** Waits for `fn` in the page; on failure prints the page's state and the server's log. */
export async function waitFor(page, what, fn, arg, timeout = STEP_TIMEOUT_MS) {
  const t0 = Date.now();
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (e) {
    const status = await page.textContent("#status").catch(() => "?");
    const state = await page.evaluate(() => window.stamma && { ...window.stamma.debug(), e2ee: window.stamma.e2ee }).catch(() => null);
    console.error(`${page.label} state: ${JSON.stringify(state, (k, v) => (typeof v === "bigint" ? String(v) : v), 1)}`);
    console.error(`--- last server log lines ---\n${serverLog.join("\n")}\n---`);
    fail(`${page.label}: ${what}: not reached in ${timeout} ms (page status: ${status}) ${e.message.split("\n")[0]}`);
  }
  return Date.now() - t0;
}

/** Fill in the pre-join page and join (keyboard only: the name field has focus; Enter submits). */
export async function join(page, name, { keyboard = false } = {}) {
  await waitFor(page, "pre-join page", () => document.querySelector("#name") && !document.querySelector("#prejoin").hidden);
  if (keyboard) {
    await page.keyboard.press("Control+A");
    await page.keyboard.type(name);
    await page.keyboard.press("Enter");
  } else {
    await page.fill("#name", name);
    await page.click("#join");
  }
  await waitFor(page, "joined", () => window.stamma.phase === "connected");
}

/** What a page receives from one participant: video packets, frames received and decoded; audio packets, samples, concealment and energy. */
export const fromParticipant = (page, pid) => page.evaluate(async (pid) => {
  const pc = window.stamma.pc;
  const out = { packets: 0, frames: 0, decoded: 0, samples: 0, concealed: 0, energy: 0, audioPackets: 0, audioLost: 0 };
  if (!pc) return out;
  const mids = window.stamma.connection.midToTrack;
  const ours = new Set();
  for (const tr of pc.getTransceivers()) {
    const info = tr.mid && mids.get(tr.mid);
    if (info && info.participant_id === pid && tr.receiver.track) ours.add(tr.receiver.track.id);
  }
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp" || !ours.has(s.trackIdentifier)) return;
    if (s.kind === "video") {
      out.packets += s.packetsReceived || 0;
      out.frames += s.framesReceived || 0;
      out.decoded += s.framesDecoded || 0;
    } else {
      out.audioPackets += s.packetsReceived || 0;
      out.audioLost += s.packetsLost || 0;
      out.samples += s.totalSamplesReceived || 0;
      out.concealed += s.concealedSamples || 0;
      out.energy += s.totalAudioEnergy || 0;
    }
  });
  return out;
}, pid);

/** How the counters of `fromParticipant` moved over `ms`. */
export async function mediaDelta(page, pid, ms = 1500) {
  const a = await fromParticipant(page, pid);
  await page.waitForTimeout(ms);
  const b = await fromParticipant(page, pid);
  return Object.fromEntries(Object.keys(b).map((k) => [k, +(b[k] - a[k]).toFixed(4)]));
}

/**
 * `mediaDelta` windows of `ms` until one satisfies `ok`, for at most the
 * step timeout: a tile may start paused, or pause for a while when its
 * subscriber's estimate dips. Returns the last window; the caller judges it.
 */
export async function mediaDeltaUntil(page, pid, ok, ms = 1500) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  let d = await mediaDelta(page, pid, ms);
  while (!ok(d) && Date.now() < deadline) d = await mediaDelta(page, pid, ms);
  return d;
}

/** axe-core on the page as it is: no serious or critical violation. */
export async function axeScan(page, name) {
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

/**
 * How much of each remote tile's picture (by participant id) is Chromium's
 * fake camera (green: a green disc and a clock on green) and how much is the
 * Rust test client's flat mid-grey VP8; tiles with no decoded frame are left out.
 */
export const pictures = (page) => page.evaluate(() => {
  const canvas = document.createElement("canvas");
  canvas.width = 64;
  canvas.height = 36;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  const out = {};
  for (const tile of document.querySelectorAll("#stage .tile.remote")) {
    const v = tile.querySelector("video");
    if (!v || !v.videoWidth) continue;
    g.drawImage(v, 0, 0, canvas.width, canvas.height);
    const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
    let green = 0;
    let grey = 0;
    for (let i = 0; i < px.length; i += 4) {
      const [r, gr, b] = [px[i], px[i + 1], px[i + 2]];
      if (gr > 100 && r < 90 && b < 90) green++;
      if (Math.max(Math.abs(r - 128), Math.abs(gr - 128), Math.abs(b - 128)) <= 8) grey++;
    }
    const all = px.length / 4;
    out[tile.dataset.pid] = { green: +(green / all).toFixed(3), grey: +(grey / all).toFixed(3) };
  }
  return out;
});

/**
 * `stamma-test-participant` (webrtc-rs) joined through `link` with `args`
 * added; resolves once it printed its participant id. `report()` is its
 * latest report line; `until(pred, what)` waits for a report `pred` accepts;
 * `stop()` ends it (it leaves when its stdin closes).
 */
export async function rustParticipant(binary, srv, link, args = []) {
  const url = new URL(link);
  const token = url.searchParams.get("token");
  const wsUrl = `${srv.origin.replace("http", "ws")}/rtc`;
  const child = spawn(binary, ["--url", wsUrl, "--room", srv.room, "--token", token, "--seconds", "120", ...args], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  children.push(child);
  let id = null;
  let last = null;
  createInterface({ input: child.stdout }).on("line", (line) => {
    if (line.startsWith("READY ")) id = line.slice(6).trim();
    else if (line.startsWith("{")) { try { last = JSON.parse(line); } catch { /* partial line */ } }
  });
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (!id) {
    if (Date.now() > deadline || child.exitCode !== null) fail(`stamma-test-participant did not join (exit ${child.exitCode})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    id,
    report: () => last,
    async until(pred, what, timeout = STEP_TIMEOUT_MS) {
      const end = Date.now() + timeout;
      while (!(last && pred(last))) {
        if (Date.now() > end) fail(`the Rust client: ${what}; last report ${JSON.stringify(last)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      return last;
    },
    stop: () => child.stdin.end(),
  };
}
