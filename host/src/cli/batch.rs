//! `kiln batch submit TYPE --items JSON|@FILE` and `kiln batch watch ID`: submit many jobs
//! of one type in one call, and follow a batch's own event stream with an aggregate
//! progress bar and its counts, resuming with `Last-Event-ID` after a dropped connection.
//!
//! `watch` exits 0 when every job completed, 1 when any failed, 2 when any was cancelled
//! (and none failed).

use std::process::ExitCode;

use clap::Subcommand;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::client::{Client, ServerArgs, failure};
use super::watch::{Display, MAX_RECONNECTS, ShowArgs, backoff, frames};

/// `kiln batch …`.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Submit one job per item; prints the batch's id (or follows it with --watch).
    Submit(SubmitArgs),
    /// Follow a batch to its end: mean progress, counts, each job's end.
    Watch(WatchArgs),
}

/// `kiln batch submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job type of every item.
    #[arg(value_name = "TYPE")]
    pub job_type: String,
    /// The payloads: a JSON array, or JSON Lines (one payload per line); `@FILE` reads
    /// them from a file.
    #[arg(long)]
    pub items: String,
    #[command(flatten)]
    pub options: super::submit::JobOptions,
    /// Follow the batch to its end, like `kiln batch watch`.
    #[arg(long)]
    pub watch: bool,
    /// Print the answer's JSON (with every job id) instead of the batch's id.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kiln batch watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The batch id.
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) async fn run(command: BatchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BatchCommand::Submit(args) => submit(args).await,
        BatchCommand::Watch(args) => {
            let client = Client::new(&args.server)?;
            follow(&client, &args.id).await
        }
    }
}

/// The items of `--items`: a JSON array, else JSON Lines.
fn parse_items(arg: &str) -> anyhow::Result<Vec<Value>> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the items file {path}: {e}"))?,
        None => arg.to_string(),
    };
    if let Ok(Value::Array(items)) = serde_json::from_str(&text) {
        return Ok(items);
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).map_err(|e| {
                anyhow::anyhow!(
                    "--items is neither a JSON array nor JSON Lines: line {}: {e}",
                    n + 1
                )
            })
        })
        .collect()
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let items = parse_items(&args.items)?;
    let mut body = json!({ "type": args.job_type, "items": items });
    args.options.write_into(&mut body);
    let answer = client.post("/v1/batches", Some(&body)).await?;
    let id = answer["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no batch id: {answer}"))?
        .to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if args.watch {
        eprintln!(
            "submitted batch {id}: {} jobs ({})",
            answer["total"], args.job_type
        );
    } else {
        println!("{id}");
    }
    if args.watch {
        return follow(&client, &id).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `queued 3, running 2, completed 5, failed 0, cancelled 0`.
fn counts_line(counts: &Value) -> String {
    ["queued", "running", "completed", "failed", "cancelled"]
        .iter()
        .map(|name| format!("{name} {}", counts[*name].as_u64().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Follows batch `id` to `batch_completed`; prints the batch's JSON at the end.
async fn follow(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let mut display = Display::new(ShowArgs::default());
    let mut last_id: Option<u64> = None;
    let mut failures = 0u32;
    let url = client.url(&format!("/v1/batches/{id}/events"));
    loop {
        let mut request = client
            .http()
            .get(&url)
            .header("accept", "text/event-stream");
        if let Some(seen) = last_id {
            request = request.header("last-event-id", seen.to_string());
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    display.end();
                    return Err(client.unreachable(&error));
                }
                backoff(&mut display, failures, last_id).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        if status == 204 {
            // Finished, and nothing follows what we saw.
            display.end();
            return finish(client, id).await;
        }
        if status != 200 {
            let body = response.bytes().await.unwrap_or_default();
            if status >= 500 && failures < MAX_RECONNECTS {
                failures += 1;
                backoff(&mut display, failures, last_id).await;
                continue;
            }
            display.end();
            return Err(failure(status, &body).into());
        }
        let mut stream = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for frame in frames(&mut buffer) {
                if let (Some(seen), Some(this)) = (last_id, frame.id)
                    && this <= seen
                {
                    continue;
                }
                last_id = frame.id.or(last_id);
                failures = 0;
                let data = &frame.data;
                match frame.event.as_str() {
                    "status" => {
                        let job_status = data["status"].as_str().unwrap_or("?");
                        if matches!(job_status, "completed" | "failed" | "cancelled") {
                            let mut line = format!(
                                "job {}: {job_status}",
                                data["job_id"].as_str().unwrap_or("?")
                            );
                            if let Some(error) = data.get("error").filter(|e| e.is_object()) {
                                line.push_str(&format!(
                                    " ({}: {})",
                                    error["kind"].as_str().unwrap_or("?"),
                                    error["message"].as_str().unwrap_or("")
                                ));
                            }
                            display.line(&line);
                        }
                        display.progress(
                            data["batch_progress"].as_u64().unwrap_or(0),
                            &counts_line(&data["counts"]),
                        );
                    }
                    "progress" => display.progress(
                        data["batch_progress"].as_u64().unwrap_or(0),
                        data["message"].as_str().unwrap_or(""),
                    ),
                    "batch_completed" => {
                        display.end();
                        return finish(client, id).await;
                    }
                    _ => {}
                }
            }
        }
        // The stream ended before `batch_completed`: the connection dropped.
        failures += 1;
        if failures > MAX_RECONNECTS {
            display.end();
            anyhow::bail!(
                "the event stream of batch {id} kept dropping; gave up after {MAX_RECONNECTS} tries"
            );
        }
        backoff(&mut display, failures, last_id).await;
    }
}

/// Prints the finished batch; the exit code says how its jobs ended.
async fn finish(client: &Client, id: &str) -> anyhow::Result<ExitCode> {
    let batch = client.get(&format!("/v1/batches/{id}")).await?;
    let counts = &batch["counts"];
    eprintln!("batch {id} finished: {}", counts_line(counts));
    println!("{}", serde_json::to_string_pretty(&batch)?);
    let count = |name: &str| counts[name].as_u64().unwrap_or(0);
    Ok(if count("failed") > 0 {
        ExitCode::FAILURE
    } else if count("cancelled") > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_a_json_array_or_json_lines() {
        assert_eq!(parse_items(r#"[{"a":1},{"a":2}]"#).unwrap().len(), 2);
        assert_eq!(parse_items("{\"a\":1}\n\n{\"a\":2}\n").unwrap().len(), 2);
        let error = parse_items("{\"a\":1}\nnot json").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
    }
}
