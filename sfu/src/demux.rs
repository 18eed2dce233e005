//! Which participant does a datagram belong to?
//!
//! Known remote addresses map straight to a participant. A datagram from a new
//! address is only considered when it is a STUN binding request whose USERNAME
//! names one of our local ICE ufrags; everything else is dropped unread.

use std::collections::HashMap;
use std::net::SocketAddr;

/// Index of a participant in its worker.
pub type ParticipantKey = usize;

const STUN_HEADER: usize = 20;
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;

/// An SRTP packet (not SRTCP, DTLS or STUN): RTP version 2, and a second
/// byte outside RTCP's packet types (RFC 5761).
pub fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1])
}

/// The local (our) ufrag from a STUN binding request's `USERNAME` ("ours:theirs").
/// Returns `None` for anything that is not a well-formed binding request.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < STUN_HEADER || datagram[0] & 0xC0 != 0 {
        return None;
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let msg_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    if msg_type != STUN_BINDING_REQUEST || datagram[4..8] != STUN_MAGIC {
        return None;
    }
    let body = datagram.get(STUN_HEADER..STUN_HEADER + msg_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let attr = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if attr == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// Routes datagrams to participants.
#[derive(Debug, Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, ParticipantKey>,
    by_ufrag: HashMap<String, ParticipantKey>,
}

impl Demux {
    pub fn add_ufrag(&mut self, ufrag: String, key: ParticipantKey) {
        self.by_ufrag.insert(ufrag, key);
    }

    pub fn add_addr(&mut self, addr: SocketAddr, key: ParticipantKey) {
        self.by_addr.insert(addr, key);
    }

    /// Forget a participant: its ufrag and every address it used.
    pub fn remove(&mut self, ufrag: &str, addrs: &[SocketAddr]) {
        self.by_ufrag.remove(ufrag);
        for a in addrs {
            self.by_addr.remove(a);
        }
    }

    /// The participant for a datagram, and whether its address is new.
    pub fn route(&self, source: SocketAddr, datagram: &[u8]) -> Option<(ParticipantKey, bool)> {
        if let Some(k) = self.by_addr.get(&source) {
            return Some((*k, false));
        }
        let ufrag = stun_local_ufrag(datagram)?;
        self.by_ufrag.get(ufrag).map(|k| (*k, true))
    }

    pub fn remove_addr(&mut self, addr: SocketAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn finds_local_ufrag_in_binding_request() {
        assert_eq!(
            stun_local_ufrag(&binding_request("srv1:cli9")),
            Some("srv1")
        );
    }

    #[test]
    fn rejects_truncated_and_garbage_datagrams() {
        let m = binding_request("srv1:cli9");
        for n in 0..m.len() {
            assert_eq!(stun_local_ufrag(&m[..n]), None, "prefix {n}");
        }
        assert_eq!(stun_local_ufrag(&[0xff; 64]), None);
        let mut lying = m.clone();
        lying[3] = 0xff; // length beyond the datagram
        assert_eq!(stun_local_ufrag(&lying), None);
    }

    #[test]
    fn routes_known_address_then_ufrag() {
        let mut d = Demux::default();
        d.add_ufrag("srv1".into(), 3);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(a, &binding_request("srv1:x")), Some((3, true)));
        assert_eq!(d.route(a, b"junk"), None);
        d.add_addr(a, 3);
        assert_eq!(d.route(a, b"junk"), Some((3, false)));
        d.remove("srv1", &[a]);
        assert_eq!(d.route(a, &binding_request("srv1:x")), None);
    }
}
