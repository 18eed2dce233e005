use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use stamma::config::{LogConfig, LogFormat};
use stamma::keys::ApiKeys;
use stamma::links::{DEFAULT_BASE_URL, e2ee_secret, join_url, link_grant, with_e2ee_secret};
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
    /// Join links: the web page's URL with a join token.
    Link {
        #[command(subcommand)]
        command: LinkCmd,
    },
}

#[derive(Subcommand)]
enum LinkCmd {
    /// Print a join URL. Without --identity the link is shared: anyone who
    /// has it may join, each with an identity of their own (a public hearing).
    /// The key comes from STAMMA_API_KEY/STAMMA_API_SECRET or --config.
    Create {
        /// Room the link joins.
        #[arg(long)]
        room: String,
        #[arg(long, default_value = "attendee")]
        role: Role,
        /// Lifetime: seconds or a number with s, m, h or d (e.g. 2h).
        #[arg(long, default_value = "2h", value_parser = parse_ttl)]
        ttl: u64,
        /// Display name (the page lets the person change it).
        #[arg(long)]
        name: Option<String>,
        /// A link for one person with this identity (not shared).
        #[arg(long)]
        identity: Option<String>,
        /// Base URL of the server as people reach it (default: the config's
        /// http.public_url, else http://127.0.0.1:7880).
        #[arg(long)]
        url: Option<String>,
        /// Take the API key (its first) and http.public_url from this config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// End-to-end encryption: put this room secret (32 bytes, unpadded
        /// base64url) in the link's fragment, or `new` for a fresh one. Give
        /// every link of the meeting the same secret.
        /// (A base64url secret may begin with '-': it is taken as the value.)
        #[arg(long, value_name = "SECRET|new", allow_hyphen_values = true)]
        e2ee_secret: Option<String>,
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
            let base = format!("http://{}", server.http_addr);
            let mint = |g: Grant| -> anyhow::Result<String> {
                Ok(join_url(&base, &room, &g.mint(&key, secret.as_bytes())?))
            };
            let link = |identity: &str, name: &str, role: Role| -> anyhow::Result<String> {
                let mut g = Grant::new(&key, &room, identity, role, 24 * 3600);
                g.name = Some(name.to_owned());
                mint(g)
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
            println!(
                "Join as attendee: {}",
                mint(link_grant(&key, &room, Role::Attendee, None, 24 * 3600))?
            );
            // A shared host link with a fresh room secret: everyone who
            // opens it is in one end-to-end encrypted meeting.
            println!(
                "Join with E2EE (host): {}",
                with_e2ee_secret(
                    &mint(link_grant(&key, &room, Role::Host, None, 24 * 3600))?,
                    &e2ee_secret("new")?
                )
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
            let file = config.as_deref().map(read_cli_config).transpose()?;
            let (key, secret) = api_key(file.as_ref())?;
            let room = room.unwrap_or_else(|| stamma_proto::ALL_ROOMS.to_owned());
            let identity = identity.unwrap_or_else(|| "admin".to_owned());
            let role = if admin { Role::Host } else { role };
            let mut g = Grant::new(&key, &room, &identity, role, ttl);
            g.grants.admin |= admin;
            g.name = name;
            println!("{}", g.mint(&key, secret.as_bytes())?);
            Ok(())
        }
        Cmd::Link {
            command:
                LinkCmd::Create {
                    room,
                    role,
                    ttl,
                    name,
                    identity,
                    url,
                    config,
                    e2ee_secret: room_secret,
                },
        } => {
            let file = config.as_deref().map(read_cli_config).transpose()?;
            let (key, secret) = api_key(file.as_ref())?;
            let base = link_base(url, file.as_ref())?;
            // Checked before signing, so a bad secret prints no link at all.
            let room_secret = room_secret
                .as_deref()
                .map(e2ee_secret)
                .transpose()
                .context("--e2ee-secret")?;
            let mut g = link_grant(&key, &room, role, identity.as_deref(), ttl);
            g.name = name;
            let url = join_url(&base, &room, &g.mint(&key, secret.as_bytes())?);
            match room_secret {
                Some(s) => println!("{}", with_e2ee_secret(&url, &s)),
                None => println!("{url}"),
            }
            Ok(())
        }
    }
}

/// What the token and link commands read from a config file: not the
/// whole server config (they start nothing, and need nothing else valid).
#[derive(Debug, Default, serde::Deserialize)]
struct CliConfig {
    #[serde(skip)]
    path: PathBuf,
    #[serde(default)]
    keys: Vec<CliKey>,
    #[serde(default)]
    http: CliHttp,
}

#[derive(Debug, serde::Deserialize)]
struct CliKey {
    id: String,
    secret: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct CliHttp {
    public_url: Option<String>,
}

fn read_cli_config(path: &Path) -> anyhow::Result<CliConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let mut c: CliConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    c.path = path.to_owned();
    Ok(c)
}

/// The API key to sign with: STAMMA_API_KEY/STAMMA_API_SECRET, else the
/// config file's first key. Checked as the server checks its keys.
fn api_key(file: Option<&CliConfig>) -> anyhow::Result<(String, String)> {
    let (key, secret) = match (
        std::env::var("STAMMA_API_KEY"),
        std::env::var("STAMMA_API_SECRET"),
        file,
    ) {
        (Ok(k), Ok(s), _) => (k, s),
        (_, _, Some(c)) => c
            .keys
            .first()
            .map(|k| (k.id.clone(), k.secret.clone()))
            .with_context(|| format!("{} has no [[keys]] entry", c.path.display()))?,
        _ => bail!("no API key: set STAMMA_API_KEY and STAMMA_API_SECRET, or pass --config FILE"),
    };
    ApiKeys::default().insert(&key, &secret)?;
    Ok((key, secret))
}

/// Base of a printed link: --url, else the config's http.public_url, else
/// the address `stamma dev` listens on.
fn link_base(url: Option<String>, file: Option<&CliConfig>) -> anyhow::Result<String> {
    let base = url
        .or_else(|| file.and_then(|c| c.http.public_url.clone()))
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("{base:?} is not a base URL like https://meet.example.org");
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_base_prefers_the_flag_then_the_config_then_the_dev_address() {
        let file = CliConfig {
            http: CliHttp {
                public_url: Some("https://meet.example.org".into()),
            },
            ..CliConfig::default()
        };
        let flag = Some("https://other.example.org/".to_owned());
        assert_eq!(
            link_base(flag, Some(&file)).ok().as_deref(),
            Some("https://other.example.org/")
        );
        assert_eq!(
            link_base(None, Some(&file)).ok().as_deref(),
            Some("https://meet.example.org")
        );
        assert_eq!(
            link_base(None, None).ok().as_deref(),
            Some(DEFAULT_BASE_URL)
        );
        assert!(link_base(Some("meet.example.org".into()), None).is_err());
    }

    #[test]
    fn config_file_gives_key_and_public_url_and_ignores_the_rest() {
        let c: CliConfig = toml::from_str(
            "[http]\nbind = \"0.0.0.0:7880\"\npublic_url = \"https://m.example\"\n[[keys]]\nid = \"k1\"\nsecret = \"s\"\n[media]\nworkers = 2\n",
        )
        .unwrap_or_default();
        assert_eq!(c.http.public_url.as_deref(), Some("https://m.example"));
        assert_eq!(c.keys.first().map(|k| k.id.as_str()), Some("k1"));
    }

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
