//! Signaling client: protocol v1 over a WebSocket (docs/protocol.md).

use futures_util::{SinkExt, StreamExt};
use stamma_proto::{ClientSignal, IceServer, PROTOCOL_VERSION, ParticipantInfo, ServerSignal};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The server refused the upgrade (e.g. 401 for a bad token).
    #[error("server refused the connection: HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connection closed (code {code}: {reason})")]
    Closed { code: u16, reason: String },
    #[error("unexpected message from server: {0}")]
    Unexpected(String),
    #[error("server sent a message that does not parse: {0}")]
    BadMessage(String),
    #[error("bad server URL: {0}")]
    Url(String),
}

/// The `/rtc` WebSocket URL for a server base URL (`http://host:port`).
pub fn rtc_url(base: &str, token: &str, room: Option<&str>) -> Result<String, SignalError> {
    let rest = if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(SignalError::Url(format!(
            "{base:?} must start with http:// or https://"
        )));
    };
    let mut url = format!("{}/rtc?access_token={}", rest.trim_end_matches('/'), token);
    if let Some(room) = room {
        url.push_str("&room=");
        for b in room.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
    }
    Ok(url)
}

pub struct SignalClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    ice_servers: Vec<IceServer>,
    reconnect_token: Option<String>,
    room: String,
}

impl SignalClient {
    /// Connect to `base` (`http://host:port`) with a join token.
    pub async fn connect(base: &str, token: &str) -> Result<SignalClient, SignalError> {
        Self::connect_url(&rtc_url(base, token, None)?).await
    }

    pub async fn connect_url(url: &str) -> Result<SignalClient, SignalError> {
        match connect_async(url).await {
            Ok((ws, _)) => Ok(SignalClient {
                ws,
                ice_servers: Vec::new(),
                reconnect_token: None,
                room: String::new(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(SignalError::Refused { status, body })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn send(&mut self, signal: &ClientSignal) -> Result<(), SignalError> {
        let text =
            serde_json::to_string(signal).map_err(|e| SignalError::BadMessage(e.to_string()))?;
        self.send_text(text).await
    }

    /// Send any text, valid or not (for tests of the server's input handling).
    pub async fn send_text(&mut self, text: String) -> Result<(), SignalError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Next server signal. A close frame becomes [`SignalError::Closed`].
    pub async fn recv(&mut self) -> Result<ServerSignal, SignalError> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Err(SignalError::Closed {
                    code: 1006,
                    reason: "connection ended".into(),
                });
            };
            match msg? {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| SignalError::BadMessage(format!("{e}: {t}")));
                }
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(SignalError::Closed { code, reason });
                }
                Message::Binary(_) => {
                    return Err(SignalError::Unexpected("binary message".into()));
                }
                _ => continue,
            }
        }
    }

    /// Send `join` and wait for `joined`: returns (me, others).
    pub async fn join(&mut self) -> Result<(ParticipantInfo, Vec<ParticipantInfo>), SignalError> {
        self.join_as(None).await
    }

    /// Join with a display name that replaces the token's.
    pub async fn join_as(
        &mut self,
        name: Option<&str>,
    ) -> Result<(ParticipantInfo, Vec<ParticipantInfo>), SignalError> {
        self.send(&ClientSignal::Join {
            v: PROTOCOL_VERSION,
            name: name.map(str::to_owned),
        })
        .await?;
        match self.recv().await? {
            ServerSignal::Joined {
                room,
                participant,
                participants,
                ice_servers,
                reconnect_token,
                ..
            } => {
                self.room = room;
                self.ice_servers = ice_servers;
                self.reconnect_token = reconnect_token;
                Ok((participant, participants))
            }
            other => Err(SignalError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The token to rejoin with as the same identity after a lost
    /// connection, from `joined`.
    pub fn reconnect_token(&self) -> Option<&str> {
        self.reconnect_token.as_deref()
    }

    /// The room joined (from `joined`; empty before).
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The TURN/STUN servers (with credentials) the server gave in `joined`.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The server offers a client has answered. The server sends an offer left
/// unanswered for 3 s again with the same id, and offer ids only grow
/// (docs/protocol.md, Negotiation): a client answers each id once.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnsweredOffers {
    last: Option<u64>,
}

impl AnsweredOffers {
    /// Whether server offer `id` is new, i.e. to be answered; records it.
    /// False for a copy (or an older offer).
    pub fn take_new(&mut self, id: u64) -> bool {
        if self.last.is_some_and(|a| id <= a) {
            return false;
        }
        self.last = Some(id);
        true
    }
}

#[cfg(test)]
mod answered_offers_tests {
    use super::AnsweredOffers;

    #[test]
    fn each_offer_id_is_answered_once() {
        let mut a = AnsweredOffers::default();
        assert!(a.take_new(0));
        assert!(!a.take_new(0), "a copy");
        assert!(a.take_new(1));
        assert!(a.take_new(3));
        assert!(!a.take_new(2), "older than one answered");
        assert!(!a.take_new(3));
    }
}
