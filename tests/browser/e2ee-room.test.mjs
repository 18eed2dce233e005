// End-to-end encryption in the meeting page, in Debian's Chromium driven by
// playwright-core, against a real `stamma dev` server. Links made with
// `stamma link create --e2ee-secret` carry the room secret in the URL
// fragment, which the browser never sends to the server:
//  a. two pages with the secret decode each other's video and audio; both
//     show the padlock and the same safety code
//  b. a page whose link lacks the secret receives the packets but decodes no
//     frame of the others and shows no padlock; it sends clear media, which
//     the others fail to decrypt and drop (counted in decryptFailures)
//  c. a third page with the secret (on the other transform API) joins, gets
//     the ratcheted key and decodes; when it closes, the other two move to a
//     fresh generation (new safety code) and still decode; the rotation time
//     is measured from participant_left to both on the new generation
//  d. chat between the pages with the secret arrives decrypted, and what the
//     server relays (the WebSocket frames) is not the text
//  e. interop with the Rust implementation (stamma-test-participant with the
//     secret): the browser decodes its video (the grey picture it sends) and
//     hears its audio; it opens the browser's audio and hears the browser's
//     660 Hz microphone tone; one safety code; its leave rotates the keys
//  f. in a room created with e2ee_required, a page whose link lacks the secret
//     publishes nothing and says why; a page with the secret publishes there
// Also: a page that reconnects is keyed again; a screenshot with the padlock
// and an axe-core scan of the page.
//
// usage: node e2ee-room.test.mjs path/to/stamma path/to/stamma-test-participant
// Runs inside its own network namespace with only loopback when it can.
import {
  OUT, STEP_TIMEOUT_MS, axeScan, children, enterNetns, fail, fromParticipant, join, launchChromium, mediaDelta, mediaDeltaUntil,
  adminToken, linkCreate, openPage, pictures, rustParticipant, serverLog, startServer, step, toneWav, waitFor,
} from "./harness.mjs";

const [stamma, rustParticipantBin] = process.argv.slice(2);
if (!stamma || !rustParticipantBin) {
  console.error("usage: node e2ee-room.test.mjs path/to/stamma path/to/stamma-test-participant");
  process.exit(2);
}
enterNetns();

const ROOM = "sekretess";
let failed = false;

/** Waits until `page` decodes `pid`'s video and hears its audio (not concealment). */
async function expectDecodes(page, pid, who) {
  // Real audio: samples that are not concealment, with energy (the fake
  // microphone's tone); concealment of dropped frames is near silence.
  const heard = (d) => d.samples > 0 && d.samples - d.concealed > d.samples / 2 && d.energy > 0;
  const d = await mediaDeltaUntil(page, pid, (d) => d.decoded > 0 && heard(d));
  if (d.decoded > 0 && heard(d)) return d;
  const state = await page.evaluate(() => ({ ...window.stamma.debug(), e2ee: window.stamma.e2ee })).catch(() => null);
  console.error(`${page.label} state: ${JSON.stringify(state, null, 1)}`);
  console.error(`--- last server log lines ---\n${serverLog.join("\n")}\n---`);
  fail(`${page.label} does not decode ${who}: ${JSON.stringify(d)}`);
}

const e2ee = (page) => page.evaluate(() => window.stamma.e2ee);

