// Building blocks of Stämma's E2EE key schedule (client/src/e2ee.rs
// `schedule`); the protocol that uses them over signaling is the next step.
// See docs/e2ee.md.
import { hkdfExtract, hkdfExpand } from "./sframe.js";
import * as labels from "./labels.js";

const utf8 = new TextEncoder();
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/** HKDF-SHA256(salt = "", ikm = room secret, info = JOIN_AUTH, 32). */
export async function joinAuthKey(roomSecret) {
  const prk = await hkdfExtract("SHA-256", new Uint8Array(0), roomSecret);
  return hkdfExpand("SHA-256", prk, utf8.encode(labels.JOIN_AUTH), 32);
}

/** HMAC-SHA256(join_auth_key, PUBLIC_KEY_MAC ‖ participant_id ‖ pk). */
export async function publicKeyMac(joinAuth, participantId, pk) {
  const k = await crypto.subtle.importKey("raw", joinAuth, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const msg = concat(utf8.encode(labels.PUBLIC_KEY_MAC), utf8.encode(participantId), pk);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, msg));
}

/** Constant-time check of a public key's MAC (WebCrypto verify). */
export async function verifyPublicKeyMac(joinAuth, participantId, pk, mac) {
  const k = await crypto.subtle.importKey("raw", joinAuth, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  const msg = concat(utf8.encode(labels.PUBLIC_KEY_MAC), utf8.encode(participantId), pk);
  return crypto.subtle.verify("HMAC", k, mac, msg);
}

/** A sender's SFrame base key: HKDF-Expand(E, SENDER ‖ participant_id, 32). */
export function senderBaseKey(epochSecret, participantId) {
  return hkdfExpand("SHA-256", epochSecret, concat(utf8.encode(labels.SENDER), utf8.encode(participantId)), 32);
}

/** The next epoch secret on a join: HKDF-Expand(E, RATCHET, 32). */
export function ratchet(epochSecret) {
  return hkdfExpand("SHA-256", epochSecret, utf8.encode(labels.RATCHET), 32);
}

/** KID = (join sequence number << 8) | generation (u8). */
export function kid(joinSeq, generation) {
  return (BigInt(joinSeq) << 8n) | BigInt(generation & 0xff);
}
