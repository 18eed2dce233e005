// Browser test: two Chromium tabs open the join links printed by `stamma dev`
// and each shows the other's (fake camera) video; a bad token is refused.
//
// usage: node room.test.mjs path/to/stamma
// Runs inside its own network namespace with only loopback when it can, so
// no packet ever leaves 127.0.0.0/8.
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const STEP_TIMEOUT_MS = 30_000;
const stamma = process.argv[2];
if (!stamma) {
  console.error("usage: node room.test.mjs path/to/stamma");
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

const fail = (msg) => {
  throw new Error(msg);
};

// The server's last log lines, printed when a step fails (its logs go to
// stdout, which this script reads for the join links).
const serverLog = [];

function startServer() {
  return new Promise((resolve, reject) => {
    const child = spawn(stamma, ["dev", "--http", "127.0.0.1:0", "--media-port", "0", "--room", "browser"], {
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const links = {};
    const timer = setTimeout(() => reject(new Error("stamma dev printed no join links")), STEP_TIMEOUT_MS);
    child.on("exit", (code) => reject(new Error(`stamma dev exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      serverLog.push(line);
      if (serverLog.length > 400) serverLog.shift();
      const m = line.match(/^Join as (host|guest):\s+(\S+)$/);
      if (m) links[m[1]] = m[2];
      if (links.host && links.guest) {
        clearTimeout(timer);
        resolve({ child, links });
      }
    });
  });
}

async function waitFor(page, what, fn, arg) {
  try {
    await page.waitForFunction(fn, arg, { timeout: STEP_TIMEOUT_MS, polling: 100 });
  } catch (e) {
    const status = await page.textContent("#status").catch(() => "?");
    console.error(`--- last server log lines ---\n${serverLog.join("\n")}\n---`);
    fail(`${what}: not reached in ${STEP_TIMEOUT_MS} ms (page status: ${status})`);
  }
}

const { child, links } = await startServer();
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
  ],
});
let ok = false;
try {
  const ctx = await browser.newContext();
  const host = await ctx.newPage();
  const guest = await ctx.newPage();
  for (const p of [host, guest]) p.on("console", (m) => m.type() === "error" && console.error("page:", m.text()));
  await host.goto(links.host);
  await guest.goto(links.guest);
  const t0 = Date.now();
  for (const [name, page] of [["host", host], ["guest", guest]]) {
    await waitFor(page, `${name} joined`, () => document.querySelector("#status").textContent.match(/joined|media/));
    await waitFor(page, `${name} shows remote video`, () => {
      const v = document.querySelector(".tile video");
      return v && v.videoWidth > 0 && window.stamma.framesDecoded() > 10;
    });
  }
  console.log(`both tabs show each other's video after ${Date.now() - t0} ms`);
  const dir = new URL("../../test-output/", import.meta.url);
  mkdirSync(dir, { recursive: true });
  await guest.screenshot({ path: new URL("room-guest.png", dir).pathname });

  // The guest leaves: the host's tile for it goes away.
  await guest.close();
  await waitFor(host, "host drops the guest's tile", () => window.stamma.tiles.size === 0);

  // A tampered token is refused before the WebSocket opens.
  const bad = await ctx.newPage();
  await bad.goto(links.host.replace(/token=([^.]+)\.([^.]+)\.(.)/, "token=$1.$2.x"));
  await waitFor(bad, "bad token refused", () => document.querySelector("#status").textContent.startsWith("disconnected"));
  ok = true;
  console.log("browser tests passed");
} finally {
  await browser.close();
  child.kill("SIGINT");
}
process.exit(ok ? 0 : 1);
