//! Figures through the real HTTP server: durable submits, and no-op jobs end to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{Summary, summarize};

/// Submit throughput and latency at one client concurrency.
#[derive(Debug, Serialize)]
pub struct SubmitFigure {
    pub concurrency: usize,
    pub submits: usize,
    pub per_second: f64,
    pub latency: Summary,
}

/// No-op jobs from submit to `completed`.
#[derive(Debug, Serialize)]
pub struct EndToEndFigure {
    pub jobs: usize,
    pub concurrency: usize,
    pub jobs_per_second: f64,
    /// From sending the submit to receiving the job's `running` event on `/v1/events`:
    /// an upper bound of submit->start (it includes the HTTP and SSE delivery).
    pub submit_to_start: Summary,
}

/// Bulk enqueue through `POST /v1/batches`: one client, one batch at a time.
#[derive(Debug, Serialize)]
pub struct BulkFigure {
    pub batch_size: usize,
    pub batches: usize,
    pub jobs_per_second: f64,
    /// Per batch call, until its `202` (after the commit of all its jobs).
    pub latency: Summary,
}

/// `batches` calls of `POST /v1/batches`, each with `batch_size` copies of `payload`
/// for `job_type`, scheduled far ahead so no job runs: the enqueue path alone.
pub async fn bulk(
    base: &str,
    job_type: &str,
    batch_size: usize,
    batches: usize,
) -> anyhow::Result<BulkFigure> {
    let client = client();
    let url = format!("{base}/v1/batches");
    let body = json!({
        "type": job_type,
        "items": vec![json!({}); batch_size],
        "run_at": "2099-01-01T00:00:00Z",
    });
    // The body is the same for every call: encoded once, outside the timing.
    let body = serde_json::to_vec(&body)?;
    let mut samples = Vec::with_capacity(batches);
    let started = Instant::now();
    for _ in 0..batches {
        let sent = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status == 202, "batch submit answered {status}: {text}");
        samples.push(sent.elapsed());
    }
    let wall = started.elapsed();
    Ok(BulkFigure {
        batch_size,
        batches,
        jobs_per_second: (batch_size * batches) as f64 / wall.as_secs_f64(),
        latency: summarize(&mut samples),
    })
}

/// Pre-enqueued jobs made due at one instant, by how many concurrency keys they carry.
#[derive(Debug, Serialize)]
pub struct DueFigure {
    pub jobs: usize,
    /// Distinct `concurrency_key`s over the jobs (0: none has one).
    pub keys: usize,
    /// From the first job's `started_at` to the last one's `finished_at`.
    pub span_ms: u64,
    pub jobs_per_second: f64,
}

