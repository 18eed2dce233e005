//! The HTTP listener with TLS (rustls): HTTPS to the API and health
//! endpoints with a certificate the client trusts, plain HTTP refused, a
//! client that never finishes its handshake holds up no one, and a broken
//! certificate stops the start with the file named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use stamma::config::TlsFiles;
use stamma_tests::{TestServer, http_get};

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files.
fn certificate(dir: &Path) -> anyhow::Result<(TlsFiles, Vec<u8>)> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, pem("CERTIFICATE", ck.cert.der()))?;
    std::fs::write(&key, pem("PRIVATE KEY", &ck.signing_key.serialize_der()))?;
    Ok((TlsFiles { cert, key }, ck.cert.der().to_vec()))
}

fn temp_dir(name: &str) -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("stamma-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_plain_http_is_refused() -> anyhow::Result<()> {
    let dir = temp_dir("ok")?;
    let (files, der) = certificate(&dir)?;
    let srv = TestServer::start_with(1, move |c| c.tls = Some(files)).await?;
    let addr = srv.server.http_addr;

    // A client that opens TCP and never says anything holds one handshake
    // slot, not the listener.
    let _stalled = tokio::net::TcpStream::connect(addr).await?;

    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&der)?])
        .timeout(Duration::from_secs(10))
        .build()?;
    let r = client
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("https://localhost:{}/readyz", addr.port()))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // The signaling endpoint is there too (a WebSocket needs a token first).
    let r = client
        .get(format!("https://127.0.0.1:{}/rtc", addr.port()))
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tokio::time::timeout(Duration::from_secs(5), http_get(addr, "/healthz")).await;
    assert!(
        !matches!(plain, Ok(Ok((200, _)))),
        "plain HTTP was served on the TLS port"
    );
    // A client that does not trust the certificate is refused by its own TLS.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    assert!(
        untrusting
            .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
            .send()
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_stops_the_start_naming_the_file() -> anyhow::Result<()> {
    let dir = temp_dir("bad")?;
    let (mut files, _) = certificate(&dir)?;
    std::fs::write(&files.cert, "not a certificate")?;
    let cert = files.cert.clone();
    let r = TestServer::start_with(1, move |c| c.tls = Some(files.clone())).await;
    let e = format!(
        "{:#}",
        r.err()
            .ok_or_else(|| anyhow::anyhow!("started with a broken certificate"))?
    );
    assert!(e.contains("tls_cert"), "{e}");
    assert!(
        e.contains(&cert.display().to_string()) || e.contains("no certificate"),
        "{e}"
    );

    files = certificate(&dir)?.0;
    std::fs::write(&files.key, "")?;
    let r = TestServer::start_with(1, move |c| c.tls = Some(files)).await;
    assert!(r.is_err(), "started without a private key");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
