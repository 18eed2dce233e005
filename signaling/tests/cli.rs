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
    let guest = lines.next().expect("guest line").unwrap();
    assert!(guest.starts_with("Join as guest: http://"), "{guest}");
    let attendee = lines.next().expect("attendee line").unwrap();
    let attendee = attendee
        .strip_prefix("Join as attendee: ")
        .expect("attendee line after the guest line");
    assert!(attendee.contains("/r/standup?token="), "{attendee}");
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

fn link_create(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["link", "create"])
        .args(args)
        .env("STAMMA_API_KEY", KEY)
        .env("STAMMA_API_SECRET", SECRET)
        .output()
        .unwrap()
}

/// The token of a printed link, checked against `base` and `room_segment`.
fn link_token(out: &std::process::Output, base: &str, room_segment: &str) -> stamma_proto::Grant {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(url.lines().count(), 1, "{url}");
    let prefix = format!("{base}/r/{room_segment}?token=");
    let token = url
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url}"));
    keys().verify(token).expect("valid token")
}

#[test]
fn link_create_prints_a_shared_attendee_link_by_default() {
    let g = link_token(
        &link_create(&["--room", "Öppet möte", "--ttl", "30m"]),
        "http://127.0.0.1:7880",
        "%C3%96ppet%20m%C3%B6te",
    );
    assert_eq!(
        (g.room.as_str(), g.sub.as_str(), g.role),
        ("Öppet möte", "guest", Role::Attendee)
    );
    assert!(g.shared && !g.can_publish());
    assert!((1790..=1810).contains(&(g.exp - g.iat)));

    let g = link_token(
        &link_create(&[
            "--room",
            "r",
            "--role",
            "host",
            "--url",
            "https://meet.example.org/",
        ]),
        "https://meet.example.org",
        "r",
    );
    assert!(g.shared && g.sub == "host" && g.grants.admin);

    let g = link_token(
        &link_create(&[
            "--room",
            "r",
            "--role",
            "speaker",
            "--identity",
            "anna",
            "--name",
            "Anna",
        ]),
        "http://127.0.0.1:7880",
        "r",
    );
    assert!(!g.shared && g.sub == "anna" && g.can_publish());
    assert_eq!(g.name.as_deref(), Some("Anna"));

    let out = link_create(&["--room", "r", "--url", "meet.example.org"]);
    assert!(!out.status.success());
}

#[test]
fn link_create_takes_key_and_public_url_from_the_config() {
    let dir = std::env::temp_dir().join(format!("stamma-cli-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("stamma.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\npublic_url = \"https://hearing.example.org\"\n[[keys]]\nid = \"{KEY}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["link", "create", "--room", "council", "--config"])
        .arg(&cfg)
        .env_remove("STAMMA_API_KEY")
        .env_remove("STAMMA_API_SECRET")
        .output()
        .unwrap();
    let g = link_token(&out, "https://hearing.example.org", "council");
    assert_eq!(g.iss, KEY);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A base64url room secret can begin with '-' (one in 64): `link create`
/// takes it as the value, not as an unknown flag.
#[test]
fn link_create_takes_an_e2ee_secret_that_begins_with_a_hyphen() {
    let secret = format!("-{}", "A".repeat(42));
    let out = link_create(&["--room", "r", "--e2ee-secret", &secret]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap();
    assert!(url.trim().ends_with(&format!("#e2ee={secret}")), "{url}");
}
