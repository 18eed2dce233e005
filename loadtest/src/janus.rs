//! Minimal client for the Janus VideoRoom plugin over Janus's WebSocket API,
//! so the same load scenario can be run against Janus for comparison.
//!
//! One background task owns the socket: it routes replies to the waiting
//! request by transaction, logs unsolicited events, and sends the session
//! keepalive. Janus destroys sessions that are silent for `session_timeout`
//! (60 s by default), and a load test keeps sessions idle for its whole run,
//! so the keepalive cannot live inside the request calls.
//!
//! We never trickle: str0m puts its host candidates in the SDP, so every jsep
//! we send carries `"trickle": false`, which tells Janus the candidates are
//! complete (no `{"completed": true}` trickle needed).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

const VIDEOROOM: &str = "janus.plugin.videoroom";
/// Upper bound on any single request. Janus answers a jsep only after its own
/// ICE gathering, which is fast with one enforced interface, so 10 s is slack.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Under Janus's default 60 s `session_timeout` with room for a lost one.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(25);
/// `destroy` is best effort on shutdown; a wedged server must not stall the run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// VideoRoom's JANUS_VIDEOROOM_ERROR_ROOM_EXISTS.
const ERROR_ROOM_EXISTS: i64 = 427;

#[derive(Debug, thiserror::Error)]
pub enum JanusError {
    #[error("cannot connect to Janus: {0}")]
    Connect(String),
    #[error("Janus connection closed")]
    Closed,
    #[error("Janus did not answer {0:?} within {REQUEST_TIMEOUT:?}")]
    Timeout(String),
    /// Janus core (`"janus":"error"`) or the plugin (`error_code`) said no.
    #[error("Janus refused: {code}: {reason}")]
    Refused { code: i64, reason: String },
    #[error("unexpected reply from Janus: {0}")]
    Protocol(String),
}

type Reply = Result<Value, JanusError>;

enum Cmd {
    Request {
        transaction: String,
        msg: Value,
        /// Janus answers `trickle`/`keepalive` with a bare ack, but async
        /// plugin messages with an ack followed by the real event.
        ack_is_final: bool,
        reply: oneshot::Sender<Reply>,
    },
    Close,
}

struct Pending {
    ack_is_final: bool,
    reply: oneshot::Sender<Reply>,
}

pub struct JanusSession {
    session_id: u64,
    next_transaction: u64,
    cmds: mpsc::UnboundedSender<Cmd>,
    io: JoinHandle<()>,
}

