//! `kiln submit TYPE --payload JSON`: posts a job; prints its id (or the job's JSON), and
//! with `--watch` follows it like `kiln watch`.

use std::process::ExitCode;

use serde_json::json;

use super::client::{Client, ServerArgs};

/// `kiln submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The job type.
    #[arg(value_name = "TYPE")]
    pub job_type: String,
    /// The payload, as JSON, or `@FILE` to read it from a file.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    #[command(flatten)]
    pub options: JobOptions,
    /// POST the job's JSON to this URL when it ends, signed (see the README's Webhooks).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Run only once this job has completed (repeat for several, or give them
    /// comma-separated); until then the job is `waiting`.
    #[arg(long, value_name = "JOB_ID", value_delimiter = ',')]
    pub depends_on: Vec<String>,
    /// Run even when a dependency fails or is cancelled (the default fails the job with
    /// `dependency_failed`).
    #[arg(long, requires = "depends_on")]
    pub run_if_dependency_fails: bool,
    /// Same key, same job: a repeated submit returns the first job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end, like `kiln watch`.
    #[arg(long)]
    pub watch: bool,
    /// Print the job's JSON instead of its id.
    #[arg(long)]
    pub json: bool,
    /// With --watch: what to print besides progress (see `kiln watch`).
    #[command(flatten)]
    pub show: super::watch::ShowArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The job options `kiln submit` and `kiln batch submit` share.
#[derive(Debug, clap::Args)]
pub struct JobOptions {
    /// Higher runs first within the queue (-1000..=1000).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// Attempts before a retryable failure is final.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout, seconds.
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// Who the job runs for (e.g. your end user's id): its queue shares slots fairly
    /// between keys, and `max_per_key` caps one key's running jobs.
    #[arg(long)]
    pub concurrency_key: Option<String>,
}

impl JobOptions {
    /// Sets the options given in a submit's JSON `body`.
    pub(super) fn write_into(&self, body: &mut serde_json::Value) {
        if let Some(priority) = self.priority {
            body["priority"] = json!(priority);
        }
        if let Some(max_attempts) = self.max_attempts {
            body["max_attempts"] = json!(max_attempts);
        }
        if let Some(timeout_s) = self.timeout_s {
            body["timeout_s"] = json!(timeout_s);
        }
        if let Some(key) = &self.concurrency_key {
            body["concurrency_key"] = json!(key);
        }
    }
}

pub(super) async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let payload = match super::read_payload(&args.payload)? {
        Ok(payload) => payload,
        Err(code) => return Ok(code),
    };
    let mut body = json!({ "type": args.job_type, "payload": payload });
    args.options.write_into(&mut body);
    if let Some(url) = &args.webhook {
        body["webhook"] = json!({ "url": url });
    }
    if !args.depends_on.is_empty() {
        body["depends_on"] = json!(args.depends_on);
    }
    if args.run_if_dependency_fails {
        body["on_dependency_failure"] = json!("run");
    }
    let mut request = client.http().post(client.url("/v1/jobs")).json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let job = client.send(request).await?;
    let id = job["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no job id: {job}"))?
        .to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else if args.watch {
        eprintln!("submitted {id} ({})", args.job_type);
    } else {
        println!("{id}");
    }
    if args.watch {
        return super::watch::follow(&client, &id, args.show).await;
    }
    Ok(ExitCode::SUCCESS)
}
