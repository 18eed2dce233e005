//! Server configuration: one TOML file, every key overridable by `STAMMA_*`
//! environment variables (see `deploy/stamma.example.toml`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use stamma_sfu::SfuConfig;

use crate::keys::ApiKeys;
use crate::turn::TurnServer;
use crate::webhook::{Delivery, Endpoint};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http_addr: SocketAddr,
    pub media: SfuConfig,
    pub keys: ApiKeys,
    /// Signaling session limits (timeouts, message rate).
    pub limits: crate::session::Limits,
    /// TURN servers whose credentials clients get in `joined`.
    pub turn: Vec<TurnServer>,
    /// Where room, participant and track events are POSTed.
    pub webhooks: Vec<Endpoint>,
    pub webhook_delivery: Delivery,
    /// Base URL of join links made by the admin API and `stamma link create --config` (`http.public_url`).
    pub public_url: Option<String>,
    /// Serve HTTPS (and WSS) with this certificate instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// How long a drain waits for rooms to empty before closing them.
    pub drain_timeout: Duration,
    pub log: LogConfig,
}

/// PEM files of the HTTP listener's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Default of `[server] drain_timeout_s`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest drain accepted: a day.
const MAX_DRAIN_TIMEOUT_S: u64 = 86_400;

/// How `stamma serve` logs. `RUST_LOG`, when set, wins over `level`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, or `warn,stamma=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?} (use text or json)")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    media: MediaSection,
    #[serde(default)]
    keys: Vec<KeySection>,
    #[serde(default)]
    turn: Vec<TurnSection>,
    #[serde(default)]
    webhooks: Vec<WebhookSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    log: LogSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    drain_timeout_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_rooms: Option<usize>,
    max_message_bytes: Option<usize>,
    messages_per_second: Option<f64>,
    message_burst: Option<f64>,
    join_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnSection {
    urls: Vec<String>,
    secret: String,
    ttl_s: Option<u64>,
}