impl JanusSession {
    /// Connect (subprotocol janus-protocol), "create" a session, and keep it alive.
    pub async fn connect(url: &str) -> Result<JanusSession, JanusError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| JanusError::Connect(format!("{url}: {e}")))?;
        // Janus's websockets transport rejects the upgrade without it.
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio::time::timeout(REQUEST_TIMEOUT, connect_async(request))
            .await
            .map_err(|_| JanusError::Connect(format!("{url}: timed out")))?
            .map_err(|e| JanusError::Connect(format!("{url}: {e}")))?;

        let keepalive_session = Arc::new(AtomicU64::new(0));
        let (cmds, rx) = mpsc::unbounded_channel();
        let io = tokio::spawn(io_task(ws, rx, keepalive_session.clone()));
        let mut session = JanusSession {
            session_id: 0,
            next_transaction: 0,
            cmds,
            io,
        };
        let reply = session.request(json!({ "janus": "create" }), false).await?;
        session.session_id = data_id(&reply)?;
        keepalive_session.store(session.session_id, Ordering::Relaxed);
        Ok(session)
    }

    /// Attach janus.plugin.videoroom; returns the handle id.
    pub async fn attach(&mut self) -> Result<u64, JanusError> {
        let msg = json!({ "janus": "attach", "plugin": VIDEOROOM, "session_id": self.session_id });
        let reply = self.request(msg, false).await?;
        data_id(&reply)
    }

    /// Create a VideoRoom room (VP8 video, Opus audio, publishers limit, no
    /// recording); an already existing room is OK.
    pub async fn create_room(
        &mut self,
        handle: u64,
        room: u64,
        max_publishers: u32,
    ) -> Result<(), JanusError> {
        let body = create_room_body(room, max_publishers);
        match self.message(handle, body, None).await {
            Ok(_) => Ok(()),
            Err(JanusError::Refused { code, .. }) if code == ERROR_ROOM_EXISTS => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Join `room` as publisher named `display`, configure with the JSEP offer;
    /// returns (our feed id, Janus's SDP answer).
    pub async fn publish(
        &mut self,
        handle: u64,
        room: u64,
        id: u64,
        display: &str,
        offer_sdp: &str,
    ) -> Result<(u64, String), JanusError> {
        // Choosing the feed id lets subscribers map feeds to participants.
        let body = json!({
            "request": "joinandconfigure",
            "ptype": "publisher",
            "room": room,
            "id": id,
            "display": display,
        });
        let reply = self
            .message(handle, body, Some(jsep("offer", offer_sdp)))
            .await?;
        parse_published(&reply)
    }

    /// Join as subscriber (multistream) to streams: every stream of a feed
    /// (mid `None`) or the one with that publisher mid. Returns Janus's offer.
    pub async fn subscribe(
        &mut self,
        handle: u64,
        room: u64,
        feeds: &[(u64, Option<String>)],
    ) -> Result<String, JanusError> {
        let reply = self
            .message(handle, subscribe_body(room, feeds), None)
            .await?;
        expect_videoroom(&reply, "attached")?;
        jsep_sdp(&reply, "offer")
    }

    /// Send "start" with our SDP answer.
    pub async fn start(&mut self, handle: u64, answer_sdp: &str) -> Result<(), JanusError> {
        let body = json!({ "request": "start" });
        let reply = self
            .message(handle, body, Some(jsep("answer", answer_sdp)))
            .await?;
        expect_videoroom(&reply, "event")?;
        Ok(())
    }

    /// List the room's current publisher feed ids.
    pub async fn publishers(&mut self, handle: u64, room: u64) -> Result<Vec<u64>, JanusError> {
        let body = json!({ "request": "listparticipants", "room": room });
        let reply = self.message(handle, body, None).await?;
        parse_publishers(&reply)
    }

    /// Destroy the session and close the socket (best effort).
    pub async fn close(mut self) {
        let msg = json!({ "janus": "destroy", "session_id": self.session_id });
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.request(msg, false)).await;
        let _ = self.cmds.send(Cmd::Close);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut self.io).await;
        self.io.abort();
    }

    async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, JanusError> {
        let mut msg = json!({
            "janus": "message",
            "session_id": self.session_id,
            "handle_id": handle,
            "body": body,
        });
        if let (Some(jsep), Some(obj)) = (jsep, msg.as_object_mut()) {
            obj.insert("jsep".into(), jsep);
        }
        let reply = self.request(msg, false).await?;
        plugin_error(&reply)?;
        Ok(reply)
    }

    async fn request(&mut self, mut msg: Value, ack_is_final: bool) -> Result<Value, JanusError> {
        self.next_transaction += 1;
        let transaction = format!("t{}", self.next_transaction);
        let what = msg
            .get("body")
            .and_then(|b| b.get("request"))
            .or_else(|| msg.get("janus"))
            .and_then(Value::as_str)
            .unwrap_or("request")
            .to_owned();
        if let Some(obj) = msg.as_object_mut() {
            obj.insert("transaction".into(), Value::String(transaction.clone()));
        }
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Request {
                transaction,
                msg,
                ack_is_final,
                reply,
            })
            .map_err(|_| JanusError::Closed)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Err(_) => Err(JanusError::Timeout(what)),
            Ok(Err(_)) => Err(JanusError::Closed),
            Ok(Ok(reply)) => reply,
        }
    }
}

