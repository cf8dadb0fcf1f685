//! CPU fairness: streamed `characters` jobs alone, then next to one CPU-looping guest per
//! core, with `/healthz` probed throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::server::KilnServer;
use crate::stats::{Summary, summarize};

/// Server config: the offline provider at its default latency, streaming word by word.
pub const CONFIG: &str = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 250\n";

/// One round of streamed jobs.
#[derive(Debug, Serialize)]
pub struct Round {
    /// CPU-looping guests running during the round.
    pub loops: usize,
    pub jobs: usize,
    /// Submit to the end of the last job's event stream.
    pub seconds: f64,
    /// `GET /healthz` answers during the round.
    pub healthz: Summary,
}

/// Rounds of `jobs` concurrent `characters` jobs (3 characters each), each followed over
/// SSE: alone, then next to one looping guest per core.
pub async fn fairness(server: &KilnServer, jobs: usize) -> anyhow::Result<Vec<Round>> {
    let client = reqwest::Client::new();
    round(&client, &server.base, jobs, 0).await?; // warm-up
    let alone = round(&client, &server.base, jobs, 0).await?;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut loops = Vec::new();
    for _ in 0..cores {
        let body = json!({"type": "hostile", "payload": {"mode": "loop"}, "timeout_s": 600});
        let job: Value = client
            .post(format!("{}/v1/jobs", server.base))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        loops.push(job["id"].as_str().unwrap_or_default().to_string());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let loaded = round(&client, &server.base, jobs, cores).await;
    for id in &loops {
        client
            .post(format!("{}/v1/jobs/{id}/cancel", server.base))
            .send()
            .await?;
    }
    Ok(vec![alone, loaded?])
}

async fn round(
    client: &reqwest::Client,
    base: &str,
    jobs: usize,
    loops: usize,
) -> anyhow::Result<Round> {
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let (client, url, done) = (client.clone(), format!("{base}/healthz"), done.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                client.get(&url).send().await?.error_for_status()?;
                samples.push(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(samples)
        })
    };
    let started = Instant::now();
    let runs = (0..jobs).map(|i| {
        let (client, base) = (client.clone(), base.to_string());
        let body =
            json!({"type": "characters", "payload": {"theme": format!("bench {i}"), "count": 3}});
        tokio::spawn(async move {
            let job: Value = client
                .post(format!("{base}/v1/jobs"))
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            let id = job["id"].as_str().unwrap_or_default();
            // Follow the job's stream to its end, as a browser would.
            let events = client
                .get(format!("{base}/v1/jobs/{id}/events"))
                .send()
                .await?
                .text()
                .await?;
            anyhow::ensure!(
                events.contains("event: token") && events.contains("event: completed"),
                "job {id} did not stream to completion: {events}"
            );
            anyhow::Ok(())
        })
    });
    for run in futures::future::join_all(runs).await {
        run??;
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let mut samples = probe.await??;
    Ok(Round {
        loops,
        jobs,
        seconds,
        healthz: summarize(&mut samples),
    })
}