/// Long enough for a working day's meeting: coturn checks the expiry on every
/// allocation refresh, so a credential that lapses mid-meeting drops the relay.
const DEFAULT_TURN_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    bind: Option<SocketAddr>,
    public_url: Option<String>,
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaSection {
    bind_ip: Option<IpAddr>,
    public_ip: Option<IpAddr>,
    port: Option<u16>,
    workers: Option<usize>,
    max_participants_per_room: Option<usize>,
    allocator: Option<bool>,
    load_shedding: Option<bool>,
    silence_gate: Option<bool>,
    opus_dtx: Option<bool>,
    bwe_initial_kbps: Option<u32>,
    ice_tcp: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySection {
    id: String,
    secret: String,
}

/// Where `STAMMA_*` overrides come from: the process environment, or a
/// map in tests (so they need not mutate the shared environment).
/// Both or neither: a certificate without its key (or the reverse) is a
/// mistake worth stopping for, not a reason to serve plain HTTP.
fn tls_files(
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    cert_name: &str,
    key_name: &str,
) -> anyhow::Result<Option<TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("{cert_name} is set but {key_name} is not: set both for TLS"),
        (None, Some(_)) => bail!("{key_name} is set but {cert_name} is not: set both for TLS"),
    }
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn env<T: std::str::FromStr>(vars: Lookup, name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match vars(name) {
        Some(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(None),
    }
}

fn drain_timeout(key: &str, seconds: u64) -> anyhow::Result<Duration> {
    if seconds > MAX_DRAIN_TIMEOUT_S {
        bail!("{key} = {seconds}: at most {MAX_DRAIN_TIMEOUT_S} s (a day)");
    }
    Ok(Duration::from_secs(seconds))
}

impl ServerConfig {
    /// Defaults for `stamma dev`: loopback only.
    pub fn dev() -> ServerConfig {
        ServerConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7880)),
            media: SfuConfig::default(),
            keys: ApiKeys::default(),
            limits: crate::session::Limits::default(),
            turn: Vec::new(),
            webhooks: Vec::new(),
            webhook_delivery: Delivery::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            log: LogConfig::default(),
            public_url: None,
            tls: None,
        }
    }

    /// Read a config file, then apply `STAMMA_*` overrides.
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("config {}", path.display()))
    }

    /// A config file's text, then `STAMMA_*` overrides.
    pub fn from_toml(text: &str) -> anyhow::Result<ServerConfig> {
        Self::from_toml_with(text, &process_env)
    }

    fn from_toml_with(text: &str, vars: Lookup) -> anyhow::Result<ServerConfig> {
        let file: FileConfig = toml::from_str(text).context("parsing")?;
        let mut c = ServerConfig::dev();
        c.http_addr = file
            .http
            .bind
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7880)));
        c.public_url = file.http.public_url;
        c.tls = tls_files(
            file.http.tls_cert,
            file.http.tls_key,
            "http.tls_cert",
            "http.tls_key",
        )?;
        c.media.bind_ip = file.media.bind_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        c.media.public_ip = file.media.public_ip;
        if let Some(p) = file.media.port {
            c.media.first_port = p;
        }
        if let Some(w) = file.media.workers {
            c.media.workers = w;
        }
        if let Some(m) = file.media.max_participants_per_room {
            c.media.max_participants_per_room = m;
        }
        if let Some(a) = file.media.allocator {
            c.media.allocator = a;
        }
        if let Some(l) = file.media.load_shedding {
            c.media.load_shedding = l;
        }
        if let Some(g) = file.media.silence_gate {
            c.media.silence_gate = g;
        }
        if let Some(d) = file.media.opus_dtx {
            c.media.opus_dtx = d;
        }
        if let Some(k) = file.media.bwe_initial_kbps {
            c.media.bwe_initial_kbps = k;
        }
        if let Some(t) = file.media.ice_tcp {
            c.media.ice_tcp = t;
        }
        for k in &file.keys {
            c.keys.insert(&k.id, &k.secret)?;
        }
        let l = &file.limits;
        if let Some(v) = l.max_rooms {
            c.limits.max_rooms = v;
        }
        if let Some(v) = l.max_message_bytes {
            c.limits.max_message_bytes = v;
        }
        if let Some(v) = l.messages_per_second {
            c.limits.rate_per_sec = v;
        }
        if let Some(v) = l.message_burst {
            c.limits.burst = v;
        }
        if let Some(v) = l.join_timeout_s {
            c.limits.join_timeout = Duration::from_secs(v);
        }
        if let Some(v) = l.idle_timeout_s {
            c.limits.idle_timeout = Duration::from_secs(v);
        }
        for (i, w) in file.webhooks.into_iter().enumerate() {
            c.webhooks
                .push(Endpoint::new(w.url, w.secret).with_context(|| format!("webhooks[{i}]"))?);
        }
        for (i, t) in file.turn.into_iter().enumerate() {
            let ttl = t.ttl_s.map_or(DEFAULT_TURN_TTL, Duration::from_secs);
            c.turn.push(
                TurnServer::new(t.urls, t.secret, ttl).with_context(|| format!("turn[{i}]"))?,
            );
        }
        if let Some(s) = file.server.drain_timeout_s {
            c.drain_timeout = drain_timeout("server.drain_timeout_s", s)?;
        }
        if let Some(f) = file.log.format {
            c.log.format = f;
        }
        if let Some(l) = file.log.level {
            c.log.level = l;
        }
        c.apply_env_from(vars)?;
        c.validate()?;
        Ok(c)
    }

    pub fn apply_env(&mut self) -> anyhow::Result<()> {
        self.apply_env_from(&process_env)
    }

    fn apply_env_from(&mut self, vars: Lookup) -> anyhow::Result<()> {
        if let Some(v) = env(vars, "STAMMA_HTTP_BIND")? {
            self.http_addr = v;
        }
        if let Some(v) = env(vars, "STAMMA_LIMITS_MAX_ROOMS")? {
            self.limits.max_rooms = v;
        }
        if let Some(v) = env(vars, "STAMMA_LIMITS_MAX_MESSAGE_BYTES")? {
            self.limits.max_message_bytes = v;
        }
        if let Some(v) = env(vars, "STAMMA_LIMITS_MESSAGES_PER_SECOND")? {
            self.limits.rate_per_sec = v;
        }
        if let Some(v) = env(vars, "STAMMA_LIMITS_MESSAGE_BURST")? {
            self.limits.burst = v;
        }
        if let Some(v) = env::<u64>(vars, "STAMMA_LIMITS_JOIN_TIMEOUT_S")? {
            self.limits.join_timeout = Duration::from_secs(v);
        }
        if let Some(v) = env::<u64>(vars, "STAMMA_LIMITS_IDLE_TIMEOUT_S")? {
            self.limits.idle_timeout = Duration::from_secs(v);
        }
        if let Some(v) = env(vars, "STAMMA_HTTP_PUBLIC_URL")? {
            self.public_url = Some(v);
        }
        let (cert, key) = (
            env::<std::path::PathBuf>(vars, "STAMMA_HTTP_TLS_CERT")?,
            env::<std::path::PathBuf>(vars, "STAMMA_HTTP_TLS_KEY")?,
        );
        if cert.is_some() || key.is_some() {
            let (file_cert, file_key) = match &self.tls {
                Some(t) => (Some(t.cert.clone()), Some(t.key.clone())),
                None => (None, None),
            };
            self.tls = tls_files(
                cert.or(file_cert),
                key.or(file_key),
                "STAMMA_HTTP_TLS_CERT",
                "STAMMA_HTTP_TLS_KEY",
            )?;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_BIND_IP")? {
            self.media.bind_ip = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_PUBLIC_IP")? {
            self.media.public_ip = Some(v);
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_PORT")? {
            self.media.first_port = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_WORKERS")? {
            self.media.workers = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_ALLOCATOR")? {
            self.media.allocator = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_LOAD_SHEDDING")? {
            self.media.load_shedding = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_SILENCE_GATE")? {
            self.media.silence_gate = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_OPUS_DTX")? {
            self.media.opus_dtx = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_BWE_INITIAL_KBPS")? {
            self.media.bwe_initial_kbps = v;
        }
        if let Some(v) = env(vars, "STAMMA_MEDIA_ICE_TCP")? {
            self.media.ice_tcp = v;
        }
        if let Some(v) = env(vars, "STAMMA_SERVER_DRAIN_TIMEOUT_S")? {
            self.drain_timeout = drain_timeout("STAMMA_SERVER_DRAIN_TIMEOUT_S", v)?;
        }
        if let Some(v) = env(vars, "STAMMA_LOG_FORMAT")? {
            self.log.format = v;
        }
        if let Some(v) = env::<String>(vars, "STAMMA_LOG_LEVEL")? {
            self.log.level = v;
        }
        if let (Some(id), Some(secret)) = (vars("STAMMA_API_KEY"), vars("STAMMA_API_SECRET")) {
            self.keys.insert(&id, &secret)?;
        }
        if let (Some(url), Some(secret)) =
            (vars("STAMMA_WEBHOOK_URL"), vars("STAMMA_WEBHOOK_SECRET"))
        {
            self.webhooks.push(
                Endpoint::new(url, secret).context("STAMMA_WEBHOOK_URL / STAMMA_WEBHOOK_SECRET")?,
            );
        }
        if let (Some(urls), Some(secret)) = (vars("STAMMA_TURN_URLS"), vars("STAMMA_TURN_SECRET")) {
            let urls = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            let ttl = env::<u64>(vars, "STAMMA_TURN_TTL_S")?
                .map_or(DEFAULT_TURN_TTL, Duration::from_secs);
            self.turn.push(
                TurnServer::new(urls, secret, ttl)
                    .context("STAMMA_TURN_URLS / STAMMA_TURN_SECRET")?,
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.keys.is_empty() {
            bail!(
                "no API keys configured: add a [[keys]] entry or set STAMMA_API_KEY and STAMMA_API_SECRET"
            );
        }
        if !(50..=100_000).contains(&self.media.bwe_initial_kbps) {
            bail!("media.bwe_initial_kbps must be between 50 and 100000");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bail!(
                "log.level (STAMMA_LOG_LEVEL) {:?} is not a log filter: {e}",
                self.log.level
            );
        }
        if let Some(u) = &self.public_url
            && !((u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 512
                && u.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!("http.public_url must be an http:// or https:// URL");
        }
        let l = &self.limits;
        if !(4096..=stamma_proto::MAX_SIGNAL_BYTES).contains(&l.max_message_bytes) {
            bail!(
                "limits.max_message_bytes must be between 4096 and {}",
                stamma_proto::MAX_SIGNAL_BYTES
            );
        }
        if !(l.rate_per_sec.is_finite() && (0.1..=10_000.0).contains(&l.rate_per_sec)) {
            bail!("limits.messages_per_second must be between 0.1 and 10000");
        }
        if !(l.burst.is_finite() && (1.0..=100_000.0).contains(&l.burst)) {
            bail!("limits.message_burst must be between 1 and 100000");
        }
        if !(1..=300).contains(&l.join_timeout.as_secs()) {
            bail!("limits.join_timeout_s must be between 1 and 300");
        }
        if !(5..=3600).contains(&l.idle_timeout.as_secs()) {
            bail!("limits.idle_timeout_s must be between 5 and 3600");
        }
        if self.media.workers == 0 {
            bail!("media.workers must be at least 1");
        }
        if self.media.bind_ip.is_unspecified() && self.media.public_ip.is_none() {
            bail!(
                "media.bind_ip is a wildcard address: set media.public_ip to the address clients reach"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[media]
bind_ip = "127.0.0.1"

[[keys]]
id = "k1"
secret = "a-secret-of-at-least-32-bytes-length"
"#;

    fn load(text: &str, vars: &[(&str, &str)]) -> anyhow::Result<ServerConfig> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        ServerConfig::from_toml_with(text, &lookup)
    }

    /// The error and its causes, as `stamma serve` prints them.
    fn message(e: anyhow::Error) -> String {
        format!("{e:#}")
    }

    #[test]
    fn the_example_config_loads() -> anyhow::Result<()> {
        let c = load(include_str!("../../deploy/stamma.example.toml"), &[])?;
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        Ok(())
    }

    #[test]
    fn turn_and_webhooks_come_from_the_file_and_env_adds_one_each() -> anyhow::Result<()> {
        let text = format!(
            "{BASE}\n[[turn]]\nurls = [\"turn:turn.example.eu:3478\"]\nsecret = \"0123456789abcdef\"\nttl_s = 600\n\n[[webhooks]]\nurl = \"https://hooks.example.eu/a\"\nsecret = \"0123456789abcdef\"\n"
        );
        let c = load(&text, &[])?;
        assert_eq!(c.turn.len(), 1);
        assert_eq!(c.turn[0].ttl, Duration::from_secs(600));
        assert_eq!(c.webhooks.len(), 1);
        let c = load(
            &text,
            &[
                ("STAMMA_TURN_URLS", "turn:a:3478, turns:a:5349"),
                ("STAMMA_TURN_SECRET", "fedcba9876543210"),
                ("STAMMA_WEBHOOK_URL", "http://127.0.0.1:9/h"),
                ("STAMMA_WEBHOOK_SECRET", "fedcba9876543210"),
            ],
        )?;
        assert_eq!(c.turn.len(), 2);
        assert_eq!(c.turn[1].urls, vec!["turn:a:3478", "turns:a:5349"]);
        assert_eq!(c.turn[1].ttl, DEFAULT_TURN_TTL);
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.webhooks[1].url, "http://127.0.0.1:9/h");
        Ok(())
    }

    #[test]
    fn tls_needs_both_files_and_env_overrides_either() -> anyhow::Result<()> {
        let both = format!("{BASE}\n[http]\ntls_cert = \"/etc/c.pem\"\ntls_key = \"/etc/k.pem\"\n");
        let c = load(&both, &[])?;
        let t = c.tls.clone().ok_or_else(|| anyhow::anyhow!("no tls"))?;
        assert_eq!(t.cert, std::path::PathBuf::from("/etc/c.pem"));
        let c = load(&both, &[("STAMMA_HTTP_TLS_KEY", "/run/k.pem")])?;
        let t = c.tls.ok_or_else(|| anyhow::anyhow!("no tls"))?;
        assert_eq!(
            (t.cert.to_str(), t.key.to_str()),
            (Some("/etc/c.pem"), Some("/run/k.pem"))
        );
        let half = format!("{BASE}\n[http]\ntls_cert = \"/etc/c.pem\"\n");
        let e = message(load(&half, &[]).map(|_| ()).unwrap_err());
        assert!(e.contains("http.tls_key"), "{e}");
        let e = message(
            load(BASE, &[("STAMMA_HTTP_TLS_CERT", "/c.pem")])
                .map(|_| ())
                .unwrap_err(),
        );
        assert!(e.contains("STAMMA_HTTP_TLS_KEY"), "{e}");
        assert!(load(BASE, &[])?.tls.is_none());
        Ok(())
    }

    #[test]
    fn limits_come_from_the_file_env_wins_and_bad_ones_are_named() -> anyhow::Result<()> {
        let text = format!(
            "{BASE}\n[limits]\nmax_rooms = 40\nmax_message_bytes = 65536\nmessages_per_second = 5\nidle_timeout_s = 30\n"
        );
        let c = load(&text, &[])?;
        assert_eq!(c.limits.max_rooms, 40);
        assert_eq!(c.limits.max_message_bytes, 65536);
        assert_eq!(c.limits.rate_per_sec, 5.0);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
        let c = load(&text, &[("STAMMA_LIMITS_MAX_ROOMS", "7")])?;
        assert_eq!(c.limits.max_rooms, 7);
        for (bad, key) in [
            ("max_message_bytes = 10", "limits.max_message_bytes"),
            ("messages_per_second = 0", "limits.messages_per_second"),
            ("idle_timeout_s = 1", "limits.idle_timeout_s"),
            ("max_rooms = -1", "max_rooms"),
        ] {
            let e = message(
                load(&format!("{BASE}\n[limits]\n{bad}\n"), &[])
                    .map(|_| ())
                    .unwrap_err(),
            );
            assert!(e.contains(key), "{bad}: {e}");
        }
        let e = message(
            load(BASE, &[("STAMMA_LIMITS_MAX_ROOMS", "many")])
                .map(|_| ())
                .unwrap_err(),
        );
        assert!(e.contains("STAMMA_LIMITS_MAX_ROOMS"), "{e}");
        Ok(())
    }

    #[test]
    fn bad_turn_and_webhook_entries_fail_naming_the_key() {
        for (extra, key) in [
            (
                "[[turn]]\nurls = [\"http://x\"]\nsecret = \"0123456789abcdef\"\n",
                "turn[0]",
            ),
            (
                "[[turn]]\nurls = [\"turn:x\"]\nsecret = \"short\"\n",
                "turn[0]",
            ),
            (
                "[[webhooks]]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"\n",
                "webhooks[0]",
            ),
            (
                "[[webhooks]]\nurl = \"https://x\"\nsecret = \"short\"\n",
                "webhooks[0]",
            ),
        ] {
            let e = load(&format!("{BASE}\n{extra}"), &[])
                .map(|_| ())
                .unwrap_err();
            assert!(message(e).contains(key), "{extra}");
        }
        let e = load(
            BASE,
            &[
                ("STAMMA_WEBHOOK_URL", "nope"),
                ("STAMMA_WEBHOOK_SECRET", "0123456789abcdef"),
            ],
        )
        .map(|_| ())
        .unwrap_err();
        assert!(message(e).contains("STAMMA_WEBHOOK_URL"));
    }

    #[test]
    fn opus_dtx_is_on_unless_the_file_or_env_turns_it_off() -> anyhow::Result<()> {
        assert!(load(BASE, &[])?.media.opus_dtx);
        let text = BASE.replace("[media]\n", "[media]\nopus_dtx = false\n");
        assert!(!load(&text, &[])?.media.opus_dtx);
        assert!(
            load(&text, &[("STAMMA_MEDIA_OPUS_DTX", "true")])?
                .media
                .opus_dtx
        );
        assert!(
            !load(BASE, &[("STAMMA_MEDIA_OPUS_DTX", "false")])?
                .media
                .opus_dtx
        );
        Ok(())
    }

    #[test]
    fn drain_and_log_keys_default_when_absent() -> anyhow::Result<()> {
        let c = load(BASE, &[])?;
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.log, LogConfig::default());
        Ok(())
    }

    #[test]
    fn drain_and_log_keys_come_from_the_file_and_env_wins() -> anyhow::Result<()> {
        let text = format!(
            "{BASE}\n[server]\ndrain_timeout_s = 42\n\n[log]\nformat = \"json\"\nlevel = \"warn\"\n"
        );
        let c = load(&text, &[])?;
        assert_eq!(c.drain_timeout, Duration::from_secs(42));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "warn");

        let c = load(
            &text,
            &[
                ("STAMMA_SERVER_DRAIN_TIMEOUT_S", "7"),
                ("STAMMA_LOG_FORMAT", "text"),
                ("STAMMA_LOG_LEVEL", "debug,stamma=trace"),
            ],
        )?;
        assert_eq!(c.drain_timeout, Duration::from_secs(7));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "debug,stamma=trace");
        Ok(())
    }

    #[test]
    fn bad_drain_and_log_values_fail_naming_the_key() {
        // (file, environment, what the error must name)
        type Case = (
            String,
            &'static [(&'static str, &'static str)],
            &'static str,
        );
        let cases: [Case; 7] = [
            (
                format!("{BASE}\n[server]\ndrain_timeout_s = -1\n"),
                &[],
                "drain_timeout_s",
            ),
            (
                format!("{BASE}\n[server]\ndrain_timeout_s = 100000\n"),
                &[],
                "server.drain_timeout_s",
            ),
            (
                format!("{BASE}\n[server]\ndrain_timeout = 5\n"),
                &[],
                "drain_timeout",
            ),
            (format!("{BASE}\n[log]\nformat = \"xml\"\n"), &[], "format"),
            (
                BASE.to_owned(),
                &[("STAMMA_SERVER_DRAIN_TIMEOUT_S", "soon")],
                "STAMMA_SERVER_DRAIN_TIMEOUT_S",
            ),
            (
                BASE.to_owned(),
                &[("STAMMA_LOG_FORMAT", "xml")],
                "STAMMA_LOG_FORMAT",
            ),
            (
                BASE.to_owned(),
                &[("STAMMA_LOG_LEVEL", "stamma=loud")],
                "log.level",
            ),
        ];
        for (text, vars, key) in cases {
            match load(&text, vars) {
                Ok(_) => panic!("accepted {vars:?} with\n{text}"),
                Err(e) => {
                    let m = message(e);
                    assert!(m.contains(key), "error does not name {key}: {m}");
                }
            }
        }
    }
}
