//! SSE fan-out: many subscribers on one job's stream, or on `/v1/events`, while a job
//! emits events as fast as it can.
//!
//! The job is the hostile fixture's `events` mode with `stamp`: each progress message
//! carries the plugin's wall-clock time when it emitted the event, so each arrival gives
//! an emit-to-arrival latency (an upper bound of commit-to-arrival). The job waits behind a
//! blocker in a one-slot queue until every subscriber is connected and idle (that is when
//! resident memory per idle subscriber is read), then the blocker is cancelled and it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::server::KilnServer;
use crate::stats::{Summary, summarize};

/// Which stream the subscribers follow.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Stream {
    /// `/v1/jobs/{id}/events`.
    Job,
    /// `/v1/events?type=hostile`.
    All,
}

/// One fan-out run.
#[derive(Debug, Serialize)]
pub struct FanoutFigure {
    pub stream: Stream,
    pub subscribers: usize,
    pub events: usize,
    /// Pause between the job's events; 0 is a burst (a throughput test).
    pub pace_ms: u64,
    pub deliveries: usize,
    pub deliveries_per_second: f64,
    pub latency: Summary,
    pub rss_per_idle_subscriber_bytes: f64,
}

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(&body).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "POST answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// Runs one fan-out measurement on `server` (whose `hostile` queue has one slot).
pub async fn fanout(
    server: &KilnServer,
    stream: Stream,
    subscribers: usize,
    (events, pace_ms): (usize, u64),
) -> anyhow::Result<FanoutFigure> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let jobs = format!("{}/v1/jobs", server.base);
    // The blocker sleeps (in a host call) rather than spinning, so it leaves the cores
    // to the subscribers connecting and to a profiler's view of the fan-out.
    let blocker = post(
        &client,
        jobs.clone(),
        json!({ "type": "hostile", "payload": { "mode": "events", "n": 10, "pace_ms": 60000 } }),
    )
    .await?;
    let job = post(
        &client,
        jobs.clone(),
        json!({ "type": "hostile", "payload": { "mode": "events", "n": events, "stamp": true, "pace_ms": pace_ms } }),
    )
    .await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let url = match stream {
        Stream::Job => format!("{jobs}/{id}/events"),
        Stream::All => format!("{}/v1/events?type=hostile", server.base),
    };

    let rss_before = server.rss_bytes();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(subscribers);
    for batch in (0..subscribers).collect::<Vec<_>>().chunks(250) {
        for _ in batch {
            let (client, url, id, connected) =
                (client.clone(), url.clone(), id.clone(), connected.clone());
            tasks.push(tokio::spawn(async move {
                subscribe(client, url, id, connected).await
            }));
        }
        while connected.load(Ordering::SeqCst) < tasks.len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.rss_bytes();

    let started = now_micros();
    let blocker_id = blocker["id"].as_str().unwrap_or_default();
    post(&client, format!("{jobs}/{blocker_id}/cancel"), json!({})).await?;
    let mut latencies = Vec::new();
    let mut last_arrival = started;
    for task in tasks {
        let (arrivals, last) = tokio::time::timeout(Duration::from_secs(600), task).await???;
        latencies.extend(arrivals);
        last_arrival = last_arrival.max(last);
    }
    let deliveries = latencies.len();
    let span = Duration::from_micros(
        u64::try_from(last_arrival.saturating_sub(started)).unwrap_or(u64::MAX),
    );
    Ok(FanoutFigure {
        stream,
        subscribers,
        events,
        pace_ms,
        deliveries,
        deliveries_per_second: deliveries as f64 / span.as_secs_f64().max(1e-6),
        latency: summarize(&mut latencies),
        rss_per_idle_subscriber_bytes: rss_idle.saturating_sub(rss_before) as f64
            / subscribers as f64,
    })
}

/// Follows one stream until job `id` completes; returns each stamped event's latency and
/// the last arrival time.
pub(crate) async fn subscribe(
    client: reqwest::Client,
    url: String,
    id: String,
    connected: Arc<AtomicUsize>,
) -> anyhow::Result<(Vec<Duration>, u128)> {
    let response = client.get(&url).send().await?;
    anyhow::ensure!(
        response.status() == 200,
        "subscribe answered {}",
        response.status()
    );
    connected.fetch_add(1, Ordering::SeqCst);
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut latencies = Vec::new();
    let mut last = 0;
    while let Some(chunk) = body.next().await {
        let now = now_micros();
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(data) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            // `/v1/events` wraps the event: `{job_id, data}`.
            let (job, event) = match data.get("job_id") {
                Some(job) => (job.as_str().unwrap_or_default(), &data["data"]),
                None => (id.as_str(), &data),
            };
            if job != id {
                continue;
            }
            let emitted = event["message"]
                .as_str()
                .and_then(|m| m.rsplit_once(" at "))
                .and_then(|(_, stamp)| stamp.parse::<u128>().ok());
            if let Some(emitted) = emitted {
                latencies.push(Duration::from_micros(
                    u64::try_from(now.saturating_sub(emitted)).unwrap_or(0),
                ));
                last = now;
            }
            if event.get("result").is_some() {
                return Ok((latencies, last));
            }
        }
    }
    Ok((latencies, last))
}
