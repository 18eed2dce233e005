//! The `stamma` binary's commands, run for real.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stamma::ApiKeys;
use stamma_proto::Role;

const BIN: &str = env!("CARGO_BIN_EXE_stamma");
const KEY: &str = "cli_key";
const SECRET: &str = "cli-secret-cli-secret-cli-secret-123";

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keys() -> ApiKeys {
    let mut k = ApiKeys::default();
    k.insert(KEY, SECRET).unwrap();
    k
}

fn healthz(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

#[test]
fn token_create_prints_a_token_the_server_accepts() {
    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--room",
            "council",
            "--identity",
            "anna",
            "--name",
            "Anna",
            "--role",
            "attendee",
            "--ttl",
            "90m",
        ])
        .env("STAMMA_API_KEY", KEY)
        .env("STAMMA_API_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let g = keys().verify(token.trim()).expect("valid token");
    assert_eq!(
        (g.room.as_str(), g.sub.as_str(), g.role),
        ("council", "anna", Role::Attendee)
    );
    assert_eq!(g.name.as_deref(), Some("Anna"));
    assert!(!g.can_publish());
    let ttl = g.exp - g.iat;
    assert!((5390..=5410).contains(&ttl), "ttl {ttl}");
}

#[test]
fn token_create_admin_mints_a_node_wide_admin_token() {
    let mint = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["token", "create", "--admin"])
            .args(extra)
            .env("STAMMA_API_KEY", KEY)
            .env("STAMMA_API_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        keys()
            .verify(String::from_utf8(out.stdout).unwrap().trim())
            .expect("valid token")
    };
    let g = mint(&[]);
    assert!(g.is_node_admin() && g.may_administer("any"));
    assert_eq!((g.room.as_str(), g.sub.as_str()), ("*", "admin"));
    // With --room it administers that room only.
    let g = mint(&["--room", "council", "--identity", "clerk"]);
    assert!(g.may_administer("council") && !g.may_administer("other"));
}

#[test]
fn token_create_without_a_key_explains_what_is_missing() {
    let out = Command::new(BIN)
        .args(["token", "create", "--room", "r", "--identity", "i"])
        .env_remove("STAMMA_API_KEY")
        .env_remove("STAMMA_API_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STAMMA_API_KEY"));
    let out = Command::new(BIN)
        .args([
            "token",
            "create",
            "--room",
            "r",
            "--identity",
            "i",
            "--role",
            "king",
        ])
        .env("STAMMA_API_KEY", KEY)
        .env("STAMMA_API_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}

#[test]
fn dev_prints_working_join_links() {
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--http",
            "127.0.0.1:0",
            "--media-port",
            "0",
            "--room",
            "standup",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut secret_lines = 0;
    let link = loop {
        let line = lines.next().expect("dev output ended").unwrap();
        if line.contains("API secret:") {
            secret_lines += 1;
        }
        if let Some(l) = line.strip_prefix("Join as host:") {
            break l.trim().to_owned();
        }
    };
    assert_eq!(secret_lines, 1);
    let rest = link.strip_prefix("http://").expect("http link");
    let (addr, path) = rest.split_once('/').unwrap();
    assert!(path.starts_with("r/standup?token="), "{path}");
    assert!(addr.starts_with("127.0.0.1:"));
    assert!(healthz(addr).is_some());
}

#[test]
fn serve_reads_its_config_file() {
    let dir = std::env::temp_dir().join(format!("stamma-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.join("stamma.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nbind = \"127.0.0.1:{port}\"\n[media]\nbind_ip = \"127.0.0.1\"\nport = 0\nworkers = 1\n[[keys]]\nid = \"{KEY}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .env_remove("STAMMA_API_KEY")
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some(b) = healthz(&addr) {
            break b;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("\"workers\":1"), "{body}");

    // A bad config is refused with a reason.
    std::fs::write(
        &cfg,
        "[media]\nbind_ip = \"0.0.0.0\"\n[[keys]]\nid = \"k\"\nsecret = \"short\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than"));
    let _ = std::fs::remove_dir_all(&dir);
}
