//! One member's side of the E2EE key exchange (docs/e2ee.md, "On the
//! wire"), sans-IO: it takes what the room does (joined, a newcomer's
//! `hello`, a sealed `key`, someone leaving) and returns the `e2ee`
//! messages to send and the epoch to derive keys from. The browser page
//! follows the same document, so a browser and a Rust client interoperate.
//!
//! The room secret never leaves the member: it only authenticates public
//! keys. Epoch secrets travel sealed (HPKE) to verified keys, so the server,
//! which relays everything, learns none of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::e2ee::{SECRET_LEN, labels, schedule};
use crate::hpke::{self, KeyPair};

/// How long keys of the generation before the current one still decrypt:
/// frames in flight when a new epoch starts.
pub const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("e2ee payload is not a message of the key exchange: {0}")]
    BadMessage(String),
    #[error("a key from a participant whose public key did not verify")]
    Unverified,
    #[error("a key sealed to us did not open")]
    Open(#[from] hpke::Error),
    #[error("key derivation failed")]
    Kdf,
    #[error("no randomness available")]
    Random,
}

/// A key-exchange message, the `payload` of an `e2ee` signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Message {
    Hello {
        pk: String,
        mac: String,
    },
    Key {
        #[serde(rename = "gen")]
        generation: u8,
        enc: String,
        ct: String,
    },
}

/// An `e2ee` signal to send: to one participant, or to the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Option<String>,
    pub payload: String,
}

struct Member {
    join_seq: u64,
    /// Set once its `hello` verified.
    pk: Option<[u8; hpke::KEY_LEN]>,
}

#[derive(Clone, Copy)]
struct Epoch {
    generation: u8,
    secret: [u8; SECRET_LEN],
}

pub struct KeyExchange {
    room: String,
    my_id: String,
    my_join_seq: u64,
    keypair: KeyPair,
    join_auth: [u8; SECRET_LEN],
    members: BTreeMap<String, Member>,
    epoch: Option<Epoch>,
    previous: Option<(Epoch, Instant)>,
}

fn random_secret() -> Result<[u8; SECRET_LEN], Error> {
    crate::e2ee::random_secret().ok_or(Error::Random)
}

fn decode<const N: usize>(field: &str, s: &str) -> Result<[u8; N], Error> {
    let v = B64
        .decode(s)
        .map_err(|_| Error::BadMessage(format!("{field} is not base64url")))?;
    v.try_into()
        .map_err(|_| Error::BadMessage(format!("{field} must be {N} bytes")))
}

impl KeyExchange {
    /// A member that joined `room` as `my_id` (`join_seq` from `joined`),
    /// knowing the room secret from its link.
    pub fn new(
        room: &str,
        room_secret: &[u8],
        my_id: &str,
        my_join_seq: u64,
    ) -> Result<KeyExchange, Error> {
        Ok(KeyExchange {
            room: room.to_owned(),
            my_id: my_id.to_owned(),
            my_join_seq,
            keypair: KeyPair::generate()?,
            join_auth: schedule::join_auth_key(room_secret).map_err(|_| Error::Kdf)?,
            members: BTreeMap::new(),
            epoch: None,
            previous: None,
        })
    }

    fn hello(&self, to: Option<String>) -> Outgoing {
        let pk = self.keypair.public_key();
        let mac = schedule::public_key_mac(&self.join_auth, &self.my_id, pk);
        let msg = Message::Hello {
            pk: B64.encode(pk),
            mac: B64.encode(mac),
        };
        Outgoing {
            to,
            payload: serde_json::to_string(&msg).unwrap_or_default(),
        }
    }

    /// Right after `joined`: everyone already there (`(participant id,
    /// join_seq)`). Alone, this member starts the first epoch.
    pub fn joined(&mut self, others: &[(String, u64)]) -> Result<Vec<Outgoing>, Error> {
        for (id, seq) in others {
            self.participant_joined(id, *seq);
        }
        if others.is_empty() {
            self.epoch = Some(Epoch {
                generation: 0,
                secret: random_secret()?,
            });
        }
        Ok(vec![self.hello(None)])
    }

    /// Someone joined (its `hello` follows).
    pub fn participant_joined(&mut self, id: &str, join_seq: u64) {
        self.members
            .entry(id.to_owned())
            .or_insert(Member { join_seq, pk: None });
    }

