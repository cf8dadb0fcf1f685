//! `kiln serve`.

use std::process::ExitCode;

use super::ServeArgs;
use crate::config::{Config, Overrides};
use crate::server::Server;

pub(super) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let resolved = config.resolve(Overrides {
        addr: args.addr,
        data_dir: args.data_dir,
        plugins_dir: args.plugins_dir,
        database_url: args.database_url,
    })?;
    // It listens (answering `starting`) while the plugins load; the line below, which
    // scripts wait for, comes once it serves jobs.
    let mut server = Server::launch(resolved).await?;
    let ready = tokio::select! {
        ready = server.ready() => Some(ready),
        () = shutdown_signal() => None,
    };
    if let Some(ready) = ready {
        if let Err(error) = ready {
            server.shutdown().await;
            return Err(error);
        }
        if super::log_is_json() {
            tracing::info!(url = %format!("http://{}", server.addr), "kiln listening");
        } else {
            eprintln!("kiln listening on http://{}", server.addr);
        }
        shutdown_signal().await;
    }
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