/** Waits until every page left generation `before` for one new one with one safety code; the time from participant_left. */
async function rotated(pages, before) {
  for (const p of pages) {
    await waitFor(p, "a fresh generation after a leave", (gen) => window.stamma.e2ee.holdsKey && window.stamma.e2ee.generation !== gen, before, 10_000);
  }
  const infos = [];
  const deadline = Date.now() + 5000;
  for (;;) {
    infos.length = 0;
    for (const p of pages) infos.push(await e2ee(p));
    if (new Set(infos.map((i) => `${i.generation} ${i.safetyCode}`)).size === 1) break;
    if (Date.now() > deadline) fail(`pages disagree after a leave: ${JSON.stringify(infos)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const adoptedAt = Math.max(...infos.map((i) => i.adoptedAt));
  return { generation: infos[0].generation, ms: adoptedAt - Math.min(...infos.map((i) => i.leftAt)), adoptedAt };
}

const padlock = (page) => page.evaluate(() => {
  const box = document.querySelector("#e2ee");
  return { shown: !box.hidden && box.dataset.state === "on", code: document.querySelector("#e2ee-code").textContent };
});

// ---- run ---------------------------------------------------------------------

const srv = await startServer(stamma, ROOM);
const hostLink = linkCreate(srv, ["--role", "host", "--e2ee-secret", "new"]);
const secret = new URL(hostLink).hash.replace(/^#e2ee=/, "");
if (!/^[A-Za-z0-9_-]{43}$/.test(secret)) fail(`link create --e2ee-secret new made no secret: ${hostLink}`);
const speakerLink = linkCreate(srv, ["--role", "speaker", "--e2ee-secret", secret]);
const plainLink = linkCreate(srv, ["--role", "speaker"]);
if (new URL(speakerLink).hash !== `#e2ee=${secret}` || new URL(plainLink).hash !== "") {
  fail(`unexpected links: ${speakerLink} ${plainLink}`);
}
if (!new URL(srv.e2eeHost).hash.startsWith("#e2ee=")) fail(`stamma dev's E2EE link has no secret: ${srv.e2eeHost}`);

// Every page's microphone plays this tone, for the Rust client to find.
const BROWSER_TONE_HZ = 660;
const browser = await launchChromium({ fakeAudio: toneWav(BROWSER_TONE_HZ) });
const foreign = [];
const pages = [];
async function newPage(label) {
  const page = await openPage(browser, srv, foreign, label);
  pages.push(page);
  // Every chat signal on the wire, both ways: what the server sees.
  page.chatWire = [];
  page.on("websocket", (ws) => {
    const grab = (dir) => (f) => {
      try {
        const m = JSON.parse(String(f.payload));
        if (m.type === "chat") page.chatWire.push({ dir, text: m.text });
      } catch { /* not JSON */ }
    };
    ws.on("framesent", grab("sent"));
    ws.on("framereceived", grab("received"));
  });
  return page;
}

try {
  step("a: two pages with the room secret decode each other");
  const anna = await newPage("anna (secret)");
  await anna.goto(hostLink);
  await join(anna, "Anna Andersson");
  await waitFor(anna, "padlock shown (alone: first epoch)", () => document.querySelector("#e2ee").dataset.state === "on");
  const bjorn = await newPage("björn (secret)");
  await bjorn.goto(speakerLink);
  await join(bjorn, "Björn Berg");
  const ids = {};
  ids.anna = await anna.evaluate(() => window.stamma.me.id);
  ids.bjorn = await bjorn.evaluate(() => window.stamma.me.id);
  for (const p of [anna, bjorn]) await waitFor(p, "padlock shown", () => document.querySelector("#e2ee").dataset.state === "on" && !document.querySelector("#e2ee").hidden);
  await waitFor(bjorn, "the same safety code as Anna", (code) => document.querySelector("#e2ee-code").textContent === code, (await padlock(anna)).code);
  const t0 = Date.now();
  const ab = await expectDecodes(anna, ids.bjorn, "Björn");
  const ba = await expectDecodes(bjorn, ids.anna, "Anna");
  console.log(`decoding both ways ${Date.now() - t0} ms after the safety codes matched: anna<-björn ${JSON.stringify(ab)}, björn<-anna ${JSON.stringify(ba)}`);
  const [pa, pb] = [await padlock(anna), await padlock(bjorn)];
  if (!pa.shown || !pb.shown || pa.code !== pb.code || !/^Safety code \d{4} \d{4} \d{4}$/.test(pa.code)) {
    fail(`padlocks or safety codes differ: ${JSON.stringify({ pa, pb })}`);
  }
  const ea = await e2ee(anna);
  console.log(`padlock on both, safety code "${pa.code}", generation ${ea.generation}, transform ${ea.transform}`);
  const seen = await pictures(anna);
  if (!(seen[ids.bjorn]?.green > 0.5)) fail(`anna does not show Björn's camera picture: ${JSON.stringify(seen)}`);
  const [fa0, fb0] = [await e2ee(anna), await e2ee(bjorn)];
  console.log(`decrypt failures between the two (start-up, one ratchet): anna ${fa0.decryptFailures} ${JSON.stringify(fa0.failureReasons)}, björn ${fb0.decryptFailures} ${JSON.stringify(fb0.failureReasons)}; anna shows ${seen[ids.bjorn].green} of Björn's picture as the camera's green`);

  step("b: a page without the secret decodes nothing, and nothing of it is decoded");
  const cecilia = await newPage("cecilia (no secret)");
  await cecilia.goto(plainLink);
  await join(cecilia, "Cecilia Ek");
  ids.cecilia = await cecilia.evaluate(() => window.stamma.me.id);
  await waitFor(cecilia, "tracks of both others offered", (n) =>
    [...window.stamma.connection.midToTrack.values()].filter((t) => t.kind === "video").length >= n, 2);
  const failuresBefore = (await e2ee(anna)).decryptFailures;
  // Let media flow for a while, then compare.
  await cecilia.waitForTimeout(3000);
  for (const [who, pid] of [["Anna", ids.anna], ["Björn", ids.bjorn]]) {
    const d = await mediaDeltaUntil(cecilia, pid, (d) => d.packets > 0 && d.audioPackets > 0, 2000);
    const total = await fromParticipant(cecilia, pid);
    if (!(d.packets > 0 && d.audioPackets > 0)) fail(`cecilia receives no packets from ${who}: ${JSON.stringify(d)}`);
    // The VP8 frame tag is in clear (the SFU reads it), so the decoder takes
    // the ciphertext behind it for VP8 data: now and then libvpx accepts a
    // frame and paints noise. None is the sender's picture (checked below).
    // How often varies: in eight runs on 2 cores, 0-31 of 134-138 frames
    // (up to 23 %), the tile then 0-4.7 % the camera's green against over
    // 50 % on a keyed page. Frames sent in clear would all decode.
    if (total.decoded > total.frames * 0.5) fail(`cecilia decoded ${total.decoded} of ${total.frames} frames of ${who}'s encrypted video`);
    console.log(`cecilia <- ${who}: ${d.packets} video packets, ${d.frames} frames received, ${d.audioPackets} audio packets in 2 s; in all ${total.decoded} of ${total.frames} frames decoded (as noise)`);
  }
  await cecilia.screenshot({ path: new URL("e2ee-no-secret.png", OUT).pathname });
  const noise = await pictures(cecilia);
  for (const [pid, { green }] of Object.entries(noise)) {
    if (green > 0.2) fail(`cecilia shows ${pid}'s camera picture (${green} green): ${JSON.stringify(noise)}`);
  }
  console.log(`what cecilia shows of the others, as share of the camera's green: ${JSON.stringify(noise)} (tiles with no decoded frame are not listed)`);
  const pc = await padlock(cecilia);
  if (pc.shown || !(await cecilia.evaluate(() => document.querySelector("#e2ee").hidden))) fail("cecilia shows a padlock");
  for (const p of [anna, bjorn]) {
    const total = await fromParticipant(p, ids.cecilia);
    // Windows until one has packets: a dip in the estimate may hold her
    // tile paused for a while, as for the keyless page above.
    const d = await mediaDeltaUntil(p, ids.cecilia, (d) => d.packets > 0, 1500);
    if (!(d.packets > 0)) fail(`${p.label} receives no packets from cecilia: ${JSON.stringify(d)}`);
    if (total.decoded > 0 || d.decoded > 0) fail(`${p.label} decoded cecilia's clear video: ${JSON.stringify(total)}`);
    console.log(`${p.label} <- cecilia: ${d.packets} packets in 1.5 s, ${total.decoded} frames decoded in all`);
  }
  const ea2 = await e2ee(anna);
  if (!(ea2.decryptFailures > failuresBefore)) fail(`anna dropped none of cecilia's clear frames: ${JSON.stringify(ea2)}`);
  console.log(`anna's decrypt failures (cecilia's clear frames): ${ea2.decryptFailures} ${JSON.stringify(ea2.failureReasons)}`);
  // Cecilia's presence changed no key: she never proved the room secret.
  if (ea2.verifiedPeers.includes(ids.cecilia)) fail("anna verified cecilia's key");

  step("screenshot and accessibility of the encrypted meeting");
  await anna.screenshot({ path: new URL("e2ee-meeting.png", OUT).pathname });
  await axeScan(anna, "E2EE meeting");

  step("d: chat between the pages with the secret is end-to-end encrypted");
  const plain = "Hemligt: mötet börjar 14.00 🔒";
  await anna.fill("#chat-input", plain);
  await anna.press("#chat-input", "Enter");
  for (const p of [anna, bjorn]) {
    await waitFor(p, "chat arrives decrypted", (text) =>
      [...document.querySelectorAll("#chat-log .text")].some((e) => e.textContent === text), plain);
  }
  await waitFor(cecilia, "chat relayed to the page without the secret", () => document.querySelectorAll("#chat-log .text").length > 0);
  const cText = await cecilia.evaluate(() => [...document.querySelectorAll("#chat-log .text")].map((e) => e.textContent));
  if (cText.some((x) => x.includes("Hemligt"))) fail(`cecilia reads the chat: ${cText}`);
  const sentWire = anna.chatWire.filter((m) => m.dir === "sent");
  const wire = [...anna.chatWire, ...bjorn.chatWire, ...cecilia.chatWire];
  if (!sentWire.length || wire.some((m) => String(m.text).includes("Hemligt") || String(m.text).includes("14.00"))) {
    fail(`the chat text is on the wire in clear: ${JSON.stringify(wire)}`);
  }
  console.log(`on the wire: ${JSON.stringify(sentWire[0].text)} (${sentWire[0].text.length} chars for ${plain.length} of text); cecilia shows ${JSON.stringify(cText[0])}`);
  // A message from the page without the secret cannot pass as encrypted.
  await cecilia.fill("#chat-input", "hej från Cecilia");
  await cecilia.press("#chat-input", "Enter");
  await waitFor(bjorn, "an undecryptable message is marked", () =>
    [...document.querySelectorAll("#chat-log .text.undecryptable")].some((e) => e.textContent === "(encrypted message)"));
  // From here on only key holders: what fails to decrypt is the rotations'.
  // Any leave rotates, even of a page that never had a key (docs/e2ee.md).
  const genC = (await e2ee(anna)).generation;
  await cecilia.context().close();
  const rc = await rotated([anna, bjorn], genC);
  console.log(`cecilia left: both on generation ${rc.generation} ${rc.ms} ms after participant_left`);

  step("c: a third page with the secret joins (ratchet), decodes, leaves (rotation)");
  const failuresKeyHolders = { anna: (await e2ee(anna)).decryptFailures, bjorn: (await e2ee(bjorn)).decryptFailures };
  const before = (await e2ee(anna)).generation;
  const david = await newPage("david (secret, createEncodedStreams)");
  await david.goto(`${speakerLink}&transform=streams`);
  await join(david, "David Dahl");
  ids.david = await david.evaluate(() => window.stamma.me.id);
  await waitFor(david, "padlock shown", () => document.querySelector("#e2ee").dataset.state === "on");
  const dv = await e2ee(david);
  if (dv.transform !== "streams") fail(`david uses ${dv.transform}, not createEncodedStreams`);
  for (const p of [anna, bjorn]) {
    await waitFor(p, "ratcheted to the generation david has", (gen) => window.stamma.e2ee.generation === gen, dv.generation);
  }
  const codes3 = [await padlock(anna), await padlock(bjorn), await padlock(david)].map((x) => x.code);
  if (new Set(codes3).size !== 1 || codes3[0] === pa.code || dv.generation !== ((before + 1) & 0xff)) {
    fail(`after david joined: codes ${codes3} (before ${pa.code}), generation ${dv.generation} (before ${before})`);
  }
  console.log(`david joined: generation ${before} -> ${dv.generation}, one safety code for three: "${codes3[0]}"`);
  const da = await expectDecodes(david, ids.anna, "Anna");
  const db = await expectDecodes(david, ids.bjorn, "Björn");
  const ad = await expectDecodes(anna, ids.david, "David");
  console.log(`david decodes anna ${JSON.stringify(da)} and björn ${JSON.stringify(db)}; anna decodes david ${JSON.stringify(ad)}`);

  const closedAt = Date.now();
  await david.context().close();
  const rd = await rotated([anna, bjorn], dv.generation);
  const codes2 = [(await padlock(anna)).code, (await padlock(bjorn)).code];
  if (codes2[0] === codes3[0]) fail(`the safety code did not change: ${codes2}`);
  console.log(`rotation: participant_left -> both on generation ${rd.generation} in ${rd.ms} ms (${rd.adoptedAt - closedAt} ms after the browser closed); safety code now "${codes2[0]}"`);
  const ab2 = await expectDecodes(anna, ids.bjorn, "Björn after the rotation");
  const ba2 = await expectDecodes(bjorn, ids.anna, "Anna after the rotation");
  console.log(`still decoding after the rotation: anna<-björn ${JSON.stringify(ab2)}, björn<-anna ${JSON.stringify(ba2)}`);

  const fa = await e2ee(anna);
  const fb = await e2ee(bjorn);
  console.log(`decrypt failures from cecilia's departure to the end (david's join and leave, two rotations): anna ${fa.decryptFailures - failuresKeyHolders.anna}, björn ${fb.decryptFailures - failuresKeyHolders.bjorn}`);
  console.log(`decrypt failures in all: anna ${fa.decryptFailures} ${JSON.stringify(fa.failureReasons)}; björn ${fb.decryptFailures} ${JSON.stringify(fb.failureReasons)}; frames encrypted/decrypted: anna ${fa.encrypted}/${fa.decrypted}, björn ${fb.encrypted}/${fb.decrypted}; dropped before a key: anna ${fa.droppedNoKey}, björn ${fb.droppedNoKey}`);

  step("a page with the secret that reconnects is a newcomer: the others rotate and key it again");
  const genR = (await e2ee(anna)).generation;
  await bjorn.evaluate(() => window.stamma.drop());
  await waitFor(bjorn, "reconnected", () => window.stamma.phase === "connected");
  ids.bjorn = await bjorn.evaluate(() => window.stamma.me.id);
  await waitFor(bjorn, "padlock again", () => document.querySelector("#e2ee").dataset.state === "on");
  await waitFor(anna, "a newer generation", (gen) => window.stamma.e2ee.generation !== gen, genR);
  const rr = await rotated([anna, bjorn], genR);
  const ab3 = await expectDecodes(anna, ids.bjorn, "Björn after his reconnect");
  const ba3 = await expectDecodes(bjorn, ids.anna, "Anna after Björn's reconnect");
  console.log(`björn reconnected: both on generation ${rr.generation}; decoding anna<-björn ${JSON.stringify(ab3)}, björn<-anna ${JSON.stringify(ba3)}`);

  step("e: one format, two implementations: a Rust client with the secret and the pages");
  const genE = (await e2ee(anna)).generation;
  const rust = await rustParticipant(rustParticipantBin, srv, speakerLink, ["--e2ee-secret", secret]);
  for (const p of [anna, bjorn]) {
    await waitFor(p, "ratcheted for the Rust client", (gen) => window.stamma.e2ee.generation !== gen, genE);
  }
  const codeE = (await padlock(anna)).code;
  const rk = await rust.until((r) => `Safety code ${r.safety_code}` === codeE, `has the pages' safety code (${codeE})`);
  console.log(`the Rust client joined: generation ${genE} -> ${(await e2ee(anna)).generation}, its safety code "${rk.safety_code}" is the pages'`);
  const fromRust = await expectDecodes(anna, rust.id, "the Rust client");
  const look = (await pictures(anna))[rust.id];
  if (!(look && look.grey > 0.9)) fail(`anna does not show the Rust client's grey picture: ${JSON.stringify(look)}`);
  console.log(`anna decodes the Rust client's SFrame video and audio: ${JSON.stringify(fromRust)}; its tile is ${look.grey} grey`);
  // Once keyed, its frames decode: most of them, as a busy 2-core machine
  // drops a few late ones (16 of 19 in CI); a page without the key decodes
  // at most a few per cent, as noise. One lost packet stops the decoder until
  // the next keyframe (CI once saw 10 of 23 in a window), so the best of up
  // to three windows counts: a page without the key reaches half in none.
  let steady;
  for (let i = 0; i < 3; i++) {
    steady = await mediaDelta(anna, rust.id, 3000);
    if (steady.frames > 0 && steady.decoded >= 0.5 * steady.frames) break;
    console.log(`a window with ${steady.decoded} of ${steady.frames} frames decoded; trying another`);
  }
  if (!(steady.frames > 0 && steady.decoded >= 0.5 * steady.frames)) fail(`anna decodes too few of the Rust client's frames: ${JSON.stringify(steady)}`);
  console.log(`then in 3 s: ${steady.decoded} of ${steady.frames} frames decoded`);
  const tone = (r, pid) => r.tones[pid] !== undefined && Math.abs(r.tones[pid] - BROWSER_TONE_HZ) <= 10;
  const heard = await rust.until((r) => tone(r, ids.anna) && tone(r, ids.bjorn), `hears ${BROWSER_TONE_HZ} Hz from both pages`);
  if (!(heard.decrypted > 100) || heard.decrypt_failures > heard.decrypted / 20) {
    fail(`the Rust client opened too little of the pages' audio: ${JSON.stringify(heard)}`);
  }
  console.log(`the Rust client opens the pages' SFrame audio: ${heard.decrypted} packets opened, ${heard.decrypt_failures} refused, tones ${JSON.stringify(heard.tones)}`);
  const genL = (await e2ee(anna)).generation;
  rust.stop();
  const rl = await rotated([anna, bjorn], genL);
  console.log(`the Rust client left: both pages on generation ${rl.generation} ${rl.ms} ms after participant_left`);

  step("f: a room that requires E2EE gets nothing from a link without the secret");
  const created = await fetch(`${srv.origin}/api/v1/rooms`, {
    method: "POST",
    headers: { authorization: `Bearer ${adminToken(srv)}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "krav", e2ee_required: true }),
  });
  if (created.status !== 201 && created.status !== 200) fail(`creating the e2ee_required room: ${created.status} ${await created.text()}`);
  const krav = { ...srv, room: "krav" };
  const keyed = await newPage("erik (secret, e2ee_required room)");
  await keyed.goto(linkCreate(krav, ["--role", "host", "--e2ee-secret", secret]));
  await join(keyed, "Erik Ek");
  await waitFor(keyed, "padlock shown", () => document.querySelector("#e2ee").dataset.state === "on");
  const keyless = await newPage("frida (no secret, e2ee_required room)");
  await keyless.goto(linkCreate(krav, ["--role", "speaker"]));
  await join(keyless, "Frida Falk");
  const blocked = await keyless.evaluate(() => ({
    blocked: window.stamma.e2ee.blocked,
    note: document.querySelector("#meeting-note").hidden ? null : document.querySelector("#meeting-note").textContent,
    senders: window.stamma.pc ? window.stamma.pc.getSenders().filter((x) => x.track).length : 0,
    controls: ["#btn-mic", "#btn-cam", "#btn-share"].map((sel) => document.querySelector(sel).hidden),
  }));
  if (!blocked.blocked || !/no key/.test(blocked.note || "") || blocked.senders !== 0 || blocked.controls.some((h) => !h)) {
    fail(`the keyless page in an e2ee_required room: ${JSON.stringify(blocked)}`);
  }
  const ids2 = {
    erik: await keyed.evaluate(() => window.stamma.me.id),
    frida: await keyless.evaluate(() => window.stamma.me.id),
  };
  await waitFor(keyless, "Erik's tracks offered", () =>
    [...window.stamma.connection.midToTrack.values()].some((t) => t.kind === "video"));
  await keyed.waitForTimeout(2000);
  const fromFrida = await keyed.evaluate((pid) => {
    const tiles = [...document.querySelectorAll(`#stage .tile[data-pid="${pid}"] video`)];
    return { tracks: [...window.stamma.connection.midToTrack.values()].filter((t) => t.participant_id === pid).length, videos: tiles.filter((v) => v.videoWidth > 0).length };
  }, ids2.frida);
  if (fromFrida.tracks !== 0 || fromFrida.videos !== 0) fail(`the keyless page published into the e2ee_required room: ${JSON.stringify(fromFrida)}`);
  const fridaSees = await fromParticipant(keyless, ids2.erik);
  if (fridaSees.decoded > fridaSees.frames * 0.05) fail(`the keyless page decodes Erik's encrypted video: ${JSON.stringify(fridaSees)}`);
  console.log(`e2ee_required: the keyless page says "${blocked.note}", sends no track, and decodes ${fridaSees.decoded} of ${fridaSees.frames} of Erik's frames`);

  if (foreign.length) fail(`requests to other origins: ${foreign.join(", ")}`);
  console.log("E2EE browser tests passed");
} catch (e) {
  failed = true;
  for (const p of pages) {
    if (p.isClosed()) continue;
    const state = await p.evaluate(() => ({ ...window.stamma.debug(), e2ee: window.stamma.e2ee, status: document.querySelector("#status").textContent })).catch(() => null);
    console.error(`${p.label} state: ${JSON.stringify(state)}\n${p.label} console:\n  ${p.logs.join("\n  ")}`);
  }
  console.error(e.message);
} finally {
  await browser.close().catch(() => {});
  for (const c of children) c.kill("SIGINT");
}
process.exit(failed ? 1 : 0);
