//! A cluster on one PostgreSQL database: the same no-op jobs end to end with 1, 2 and 3
//! nodes (clients spread over the nodes, starts seen on the first node's feed), and how
//! long an event emitted on one node takes to reach a client of another.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{self, EndToEndFigure};
use crate::server::KilnServer;
use crate::stats::{Summary, summarize};

/// The figures of one cluster size.
#[derive(Debug, Serialize)]
pub struct ClusterFigure {
    pub nodes: usize,
    pub saturated: EndToEndFigure,
    pub unloaded: EndToEndFigure,
    /// Emit on one node -> arrival at an SSE client of another (none with one node).
    pub cross_node_sse: Option<Summary>,
}

/// Measures `servers`, all on one database.
pub async fn measure(
    servers: &[KilnServer],
    jobs: usize,
    events: usize,
) -> anyhow::Result<ClusterFigure> {
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let saturated = http::end_to_end(&bases, "noop", 64, jobs).await?;
    let unloaded = http::end_to_end(&bases, "noop", bases.len(), jobs / 10).await?;
    let cross_node_sse = if bases.len() > 1 {
        Some(cross_node(&bases, events).await?)
    } else {
        None
    };
    Ok(ClusterFigure {
        nodes: bases.len(),
        saturated,
        unloaded,
        cross_node_sse,
    })
}

async fn get(client: &reqwest::Client, url: String) -> anyhow::Result<Value> {
    Ok(client.get(url).send().await?.json().await?)
}

/// A paced job of stamped events, followed from a node other than the one running it.
async fn cross_node(bases: &[String], events: usize) -> anyhow::Result<Summary> {
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{}/v1/jobs", bases[0]))
        .json(&json!({ "type": "hostile", "payload": {
            "mode": "events", "n": events, "stamp": true, "pace_ms": 10 } }))
        .send()
        .await?
        .json()
        .await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let runner = loop {
        let job = get(&client, format!("{}/v1/jobs/{id}", bases[0])).await?;
        if let Some(node) = job["node"].as_str() {
            break node.to_string();
        }
        anyhow::ensure!(Instant::now() < deadline, "job {id} never started: {job}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let nodes = get(&client, format!("{}/v1/nodes", bases[0])).await?;
    let runner_base = nodes["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == runner.as_str()))
        .and_then(|n| n["address"].as_str())
        .map(|address| format!("http://{address}"))
        .unwrap_or_default();
    let other = bases
        .iter()
        .find(|base| **base != runner_base)
        .cloned()
        .unwrap_or_else(|| bases[0].clone());
    let url = format!("{other}/v1/jobs/{id}/events");
    let (mut latencies, _) =
        crate::fanout::subscribe(client, url, id, Arc::new(AtomicUsize::new(0))).await?;
    Ok(summarize(&mut latencies))
}
