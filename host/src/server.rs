//! A running Kiln: store, runtime, plugins, job service and HTTP server wired together.
//! `kiln serve` runs one until a signal; tests start them on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::config::Resolved;
use crate::jobs::JobService;
use crate::runtime::Runtime;
use crate::store::Store;

/// The database file inside the data dir.
pub const DB_FILE: &str = "kiln.redb";

/// A started server.
pub struct Server {
    /// Where it listens (the real port when started on port 0).
    pub addr: SocketAddr,
    /// The job service behind it.
    pub service: JobService,
    shutdown: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    grace: std::time::Duration,
}

impl Server {
    /// Opens the store, loads the plugins, recovers interrupted jobs and starts serving.
    pub async fn start(config: Resolved) -> anyhow::Result<Server> {
        let auth = Arc::new(
            Auth::from_config(&config.auth, config.addr, &config.data_dir).context("in [auth]")?,
        );
        let store = Arc::new(Store::open(
            &config.data_dir.join(DB_FILE),
            config.api.sse_buffer_events,
            config.api.feed_retention,
        )?);
        let runtime = Arc::new(Runtime::new(config.runtime.clone())?);
        let plugins_dir = &config.plugins_dir;
        if !plugins_dir.is_dir() {
            anyhow::bail!(
                "the plugins dir {} does not exist: build the bundled plugins with \
                 `scripts/build-plugins`, or point --plugins-dir at a folder of .wasm job types",
                plugins_dir.display()
            );
        }
        let (plugins, failures) = runtime.load_dir(plugins_dir).await?;
        for (path, error) in &failures {
            tracing::error!(path = %path.display(), "plugin not loaded: {error:#}");
        }
        if plugins.is_empty() {
            tracing::warn!(dir = %plugins_dir.display(), "no job types loaded: every submit will be refused");
        }
        let service = JobService::new(
            store,
            runtime,
            Arc::new(plugins),
            config.llm.clone(),
            config.service.clone(),
        );
        let recovered = service.start().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if recovered.requeued + recovered.failed > 0 {
            tracing::warn!(
                requeued = recovered.requeued,
                failed = recovered.failed,
                "recovered jobs interrupted by the previous process"
            );
        }
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        if auth.is_open() {
            tracing::warn!(%addr, "auth: {}", auth.describe());
        } else {
            tracing::info!("auth: {}", auth.describe());
        }
        let state = AppState::new(service.clone(), config.api.clone(), auth, shutdown.clone());
        let app = api::router(state);
        let stop = shutdown.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        tracing::info!(
            %addr,
            job_types = ?service.plugins().names(),
            models = ?config.model_aliases,
            queued = recovered.queued,
            "kiln is serving"
        );
        Ok(Server {
            addr,
            service,
            shutdown,
            http,
            grace: config.service.shutdown_grace,
        })
    }

    /// Graceful shutdown: stop accepting, end SSE streams, give running jobs the grace
    /// period, re-queue what is left, and flush the store.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.shutdown.cancel();
        let (http, ()) = tokio::join!(self.http, self.service.shutdown(self.grace));
        if let Ok(Err(error)) = http {
            tracing::warn!(%error, "the HTTP server ended with an error");
        }
        tracing::info!("stopped");
    }
}
