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

mod cluster;
mod fairness;
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
    /// Only these sections (comma-separated): sandbox, submit, bulk, due, e2e, fanout, restart,
    /// recovery, fairness, coldstart, cluster (1, 2 and 3 nodes on one database; with
    /// `--store postgres` only). Default: all.
    #[arg(long, value_delimiter = ',')]
    sections: Vec<String>,
    /// The store of the `submit` and `e2e` sections: `redb` (a file in a temp dir) or
    /// `postgres` (the database of `--database-url`; its `kiln_*` tables are dropped
    /// before each server starts). The other sections always use redb.
    #[arg(long, default_value = "redb")]
    store: String,
    /// The PostgreSQL database for `--store postgres`.
    #[arg(long, env = "KILN_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl Args {
    fn wants(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == section)
    }
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

/// Where the components are, how big a run is, and where its jobs are stored.
struct Setup {
    quick: bool,
    noop: PathBuf,
    plugins: tempfile::TempDir,
    data: tempfile::TempDir,
    /// `--store postgres`: the database URL.
    postgres: Option<String>,
}

impl Setup {
    fn scale(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }

    /// The name of the store of the `submit` and `e2e` sections.
    fn store_name(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "redb"
        }
    }

    /// A server of the `submit` and `e2e` sections on the chosen store, starting empty.
    async fn store_server(&self, name: &str) -> anyhow::Result<server::KilnServer> {
        let mut config = SERVER_CONFIG.to_string();
        if let Some(url) = &self.postgres {
            empty_kiln_tables(url).await?;
            config.push_str(&format!("\n[store]\nurl = \"{url}\"\n"));
        }
        server::KilnServer::start(&self.data.path().join(name), self.plugins.path(), &config)
    }
}

/// Drops Kiln's tables, so the next server starts on an empty database (its migrations
/// create them again).
async fn empty_kiln_tables(url: &str) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "DO $$ DECLARE name text; BEGIN \
               FOR name IN SELECT tablename FROM pg_tables \
                   WHERE schemaname = current_schema() AND tablename LIKE 'kiln\\_%' LOOP \
                 EXECUTE format('DROP TABLE %I CASCADE', name); \
               END LOOP; \
               DROP FUNCTION IF EXISTS kiln_provider_admit; \
             END $$",
        )
        .await?;
    Ok(())
}

/// Config of the servers the HTTP sections start.
const SERVER_CONFIG: &str = "default_max_concurrent = 64\nmax_queued = 1000000\n\
                             sse_buffer_events = 131072\n\
                             [providers.offline]\nkind = \"offline\"\nlatency_ms = 0\n";