/// `total` no-op jobs submitted by 64 clients, all due at one instant a few seconds
/// ahead, the `i`th with key `i % keys` (none when `keys` is 0); then first start to last
/// end, from the jobs' recorded times.
pub async fn due_at_once(
    base: &str,
    job_type: &str,
    keys: usize,
    total: usize,
) -> anyhow::Result<DueFigure> {
    const CLIENTS: usize = 64;
    let client = client();
    let lead = Duration::from_secs(8);
    let due = std::time::SystemTime::now() + lead;
    let run_at = humantime::format_rfc3339_millis(due).to_string();
    let enqueue = Instant::now();
    let workers = (0..CLIENTS).map(|worker| {
        let (client, url, run_at) = (client.clone(), format!("{base}/v1/jobs"), run_at.clone());
        let job_type = job_type.to_string();
        tokio::spawn(async move {
            for i in (worker..total).step_by(CLIENTS) {
                let mut body = json!({ "type": job_type, "payload": {}, "run_at": run_at });
                if keys > 0 {
                    body["concurrency_key"] = json!(format!("user-{}", i % keys));
                }
                let response = client.post(&url).json(&body).send().await?;
                anyhow::ensure!(
                    response.status() == 202,
                    "submit answered {}",
                    response.status()
                );
            }
            anyhow::Ok(())
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    anyhow::ensure!(
        enqueue.elapsed() < lead,
        "enqueueing took {:?}, past the instant the jobs were due",
        enqueue.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = completed_in(&client, base, job_type).await?;
        if done as usize >= total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {total} jobs completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut first_start, mut last_end) = (u64::MAX, 0u64);
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?limit=100");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client.get(&url).send().await?.json().await?;
        for job in page["jobs"].as_array().into_iter().flatten() {
            let ms = |field: &str| -> anyhow::Result<u64> {
                let text = job[field].as_str().unwrap_or_default();
                let time = humantime::parse_rfc3339(text)?;
                Ok(time.duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64)
            };
            first_start = first_start.min(ms("started_at")?);
            last_end = last_end.max(ms("finished_at")?);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let span_ms = last_end.saturating_sub(first_start).max(1);
    Ok(DueFigure {
        jobs: total,
        keys,
        span_ms,
        jobs_per_second: total as f64 * 1000.0 / span_ms as f64,
    })
}

/// Jobs of queue `job_type` the node at `base` completed since it started.
async fn completed_in(client: &reqwest::Client, base: &str, job_type: &str) -> anyhow::Result<u64> {
    let queues: Value = client
        .get(format!("{base}/v1/queues"))
        .send()
        .await?
        .json()
        .await?;
    Ok(queues["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == job_type))
        .and_then(|q| q["completed"].as_u64())
        .unwrap_or(0))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("http client")
}

/// `total` submits of `body` from `concurrency` clients; each is acknowledged only after
/// its commit.
pub async fn submits(
    base: &str,
    body: Value,
    concurrency: usize,
    total: usize,
) -> anyhow::Result<SubmitFigure> {
    let client = client();
    let url = format!("{base}/v1/jobs");
    let per_worker = total / concurrency;
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let sent = Instant::now();
                let response = client.post(&url).json(&body).send().await?;
                anyhow::ensure!(
                    response.status() == 202,
                    "submit answered {}",
                    response.status()
                );
                response.bytes().await?;
                samples.push(sent.elapsed());
            }
            anyhow::Ok(samples)
        })
    });
    let mut samples = Vec::with_capacity(total);
    for worker in futures::future::join_all(workers).await {
        samples.extend(worker??);
    }
    let wall = started.elapsed();
    Ok(SubmitFigure {
        concurrency,
        submits: samples.len(),
        per_second: samples.len() as f64 / wall.as_secs_f64(),
        latency: summarize(&mut samples),
    })
}

/// Submits `total` jobs of `job_type` from `concurrency` clients and waits for every one
/// to complete, watching `/v1/events` of the first node. With several nodes (a cluster on
/// one database), client `i` submits to node `i % nodes`, and the start of a job run on
/// another node is seen through the first node's feed.
pub async fn end_to_end(
    bases: &[String],
    job_type: &str,
    concurrency: usize,
    total: usize,
) -> anyhow::Result<EndToEndFigure> {
    let client = client();
    let base = &bases[0];
    let started_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let events = client
        .get(format!("{base}/v1/events?type={job_type}"))
        .send()
        .await?;
    anyhow::ensure!(
        events.status() == 200,
        "/v1/events answered {}",
        events.status()
    );
    let watcher = {
        let started_at = started_at.clone();
        tokio::spawn(async move {
            let mut stream = events.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let name = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("event: "))
                        .unwrap_or("");
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(data) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    let id = data["job_id"].as_str().unwrap_or_default().to_string();
                    if name == "status" && data["status"] == "running" {
                        started_at
                            .lock()
                            .unwrap()
                            .entry(id)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        })
    };
    let body = json!({ "type": job_type, "payload": {} });
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let per_worker = total / concurrency;
    let wall = Instant::now();
    let workers = (0..concurrency).map(|worker| {
        let url = format!("{}/v1/jobs", bases[worker % bases.len()]);
        let (client, body, sent_at) = (client.clone(), body.clone(), sent_at.clone());
        tokio::spawn(async move {
            for _ in 0..per_worker {
                let sent = Instant::now();
                let job: Value = client.post(&url).json(&body).send().await?.json().await?;
                let id = job["id"].as_str().unwrap_or_default().to_string();
                sent_at.lock().unwrap().insert(id, sent);
            }
            anyhow::Ok(())
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    let total = per_worker * concurrency;
    // Completion is read from the queues' own counts (each node counts the jobs it
    // finished), not from the event stream, so the figure does not depend on the watcher
    // keeping up.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut done = 0;
        for base in bases {
            done += completed_in(&client, base, job_type).await?;
        }
        if done as usize >= total {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {total} jobs completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = wall.elapsed();
    watcher.abort();
    let sent_at = sent_at.lock().unwrap();
    let started_at = started_at.lock().unwrap();
    let mut samples: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(id, sent)| {
            started_at
                .get(id)
                .map(|start| start.saturating_duration_since(*sent))
        })
        .collect();
    Ok(EndToEndFigure {
        jobs: total,
        concurrency,
        jobs_per_second: total as f64 / elapsed.as_secs_f64(),
        submit_to_start: summarize(&mut samples),
    })
}
