//! `kiln schedules list|add|delete`: the server's schedules (`/v1/schedules`, admin).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::client::{Client, ServerArgs};
use super::jobs::{print_table, text};

/// `kiln schedules …`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List every schedule with its next and latest run.
    List(ListArgs),
    /// Make a schedule: a job of TYPE submitted at each tick of CRON.
    Add(AddArgs),
    /// Delete a schedule made with `add` (one from the config file is removed there).
    Delete(DeleteArgs),
}

/// `kiln schedules list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print the JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kiln schedules add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Its name: letters, digits, `-` and `_`.
    pub name: String,
    /// When: five cron fields (`"0 3 * * *"`), or six with seconds first.
    pub cron: String,
    /// The job type each tick submits.
    #[arg(value_name = "TYPE")]
    pub job_type: String,
    /// The payload, as JSON, or `@FILE`.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// The IANA time zone the cron is read in (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Submit nothing for ticks missed while Kiln was down (default: one job for them).
    #[arg(long)]
    pub skip_missed: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `kiln schedules delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub name: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(super) async fn run(command: SchedulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        SchedulesCommand::List(args) => list(args).await,
        SchedulesCommand::Add(args) => {
            let client = Client::new(&args.server)?;
            let payload = match super::read_payload(&args.payload)? {
                Ok(payload) => payload,
                Err(code) => return Ok(code),
            };
            let mut body = json!({"name": args.name, "cron": args.cron,
                                  "type": args.job_type, "payload": payload});
            if let Some(zone) = &args.timezone {
                body["timezone"] = json!(zone);
            }
            if args.skip_missed {
                body["catch_up"] = json!("skip");
            }
            let schedule = client.post("/v1/schedules", Some(&body)).await?;
            println!(
                "{}: next run {}",
                text(&schedule["name"]),
                or_dash(&schedule["next_run_at"])
            );
            Ok(ExitCode::SUCCESS)
        }
        SchedulesCommand::Delete(args) => {
            let client = Client::new(&args.server)?;
            let path = format!("/v1/schedules/{}", args.name);
            client.send(client.http().delete(client.url(&path))).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let answer = client.get("/v1/schedules").await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let schedules = answer["schedules"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            let zone = s["timezone"].as_str().unwrap_or("UTC");
            vec![
                text(&s["name"]),
                format!("{} ({zone})", text(&s["cron"])),
                text(&s["type"]),
                or_dash(&s["next_run_at"]),
                or_dash(&s["last_run_at"]),
                s["last_error"]
                    .as_str()
                    .map(|e| format!("error: {e}"))
                    .unwrap_or_else(|| or_dash(&s["last_job"])),
            ]
        })
        .collect();
    print_table(
        &["NAME", "CRON", "TYPE", "NEXT RUN", "LAST RUN", "LAST JOB"],
        &rows,
    );
    if schedules.is_empty() {
        eprintln!("no schedules");
    }
    Ok(ExitCode::SUCCESS)
}

/// A string field, or `-` when it is `null`.
fn or_dash(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or("-").to_string()
}
