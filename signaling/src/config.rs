//! Server configuration: one TOML file, every key overridable by `STAMMA_*`
//! environment variables (see `deploy/stamma.example.toml`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use stamma_sfu::SfuConfig;

use crate::keys::ApiKeys;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http_addr: SocketAddr,
    pub media: SfuConfig,
    pub keys: ApiKeys,
    /// Signaling session limits (timeouts, message rate).
    pub limits: crate::session::Limits,
    /// Base URL of join links made by the admin API (`http.public_url`).
    pub public_url: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    bind: Option<SocketAddr>,
    public_url: Option<String>,
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
    bwe_initial_kbps: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySection {
    id: String,
    secret: String,
}

fn env<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(None),
    }
}

impl ServerConfig {
    /// Defaults for `stamma dev`: loopback only.
    pub fn dev() -> ServerConfig {
        ServerConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7880)),
            media: SfuConfig::default(),
            keys: ApiKeys::default(),
            limits: crate::session::Limits::default(),
            public_url: None,
        }
    }

    /// Read a config file, then apply `STAMMA_*` overrides.
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        let mut c = ServerConfig::dev();
        c.http_addr = file
            .http
            .bind
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7880)));
        c.public_url = file.http.public_url;
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
        if let Some(k) = file.media.bwe_initial_kbps {
            c.media.bwe_initial_kbps = k;
        }
        for k in &file.keys {
            c.keys.insert(&k.id, &k.secret)?;
        }
        c.apply_env()?;
        c.validate()?;
        Ok(c)
    }

    pub fn apply_env(&mut self) -> anyhow::Result<()> {
        if let Some(v) = env("STAMMA_HTTP_BIND")? {
            self.http_addr = v;
        }
        if let Some(v) = env("STAMMA_HTTP_PUBLIC_URL")? {
            self.public_url = Some(v);
        }
        if let Some(v) = env("STAMMA_MEDIA_BIND_IP")? {
            self.media.bind_ip = v;
        }
        if let Some(v) = env("STAMMA_MEDIA_PUBLIC_IP")? {
            self.media.public_ip = Some(v);
        }
        if let Some(v) = env("STAMMA_MEDIA_PORT")? {
            self.media.first_port = v;
        }
        if let Some(v) = env("STAMMA_MEDIA_WORKERS")? {
            self.media.workers = v;
        }
        if let Some(v) = env("STAMMA_MEDIA_ALLOCATOR")? {
            self.media.allocator = v;
        }
        if let Some(v) = env("STAMMA_MEDIA_BWE_INITIAL_KBPS")? {
            self.media.bwe_initial_kbps = v;
        }
        if let (Ok(id), Ok(secret)) = (
            std::env::var("STAMMA_API_KEY"),
            std::env::var("STAMMA_API_SECRET"),
        ) {
            self.keys.insert(&id, &secret)?;
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
        if let Some(u) = &self.public_url
            && !((u.starts_with("http://") || u.starts_with("https://"))
                && u.len() <= 512
                && u.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!("http.public_url must be an http:// or https:// URL");
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