    /// Whether this member hands out keys: the lowest join order among the
    /// members it knows, `except` left out (a newcomer is not a candidate).
    fn designated(&self, except: Option<&str>) -> bool {
        self.members
            .iter()
            .filter(|(id, _)| Some(id.as_str()) != except)
            .all(|(_, m)| m.join_seq > self.my_join_seq)
    }

    fn seal_to(&self, id: &str, epoch: Epoch) -> Result<Option<Outgoing>, Error> {
        let Some(pk) = self.members.get(id).and_then(|m| m.pk) else {
            return Ok(None);
        };
        let mut aad = self.room.as_bytes().to_vec();
        aad.push(epoch.generation);
        let sealed = hpke::seal(&pk, labels::EPOCH.as_bytes(), &aad, &epoch.secret)?;
        let msg = Message::Key {
            generation: epoch.generation,
            enc: B64.encode(sealed.enc),
            ct: B64.encode(&sealed.ciphertext),
        };
        Ok(Some(Outgoing {
            to: Some(id.to_owned()),
            payload: serde_json::to_string(&msg).unwrap_or_default(),
        }))
    }

    fn advance(&mut self, next: Epoch, now: Instant) {
        if let Some(cur) = self.epoch.replace(next) {
            self.previous = Some((cur, now + GRACE));
        }
    }

    /// Every verified member, sealed the current epoch (the designated
    /// member's answer to any change: a member that missed a step catches up).
    fn seal_to_all(&self) -> Result<Vec<Outgoing>, Error> {
        let Some(epoch) = self.epoch else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for id in self.members.keys() {
            out.extend(self.seal_to(id, epoch)?);
        }
        Ok(out)
    }

    /// Someone left: the designated member draws a fresh epoch the leaver
    /// never sees and seals it to everyone left.
    pub fn participant_left(&mut self, id: &str, now: Instant) -> Result<Vec<Outgoing>, Error> {
        if self.members.remove(id).is_none() || self.epoch.is_none() || !self.designated(None) {
            return Ok(Vec::new());
        }
        let generation = self.epoch.map_or(0, |e| e.generation.wrapping_add(1));
        let next = Epoch {
            generation,
            secret: random_secret()?,
        };
        self.advance(next, now);
        self.seal_to_all()
    }

    /// An `e2ee` payload from participant `from`.
    pub fn receive(
        &mut self,
        from: &str,
        payload: &str,
        now: Instant,
    ) -> Result<Vec<Outgoing>, Error> {
        let msg: Message =
            serde_json::from_str(payload).map_err(|e| Error::BadMessage(e.to_string()))?;
        match msg {
            Message::Hello { pk, mac } => {
                let pk: [u8; hpke::KEY_LEN] = decode("pk", &pk)?;
                let mac: [u8; 32] = decode("mac", &mac)?;
                // Without the room secret nobody can make this MAC: the
                // server cannot slip in a key of its own.
                if !schedule::verify_public_key_mac(&self.join_auth, from, &pk, &mac) {
                    return Err(Error::Unverified);
                }
                let Some(m) = self.members.get_mut(from) else {
                    return Err(Error::BadMessage(format!("hello from unknown {from}")));
                };
                let first = m.pk.is_none();
                m.pk = Some(pk);
                let newcomer = first && m.join_seq > self.my_join_seq;
                if !newcomer {
                    return Ok(Vec::new());
                }
                let mut out = vec![self.hello(Some(from.to_owned()))];
                if let Some(cur) = self.epoch {
                    // One-way: the newcomer cannot go back to what was said
                    // before it came.
                    let secret = schedule::ratchet(&cur.secret).map_err(|_| Error::Kdf)?;
                    let next = Epoch {
                        generation: cur.generation.wrapping_add(1),
                        secret,
                    };
                    self.advance(next, now);
                    if self.designated(Some(from)) {
                        out.extend(self.seal_to_all()?);
                    }
                }
                Ok(out)
            }
            Message::Key {
                generation: gen_,
                enc,
                ct,
            } => {
                if self.members.get(from).and_then(|m| m.pk).is_none() {
                    return Err(Error::Unverified);
                }
                let enc: [u8; hpke::KEY_LEN] = decode("enc", &enc)?;
                let ct = B64
                    .decode(ct)
                    .map_err(|_| Error::BadMessage("ct is not base64url".into()))?;
                let mut aad = self.room.as_bytes().to_vec();
                aad.push(gen_);
                let opened = hpke::open(&self.keypair, &enc, labels::EPOCH.as_bytes(), &aad, &ct)?;
                let secret: [u8; SECRET_LEN] = opened
                    .try_into()
                    .map_err(|_| Error::BadMessage("epoch secret must be 32 bytes".into()))?;
                let newer = match self.epoch {
                    None => true,
                    // Generations wrap at 256: "newer" is up to 127 ahead.
                    Some(cur) => (1..=127).contains(&gen_.wrapping_sub(cur.generation)),
                };
                if newer {
                    self.advance(
                        Epoch {
                            generation: gen_,
                            secret,
                        },
                        now,
                    );
                }
                Ok(Vec::new())
            }
        }
    }

