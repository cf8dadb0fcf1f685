//! `kiln doctor`: what is wrong with a running server: stuck jobs, recent failures
//! grouped by error kind, the job types loaded and whether each LLM provider answers.
//! `--fix-stuck` cancels the stuck running jobs; `--cleanup` deletes expired jobs now.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::client::{Client, ServerArgs, short_duration};

/// `kiln doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A job running longer than this, or queued past its start time by more, is stuck.
    #[arg(long, default_value_t = 600)]
    pub stuck_after_s: u64,
    /// Cancel the stuck running jobs.
    #[arg(long)]
    pub fix_stuck: bool,
    /// Delete finished jobs past their TTL now.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the report's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let report = client
        .get(&format!("/v1/doctor?stuck_after_s={}", args.stuck_after_s))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.stuck_after_s);
        // The cluster, when several nodes share the store (one line per node).
        match client.get("/v1/nodes").await {
            Ok(nodes) => print_nodes(&nodes),
            Err(error) => println!("nodes: could not be read: {error:#}"),
        }
    }
    if args.fix_stuck {
        let answer = client
            .post(
                "/v1/jobs/bulk/cancel",
                Some(&json!({
                    "status": "running",
                    "older_than_s": args.stuck_after_s,
                    "limit": 1000
                })),
            )
            .await?;
        println!(
            "fix-stuck: cancelled {} stuck running job(s)",
            answer["cancelled"]
        );
        for id in answer["ids"].as_array().into_iter().flatten() {
            println!("  {}", id.as_str().unwrap_or_default());
        }
    }
    if args.cleanup {
        let answer = client.post("/v1/doctor/cleanup", None).await?;
        println!("cleanup: deleted {} expired job(s)", answer["deleted"]);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_nodes(answer: &Value) {
    let nodes = answer["nodes"].as_array().cloned().unwrap_or_default();
    let alive = nodes.iter().filter(|n| n["status"] == "alive").count();
    println!("nodes: {} ({alive} alive)", nodes.len());
    for node in &nodes {
        let mut marks = Vec::new();
        if node["leader"] == true {
            marks.push("leader");
        }
        if node["this_node"] == true {
            marks.push("this node");
        }
        println!(
            "  {}  {:<21} {:<12} running {:<4} last heartbeat {}{}",
            node["id"].as_str().unwrap_or_default(),
            node["address"].as_str().unwrap_or_default(),
            node["status"].as_str().unwrap_or_default(),
            node["running_jobs"].as_u64().unwrap_or(0),
            node["last_heartbeat_at"].as_str().unwrap_or_default(),
            if marks.is_empty() {
                String::new()
            } else {
                format!("  ({})", marks.join(", "))
            }
        );
    }
}

fn print_report(report: &Value, stuck_after_s: u64) {
    let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    if let Some(storage) = report["storage"].as_str() {
        println!("storage: {storage}");
    }
    let stuck = list("stuck");
    println!(
        "stuck jobs (running over {stuck_after_s}s, or queued that long past their start): {}",
        stuck.len()
    );
    for job in &stuck {
        println!(
            "  {}  {:<12} {:<8} {:>3}%  for {}  {}",
            job["id"].as_str().unwrap_or_default(),
            job["type"].as_str().unwrap_or_default(),
            job["status"].as_str().unwrap_or_default(),
            job["progress"].as_u64().unwrap_or(0),
            short_duration(job["stuck_for_s"].as_u64().unwrap_or(0) * 1000),
            job["message"].as_str().unwrap_or("")
        );
    }
    if !stuck.is_empty() {
        println!("  (kiln doctor --fix-stuck cancels the running ones)");
    }
    let failures = list("failures");
    let total: u64 = failures.iter().filter_map(|f| f["count"].as_u64()).sum();
    println!("failures in the last 24 h: {total}");
    for group in &failures {
        println!(
            "  {:<16} x{:<5} e.g. {}",
            group["kind"].as_str().unwrap_or_default(),
            group["count"],
            group["example_message"].as_str().unwrap_or_default()
        );
        let ids: Vec<&str> = group["job_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!("  {:<16}        jobs: {}", "", ids.join(", "));
    }
    let plugins = list("plugins");
    println!("plugins loaded: {}", plugins.len());
    for plugin in &plugins {
        println!(
            "  {} {}",
            plugin["name"].as_str().unwrap_or_default(),
            plugin["version"].as_str().unwrap_or_default()
        );
    }
    let providers = list("providers");
    println!("providers: {}", providers.len());
    for provider in &providers {
        let reachable = provider["reachable"].as_bool().unwrap_or(false);
        println!(
            "  {} ({}): {}{}",
            provider["name"].as_str().unwrap_or_default(),
            provider["kind"].as_str().unwrap_or_default(),
            if reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            provider["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}
