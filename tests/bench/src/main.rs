//! `kiln-bench`: measures Kiln the way users run it and prints a table (and JSON).
//!
//! ```sh
//! scripts/build-plugins && cargo run --release -p kiln-bench -- [--quick] [--json FILE]
//! ```
//!
//! In-process figures use the real runtime and components; HTTP figures start this binary
//! as `kiln serve` (the same code as the `kiln` binary) on loopback with a fresh data dir,
//! so every acknowledged submit is durable (fsync'd) as in production. Timings are measured,
//! never asserted.

mod fanout;
mod http;
mod restart;
mod runtime;
mod server;
mod stats;

use std::path::PathBuf;

use clap::Parser;
use serde_json::json;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Measures Kiln: sandbox, submits and no-op jobs end to end")]
struct Args {
    /// Fewer iterations (a smoke run, not for BENCHMARKS.md).
    #[arg(long)]
    quick: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn component(relative: &str) -> anyhow::Result<PathBuf> {
    let path = repo_root().join(relative);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/build-plugins",
        path.display()
    );
    Ok(path)
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == server::SERVE_FLAG) {
        args.remove(1);
        return Ok(kiln::cli::main_from(args));
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scale = |full: usize, quick: usize| if args.quick { quick } else { full };
    let noop = component("target/plugins/wasm32-wasip2/release/kiln_fixture_noop.wasm")?;
    let bundled = |name: &str| component(&format!("plugins/dist/{name}.wasm"));
    let document: String = (0..40)
        .map(|i| format!("Paragraph {i}. The keeper climbed the stairs at dusk. The lamp was lit. Ships passed.\n\n"))
        .collect();
    let machine = machine();
    println!("kiln-bench on {machine}\n");

    // 1. The sandbox, in process.
    let runs = vec![
        (
            "noop".to_string(),
            noop.clone(),
            "{}".to_string(),
            scale(5000, 500),
        ),
        (
            "characters".into(),
            bundled("characters")?,
            r#"{"theme":"pirates","count":3}"#.into(),
            scale(300, 50),
        ),
        (
            "factions".into(),
            bundled("factions")?,
            r#"{"theme":"pirates","count":3}"#.into(),
            scale(300, 50),
        ),
        (
            "documents".into(),
            bundled("documents")?,
            json!({ "text": document }).to_string(),
            scale(200, 30),
        ),
    ];
    let run_figures = runtime::run_figures(&runs).await?;
    println!(
        "Per job, in process (fresh store + instantiate + run + drop; offline provider, 0 ms latency):"
    );
    println!(
        "  {:<12} {:>8} {:>10} {:>10} {:>10}",
        "plugin", "jobs", "p50 us", "p99 us", "mean us"
    );
    for f in &run_figures {
        println!(
            "  {:<12} {:>8} {:>10.1} {:>10.1} {:>10.1}",
            f.plugin, f.per_job.count, f.per_job.p50_us, f.per_job.p99_us, f.per_job.mean_us
        );
    }
    let loads: Vec<(String, PathBuf)> = runs
        .iter()
        .map(|(n, p, _, _)| (n.clone(), p.clone()))
        .collect();
    let load_figures = runtime::load_figures(&loads).await?;
    println!("\nComponent load (compile with an empty cache, then a cache hit in a new runtime):");
    println!(
        "  {:<12} {:>10} {:>12} {:>12}",
        "plugin", "bytes", "compile ms", "cached ms"
    );
    for f in &load_figures {
        println!(
            "  {:<12} {:>10} {:>12.1} {:>12.2}",
            f.plugin, f.wasm_bytes, f.compile_ms, f.cache_hit_ms
        );
    }

    // 2. Durable submits through HTTP (jobs scheduled for 2099, so only the enqueue is measured).
    let plugins = tempfile::tempdir()?;
    std::fs::copy(&noop, plugins.path().join("noop.wasm"))?;
    let config = "default_max_concurrent = 64\nmax_queued = 1000000\n\
                  [providers.offline]\nkind = \"offline\"\nlatency_ms = 0\n";
    let data = tempfile::tempdir()?;
    let server = server::KilnServer::start(&data.path().join("submit"), plugins.path(), config)?;
    let later = json!({ "type": "noop", "payload": {}, "run_at": "2099-01-01T00:00:00Z" });
    let mut submit_figures = Vec::new();
    for (concurrency, total) in [
        (1, scale(2000, 300)),
        (16, scale(16000, 1600)),
        (64, scale(32000, 3200)),
        (256, scale(32768, 4096)),
    ] {
        submit_figures.push(http::submits(&server.base, later.clone(), concurrency, total).await?);
    }
    server.stop();
    println!("\nDurable submits, POST /v1/jobs (acknowledged after the commit):");
    println!(
        "  {:<12} {:>8} {:>10} {:>10} {:>10}",
        "concurrency", "submits", "per s", "p50 us", "p99 us"
    );
    for f in &submit_figures {
        println!(
            "  {:<12} {:>8} {:>10.0} {:>10.1} {:>10.1}",
            f.concurrency, f.submits, f.per_second, f.latency.p50_us, f.latency.p99_us
        );
    }

    // 3. No-op jobs end to end.
    let server = server::KilnServer::start(&data.path().join("e2e"), plugins.path(), config)?;
    let e2e = http::end_to_end(&server.base, "noop", 64, scale(20000, 2000)).await?;
    server.stop();
    println!("\nNo-op jobs end to end (64 submitting clients, queue limit 64):");
    println!(
        "  {} jobs, {:.0} jobs/s; submit->start (send -> `running` event received) p50 {:.1} us, p99 {:.1} us",
        e2e.jobs, e2e.jobs_per_second, e2e.submit_to_start.p50_us, e2e.submit_to_start.p99_us
    );

    // 4. SSE fan-out.
    let hostile = component("target/plugins/wasm32-wasip2/release/kiln_fixture_hostile.wasm")?;
    std::fs::copy(&hostile, plugins.path().join("hostile.wasm"))?;
    let fanout_config = "max_streams = 20000\n[queues.hostile]\nmax_concurrent = 1\n\
                         [limits]\nmax_events_per_second = 1000000\n\
                         [providers.offline]\nkind = \"offline\"\nlatency_ms = 0\n";
    let mut fanout_figures = Vec::new();
    for (subscribers, events) in [
        (scale(1000, 100), scale(1000, 100)),
        (scale(10_000, 500), 100),
    ] {
        for stream in [fanout::Stream::Job, fanout::Stream::All] {
            let dir = data.path().join(format!("fanout-{subscribers}-{stream:?}"));
            let server = server::KilnServer::start(&dir, plugins.path(), fanout_config)?;
            fanout_figures.push(fanout::fanout(&server, stream, subscribers, events).await?);
            server.stop();
        }
    }
    println!("\nSSE fan-out (one job emitting progress as fast as it can):");
    println!(
        "  {:<6} {:>11} {:>7} {:>12} {:>14} {:>10} {:>10} {:>14}",
        "stream",
        "subscribers",
        "events",
        "deliveries",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "idle KB/sub"
    );
    for f in &fanout_figures {
        println!(
            "  {:<6} {:>11} {:>7} {:>12} {:>14.0} {:>10.2} {:>10.2} {:>14.1}",
            format!("{:?}", f.stream),
            f.subscribers,
            f.events,
            f.deliveries,
            f.deliveries_per_second,
            f.latency.p50_us / 1000.0,
            f.latency.p99_us / 1000.0,
            f.rss_per_idle_subscriber_bytes / 1024.0
        );
    }

    // 5. Restart with many stored jobs.
    let jobs = scale(100_000, 10_000);
    let dir = data.path().join("restart");
    std::fs::create_dir_all(&dir)?;
    restart::populate(&dir, jobs).await?;
    let restart_figure = restart::restart(&dir, plugins.path(), config, jobs)?;
    println!(
        "\nRestart: {} stored queued jobs ({:.0} MB database): start to serving {:.0} ms",
        restart_figure.jobs,
        restart_figure.db_bytes as f64 / 1e6,
        restart_figure.start_to_serving_ms
    );

    // 6. Recovery: calls the journal saves.
    std::fs::copy(
        bundled("characters")?,
        plugins.path().join("characters.wasm"),
    )?;
    let recovery = restart::recovery(&data.path().join("recovery"), plugins.path(), 5).await?;
    println!(
        "\nRecovery: a characters job of {} LLM calls killed (SIGKILL) at {}%: {} calls replayed from the journal, {} paid after the restart",
        recovery.calls_per_job,
        recovery.progress_at_kill,
        recovery.replayed_calls,
        recovery.paid_after_restart
    );

    if let Some(path) = args.json {
        let report = json!({
            "machine": machine,
            "quick": args.quick,
            "per_job": run_figures,
            "load": load_figures,
            "submit": submit_figures,
            "end_to_end": e2e,
            "fanout": fanout_figures,
            "restart": restart_figure,
            "recovery": recovery,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// Cores and memory of this machine, for the record.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {:.1} GiB memory",
        mem_kb as f64 / 1024.0 / 1024.0
    )
}
