//! `kiln jobs list|show|cancel|retry`: the job routes of the API from the command line.

use std::process::ExitCode;

use serde_json::Value;

use super::client::{Client, ServerArgs, age};

/// `kiln jobs …`.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List(ListArgs),
    /// Show one job.
    Show(IdArgs),
    /// Cancel a queued or running job.
    Cancel(IdArgs),
    /// Run a failed or cancelled job again.
    Retry(IdArgs),
}

/// `kiln jobs list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only jobs with this status (queued, running, completed, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub job_type: Option<String>,
    /// Page size (1..=100).
    #[arg(long)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// A command about one job.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The job id.
    pub id: String,
    /// Print the job's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) async fn run(command: JobsCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobsCommand::List(args) => list(args).await,
        JobsCommand::Show(args) => {
            let client = Client::new(&args.server)?;
            let job = client.get(&format!("/v1/jobs/{}", args.id)).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                show(&job);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Cancel(args) => {
            let client = Client::new(&args.server)?;
            let job = client
                .post(&format!("/v1/jobs/{}/cancel", args.id), None)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!("{} {}", text(&job["id"]), text(&job["status"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Retry(args) => {
            let client = Client::new(&args.server)?;
            let job = client
                .post(&format!("/v1/jobs/{}/retry", args.id), None)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!(
                    "{} {} (attempt {})",
                    text(&job["id"]),
                    text(&job["status"]),
                    job["attempt"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let mut url = client.url("/v1/jobs");
    let mut query = Vec::new();
    if let Some(status) = &args.status {
        query.push(("status", status.clone()));
    }
    if let Some(job_type) = &args.job_type {
        query.push(("type", job_type.clone()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = &args.cursor {
        query.push(("cursor", cursor.clone()));
    }
    if !query.is_empty() {
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        url = format!("{url}?{}", encoded.join("&"));
    }
    let page = client.send(client.http().get(url)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                text(&job["id"]),
                text(&job["type"]),
                text(&job["status"]),
                format!("{}%", job["progress"].as_u64().unwrap_or(0)),
                age(job["created_at"].as_str()),
                job["error"]["message"]
                    .as_str()
                    .or(job["message"].as_str())
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    print_table(
        &["ID", "TYPE", "STATUS", "PROGRESS", "AGE", "MESSAGE"],
        &rows,
    );
    if jobs.is_empty() {
        eprintln!("no jobs");
    }
    if let Some(next) = page["next_cursor"].as_str() {
        eprintln!("more: --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `rows` under `header` in aligned columns; the last column (free text) is
/// clipped to 80 characters.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let columns = header.len();
    let mut widths = vec![0usize; columns - 1];
    for row in std::iter::once(&header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (width, cell) in widths.iter().zip(row.iter()) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        line.push_str(&clip(&row[columns - 1], 80));
        println!("{}", line.trim_end());
    }
}

fn show(job: &Value) {
    let field = |name: &str, value: String| println!("{name:<12}{value}");
    field("id", text(&job["id"]));
    field("type", text(&job["type"]));
    field("status", text(&job["status"]));
    field(
        "progress",
        format!(
            "{}% {}",
            job["progress"].as_u64().unwrap_or(0),
            job["message"].as_str().unwrap_or("")
        ),
    );
    field(
        "attempt",
        format!("{} of {}", job["attempt"], job["max_attempts"]),
    );
    field(
        "queue",
        format!("{} (priority {})", text(&job["queue"]), job["priority"]),
    );
    field(
        "created",
        format!(
            "{} ({} ago)",
            text(&job["created_at"]),
            age(job["created_at"].as_str())
        ),
    );
    for (name, key) in [
        ("run at", "run_at"),
        ("started", "started_at"),
        ("finished", "finished_at"),
    ] {
        if let Some(at) = job[key].as_str() {
            field(name, at.to_string());
        }
    }
    let usage = &job["usage"];
    field(
        "usage",
        format!(
            "{} LLM calls, {} input + {} output tokens, {} replayed",
            usage["llm_calls"],
            usage["input_tokens"],
            usage["output_tokens"],
            usage["replayed_calls"]
        ),
    );
    if job["error"].is_object() {
        field(
            "error",
            format!(
                "{}: {}",
                text(&job["error"]["kind"]),
                text(&job["error"]["message"])
            ),
        );
    }
    if !job["result"].is_null() {
        println!("result:");
        println!(
            "{}",
            serde_json::to_string_pretty(&job["result"]).unwrap_or_default()
        );
    }
}

/// A JSON string's text, or the JSON itself.
pub(super) fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), ToString::to_string)
}

fn clip(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
