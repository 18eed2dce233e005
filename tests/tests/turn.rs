//! TURN for locked-down networks: a real coturn on loopback with a shared
//! secret; the server hands out TURN REST credentials in `joined`, and a
//! participant restricted to relay candidates (as a browser with
//! `iceTransportPolicy: "relay"`) still meets the others through the relay.
//! Needs Debian's `coturn` (`./scripts/test` installs it).

use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use stamma::turn::TurnServer;
use stamma_proto::Role;
use stamma_tests::{Publish, Route, TestParticipant, TestServer, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const RELAY_ONLY: Route = Route {
    via: None,
    relay_only: true,
    tcp_only: false,
};

const SECRET: &str = "coturn-shared-secret-for-tests";

struct Coturn {
    _child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Coturn {
    /// coturn on 127.0.0.1 with `secret`, relaying on loopback only; ready
    /// once it answers a STUN binding request. The port is picked free and
    /// released before coturn binds it, so another socket can take it (or
    /// the next one, coturn's alternate port) in between: once in CI coturn
    /// never answered. A few fresh ports are tried; the error carries
    /// coturn's log.
    async fn start(secret: &str) -> anyhow::Result<Coturn> {
        let mut last = None;
        for _ in 0..3 {
            let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
            match Coturn::start_on(secret, port).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("coturn was not started")))
    }

    async fn start_on(secret: &str, port: u16) -> anyhow::Result<Coturn> {
        let bin = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("coturn's turnserver is not installed (apt-get install coturn; ./scripts/test does)")?;
        let mut child = Command::new(bin)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                // Above Linux's ephemeral range, so no test socket holds them.
                "--min-port=61001",
                "--max-port=61400",
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=stamma.test",
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-tcp-relay",
                "--fingerprint",
                "--simple-log",
                "--log-file=stdout",
                "--verbose",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting turnserver")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(l);
                }
            });
        }
        // A STUN binding request (RFC 8489): type 0x0001, length 0, magic cookie, id.
        let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(b"stammaprobe1");
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        let mut buf = [0u8; 512];
        for _ in 0..100 {
            if let Some(status) = child.try_wait()? {
                bail!("turnserver exited with {status}");
            }
            probe.send_to(&req, to).await?;
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), probe.recv_from(&mut buf)).await
                && n >= 20
                && buf[..2] == [0x01, 0x01]
            {
                return Ok(Coturn {
                    _child: child,
                    port,
                    log,
                });
            }
        }
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        let tail = log[log.len().saturating_sub(20)..].join("\n");
        bail!("turnserver did not answer STUN on 127.0.0.1:{port}; its log ends:\n{tail}")
    }

    fn logged(&self, f: impl Fn(&str) -> bool) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| f(l))
    }
}

async fn server_with_turn(coturn: &Coturn) -> anyhow::Result<TestServer> {
    let turn = TurnServer::new(
        vec![format!("turn:127.0.0.1:{}?transport=udp", coturn.port)],
        SECRET.to_owned(),
        Duration::from_secs(3600),
    )?;
    TestServer::start_with(1, move |c| c.turn = vec![turn]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_participant_meets_others_through_coturn() -> anyhow::Result<()> {
    let coturn = Coturn::start(SECRET).await?;
    let srv = server_with_turn(&coturn).await?;
    let tone = |hz| Publish {
        tone_hz: Some(hz),
        video: false,
        ..Publish::default()
    };
    let alice = TestParticipant::join_with(
        &srv.base,
        "locked-down",
        "alice",
        Role::Speaker,
        tone(440.0),
        RELAY_ONLY,
    )
    .await?;
    let bob =
        TestParticipant::join(&srv.base, "locked-down", "bob", Role::Speaker, tone(660.0)).await?;

    wait_until(
        Duration::from_secs(30),
        "audio both ways through the relay",
        || alice.heard_frequency(&bob.id).is_some() && bob.heard_frequency(&alice.id).is_some(),
    )
    .await?;
    let (a, b) = (
        alice.heard_frequency(&bob.id),
        bob.heard_frequency(&alice.id),
    );
    assert!(
        a.is_some_and(|f| (f - 660.0).abs() < 20.0),
        "alice heard {a:?}"
    );
    assert!(
        b.is_some_and(|f| (f - 440.0).abs() < 20.0),
        "bob heard {b:?}"
    );

    // The relay really carried alice: coturn granted her an allocation under
    // the time-limited username the server minted for her participant id.
    let user = format!(":{}", alice.id);
    assert!(
        coturn.logged(|l| l.contains(&user) && l.contains("ALLOCATE") && l.contains("success")),
        "no successful allocation for alice in coturn's log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_another_secret_are_refused_by_coturn() -> anyhow::Result<()> {
    let coturn = Coturn::start("a-different-secret-0123456789").await?;
    let srv = server_with_turn(&coturn).await?;
    let alice = TestParticipant::join_with(
        &srv.base,
        "wrong-secret",
        "alice",
        Role::Speaker,
        Publish {
            tone_hz: Some(440.0),
            video: false,
            ..Publish::default()
        },
        RELAY_ONLY,
    )
    .await?;
    let user = format!(":{}", alice.id);
    let refused = wait_until(
        Duration::from_secs(15),
        "coturn refusing alice's allocation",
        || coturn.logged(|l| l.contains(&user) && l.contains("error 401")),
    )
    .await;
    if refused.is_err() {
        eprintln!(
            "{}",
            coturn
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .join("\n")
        );
    }
    refused?;
    assert!(!coturn.logged(|l| l.contains(&user) && l.contains("success")));
    Ok(())
}