async fn io_task(
    mut ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    keepalive_session: Arc<AtomicU64>,
) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    let mut keepalives = 0u64;
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Request { transaction, msg, ack_is_final, reply }) => {
                    // Requests that timed out on the caller's side leave entries behind.
                    pending.retain(|_, p| !p.reply.is_closed());
                    if ws.send(Message::text(msg.to_string())).await.is_err() {
                        let _ = reply.send(Err(JanusError::Closed));
                        break;
                    }
                    pending.insert(transaction, Pending { ack_is_final, reply });
                }
                // Close, or the session was dropped without close().
                Some(Cmd::Close) | None => {
                    let _ = ws.close(None).await;
                    break;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(v) => route(v, &mut pending),
                    Err(e) => tracing::warn!(error = %e, "janus: unparsable message"),
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = keepalive.tick() => {
                let session = keepalive_session.load(Ordering::Relaxed);
                if session != 0 {
                    keepalives += 1;
                    let msg = json!({
                        "janus": "keepalive",
                        "session_id": session,
                        "transaction": format!("k{keepalives}"),
                    });
                    if ws.send(Message::text(msg.to_string())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    for (_, p) in pending.drain() {
        let _ = p.reply.send(Err(JanusError::Closed));
    }
}

/// Hand a message to the request waiting on its transaction, or log it.
fn route(msg: Value, pending: &mut HashMap<String, Pending>) {
    tracing::trace!(%msg, "janus: received");
    let kind = msg.get("janus").and_then(Value::as_str).unwrap_or("");
    let waiting = msg
        .get("transaction")
        .and_then(Value::as_str)
        .filter(|t| pending.contains_key(*t))
        .map(str::to_owned);
    match (kind, waiting) {
        ("ack", Some(t)) => {
            if pending.get(&t).is_some_and(|p| p.ack_is_final)
                && let Some(p) = pending.remove(&t)
            {
                let _ = p.reply.send(Ok(msg));
            }
        }
        ("success" | "event", Some(t)) => {
            if let Some(p) = pending.remove(&t) {
                let _ = p.reply.send(Ok(msg));
            }
        }
        ("error", Some(t)) => {
            if let Some(p) = pending.remove(&t) {
                let _ = p.reply.send(Err(core_error(&msg)));
            }
        }
        // Session gone: nothing pending will be answered any more.
        ("timeout", _) => {
            tracing::warn!(%msg, "janus: session timed out");
            for (_, p) in pending.drain() {
                let _ = p.reply.send(Err(JanusError::Closed));
            }
        }
        // Keepalive acks, webrtcup, media, slowlink, hangup, other
        // publishers joining or leaving: nothing waits on them.
        _ => tracing::debug!(%msg, "janus: event"),
    }
}

fn jsep(kind: &str, sdp: &str) -> Value {
    json!({ "type": kind, "sdp": sdp, "trickle": false })
}

fn create_room_body(room: u64, max_publishers: u32) -> Value {
    json!({
        "request": "create",
        "room": room,
        "description": format!("stamma-loadtest {room}"),
        "publishers": max_publishers,
        "audiocodec": "opus",
        "videocodec": "vp8",
        "record": false,
        "permanent": false,
        "is_private": false,
    })
}

fn subscribe_body(room: u64, feeds: &[(u64, Option<String>)]) -> Value {
    let streams: Vec<Value> = feeds
        .iter()
        .map(|(f, mid)| match mid {
            Some(m) => json!({ "feed": f, "mid": m }),
            None => json!({ "feed": f }),
        })
        .collect();
    json!({
        "request": "join",
        "ptype": "subscriber",
        "room": room,
        "streams": streams,
    })
}

/// `{"janus":"error","error":{"code":..,"reason":..}}` from the Janus core.
fn core_error(msg: &Value) -> JanusError {
    let err = msg.get("error");
    JanusError::Refused {
        code: err
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
        reason: err
            .and_then(|e| e.get("reason"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

fn plugin_data(msg: &Value) -> Option<&Value> {
    msg.get("plugindata").and_then(|p| p.get("data"))
}

/// The plugin reports its errors inside an otherwise successful reply.
fn plugin_error(msg: &Value) -> Result<(), JanusError> {
    let Some(data) = plugin_data(msg) else {
        return Ok(());
    };
    match data.get("error_code") {
        None => Ok(()),
        Some(code) => Err(JanusError::Refused {
            code: code.as_i64().unwrap_or(0),
            reason: data
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        }),
    }
}

/// `data.id` of a `create`/`attach` success.
fn data_id(msg: &Value) -> Result<u64, JanusError> {
    msg.get("data")
        .and_then(|d| d.get("id"))
        .and_then(Value::as_u64)
        .ok_or_else(|| JanusError::Protocol(format!("no data.id in {msg}")))
}

fn expect_videoroom(msg: &Value, what: &str) -> Result<(), JanusError> {
    let got = plugin_data(msg)
        .and_then(|d| d.get("videoroom"))
        .and_then(Value::as_str);
    if got == Some(what) {
        Ok(())
    } else {
        Err(JanusError::Protocol(format!(
            "expected videoroom {what:?}, got {msg}"
        )))
    }
}

fn jsep_sdp(msg: &Value, kind: &str) -> Result<String, JanusError> {
    let jsep = msg
        .get("jsep")
        .ok_or_else(|| JanusError::Protocol(format!("no jsep in {msg}")))?;
    if jsep.get("type").and_then(Value::as_str) != Some(kind) {
        return Err(JanusError::Protocol(format!(
            "expected a jsep {kind}: {msg}"
        )));
    }
    jsep.get("sdp")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| JanusError::Protocol(format!("jsep without sdp: {msg}")))
}

fn parse_published(msg: &Value) -> Result<(u64, String), JanusError> {
    expect_videoroom(msg, "joined")?;
    let id = plugin_data(msg)
        .and_then(|d| d.get("id"))
        .and_then(Value::as_u64)
        .ok_or_else(|| JanusError::Protocol(format!("joined without id: {msg}")))?;
    Ok((id, jsep_sdp(msg, "answer")?))
}

fn parse_publishers(msg: &Value) -> Result<Vec<u64>, JanusError> {
    expect_videoroom(msg, "participants")?;
    let list = plugin_data(msg)
        .and_then(|d| d.get("participants"))
        .and_then(Value::as_array)
        .ok_or_else(|| JanusError::Protocol(format!("no participants list: {msg}")))?;
    Ok(list
        .iter()
        .filter(|p| p.get("publisher").and_then(Value::as_bool) == Some(true))
        .filter_map(|p| p.get("id").and_then(Value::as_u64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(ack_is_final: bool) -> (Pending, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (
            Pending {
                ack_is_final,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn ack_then_event_resolves_on_the_event() {
        let mut map = HashMap::new();
        let (p, mut rx) = pending(false);
        map.insert("t1".to_owned(), p);
        route(
            json!({"janus":"ack","session_id":1,"transaction":"t1"}),
            &mut map,
        );
        assert!(rx.try_recv().is_err(), "an ack must not answer a message");
        route(
            json!({"janus":"webrtcup","session_id":1,"sender":2}),
            &mut map,
        );
        route(
            json!({"janus":"event","transaction":"other","plugindata":{"data":{}}}),
            &mut map,
        );
        route(
            json!({"janus":"event","transaction":"t1","plugindata":{"data":{"videoroom":"attached"}}}),
            &mut map,
        );
        let got = rx.try_recv().ok().and_then(Result::ok);
        assert!(got.is_some_and(|v| expect_videoroom(&v, "attached").is_ok()));
        assert!(map.is_empty());
    }

    #[test]
    fn ack_is_final_for_bare_requests() {
        let mut map = HashMap::new();
        let (p, mut rx) = pending(true);
        map.insert("t9".to_owned(), p);
        route(json!({"janus":"ack","transaction":"t9"}), &mut map);
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
    }

    #[test]
    fn core_error_is_refused() {
        let mut map = HashMap::new();
        let (p, mut rx) = pending(false);
        map.insert("t2".to_owned(), p);
        route(
            json!({"janus":"error","transaction":"t2","error":{"code":458,"reason":"No such session 5"}}),
            &mut map,
        );
        match rx.try_recv() {
            Ok(Err(JanusError::Refused { code, reason })) => {
                assert_eq!(code, 458);
                assert_eq!(reason, "No such session 5");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_timeout_fails_pending() {
        let mut map = HashMap::new();
        let (p, mut rx) = pending(false);
        map.insert("t3".to_owned(), p);
        route(json!({"janus":"timeout","session_id":1}), &mut map);
        assert!(matches!(rx.try_recv(), Ok(Err(JanusError::Closed))));
    }

    #[test]
    fn plugin_error_is_refused() {
        let msg = json!({"janus":"success","plugindata":{"plugin":VIDEOROOM,
            "data":{"videoroom":"event","error_code":427,"error":"Room 1234 already exists"}}});
        assert!(matches!(
            plugin_error(&msg),
            Err(JanusError::Refused {
                code: ERROR_ROOM_EXISTS,
                ..
            })
        ));
        let ok = json!({"janus":"success","plugindata":{"data":{"videoroom":"created","room":1}}});
        assert!(plugin_error(&ok).is_ok());
    }

    #[test]
    fn parses_joined_with_answer() {
        let msg = json!({"janus":"event","sender":7,"transaction":"t4",
            "plugindata":{"plugin":VIDEOROOM,"data":{"videoroom":"joined","room":1,
                "id":4242,"private_id":99,"publishers":[]}},
            "jsep":{"type":"answer","sdp":"v=0\r\n"}});
        let (id, sdp) = parse_published(&msg).expect("joined parses");
        assert_eq!(id, 4242);
        assert_eq!(sdp, "v=0\r\n");
        let no_jsep = json!({"janus":"event","plugindata":{"data":{"videoroom":"joined","id":1}}});
        assert!(matches!(
            parse_published(&no_jsep),
            Err(JanusError::Protocol(_))
        ));
    }

    #[test]
    fn parses_publishers_only() {
        let msg = json!({"janus":"success","plugindata":{"data":{"videoroom":"participants",
            "room":1,"participants":[
                {"id":1,"display":"a","publisher":true},
                {"id":2,"display":"b","publisher":false},
                {"id":3,"publisher":true,"talking":false}]}}});
        assert_eq!(parse_publishers(&msg).ok(), Some(vec![1, 3]));
    }

    #[test]
    fn builds_bodies() {
        let b = subscribe_body(5, &[(1, None), (2, None)]);
        assert_eq!(b["ptype"], "subscriber");
        assert_eq!(b["streams"], json!([{"feed":1},{"feed":2}]));
        let c = create_room_body(5, 50);
        assert_eq!(c["publishers"], 50);
        assert_eq!(c["videocodec"], "vp8");
        assert_eq!(c["record"], false);
        assert_eq!(jsep("offer", "x")["trickle"], false);
    }
}
