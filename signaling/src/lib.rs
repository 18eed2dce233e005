//! The `stamma` server: signaling over WebSocket, join tokens, the HTTP API
//! and the browser page, in front of the media plane (`stamma-sfu`).

pub mod api;
pub mod config;
pub mod http;
pub mod keys;
pub mod rooms;
pub mod session;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use stamma_sfu::MediaPlane;
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use keys::ApiKeys;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub keys: Arc<ApiKeys>,
    pub rooms: Arc<rooms::RoomDirectory>,
    pub limits: Arc<session::Limits>,
    pub api: Arc<api::ApiSettings>,
}

/// A started server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub media_addrs: Vec<SocketAddr>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Bind the HTTP listener and the media sockets and start serving.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let plane = MediaPlane::start(config.media.clone()).context("starting the media plane")?;
        let media_addrs = plane.workers.iter().map(|w| w.local_addr).collect();
        let state = AppState {
            keys: Arc::new(config.keys.clone()),
            rooms: Arc::new(rooms::RoomDirectory::new(plane.workers)),
            limits: Arc::new(config.limits.clone()),
            api: Arc::new(api::ApiSettings {
                public_url: config.public_url.clone(),
                ..api::ApiSettings::default()
            }),
        };
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
        let http_addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(state);
        let serve = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%http_addr, "signaling listening");
        Ok(Server {
            http_addr,
            media_addrs,
            serve,
            shutdown: Some(tx),
        })
    }

    /// Run until Ctrl-C (then stop gracefully) or until the HTTP server fails.
    pub async fn run_until_ctrl_c(mut self) -> anyhow::Result<()> {
        let stop = self.shutdown.take();
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                tracing::info!("shutting down");
                if let Some(tx) = stop {
                    let _ = tx.send(());
                }
                (&mut self.serve).await.context("HTTP server task")??;
            }
            r = &mut self.serve => r.context("HTTP server task")??,
        }
        Ok(())
    }

    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
