//! The server under test: started here (`--spawn`) or already running, and
//! its CPU time and memory read from `/proc/<pid>` once a second.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ) on
/// every architecture that matters here.
const TICKS_PER_SEC: f64 = 100.0;

/// A `stamma` process this tool started; killed when dropped.
pub struct SpawnedServer {
    pub child: Child,
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    pub pid: u32,
    dir: PathBuf,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `stamma` binary: the one given, else the one beside this tool.
pub fn find_stamma(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let mut dirs = vec![me.parent().map(Path::to_path_buf)];
    // Test binaries live one level down, in deps/.
    dirs.push(me.parent().and_then(Path::parent).map(Path::to_path_buf));
    for d in dirs.into_iter().flatten() {
        let p = d.join("stamma");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no `stamma` binary beside {}; build it (cargo build -p stamma) or pass --stamma-bin",
        me.display()
    )
}

/// How to configure a spawned server's media plane.
#[derive(Debug, Clone, Copy)]
pub struct SpawnOptions {
    /// Media workers (default: one per core).
    pub workers: Option<usize>,
    /// `media.allocator`: false forwards every track's top layer to every
    /// subscriber (the baseline the allocator is compared with).
    pub allocator: bool,
    /// `media.bwe_initial_kbps` (default: the server's).
    pub bwe_initial_kbps: Option<u32>,
}

/// Environment variables that would override what the spawned server's
/// config file says about the media plane; removed, so the report's
/// statement of how the server ran is true.
const MEDIA_ENV: [&str; 2] = ["STAMMA_MEDIA_ALLOCATOR", "STAMMA_MEDIA_BWE_INITIAL_KBPS"];

/// The spawned server's config file.
fn config_toml(http_port: u16, opts: &SpawnOptions, api_key: &str, secret: &str) -> String {
    let mut config = format!(
        "[http]\nbind = \"127.0.0.1:{http_port}\"\n\n[media]\nbind_ip = \"127.0.0.1\"\nport = 0\nmax_participants_per_room = 1000\n"
    );
    if let Some(w) = opts.workers {
        config.push_str(&format!("workers = {w}\n"));
    }
    // Only the non-default is written: a server built before the setting
    // existed still starts with the default.
    if !opts.allocator {
        config.push_str("allocator = false\n");
    }
    if let Some(k) = opts.bwe_initial_kbps {
        config.push_str(&format!("bwe_initial_kbps = {k}\n"));
    }
    config.push_str(&format!(
        "\n[[keys]]\nid = \"{api_key}\"\nsecret = \"{secret}\"\n"
    ));
    config
}

/// Start `stamma serve` on loopback with a fresh key, and wait until it is up.
pub async fn spawn(bin: &Path, opts: &SpawnOptions) -> anyhow::Result<SpawnedServer> {
    let http_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!(
        "stamma-loadtest-{}-{http_port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let secret = stamma_proto::random_token(48);
    let api_key = "loadtest".to_string();
    let config = config_toml(http_port, opts, &api_key, &secret);
    let path = dir.join("stamma.toml");
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join("stamma.log"))?;
    let mut cmd = Command::new(bin);
    for v in MEDIA_ENV {
        cmd.env_remove(v);
    }
    let child = cmd
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env(
            "RUST_LOG",
            std::env::var("STAMMA_LOG").unwrap_or_else(|_| "warn".into()),
        )
        // The server logs to stdout (tracing's default) and panics to stderr.
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("server exited at once")?;
    let server = SpawnedServer {
        child,
        url: format!("http://127.0.0.1:{http_port}"),
        api_key,
        api_secret: secret,
        pid,
        dir,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
    for _ in 0..300 {
        if healthz(addr).await {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(server.dir.join("stamma.log")).unwrap_or_default();
    bail!("stamma did not become ready within 15 s; its log:\n{log}")
}

async fn healthz(addr: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.is_ok() && buf.ends_with(b"200")
}

/// CPU seconds used so far and resident memory now (MiB), of `pid`.
pub fn sample(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(((utime + stime) as f64 / TICKS_PER_SEC, rss_kb / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_says_allocator_off_only_when_asked() {
        let mut o = SpawnOptions {
            workers: Some(2),
            allocator: true,
            bwe_initial_kbps: None,
        };
        let on = config_toml(8080, &o, "k", "s");
        assert!(on.contains("workers = 2\n") && !on.contains("allocator"));
        o.allocator = false;
        o.bwe_initial_kbps = Some(800);
        let off = config_toml(8080, &o, "k", "s");
        let media = &off[off.find("[media]").unwrap_or(0)..off.find("[[keys]]").unwrap_or(0)];
        assert!(media.contains("allocator = false\n"), "{off}");
        assert!(media.contains("bwe_initial_kbps = 800\n"), "{off}");
    }

    #[test]
    fn samples_this_process() {
        let (cpu, rss) = sample(std::process::id()).expect("/proc");
        assert!(cpu >= 0.0);
        assert!(rss > 1.0, "{rss} MiB");
        assert!(sample(u32::MAX).is_none());
    }
}
