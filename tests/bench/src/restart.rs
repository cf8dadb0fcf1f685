//! Restart with many stored jobs, and what the LLM call journal saves on recovery.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use kiln::jobs::event_names;
use kiln::store::{JobRecord, NewEvent, Store, now_ms};

use crate::server::KilnServer;

/// Start-up time with `jobs` stored.
#[derive(Debug, Serialize)]
pub struct RestartFigure {
    pub jobs: usize,
    pub start_to_serving_ms: f64,
    pub db_bytes: u64,
}

/// Recovery of a job killed after some LLM rounds.
#[derive(Debug, Serialize)]
pub struct RecoveryFigure {
    pub calls_per_job: u64,
    pub progress_at_kill: u64,
    pub replayed_calls: u64,
    pub paid_after_restart: u64,
}

/// Fills `data_dir` with `jobs` queued jobs (run_at in 2099, so they stay queued and
/// recovery has to index every one of them: the worst case) through the store itself.
pub async fn populate(data_dir: &Path, jobs: usize) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(
        &data_dir.join(kiln::server::DB_FILE),
        16,
        1_000,
    )?);
    let mut pending = futures::stream::iter(0..jobs)
        .map(|_| {
            let store = store.clone();
            async move {
                let job = JobRecord {
                    run_at_ms: Some(4_070_908_800_000),
                    ..JobRecord::queued(uuid::Uuid::now_v7(), "noop", now_ms())
                };
                let event = NewEvent::new(
                    event_names::STATUS,
                    json!({ "status": "queued", "attempt": 1 }),
                );
                store.insert(job, "{}".into(), event).await
            }
        })
        .buffer_unordered(2048);
    while let Some(inserted) = pending.next().await {
        inserted?;
    }
    Ok(())
}

/// Time from spawning `kiln serve` on a data dir holding `jobs` jobs to it listening.
pub fn restart(
    data_dir: &Path,
    plugins: &Path,
    config: &str,
    jobs: usize,
) -> anyhow::Result<RestartFigure> {
    let started = Instant::now();
    let server = KilnServer::start(data_dir, plugins, config)?;
    let start_to_serving_ms = started.elapsed().as_secs_f64() * 1000.0;
    server.stop();
    let db_bytes = std::fs::metadata(data_dir.join(kiln::server::DB_FILE))?.len();
    Ok(RestartFigure {
        jobs,
        start_to_serving_ms,
        db_bytes,
    })
}

/// Time from spawning `kiln serve` to it serving (`/healthz` answering 200, which it does
/// once every plugin is loaded), in ms.
pub async fn time_to_ready(data_dir: &Path, plugins: &Path, config: &str) -> anyhow::Result<f64> {
    std::fs::create_dir_all(data_dir)?;
    let started = Instant::now();
    let server = KilnServer::start(data_dir, plugins, config)?;
    let url = format!("{}/healthz", server.base);
    let client = reqwest::Client::new();
    loop {
        let response = client.get(&url).send().await;
        if response.is_ok_and(|r| r.status() == 200) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "kiln was not ready in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    server.stop();
    Ok(ms)
}

/// Kills the server (SIGKILL) once a characters job of `count` characters is half done,
/// restarts it, and reads how many of the job's calls were replayed from the journal.
pub async fn recovery(
    data_dir: &Path,
    plugins: &Path,
    count: u64,
) -> anyhow::Result<RecoveryFigure> {
    let config = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 200\n";
    let client = reqwest::Client::new();
    let server = KilnServer::start(data_dir, plugins, config)?;
    let job: Value = client
        .post(format!("{}/v1/jobs", server.base))
        .json(&json!({ "type": "characters", "payload": { "theme": "cartographers", "count": count } }))
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let mut events = client
        .get(format!("{}/v1/jobs/{id}/events", server.base))
        .send()
        .await?
        .bytes_stream();
    let mut progress_at_kill = 0;
    let mut buffer = String::new();
    'follow: while let Some(chunk) = events.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        for line in buffer.lines() {
            if let Some(p) = line
                .strip_prefix("data: ")
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|d| d["progress"].as_u64())
            {
                progress_at_kill = progress_at_kill.max(p);
            }
        }
        if progress_at_kill >= 50 {
            break 'follow;
        }
    }
    drop(events);
    server.kill9();
    let server = KilnServer::start(data_dir, plugins, config)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let job: Value = client
            .get(format!("{}/v1/jobs/{id}", server.base))
            .send()
            .await?
            .json()
            .await?;
        if job["status"] == "completed" || job["status"] == "failed" || Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.stop();
    anyhow::ensure!(
        done["status"] == "completed",
        "the recovered job did not complete: {done}"
    );
    // `usage.llm_calls` counts the calls paid by every attempt; those the killed attempt
    // paid are the ones the next attempt replayed.
    let usage = &done["usage"];
    let replayed_calls = usage["replayed_calls"].as_u64().unwrap_or(0);
    let paid = usage["llm_calls"].as_u64().unwrap_or(0);
    Ok(RecoveryFigure {
        calls_per_job: count * 6,
        progress_at_kill,
        replayed_calls,
        paid_after_restart: paid.saturating_sub(replayed_calls),
    })
}