    /// The safety code of the current epoch (docs/e2ee.md): members who
    /// read out the same code share the key.
    pub fn safety_code(&self) -> Option<String> {
        schedule::safety_code(&self.epoch?.secret).ok()
    }

    /// The generation of the current epoch, once this member has one.
    pub fn generation(&self) -> Option<u8> {
        self.epoch.map(|e| e.generation)
    }

    /// `(kid, base key)` this member sends with now.
    pub fn send_key(&self) -> Option<(u64, [u8; SECRET_LEN])> {
        let e = self.epoch?;
        let key = schedule::sender_base_key(&e.secret, &self.my_id).ok()?;
        Some((schedule::kid(self.my_join_seq, e.generation), key))
    }

    /// `(kid, base key)` of every other member for the current epoch, and
    /// for the previous one while its grace lasts.
    pub fn receive_keys(&self, now: Instant) -> Vec<(u64, [u8; SECRET_LEN])> {
        let mut epochs: Vec<Epoch> = self.epoch.into_iter().collect();
        if let Some((prev, until)) = self.previous
            && now < until
        {
            epochs.push(prev);
        }
        let mut keys = Vec::new();
        for e in epochs {
            for (id, m) in &self.members {
                if let Ok(key) = schedule::sender_base_key(&e.secret, id) {
                    keys.push((schedule::kid(m.join_seq, e.generation), key));
                }
            }
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::{Codec, protect, unprotect};
    use crate::sframe::{CipherSuite, Decryptor, Encryptor};

    const SECRET: &[u8] = b"a room secret of 32 bytes, ok!!!";

    /// A room of key-exchange members and the server that relays between them.
    struct Room {
        members: BTreeMap<String, KeyExchange>,
        next_seq: u64,
        now: Instant,
    }

    impl Room {
        fn new() -> Room {
            Room {
                members: BTreeMap::new(),
                next_seq: 0,
                now: Instant::now(),
            }
        }

        fn deliver(&mut self, from: &str, out: Vec<Outgoing>) {
            // In order, as the server relays each sender's messages.
            let mut queue: std::collections::VecDeque<(String, Outgoing)> =
                out.into_iter().map(|o| (from.to_owned(), o)).collect();
            let mut rounds = 0;
            while let Some((from, o)) = queue.pop_front() {
                rounds += 1;
                assert!(rounds < 1000, "key exchange does not settle");
                let targets: Vec<String> = match &o.to {
                    Some(to) => vec![to.clone()],
                    None => self
                        .members
                        .keys()
                        .filter(|k| **k != from)
                        .cloned()
                        .collect(),
                };
                for t in targets {
                    let Some(m) = self.members.get_mut(&t) else {
                        continue;
                    };
                    if let Ok(replies) = m.receive(&from, &o.payload, self.now) {
                        queue.extend(replies.into_iter().map(|r| (t.clone(), r)));
                    }
                }
            }
        }

        fn join(&mut self, id: &str, secret: &[u8]) {
            self.next_seq += 1;
            let seq = self.next_seq;
            let others: Vec<(String, u64)> = self
                .members
                .iter()
                .map(|(k, m)| (k.clone(), m.my_join_seq))
                .collect();
            for m in self.members.values_mut() {
                m.participant_joined(id, seq);
            }
            let mut me = KeyExchange::new("r", secret, id, seq).unwrap();
            let out = me.joined(&others).unwrap();
            self.members.insert(id.to_owned(), me);
            self.deliver(id, out);
        }

        fn leave(&mut self, id: &str) -> KeyExchange {
            let gone = self.members.remove(id).unwrap();
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for m in ids {
                let out = self
                    .members
                    .get_mut(&m)
                    .unwrap()
                    .participant_left(id, self.now)
                    .unwrap();
                self.deliver(&m, out);
            }
            gone
        }

        fn generations(&self) -> Vec<Option<u8>> {
            self.members.values().map(|m| m.generation()).collect()
        }
    }

    /// Whether `reader` decrypts a frame `sender` protects now.
    fn reads(sender: &KeyExchange, reader: &KeyExchange, now: Instant) -> bool {
        let Some((kid, key)) = sender.send_key() else {
            return false;
        };
        let mut enc = Encryptor::new(CipherSuite::Aes128GcmSha256, kid, &key).unwrap();
        let frame = protect(&mut enc, Codec::Opus, &[0x78, 1, 2, 3, 4, 5]).unwrap();
        let mut dec = Decryptor::new();
        for (kid, key) in reader.receive_keys(now) {
            dec.add_key(CipherSuite::Aes128GcmSha256, kid, &key)
                .unwrap();
        }
        unprotect(&mut dec, Codec::Opus, &frame).is_ok()
    }

    #[test]
    fn members_with_the_room_secret_share_keys_and_a_newcomer_gets_a_ratcheted_epoch() {
        let mut room = Room::new();
        room.join("A", SECRET);
        assert_eq!(room.generations(), vec![Some(0)]);
        let a_gen0 = room.members["A"].send_key().unwrap();
        room.join("B", SECRET);
        assert_eq!(room.generations(), vec![Some(1), Some(1)]);
        let (a, b) = (&room.members["A"], &room.members["B"]);
        assert!(reads(a, b, room.now) && reads(b, a, room.now));
        // B cannot read what A sent before B came.
        assert!(
            !b.receive_keys(room.now)
                .iter()
                .any(|k| *k == a_gen0 || k.1 == a_gen0.1)
        );
        room.join("C", SECRET);
        assert_eq!(room.generations(), vec![Some(2), Some(2), Some(2)]);
        let codes: Vec<Option<String>> = room.members.values().map(|m| m.safety_code()).collect();
        assert!(
            codes[0].is_some() && codes.iter().all(|c| *c == codes[0]),
            "{codes:?}"
        );
        let ids = ["A", "B", "C"];
        for s in ids {
            for r in ids {
                if s != r {
                    assert!(
                        reads(&room.members[s], &room.members[r], room.now),
                        "{s} → {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_member_without_the_room_secret_gets_no_key_and_cannot_read() {
        let mut room = Room::new();
        room.join("A", SECRET);
        room.join("B", SECRET);
        room.join("E", b"not the room secret, not at all!");
        assert_eq!(room.members["E"].generation(), None);
        assert!(!reads(&room.members["A"], &room.members["E"], room.now));
        // E was never verified: A and B did not ratchet for it.
        assert_eq!(room.members["A"].generation(), Some(1));
        assert!(reads(&room.members["A"], &room.members["B"], room.now));
    }

    #[test]
    fn after_a_leave_the_rest_move_to_a_fresh_epoch_the_leaver_cannot_read() {
        let mut room = Room::new();
        for id in ["A", "B", "C"] {
            room.join(id, SECRET);
        }
        // The designated member (A, the first) leaves: B takes over.
        let gone = room.leave("A");
        assert_eq!(room.generations(), vec![Some(3), Some(3)]);
        let (b, c) = (&room.members["B"], &room.members["C"]);
        assert!(reads(b, c, room.now) && reads(c, b, room.now));
        assert!(!reads(b, &gone, room.now), "the leaver reads nothing new");
        // Frames sent just before the change still decrypt during the grace.
        let later = room.now + GRACE + Duration::from_millis(1);
        assert!(c.receive_keys(room.now).len() > c.receive_keys(later).len());
    }

    #[test]
    fn garbage_and_forged_messages_are_refused() {
        let mut room = Room::new();
        room.join("A", SECRET);
        room.join("B", SECRET);
        let a = room.members.get_mut("A").unwrap();
        let now = Instant::now();
        for bad in [
            "",
            "{}",
            r#"{"t":"hello","pk":"!!","mac":"AA"}"#,
            r#"{"t":"key","gen":1,"enc":"AA","ct":"AA"}"#,
            r#"{"t":"nope"}"#,
        ] {
            assert!(a.receive("B", bad, now).is_err(), "{bad}");
        }
        // A key from someone unverified is refused before anything is opened.
        a.participant_joined("X", 99);
        let forged =
            r#"{"t":"key","gen":7,"enc":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","ct":"AA"}"#;
        assert!(matches!(
            a.receive("X", forged, now),
            Err(Error::Unverified)
        ));
        assert_eq!(a.generation(), Some(1));
    }
}
