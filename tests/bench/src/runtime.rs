//! In-process sandbox figures: instantiate + run per job, and component load times
//! (compile vs cache hit).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::llm::{OfflineClient, OfflineConfig};
use kiln::runtime::{
    CacheOutcome, DiscardArtifacts, DiscardEvents, JobInput, Limits, NoFiles, Plugin, RunContext,
    Runtime, RuntimeConfig,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::stats::{Summary, summarize};

/// Time per job for one component.
#[derive(Debug, Serialize)]
pub struct RunFigure {
    pub plugin: String,
    pub payload: String,
    pub per_job: Summary,
}

/// Load time of one component.
#[derive(Debug, Serialize)]
pub struct LoadFigure {
    pub plugin: String,
    pub wasm_bytes: u64,
    pub compile_ms: f64,
    pub cache_hit_ms: f64,
}

fn context() -> RunContext {
    RunContext {
        sink: Arc::new(DiscardEvents),
        llm: Arc::new(OfflineClient::new(OfflineConfig {
            latency_ms: 0,
            ..OfflineConfig::default()
        })),
        cancel: CancellationToken::new(),
        limits: Limits::default(),
        timeout: Duration::from_secs(60),
        files: Arc::new(NoFiles),
        artifacts: Arc::new(DiscardArtifacts),
    }
}

/// Runs `plugin` `runs` times one after another (after a warm-up) and times each job:
/// a fresh store, instantiation from `InstancePre` with the pooling allocator, the call,
/// and the teardown.
pub async fn time_runs(
    runtime: &Runtime,
    plugin: &Plugin,
    payload: &str,
    runs: usize,
) -> anyhow::Result<Summary> {
    let input = |n: usize| JobInput {
        id: format!("bench-{n}"),
        job_type: plugin.info.name.clone(),
        payload: payload.to_string(),
        attempt: 1,
    };
    for n in 0..runs.div_ceil(10).max(10) {
        let outcome = runtime.run(plugin, input(n), context()).await;
        if let Err(failure) = outcome.result {
            anyhow::bail!("{} failed during warm-up: {failure}", plugin.info.name);
        }
    }
    let mut samples = Vec::with_capacity(runs);
    for n in 0..runs {
        let ctx = context();
        let started = Instant::now();
        let outcome = runtime.run(plugin, input(n), ctx).await;
        samples.push(started.elapsed());
        outcome.result.map_err(|f| anyhow::anyhow!("{f}"))?;
    }
    Ok(summarize(&mut samples))
}

/// The figures for every component in `components` (name, path, payload, runs).
pub async fn run_figures(
    components: &[(String, PathBuf, String, usize)],
) -> anyhow::Result<Vec<RunFigure>> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let mut figures = Vec::new();
    for (name, path, payload, runs) in components {
        let plugin = runtime.load_file(path).await?;
        let per_job = time_runs(&runtime, &plugin, payload, *runs).await?;
        figures.push(RunFigure {
            plugin: name.clone(),
            payload: payload.clone(),
            per_job,
        });
    }
    Ok(figures)
}

/// Compile time (empty cache) and cache-hit time (a new runtime, as after a restart).
pub async fn load_figures(components: &[(String, PathBuf)]) -> anyhow::Result<Vec<LoadFigure>> {
    let mut figures = Vec::new();
    for (name, path) in components {
        let cache = tempfile::tempdir()?;
        let compile_ms = time_load(path, cache.path(), CacheOutcome::Compiled).await?;
        let cache_hit_ms = time_load(path, cache.path(), CacheOutcome::Hit).await?;
        figures.push(LoadFigure {
            plugin: name.clone(),
            wasm_bytes: std::fs::metadata(path)?.len(),
            compile_ms,
            cache_hit_ms,
        });
    }
    Ok(figures)
}

async fn time_load(path: &Path, cache: &Path, expect: CacheOutcome) -> anyhow::Result<f64> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..RuntimeConfig::default()
    })?;
    let started = Instant::now();
    let plugin = runtime.load_file(path).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        plugin.cache == expect,
        "expected {expect:?}, got {:?}",
        plugin.cache
    );
    Ok(ms)
}
