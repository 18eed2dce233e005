//! The `stamma` server: signaling over WebSocket, join tokens, the HTTP API
//! and the browser page, in front of the media plane (`stamma-sfu`).

pub mod api;
pub mod config;
pub mod drain;
pub mod http;
pub mod keys;
pub mod links;
pub mod rooms;
pub mod session;
pub mod telemetry;
pub mod tls;
pub mod turn;
pub mod web;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use stamma_sfu::MediaPlane;
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use drain::DrainOutcome;
pub use keys::ApiKeys;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub keys: Arc<ApiKeys>,
    pub rooms: Arc<rooms::RoomDirectory>,
    pub limits: Arc<session::Limits>,
    pub turn: Arc<Vec<turn::TurnServer>>,
    pub drain: Arc<drain::Drain>,
    pub metrics: PrometheusHandle,
    pub api: Arc<api::ApiSettings>,
}

/// A started server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub media_addrs: Vec<SocketAddr>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    drain: Arc<drain::Drain>,
}

impl Server {
    /// Bind the HTTP listener and the media sockets and start serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        // Before the workers start: they register their metrics as they do.
        let metrics = telemetry::install();
        let mut media = config.media.clone();
        let webhooks =
            webhook::Webhooks::start(config.webhooks.clone(), config.webhook_delivery.clone());
        if webhooks.is_enabled() {
            media.events = webhook::forward_media_events(webhooks);
        }
        let plane = MediaPlane::start(media).context("starting the media plane")?;
        let media_addrs = plane.workers.iter().map(|w| w.local_addr).collect();
        let rooms = Arc::new(rooms::RoomDirectory::new(plane.workers));
        rooms.set_max_rooms(config.limits.max_rooms);
        let drain = Arc::new(drain::Drain::new(config.drain_timeout, rooms.clone()));
        let state = AppState {
            keys: Arc::new(config.keys.clone()),
            rooms,
            limits: Arc::new(config.limits.clone()),
            turn: Arc::new(config.turn.clone()),
            drain: drain.clone(),
            metrics,
            api: Arc::new(api::ApiSettings {
                public_url: config.public_url.clone(),
                ..api::ApiSettings::default()
            }),
        };
        // Before binding: a bad certificate fails the start with its file named.
        let tls = match &config.tls {
            Some(t) => {
                Some(tls::server_config(&t.cert, &t.key).context("http.tls_cert / http.tls_key")?)
            }
            None => None,
        };
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
        let http_addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(state);
        let stopped = async move {
            let _ = rx.await;
        };
        let serve = match tls {
            Some(tls) => {
                let listener = tls::TlsListener::new(listener, tls)?;
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            }),
        };
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%http_addr, scheme, "signaling listening");
        Ok(Server {
            http_addr,
            media_addrs,
            serve,
            shutdown: Some(tx),
            drain,
        })
    }

    /// Drain (see [`drain`]): from the call on, no new rooms and `/readyz`
    /// answers 503; resolves when every room is empty or the drain deadline
    /// passed and the remaining sessions were closed. The HTTP server keeps
    /// running (stop it with [`Server::shutdown`]). Owns what it needs, so it
    /// can be spawned.
    pub fn drain(&self) -> impl Future<Output = DrainOutcome> + Send + 'static {
        let drain = self.drain.clone();
        async move { drain.run().await }
    }

    /// Run until a signal or until the HTTP server fails. SIGTERM drains
    /// first (then exits); Ctrl-C (SIGINT) stops at once, also during a
    /// drain: the operator at a terminal wants it gone now.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let stop = self.shutdown.take();
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                tracing::info!("Ctrl-C: shutting down now");
            }
            r = sigterm() => {
                r.context("waiting for SIGTERM")?;
                tracing::info!("SIGTERM: draining");
                tokio::select! {
                    outcome = self.drain() => tracing::info!(?outcome, "drain finished; shutting down"),
                    r = tokio::signal::ctrl_c() => {
                        r.context("waiting for Ctrl-C")?;
                        tracing::info!("Ctrl-C during drain: shutting down now");
                    }
                }
            }
            r = &mut self.serve => return r.context("HTTP server task")?.context("HTTP server"),
        }
        if let Some(tx) = stop {
            let _ = tx.send(());
        }
        (&mut self.serve)
            .await
            .context("HTTP server task")?
            .context("HTTP server")
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(unix)]
async fn sigterm() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    Ok(())
}

/// No SIGTERM off Unix: only Ctrl-C stops the server there.
#[cfg(not(unix))]
async fn sigterm() -> std::io::Result<()> {
    std::future::pending().await
}
