//! A running Kiln: store, runtime, plugins, job service and HTTP server wired together.
//! `kiln serve` runs one until a signal; tests start them on `127.0.0.1:0`.
//!
//! Start-up binds the listener first (a port in use is reported before anything slow),
//! then serves at once: until the plugins are loaded and interrupted jobs recovered,
//! `/healthz` and the `/v1/` routes answer `503 starting`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::config::{Resolved, StoreChoice};
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
    /// Loads the plugins and recovers jobs; `None` once [`Server::ready`] has seen it end.
    startup: Option<JoinHandle<anyhow::Result<()>>>,
    grace: std::time::Duration,
}

impl Server {
    /// [`Server::launch`], then waits until it is [`Server::ready`].
    pub async fn start(config: Resolved) -> anyhow::Result<Server> {
        let mut server = Self::launch(config).await?;
        if let Err(error) = server.ready().await {
            server.shutdown().await;
            return Err(error);
        }
        Ok(server)
    }

    /// Binds the listener, opens the store and starts serving, then loads the plugins and
    /// recovers interrupted jobs in the background: until that ends (see
    /// [`Server::ready`]) job routes answer `503 starting`.
    pub async fn launch(config: Resolved) -> anyhow::Result<Server> {
        let auth = Arc::new(
            Auth::from_config(&config.auth, config.addr, &config.data_dir).context("in [auth]")?,
        );
        let listener = bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let plugins_dir = config.plugins_dir.clone();
        if !plugins_dir.is_dir() {
            anyhow::bail!(
                "the plugins dir {} does not exist: build the bundled plugins with \
                 `scripts/build-plugins`, or point --plugins-dir at a folder of .wasm job types",
                plugins_dir.display()
            );
        }
        let store = Arc::new(match &config.store {
            StoreChoice::Redb(path) => Store::open(
                path,
                config.api.sse_buffer_events,
                config.api.feed_retention,
            )?,
            StoreChoice::Postgres(options) => {
                Store::open_postgres(
                    options.clone(),
                    &config.data_dir,
                    config.api.sse_buffer_events,
                    config.api.feed_retention,
                )
                .await?
            }
        });
        tracing::info!(store = %config.store.describe(), "storage opened");
        if let Some(limits) = store.shared_limits(crate::jobs::LEASE_MS) {
            // Nodes sharing the database share their providers' limits too.
            config.shared_limits.set(limits);
        }
        let runtime = Arc::new(Runtime::new(config.runtime.clone())?);
        let mut settings = config.service.clone();
        settings.node_address = addr.to_string();
        let service = JobService::new(
            store,
            runtime.clone(),
            config.llm.clone(),
            settings,
            config.metrics.clone(),
        );
        // Webhook bodies are the job's JSON as the API shows it.
        service.set_job_renderer(api::render_job);
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
            axum::serve(api::Listener::new(listener), app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        tracing::info!(
            %addr,
            plugins_dir = %plugins_dir.display(),
            "listening; job routes answer 503 starting until the plugins are loaded"
        );
        let models = config.model_aliases.clone();
        let startup = tokio::spawn(load_and_recover(
            service.clone(),
            runtime,
            plugins_dir,
            addr,
            models,
        ));
        Ok(Server {
            addr,
            service,
            shutdown,
            http,
            startup: Some(startup),
            grace: config.service.shutdown_grace,
        })
    }

    /// Waits until the plugins are loaded and interrupted jobs recovered (at once when
    /// they already are); an error means the server cannot serve jobs and should stop.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        let Some(startup) = self.startup.as_mut() else {
            return Ok(());
        };
        let outcome = startup.await.context("the start-up task failed");
        self.startup = None;
        outcome?
    }

    /// Graceful shutdown: stop accepting, end SSE streams, give running jobs the grace
    /// period, re-queue what is left, and flush the store.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        if let Some(startup) = &self.startup {
            startup.abort();
        }
        self.shutdown.cancel();
        let (http, ()) = tokio::join!(self.http, self.service.shutdown(self.grace));
        if let Ok(Err(error)) = http {
            tracing::warn!(%error, "the HTTP server ended with an error");
        }
        tracing::info!("stopped");
    }
}

/// Binds `addr`, saying plainly when another process has it.
async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::AddrInUse => {
                anyhow::anyhow!("{addr} is in use: stop the other process or pass --addr")
            }
            _ => anyhow::anyhow!("cannot listen on {addr} ({error}): pass another --addr"),
        })
}

/// Loads every plugin in `dir` (each file named in every line about it), then starts the
/// job service on them, which recovers the jobs a dead process left behind.
async fn load_and_recover(
    service: JobService,
    runtime: Arc<Runtime>,
    dir: std::path::PathBuf,
    addr: SocketAddr,
    models: Vec<String>,
) -> anyhow::Result<()> {
    let load = runtime.load_dir(&dir).await?;
    for plugin in load.registry.iter() {
        tracing::info!(
            path = %file_of(plugin.file.as_deref()),
            job_type = %plugin.info.name,
            version = %plugin.info.version,
            cache = ?plugin.cache,
            "loaded plugin"
        );
    }
    for (path, error) in &load.failed {
        tracing::error!(path = %path.display(), "plugin not loaded: {error:#}");
    }
    for shadowed in &load.shadowed {
        tracing::warn!(
            path = %shadowed.path.display(),
            winner = %shadowed.winner.display(),
            job_type = %shadowed.job_type,
            "{shadowed}"
        );
    }
    if load.registry.is_empty() {
        tracing::warn!(dir = %dir.display(), "no job types loaded: every submit will be refused");
    }
    let recovered = service
        .start(Arc::new(load.registry))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if recovered.requeued + recovered.failed > 0 {
        tracing::warn!(
            requeued = recovered.requeued,
            failed = recovered.failed,
            "recovered jobs interrupted by the previous process"
        );
    }
    tracing::info!(
        %addr,
        job_types = ?service.plugins().names(),
        models = ?models,
        queued = recovered.queued,
        "kiln is serving"
    );
    Ok(())
}

fn file_of(path: Option<&Path>) -> String {
    path.map_or_else(|| "(bytes)".into(), |p| p.display().to_string())
}
