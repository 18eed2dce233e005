// The labels of Stämma's E2EE key schedule: the browser's copy of
// `client/src/e2ee.rs` `labels`. A Rust test checks each line below against
// the Rust constants, so the two cannot drift. See docs/e2ee.md.
export const JOIN_AUTH = "stamma e2ee join auth";
export const PUBLIC_KEY_MAC = "stamma e2ee pk";
export const SENDER = "stamma e2ee sender ";
export const RATCHET = "stamma e2ee ratchet";
export const EPOCH = "stamma e2ee epoch";
// HKDF info: epoch secret → the safety code members compare (5 bytes, shown
// as 12 digits: the big-endian value mod 10^12, in groups of four).
export const SAFETY_CODE = "stamma e2ee safety code";
