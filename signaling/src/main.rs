use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use stamma::config::{LogConfig, LogFormat};
use stamma::keys::ApiKeys;
use stamma::{Server, ServerConfig};
use stamma_proto::{Grant, Role};
use tracing_subscriber::EnvFilter;

/// Stämma: a self-hosted, end-to-end encrypted video-meeting server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start on loopback with a generated dev key and print a join link.
    Dev {
        /// HTTP (signaling and web page) address.
        #[arg(long, default_value = "127.0.0.1:7880")]
        http: SocketAddr,
        /// UDP port of the first media worker; the next workers take the next ports.
        #[arg(long, default_value_t = 7881)]
        media_port: u16,
        /// Room the printed links join.
        #[arg(long, default_value = "demo")]
        room: String,
    },
    /// Run with a configuration file (production).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a join token. The key comes from STAMMA_API_KEY/STAMMA_API_SECRET or --config.
    Create {
        /// Room the token joins (with --admin: the only room it administers;
        /// without, it administers every room through the admin API).
        #[arg(long, required_unless_present = "admin")]
        room: Option<String>,
        /// Participant identity (with --admin, who acts: default "admin").
        #[arg(long, required_unless_present = "admin")]
        identity: Option<String>,
        /// An admin token for the admin API (/api/v1): role host with the admin grant.
        #[arg(long)]
        admin: bool,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "speaker")]
        role: Role,
        /// Lifetime: seconds or a number with s, m, h or d (e.g. 2h).
        #[arg(long, default_value = "2h", value_parser = parse_ttl)]
        ttl: u64,
        /// Take the API key from this config file (its first key).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 2h or 1d"))?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is not a positive duration"))
}

/// `RUST_LOG` wins over the configured level, so a one-off debug run needs
/// no config edit.
fn init_logging(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => {
            EnvFilter::try_new(&log.level).with_context(|| format!("log.level {:?}", log.level))?
        }
    };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match log.format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Dev {
            http,
            media_port,
            room,
        } => {
            init_logging(&LogConfig::default())?;
            let (key, secret) = ApiKeys::generate();
            let mut config = ServerConfig::dev();
            config.http_addr = http;
            config.media.first_port = media_port;
            config.keys.insert(&key, &secret)?;
            let server = Server::start(config).await?;
            let link = |identity: &str, name: &str, role: Role| -> anyhow::Result<String> {
                let mut g = Grant::new(&key, &room, identity, role, 24 * 3600);
                g.name = Some(name.to_owned());
                let t = g.mint(&key, secret.as_bytes())?;
                Ok(format!("http://{}/r/{room}?token={t}", server.http_addr))
            };
            println!();
            println!("Stämma dev server is running (loopback only).");
            println!("  API key:    {key}");
            println!("  API secret: {secret}   (shown once; use it with `stamma token create`)");
            println!();
            println!("Join as host:  {}", link("host", "Host", Role::Host)?);
            println!(
                "Join as guest: {}",
                link(
                    &format!("guest-{}", stamma_proto::random_token(4)),
                    "Guest",
                    Role::Speaker
                )?
            );
            println!();
            server.run_until_signal().await
        }
        Cmd::Serve { config } => {
            let config = ServerConfig::load(&config)?;
            init_logging(&config.log)?;
            Server::start(config).await?.run_until_signal().await
        }
        Cmd::Token {
            command:
                TokenCmd::Create {
                    room,
                    identity,
                    admin,
                    name,
                    role,
                    ttl,
                    config,
                },
        } => {
            let (key, secret) = match (
                std::env::var("STAMMA_API_KEY"),
                std::env::var("STAMMA_API_SECRET"),
                config,
            ) {
                (Ok(k), Ok(s), _) => (k, s),
                (_, _, Some(path)) => first_key(&path)?,
                _ => bail!(
                    "no API key: set STAMMA_API_KEY and STAMMA_API_SECRET, or pass --config FILE"
                ),
            };
            let mut keys = ApiKeys::default();
            keys.insert(&key, &secret)?;
            let room = room.unwrap_or_else(|| stamma_proto::ALL_ROOMS.to_owned());
            let identity = identity.unwrap_or_else(|| "admin".to_owned());
            let role = if admin { Role::Host } else { role };
            let mut g = Grant::new(&key, &room, &identity, role, ttl);
            g.grants.admin |= admin;
            g.name = name;
            println!("{}", g.mint(&key, secret.as_bytes())?);
            Ok(())
        }
    }
}

fn first_key(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Keys {
        #[serde(default)]
        keys: Vec<Key>,
    }
    #[derive(serde::Deserialize)]
    struct Key {
        id: String,
        secret: String,
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let keys: Keys =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let k = keys
        .keys
        .into_iter()
        .next()
        .with_context(|| format!("{} has no [[keys]] entry", path.display()))?;
    Ok((k.id, k.secret))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("2h"), Ok(7200));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("1d"), Ok(86400));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("5y").is_err());
    }
}