async fn run(args: Args) -> anyhow::Result<()> {
    let machine = machine();
    println!("kiln-bench on {machine}\n");
    let setup = Setup {
        quick: args.quick,
        noop: component("target/plugins/wasm32-wasip2/release/kiln_fixture_noop.wasm")?,
        plugins: tempfile::tempdir()?,
        data: tempfile::tempdir()?,
        postgres: match args.store.as_str() {
            "redb" => None,
            "postgres" => Some(args.database_url.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--store postgres needs --database-url (or KILN_BENCH_DATABASE_URL)"
                )
            })?),
            other => anyhow::bail!("--store must be redb or postgres, not {other:?}"),
        },
    };
    println!(
        "store of the submit and e2e sections: {}\n",
        setup.store_name()
    );
    for (file, source) in [
        ("noop.wasm", setup.noop.clone()),
        (
            "hostile.wasm",
            component("target/plugins/wasm32-wasip2/release/kiln_fixture_hostile.wasm")?,
        ),
        ("characters.wasm", bundled("characters")?),
    ] {
        std::fs::copy(source, setup.plugins.path().join(file))?;
    }
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), json!(machine));
    report.insert("quick".into(), json!(args.quick));
    if args.wants("sandbox") {
        report.insert("sandbox".into(), sandbox(&setup).await?);
    }
    if args.wants("submit") {
        report.insert("submit".into(), submits(&setup).await?);
    }
    if args.wants("bulk") {
        report.insert("bulk".into(), bulk(&setup).await?);
    }
    if args.wants("due") {
        report.insert("due".into(), due(&setup).await?);
    }
    if args.wants("e2e") {
        report.insert("end_to_end".into(), end_to_end(&setup).await?);
    }
    if args.wants("fanout") {
        report.insert("fanout".into(), fanout(&setup).await?);
    }
    if args.wants("restart") {
        report.insert("restart".into(), restart(&setup).await?);
    }
    if args.wants("recovery") {
        report.insert("recovery".into(), recovery(&setup).await?);
    }
    if args.wants("fairness") {
        report.insert("fairness".into(), fairness(&setup).await?);
    }
    if args.wants("cluster") {
        if setup.postgres.is_some() {
            report.insert("cluster".into(), cluster(&setup).await?);
        } else if !args.sections.is_empty() {
            anyhow::bail!("the cluster section needs --store postgres");
        }
    }
    if args.wants("coldstart") {
        report.insert("cold_start".into(), cold_start(&setup).await?);
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn bundled(name: &str) -> anyhow::Result<PathBuf> {
    component(&format!("plugins/dist/{name}.wasm"))
}

/// 1. The sandbox, in process: per-job time and component load times.
async fn sandbox(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let document: String = (0..40)
        .map(|i| format!("Paragraph {i}. The keeper climbed the stairs at dusk. The lamp was lit. Ships passed.\n\n"))
        .collect();
    let runs = vec![
        (
            "noop".to_string(),
            setup.noop.clone(),
            "{}".to_string(),
            setup.scale(5000, 500),
        ),
        (
            "characters".into(),
            bundled("characters")?,
            r#"{"theme":"pirates","count":3}"#.into(),
            setup.scale(300, 50),
        ),
        (
            "factions".into(),
            bundled("factions")?,
            r#"{"theme":"pirates","count":3}"#.into(),
            setup.scale(300, 50),
        ),
        (
            "documents".into(),
            bundled("documents")?,
            json!({ "text": document }).to_string(),
            setup.scale(200, 30),
        ),
        // The same per language: a trivial run, then a `characters`-like job (6 and 3
        // steps of `complete_all` over 3 items).
        (
            "noop-py".into(),
            component("target/plugins/wasm32-wasip2/release/kiln_fixture_hostile_py.wasm")?,
            r#"{"mode":"ok"}"#.into(),
            setup.scale(2000, 200),
        ),
        (
            "noop-js".into(),
            component("target/plugins/wasm32-wasip2/release/kiln_fixture_hostile_js.wasm")?,
            r#"{"mode":"ok"}"#.into(),
            setup.scale(2000, 200),
        ),
        (
            "settings-py".into(),
            bundled("settings")?,
            r#"{"theme":"pirates","count":3}"#.into(),
            setup.scale(300, 50),
        ),
        (
            "relics-js".into(),
            bundled("relics")?,
            r#"{"theme":"pirates","count":3}"#.into(),
            setup.scale(300, 50),
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
    Ok(json!({ "per_job": run_figures, "load": load_figures }))
}

/// 2. Durable submits through HTTP (jobs scheduled for 2099: only the enqueue is measured).
async fn submits(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let server = setup.store_server("submit").await?;
    let later = json!({ "type": "noop", "payload": {}, "run_at": "2099-01-01T00:00:00Z" });
    let mut figures = Vec::new();
    for (concurrency, total) in [
        (1, setup.scale(2000, 300)),
        (16, setup.scale(16000, 1600)),
        (64, setup.scale(32000, 3200)),
        (256, setup.scale(32768, 4096)),
    ] {
        figures.push(http::submits(&server.base, later.clone(), concurrency, total).await?);
    }
    server.stop();
    println!(
        "\nDurable submits, POST /v1/jobs (acknowledged after the commit; {}):",
        setup.store_name()
    );
    println!(
        "  {:<12} {:>8} {:>10} {:>10} {:>10}",
        "concurrency", "submits", "per s", "p50 us", "p99 us"
    );
    for f in &figures {
        println!(
            "  {:<12} {:>8} {:>10.0} {:>10.1} {:>10.1}",
            f.concurrency, f.submits, f.per_second, f.latency.p50_us, f.latency.p99_us
        );
    }
    Ok(json!({ "store": setup.store_name(), "figures": figures }))
}

/// Bulk enqueue through `POST /v1/batches` (batches of 1,000 and of 10,000 no-op jobs,
/// one client, each batch acknowledged after its one commit).
async fn bulk(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let server = setup.store_server("bulk").await?;
    let mut figures = Vec::new();
    for (size, batches) in [(1000, setup.scale(100, 10)), (10_000, setup.scale(20, 2))] {
        figures.push(http::bulk(&server.base, "noop", size, batches).await?);
    }
    server.stop();
    println!(
        "\nBulk enqueue, POST /v1/batches (one client; each batch one durable commit; {}):",
        setup.store_name()
    );
    println!(
        "  {:<12} {:>8} {:>12} {:>12} {:>12}",
        "batch size", "batches", "jobs/s", "p50 ms", "p99 ms"
    );
    for f in &figures {
        println!(
            "  {:<12} {:>8} {:>12.0} {:>12.1} {:>12.1}",
            f.batch_size,
            f.batches,
            f.jobs_per_second,
            f.latency.p50_us / 1000.0,
            f.latency.p99_us / 1000.0
        );
    }
    Ok(json!({ "store": setup.store_name(), "figures": figures }))
}

/// Pre-enqueued no-op jobs all due at one instant, first start to last end: without
/// concurrency keys, with 100 users' keys, and with a key per job (the scheduler's
/// fairness is paid for per key).
async fn due(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let total = setup.scale(20000, 2000);
    let mut figures = Vec::new();
    for keys in [0, 100, total] {
        let server = setup.store_server(&format!("due-{keys}")).await?;
        figures.push(http::due_at_once(&server.base, "noop", keys, total).await?);
        server.stop();
    }
    println!(
        "\nPre-enqueued no-op jobs due at one instant, first start -> last end ({}):",
        setup.store_name()
    );
    println!(
        "  {:<10} {:>8} {:>10} {:>10}",
        "keys", "jobs", "span ms", "jobs/s"
    );
    for f in &figures {
        println!(
            "  {:<10} {:>8} {:>10} {:>10.0}",
            f.keys, f.jobs, f.span_ms, f.jobs_per_second
        );
    }
    Ok(json!({ "store": setup.store_name(), "figures": figures }))
}

/// Section 3, no-op jobs end to end: saturated (64 clients submitting as fast as they
/// can), and unloaded (one client, one job at a time) for submit->start without a queue.
async fn end_to_end(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let server = setup.store_server("e2e").await?;
    let saturated = http::end_to_end(
        std::slice::from_ref(&server.base),
        "noop",
        64,
        setup.scale(20000, 2000),
    )
    .await?;
    server.stop();
    let server = setup.store_server("e2e-1").await?;
    let unloaded = http::end_to_end(
        std::slice::from_ref(&server.base),
        "noop",
        1,
        setup.scale(2000, 200),
    )
    .await?;
    server.stop();
    println!(
        "\nNo-op jobs end to end (submit -> start is send -> `running` event received on /v1/events; {}):",
        setup.store_name()
    );
    println!(
        "  {:<10} {:>8} {:>10} {:>16} {:>16}",
        "clients", "jobs", "jobs/s", "to start p50 us", "to start p99 us"
    );
    for f in [&saturated, &unloaded] {
        println!(
            "  {:<10} {:>8} {:>10.0} {:>16.1} {:>16.1}",
            f.concurrency,
            f.jobs,
            f.jobs_per_second,
            f.submit_to_start.p50_us,
            f.submit_to_start.p99_us
        );
    }
    Ok(json!({ "store": setup.store_name(), "saturated": saturated, "unloaded": unloaded }))
}

/// A cluster of 1, 2 and 3 nodes on the PostgreSQL database.
async fn cluster(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let url = setup.postgres.as_deref().expect("a database");
    let mut figures = Vec::new();
    for nodes in 1..=3 {
        empty_kiln_tables(url).await?;
        let config = format!("{SERVER_CONFIG}\n[store]\nurl = \"{url}\"\n");
        let servers = (0..nodes)
            .map(|node| {
                let dir = setup.data.path().join(format!("cluster-{nodes}-{node}"));
                server::KilnServer::start(&dir, setup.plugins.path(), &config)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Nodes claim once their plugins are loaded, which the first heartbeat follows.
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        figures.push(
            cluster::measure(&servers, setup.scale(10_000, 1000), setup.scale(300, 50)).await?,
        );
        for server in servers {
            server.stop();
        }
    }
    println!("\nA cluster on one PostgreSQL (no-op jobs; starts seen on the first node's feed):");
    println!(
        "  {:<6} {:>10} {:>16} {:>16} {:>12} {:>18} {:>18}",
        "nodes",
        "jobs/s",
        "to start p50 us",
        "to start p99 us",
        "1/node p50",
        "cross-node p50 us",
        "cross-node p99 us"
    );
    for f in &figures {
        let (p50, p99) = f
            .cross_node_sse
            .map_or((f64::NAN, f64::NAN), |s| (s.p50_us, s.p99_us));
        println!(
            "  {:<6} {:>10.0} {:>16.1} {:>16.1} {:>12.1} {:>18.1} {:>18.1}",
            f.nodes,
            f.saturated.jobs_per_second,
            f.saturated.submit_to_start.p50_us,
            f.saturated.submit_to_start.p99_us,
            f.unloaded.submit_to_start.p50_us,
            p50,
            p99
        );
    }
    Ok(json!(figures))
}

/// 4. SSE fan-out.
async fn fanout(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let config = "max_streams = 20000\n[queues.hostile]\nmax_concurrent = 1\n\
                  [limits]\nmax_events_per_second = 1000000\n\
                  [providers.offline]\nkind = \"offline\"\nlatency_ms = 0\n";
    let mut figures = Vec::new();
    // A burst of events measures delivery throughput; a paced job (10 events per
    // second) measures fan-out latency without a backlog of the burst's own making.
    let runs = [
        (setup.scale(1000, 100), (setup.scale(1000, 100), 0)),
        (setup.scale(10_000, 500), (50, 100)),
    ];
    for (subscribers, shape) in runs {
        for stream in [fanout::Stream::Job, fanout::Stream::All] {
            let dir = setup
                .data
                .path()
                .join(format!("fanout-{subscribers}-{stream:?}"));
            let server = server::KilnServer::start(&dir, setup.plugins.path(), config)?;
            figures.push(fanout::fanout(&server, stream, subscribers, shape).await?);
            server.stop();
        }
    }
    println!(
        "\nSSE fan-out (one job emitting progress as fast as it can; latency from the plugin's emit to arrival):"
    );
    println!(
        "  {:<6} {:>11} {:>7} {:>6} {:>12} {:>14} {:>10} {:>10} {:>14}",
        "stream",
        "subscribers",
        "events",
        "pace",
        "deliveries",
        "deliveries/s",
        "p50 ms",
        "p99 ms",
        "idle KB/sub"
    );
    for f in &figures {
        println!(
            "  {:<6} {:>11} {:>7} {:>6} {:>12} {:>14.0} {:>10.2} {:>10.2} {:>14.1}",
            format!("{:?}", f.stream),
            f.subscribers,
            f.events,
            format!("{}ms", f.pace_ms),
            f.deliveries,
            f.deliveries_per_second,
            f.latency.p50_us / 1000.0,
            f.latency.p99_us / 1000.0,
            f.rss_per_idle_subscriber_bytes / 1024.0
        );
    }
    Ok(json!(figures))
}

/// 5. Restart with many stored jobs.
async fn restart(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let jobs = setup.scale(100_000, 10_000);
    let dir = setup.data.path().join("restart");
    std::fs::create_dir_all(&dir)?;
    restart::populate(&dir, jobs).await?;
    let figure = restart::restart(&dir, setup.plugins.path(), SERVER_CONFIG, jobs)?;
    println!(
        "\nRestart: {} stored queued jobs ({:.0} MB database): start to serving {:.0} ms",
        figure.jobs,
        figure.db_bytes as f64 / 1e6,
        figure.start_to_serving_ms
    );
    Ok(json!(figure))
}

/// Section 8, cold start: `kiln serve` with every bundled job type (three in Rust,
/// `settings` in Python, `relics` in JavaScript), from spawn to serving (`/healthz` 200,
/// every plugin loaded), first with an empty data dir (every component compiled), then
/// again (every component from the compiled cache).
async fn cold_start(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let plugins = repo_root().join("plugins/dist");
    let dir = setup.data.path().join("cold-start");
    let first = restart::time_to_ready(&dir, &plugins, SERVER_CONFIG).await?;
    let cached = restart::time_to_ready(&dir, &plugins, SERVER_CONFIG).await?;
    println!(
        "\nCold start with the 5 bundled job types (2 of them Python/JS): {first:.0} ms with an empty \
         cache, {cached:.0} ms from the compiled cache"
    );
    Ok(json!({ "empty_cache_ms": first, "cached_ms": cached }))
}

/// 6. Recovery: the provider calls the journal saves.
async fn recovery(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let figure =
        restart::recovery(&setup.data.path().join("recovery"), setup.plugins.path(), 5).await?;
    println!(
        "\nRecovery: a characters job of {} LLM calls killed (SIGKILL) at {}%: {} calls replayed from the journal, {} paid after the restart",
        figure.calls_per_job,
        figure.progress_at_kill,
        figure.replayed_calls,
        figure.paid_after_restart
    );
    Ok(json!(figure))
}

/// 7. CPU fairness: streamed jobs next to guests looping on every core.
async fn fairness(setup: &Setup) -> anyhow::Result<serde_json::Value> {
    let dir = setup.data.path().join("fairness");
    let server = server::KilnServer::start(&dir, setup.plugins.path(), fairness::CONFIG)?;
    let rounds = fairness::fairness(&server, 4).await?;
    server.stop();
    println!(
        "\nCPU fairness (4 streamed characters jobs of 18 calls, offline 250 ms; CPU loops that call no import):"
    );
    println!(
        "  {:<6} {:>6} {:>10} {:>16} {:>16}",
        "loops", "jobs", "seconds", "healthz p50 ms", "healthz max ms"
    );
    for r in &rounds {
        println!(
            "  {:<6} {:>6} {:>10.2} {:>16.2} {:>16.2}",
            r.loops,
            r.jobs,
            r.seconds,
            r.healthz.p50_us / 1000.0,
            r.healthz.max_us / 1000.0
        );
    }
    Ok(json!(rounds))
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
