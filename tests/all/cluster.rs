//! A real cluster: three `kiln serve` processes on one real PostgreSQL server. Jobs
//! submitted to any node run on any node exactly once through a kill -9, a node stopped
//! past its lease is fenced off, streams follow jobs across nodes, queue limits hold for
//! the whole cluster, and maintenance survives the leader's death.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_provider::{Behavior, FakeProvider};
use crate::pg::PgServer;
use crate::support::*;

const LONG: Duration = Duration::from_secs(60);
const KEY_ENV: &str = "KILN_CLUSTER_TEST_KEY";

/// Three nodes (or more, or fewer) on one database, each with its own data directory.
struct Cluster {
    pg: PgServer,
    url: String,
    plugins: tempfile::TempDir,
    config: String,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<KilnProcess>>,
    client: reqwest::Client,
}

impl Cluster {
    /// `config`'s top-level keys and sections come before the `[store]` table.
    async fn start(count: usize, plugins: &[&str], config: &str) -> Self {
        let pg = PgServer::start();
        let url = pg.database("kiln");
        let mut cluster = Self {
            pg,
            url,
            plugins: plugins_dir(plugins),
            config: config.to_string(),
            dirs: (0..count).map(|_| tempfile::tempdir().unwrap()).collect(),
            nodes: Vec::new(),
            client: reqwest::Client::new(),
        };
        for index in 0..count {
            let node = cluster.spawn(index);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_for_nodes(count).await;
        cluster
    }

    fn spawn(&self, index: usize) -> KilnProcess {
        // `[store]` goes last: every key after it would belong to it.
        let config = format!("{}\n[store]\nurl = \"{}\"\n", self.config, self.url);
        // Every node can sign webhooks with the webhook tests' secret.
        let env = [("KILN_TEST_WEBHOOK_SECRET", crate::webhooks::SECRET)];
        KilnProcess::start_with_env(self.dirs[index].path(), self.plugins.path(), &config, &env)
    }

    fn node(&self, index: usize) -> &KilnProcess {
        self.nodes[index].as_ref().expect("node is running")
    }

    fn base(&self, index: usize) -> String {
        self.node(index).base.clone()
    }

    /// The nodes still running.
    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// Every running node's log, for failure messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| node.as_ref().map(|n| format!("--- node {i}:\n{}", n.log())))
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn nodes_seen_by(&self, index: usize) -> Vec<Value> {
        let (status, body) = get_json(&self.client, &self.node(index).url("/v1/nodes")).await;
        assert_eq!(status, 200, "{body}\n{}", self.logs());
        body["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until the first running node lists `count` live nodes.
    async fn wait_for_nodes(&self, count: usize) {
        let first = self.alive()[0];
        let deadline = Instant::now() + LONG;
        loop {
            let listed = self.nodes_seen_by(first).await;
            let alive = listed.iter().filter(|n| n["status"] == "alive").count();
            if alive >= count {
                return;
            }
            assert!(Instant::now() < deadline, "{listed:#?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the running node whose id is `id`, by its address in `/v1/nodes`.
    async fn index_of(&self, id: &Value) -> usize {
        let listed = self.nodes_seen_by(self.alive()[0]).await;
        let node = listed
            .iter()
            .find(|n| n["id"] == *id)
            .unwrap_or_else(|| panic!("no node {id}: {listed:#?}"));
        let address = format!("http://{}", node["address"].as_str().unwrap());
        self.alive()
            .into_iter()
            .find(|i| self.node(*i).base == address)
            .unwrap_or_else(|| panic!("node {id} at {address} is not running"))
    }

    /// The job as `index` sees it.
    async fn job(&self, index: usize, id: &str) -> Value {
        let (status, job) = get_json(
            &self.client,
            &self.node(index).url(&format!("/v1/jobs/{id}")),
        )
        .await;
        assert_eq!(status, 200, "{job}\n{}", self.logs());
        job
    }

    /// Reads the SSE stream at `url` from its start until `enough` holds for what came,
    /// then drops the connection.
    async fn read_until(&self, url: &str, enough: impl Fn(&[SseEvent]) -> bool) -> Vec<SseEvent> {
        let mut reader = SseReader::new(open_sse(&self.client, url, None).await);
        let mut seen = Vec::new();
        while !enough(&seen) {
            let event = reader
                .next(LONG)
                .await
                .unwrap_or_else(|| panic!("stream ended early: {seen:#?}\n{}", self.logs()));
            seen.push(event);
        }
        seen
    }

    /// Polls the job on `index` until `done` holds for it.
    async fn wait_job(&self, index: usize, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LONG;
        loop {
            let job = self.job(index, id).await;
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "{job:#}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submits `payload` (a hostile job) to node 0 and waits until it runs: its id, the job
    /// as it started, and the index of the node running it.
    async fn run_hostile(&self, payload: Value) -> (String, Value, usize) {
        let id = submit_ok(
            &self.client,
            &self.base(0),
            json!({"type": "hostile", "payload": payload}),
        )
        .await;
        let job = self.wait_job(0, &id, |j| j["status"] == "running").await;
        let runner = self.index_of(&job["node"]).await;
        (id, job, runner)
    }

    /// A node other than those in `not`.
    fn other_than(&self, not: &[usize]) -> usize {
        self.alive()
            .into_iter()
            .find(|i| !not.contains(i))
            .expect("another running node")
    }

    fn signal(&self, index: usize, signal: &str) {
        let pid = self.node(index).child.id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// A fake OpenAI-format provider as the `default` model, with `settings` for it.
fn provider_config(fake: &FakeProvider, settings: &str) -> String {
    // SAFETY: set before any node starts, to the same value by every test.
    unsafe { std::env::set_var(KEY_ENV, "sk-cluster-test") };
    format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\n{settings}\n\
         [models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    )
}

/// Event ids of a job's log, checked gap-free, duplicate-free and ending once.
fn assert_whole_log(id: &str, events: &[SseEvent], logs: &dyn Fn() -> String) {
    let seqs: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{id}: {events:#?}\n{}",
        logs()
    );
    let endings = events
        .iter()
        .filter(|e| matches!(e.event.as_str(), "completed" | "failed" | "cancelled"))
        .count();
    assert_eq!(endings, 1, "{id}: {events:#?}");
}

/// 500 jobs submitted round-robin to three nodes, with a cluster-wide queue limit of 6
/// and one node SIGKILLed mid-run and restarted later: every job completes exactly once,
/// the jobs the dead node was running are on their second attempt (and only those), no
/// LLM call answered before the kill is paid again, and the provider never sees more
/// requests at once than the queue's cluster-wide limit (three nodes with a per-node
/// limit would send up to 18), which the cluster does reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_jobs_run_once_across_three_nodes_through_a_kill_9() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 40,
        ..Behavior::default()
    })
    .await;
    let config = format!(
        "[queues.hostile]\nmax_concurrent = 6\n\n{}",
        provider_config(&fake, "max_concurrent = 64")
    );
    let mut cluster = Cluster::start(3, &["fixture:hostile"], &config).await;
    const JOBS: usize = 500;
    const CALLS: u64 = 2;
    let mut ids = Vec::new();
    for n in 0..JOBS {
        let base = cluster.base(n % 3);
        let (status, job) = submit(
            &cluster.client,
            &base,
            json!({"type": "hostile", "payload": {"mode": "llm_calls", "n": CALLS}}),
        )
        .await;
        assert_eq!(status, 202, "{job}\n{}", cluster.logs());
        ids.push(id_of(&job));
    }
    // Kill node 1 once a fifth of the jobs are done and it is running some.
    let victim_id = cluster.nodes_seen_by(1).await;
    let victim_id = victim_id.iter().find(|n| n["this_node"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done_sql = "SELECT count(*) FROM kiln_jobs WHERE status = 2";
    let running_on_victim =
        format!("SELECT count(*) FROM kiln_jobs WHERE status = 1 AND node = '{victim_id}'");
    let deadline = Instant::now() + LONG;
    while cluster.pg.psql("kiln", done_sql).parse::<usize>().unwrap() < JOBS / 5
        || cluster.pg.psql("kiln", &running_on_victim) == "0"
    {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.nodes[1].as_mut().unwrap().kill9();
    cluster.nodes[1] = None;
    let interrupted: HashSet<String> = cluster
        .pg
        .psql(
            "kiln",
            &format!("SELECT id FROM kiln_jobs WHERE status = 1 AND node = '{victim_id}'"),
        )
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!interrupted.is_empty());
    // A request the dead node had written may still be counted a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls_at_kill = fake.calls();
    // Node 1 comes back once more than half of the jobs are done.
    while cluster.pg.psql("kiln", done_sql).parse::<usize>().unwrap() < JOBS / 2 {
        assert!(Instant::now() < deadline + LONG, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.nodes[1] = Some(cluster.spawn(1));

    let mut paid = 0;
    for (n, id) in ids.iter().enumerate() {
        let reader = n % 3;
        let job = wait_terminal(&cluster.client, &cluster.base(reader), id, LONG * 2).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", cluster.logs());
        let expected_attempt = if interrupted.contains(id) { 2 } else { 1 };
        assert_eq!(job["attempt"], expected_attempt, "{job:#}");
        assert!(
            job["node"].is_null(),
            "a finished job runs nowhere: {job:#}"
        );
        paid += job["usage"]["llm_calls"].as_u64().unwrap();
        let events = all_events(&cluster.client, &cluster.base(reader), id, LONG).await;
        assert_whole_log(id, &events, &|| cluster.logs());
        let started_on = events
            .iter()
            .filter(|e| e.event == "status" && e.data["status"] == "running")
            .count();
        assert_eq!(
            started_on as u64,
            job["attempt"].as_u64().unwrap(),
            "{events:#?}"
        );
    }
    // Each job's calls are counted as paid once, whichever attempt paid them.
    assert_eq!(paid, JOBS as u64 * CALLS);
    // The provider saw each call once, but for those in flight on the dead node when it
    // died (at most one per job it ran), and no call it had answered before.
    let seen = fake.calls() as u64;
    assert!(
        seen >= paid && seen <= paid + interrupted.len() as u64,
        "{seen} calls for {paid} paid, {} interrupted, {calls_at_kill} at the kill",
        interrupted.len()
    );
    assert_eq!(
        fake.max_in_flight(),
        6,
        "the queue's cluster-wide limit held and was reached\n{}",
        cluster.logs()
    );
}

/// A stream opened on one node for a job running on another, cut, and resumed with
/// `Last-Event-ID` on a third: together, every event once and in order, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_follows_a_job_on_another_node_and_resumes_on_a_third() {
    let cluster = Cluster::start(3, &["fixture:hostile"], "").await;
    let (id, _, runner) = cluster
        .run_hostile(json!({"mode": "events", "n": 40, "pace_ms": 50}))
        .await;
    let first = cluster.other_than(&[runner]);
    let third = cluster.other_than(&[runner, first]);

    let url = |index: usize| cluster.node(index).url(&format!("/v1/jobs/{id}/events"));
    // Read until some of the plugin's progress has arrived live, then cut.
    let mut seen = cluster
        .read_until(&url(first), |seen| {
            seen.iter().filter(|e| e.event == "progress").count() >= 5
        })
        .await;
    let last = seen.last().unwrap().id;
    let rest = read_sse(
        open_sse(&cluster.client, &url(third), last).await,
        None,
        LONG,
    )
    .await;
    seen.extend(rest);
    assert_whole_log(&id, &seen, &|| cluster.logs());
    let progress = seen.iter().filter(|e| e.event == "progress").count();
    assert_eq!(progress, 40, "{seen:#?}");
    assert_eq!(seen.last().unwrap().event, "completed", "{seen:#?}");
}

/// A batch submitted on one node, its jobs claimed by either: its stream, read on the
/// other node and resumed on the first, is its whole log, 1, 2, 3… to `batch_completed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stream_follows_its_jobs_on_any_node() {
    let cluster = Cluster::start(2, &["fixture:hostile"], "").await;
    let items: Vec<Value> = (0..8)
        .map(|_| json!({"mode": "events", "n": 5, "pace_ms": 60}))
        .collect();
    let response = cluster
        .client
        .post(cluster.node(0).url("/v1/batches"))
        .json(&json!({"type": "hostile", "items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await.unwrap();
    let id = id_of(&batch);
    let url = |index: usize| cluster.node(index).url(&format!("/v1/batches/{id}/events"));
    let mut seen = cluster.read_until(&url(1), |seen| seen.len() >= 10).await;
    let last = seen.last().unwrap().id;
    let mut rest = SseReader::new(open_sse(&cluster.client, &url(0), last).await);
    seen.extend(rest.read_to_end(LONG).await);
    let shown = || format!("{seen:#?}\n{}", cluster.logs());
    for (i, event) in seen.iter().enumerate() {
        assert_eq!(event.id, Some(i as u64 + 1), "gap or repeat: {}", shown());
    }
    let end = seen.last().unwrap();
    assert_eq!(end.event, "batch_completed", "{}", shown());
    assert_eq!(end.data["counts"]["completed"], 8, "{}", shown());
    for job in batch["jobs"].as_array().unwrap() {
        let url = cluster
            .node(1)
            .url(&format!("/v1/jobs/{}", job.as_str().unwrap()));
        let (_, job) = get_json(&cluster.client, &url).await;
        assert_eq!(job["status"], "completed", "{job:#}");
    }
}

/// A node stopped (SIGSTOP) past its lease loses its job to another node; when it runs
/// again (SIGCONT) with its provider call answered, it can commit nothing for the old
/// attempt: the job's result is the second attempt's answer, and the log has one ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_its_lease_cannot_commit_its_old_attempt() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 2_000,
        texts_by_call: vec!["from the first attempt".into()],
        ..Behavior::default()
    })
    .await;
    let config = provider_config(&fake, "");
    let mut cluster = Cluster::start(3, &["fixture:hostile"], &config).await;
    let (id, job, stale) = cluster.run_hostile(json!({"mode": "sleep_llm"})).await;
    let deadline = Instant::now() + LONG;
    while fake.calls() == 0 {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.signal(stale, "-STOP");
    let watcher = cluster.other_than(&[stale]);
    let moved = cluster
        .wait_job(watcher, &id, |j| {
            j["attempt"] == 2 && j["status"] == "running"
        })
        .await;
    assert_ne!(moved["node"], job["node"], "{moved:#}");
    // The first attempt's answer is waiting in the stopped node's socket by now.
    while fake.answered() == 0 {
        assert!(Instant::now() < deadline + LONG, "{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.signal(stale, "-CONT");

    let done = wait_terminal(&cluster.client, &cluster.base(watcher), &id, LONG).await;
    let logs = || cluster.logs();
    assert_eq!(done["status"], "completed", "{done:#}\n{}", logs());
    assert_eq!(done["attempt"], 2, "{done:#}");
    assert_eq!(
        done["result"]["text"],
        json!(Behavior::default().text()),
        "the result is the second attempt's: {done:#}\n{}",
        logs()
    );
    assert_eq!(done["usage"]["llm_calls"], 1, "{done:#}");
    let events = all_events(&cluster.client, &cluster.base(watcher), &id, LONG).await;
    assert_whole_log(&id, &events, &logs);
    // The old node is back and well: it serves and runs jobs again.
    let stale_base = cluster.base(stale);
    let again = submit_ok(
        &cluster.client,
        &stale_base,
        json!({"type": "hostile", "payload": {"mode": "ok"}}),
    )
    .await;
    let again = wait_terminal(&cluster.client, &stale_base, &again, LONG).await;
    assert_eq!(
        again["status"],
        "completed",
        "{again:#}\n{}",
        cluster.node(stale).log()
    );
    // It noticed it had lost the attempt and said so.
    let stale_log = cluster.node(stale).log();
    assert!(
        stale_log.contains(&id),
        "the fenced node names the job it lost:\n{stale_log}"
    );
    cluster.nodes[stale].as_mut().unwrap().kill9();
}

/// A cancel posted to any node stops a CPU loop running on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_one_node_stops_a_loop_running_on_another() {
    let cluster = Cluster::start(3, &["fixture:hostile"], "").await;
    let (id, _, runner) = cluster.run_hostile(json!({"mode": "loop"})).await;
    let other = cluster.other_than(&[runner]);
    let asked = Instant::now();
    let (status, body) = post_empty(
        &cluster.client,
        &cluster.node(other).url(&format!("/v1/jobs/{id}/cancel")),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    let done = cluster
        .wait_job(runner, &id, |j| j["status"] == "cancelled")
        .await;
    eprintln!("cancelled across nodes in {:?}", asked.elapsed());
    assert!(done["node"].is_null(), "{done:#}");
    let events = all_events(&cluster.client, &cluster.base(other), &id, LONG).await;
    assert_whole_log(&id, &events, &|| cluster.logs());
    assert_eq!(events.last().unwrap().event, "cancelled", "{events:#?}");
}

/// SIGTERM hands a node's running job back to the cluster before it exits (no lease to
/// wait out): the job is queued at once, with no node, and another node runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_running_jobs_back_to_the_cluster() {
    let mut cluster = Cluster::start(2, &["fixture:hostile"], "").await;
    let (id, _, runner) = cluster
        .run_hostile(json!({"mode": "events", "n": 100, "pace_ms": 50}))
        .await;
    let other = cluster.other_than(&[runner]);
    // Only the other node may take it: stop it claiming until the runner has exited.
    cluster.signal(other, "-STOP");
    let exited = cluster.nodes[runner]
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(20));
    let runner_log = cluster.node(runner).log();
    cluster.nodes[runner] = None;
    assert!(exited, "{runner_log}");
    let row = cluster.pg.psql(
        "kiln",
        &format!("SELECT status, node IS NULL FROM kiln_jobs WHERE id = '{id}'"),
    );
    cluster.signal(other, "-CONT");
    assert_eq!(
        row, "0|t",
        "queued and on no node as the runner exits\n{runner_log}"
    );
    let done = wait_terminal(&cluster.client, &cluster.base(other), &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}\n{}", cluster.logs());
    assert_eq!(done["attempt"], 2, "{done:#}");
}

/// Expiry runs on one leader; when the leader is SIGKILLed another node takes the lease
/// and finished jobs still expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_expiry_goes_on() {
    let mut cluster = Cluster::start(
        3,
        &["fixture:hostile"],
        "job_ttl_secs = 1\nsweep_interval_secs = 1",
    )
    .await;
    let leader_of = async |cluster: &Cluster, index: usize| -> Option<String> {
        let listed = cluster.nodes_seen_by(index).await;
        let leaders: Vec<&Value> = listed.iter().filter(|n| n["leader"] == true).collect();
        assert!(leaders.len() <= 1, "{listed:#?}");
        leaders
            .first()
            .map(|n| n["id"].as_str().unwrap().to_string())
    };
    let deadline = Instant::now() + LONG;
    let leader = loop {
        if let Some(leader) = leader_of(&cluster, 0).await {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expires = async |cluster: &Cluster, index: usize| {
        let base = cluster.base(index);
        let id = submit_ok(
            &cluster.client,
            &base,
            json!({"type": "hostile", "payload": {"mode": "ok"}}),
        )
        .await;
        let job = wait_terminal(&cluster.client, &base, &id, LONG).await;
        assert_eq!(job["status"], "completed", "{job:#}");
        let deadline = Instant::now() + LONG;
        loop {
            let response = cluster
                .client
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await
                .unwrap();
            if response.status() == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never expired\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    expires(&cluster, 0).await;

    let old = cluster.index_of(&json!(leader)).await;
    cluster.nodes[old].as_mut().unwrap().kill9();
    cluster.nodes[old] = None;
    let survivor = cluster.alive()[0];
    let killed_at = Instant::now();
    let new_leader = loop {
        match leader_of(&cluster, survivor).await {
            Some(new) if new != leader => break new,
            _ => {}
        }
        assert!(
            Instant::now() < deadline + LONG,
            "no new leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{new_leader} took over {:?} after the kill",
        killed_at.elapsed()
    );
    expires(&cluster, survivor).await;
}

/// `max_queued` counts the whole cluster's queue (a node that counted only its own
/// submits would accept the fourth), and an idempotency key sent to two nodes at once
/// makes one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_bound_and_idempotency_keys_hold_across_nodes() {
    let cluster = Cluster::start(3, &["fixture:hostile"], "max_queued = 3").await;
    let later = rfc3339_in(Duration::from_secs(3600));
    let delayed = json!({"type": "hostile", "payload": {"mode": "ok"}, "run_at": later});
    let mut ids = Vec::new();
    for index in 0..3 {
        let (status, job) = submit(&cluster.client, &cluster.base(index), delayed.clone()).await;
        assert_eq!(status, 202, "{job:#}");
        ids.push(id_of(&job));
    }
    for index in 0..3 {
        let (status, body) = submit(&cluster.client, &cluster.base(index), delayed.clone()).await;
        assert_eq!(status, 429, "node {index}: {body:#}\n{}", cluster.logs());
    }
    let (status, body) = post_empty(
        &cluster.client,
        &cluster.node(1).url(&format!("/v1/jobs/{}/cancel", ids[0])),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    let (status, body) = submit(&cluster.client, &cluster.base(2), delayed.clone()).await;
    assert_eq!(status, 202, "a freed place is the cluster's: {body:#}");
    for id in ids.iter().skip(1) {
        post_empty(
            &cluster.client,
            &cluster.node(0).url(&format!("/v1/jobs/{id}/cancel")),
        )
        .await;
    }

    let keyed = |index: usize| {
        cluster
            .client
            .post(cluster.node(index).url("/v1/jobs"))
            .header("idempotency-key", "order-7")
            .json(&json!({"type": "hostile", "payload": {"mode": "ok"}}))
            .send()
    };
    let mut answers: HashMap<String, Vec<u16>> = HashMap::new();
    for _ in 0..5 {
        let (a, b, c) = futures::join!(keyed(0), keyed(1), keyed(2));
        for response in [a, b, c] {
            let response = response.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            answers.entry(id_of(&body)).or_default().push(status);
        }
    }
    assert_eq!(answers.len(), 1, "one job for one key: {answers:#?}");
}

/// A queue's `max_per_key` holds for the whole cluster: one key's jobs, submitted to
/// both nodes, never run two at once, while another key's run beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_key_holds_across_nodes() {
    let config = "[queues.hostile]\nmax_concurrent = 4\nmax_per_key = 1\n";
    let cluster = Cluster::start(2, &["fixture:hostile"], config).await;
    let job = |key: &str| {
        json!({"type": "hostile", "payload": {"mode": "events", "n": 3, "pace_ms": 150},
               "concurrency_key": key})
    };
    let mut a = Vec::new();
    for index in [0, 1, 0, 1] {
        a.push(submit_ok(&cluster.client, &cluster.base(index), job("user-a")).await);
    }
    let mut b = Vec::new();
    for index in [1, 0] {
        b.push(submit_ok(&cluster.client, &cluster.base(index), job("user-b")).await);
    }
    let mut a_jobs = Vec::new();
    for id in &a {
        a_jobs.push(
            cluster
                .wait_job(0, id, |j| j["status"] == "completed")
                .await,
        );
    }
    let mut b_jobs = Vec::new();
    for id in &b {
        b_jobs.push(
            cluster
                .wait_job(1, id, |j| j["status"] == "completed")
                .await,
        );
    }
    let shown = || format!("a: {a_jobs:#?}\nb: {b_jobs:#?}\n{}", cluster.logs());
    assert_eq!(most_at_once(&a_jobs), 1, "{}", shown());
    let last_a_start = a_jobs
        .iter()
        .filter_map(|j| time_ms(j, "started_at"))
        .max()
        .unwrap();
    for job in &b_jobs {
        assert!(
            time_ms(job, "started_at").unwrap() < last_a_start,
            "user b waited behind user a's jobs: {}",
            shown()
        );
    }
}

/// A chain of jobs submitted to different nodes: each runs once the one before it has
/// completed, whichever node ran that one; a failure halfway fails the rest of the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_hold_across_nodes() {
    let cluster = Cluster::start(2, &["fixture:hostile"], "").await;
    let step = json!({"type": "hostile", "payload": {"mode": "events", "n": 2, "pace_ms": 100}});
    let mut chain: Vec<String> = Vec::new();
    for index in 0..4 {
        let mut body = step.clone();
        if index == 2 {
            body["payload"] = json!({"mode": "permanent"});
        }
        if let Some(last) = chain.last() {
            body["depends_on"] = json!([last]);
        }
        chain.push(submit_ok(&cluster.client, &cluster.base(index % 2), body).await);
    }
    let mut jobs = Vec::new();
    for id in &chain {
        jobs.push(
            cluster
                .wait_job(0, id, |j| {
                    matches!(j["status"].as_str(), Some("completed" | "failed"))
                })
                .await,
        );
    }
    let shown = || format!("{jobs:#?}\n{}", cluster.logs());
    assert_eq!(jobs[0]["status"], "completed", "{}", shown());
    assert_eq!(jobs[1]["status"], "completed", "{}", shown());
    assert!(
        time_ms(&jobs[1], "started_at") >= time_ms(&jobs[0], "finished_at"),
        "{}",
        shown()
    );
    assert_eq!(jobs[2]["error"]["kind"], "permanent", "{}", shown());
    assert_eq!(jobs[3]["error"]["kind"], "dependency_failed", "{}", shown());
    assert_eq!(jobs[3]["started_at"], Value::Null, "{}", shown());
}

/// A schedule in both nodes' config ticks on the leader alone: one job per tick for the
/// whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_ticks_once_for_the_whole_cluster() {
    let config = "[schedules.beat]\ncron = \"* * * * * *\"\ntype = \"hostile\"\n\
                  payload = { mode = \"ok\" }\n";
    let cluster = Cluster::start(2, &["fixture:hostile"], config).await;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let (status, page) = get_json(
        &cluster.client,
        &format!("{}/v1/jobs?limit=100", cluster.base(1)),
    )
    .await;
    assert_eq!(status, 200, "{page:#}");
    let mut ticks: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|job| job["schedule"]["tick"].as_str())
        .collect();
    let submitted = ticks.len();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(
        ticks.len(),
        submitted,
        "a tick with two jobs: {page:#}\n{}",
        cluster.logs()
    );
    assert!(submitted >= 2, "{page:#}\n{}", cluster.logs());
}

/// Webhooks of jobs submitted to both nodes are sent by the leader alone: each end once,
/// and a receiver that failed first gets it again from the outbox in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_sent_once_for_the_whole_cluster() {
    let receiver = crate::webhooks::Receiver::start(vec![500, 500], false).await;
    let config = crate::webhooks::config("");
    let cluster = Cluster::start(2, &["fixture:hostile"], &config).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = json!({"type": "hostile", "payload": {"mode": "ok"},
                          "webhook": {"url": receiver.url}});
        ids.push(submit_ok(&cluster.client, &cluster.base(i % 2), body).await);
    }
    for id in &ids {
        let job = cluster
            .wait_job(1, id, |j| j["webhook"]["delivery"]["state"] == "delivered")
            .await;
        assert_eq!(job["status"], "completed", "{job:#}");
    }
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for received in receiver.received() {
        *per_job
            .entry(received.header("webhook-id").to_string())
            .or_default() += 1;
    }
    // Two first sends failed (500), so two ends were sent twice; every other once.
    assert_eq!(per_job.len(), 10, "{per_job:#?}\n{}", cluster.logs());
    assert_eq!(
        per_job.values().sum::<usize>(),
        12,
        "{per_job:#?}\n{}",
        cluster.logs()
    );
}

/// A provider's `max_concurrent = 2` and `requests_per_minute = 12` hold for three nodes
/// together: the provider never has more than 2 requests in flight nor more than 12 in any
/// 60 s, and the cluster uses both limits in full (per node, 18 jobs would all be sent in
/// the first seconds, up to 6 at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_limits_hold_for_the_whole_cluster() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 300,
        ..Behavior::default()
    })
    .await;
    let config = provider_config(&fake, "max_concurrent = 2\nrequests_per_minute = 12");
    let cluster = Cluster::start(3, &["fixture:hostile"], &config).await;
    const JOBS: usize = 18;
    let mut ids = Vec::new();
    for n in 0..JOBS {
        let id = submit_ok(
            &cluster.client,
            &cluster.base(n % 3),
            json!({"type": "hostile", "payload": {"mode": "sleep_llm"}}),
        )
        .await;
        ids.push(id);
    }
    for (n, id) in ids.iter().enumerate() {
        let job = wait_terminal(&cluster.client, &cluster.base(n % 3), id, LONG * 3).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", cluster.logs());
    }
    let arrivals: Vec<Instant> = fake.seen().iter().map(|seen| seen.at).collect();
    assert_eq!(arrivals.len(), JOBS, "one call per job");
    let minute = Duration::from_secs(60);
    let most_in_a_minute = arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|at| **at >= *start && at.duration_since(*start) < minute)
                .count()
        })
        .max()
        .unwrap();
    let offsets: Vec<Duration> = arrivals.iter().map(|at| *at - arrivals[0]).collect();
    assert_eq!(
        most_in_a_minute, 12,
        "requests_per_minute held for the cluster and was used: {offsets:?}"
    );
    assert_eq!(
        fake.max_in_flight(),
        2,
        "max_concurrent held for the cluster and was used"
    );
}

/// A 429 with `Retry-After: 2` answered to one node pauses the provider on every node:
/// after it, no node sends anything for 2 s (with a pause per node, another node would
/// send as soon as the refused call's slot was free), and every job still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_node_pauses_the_provider_on_all() {
    let fake = FakeProvider::with(Behavior {
        fail_first: 1,
        first_status: 429,
        retry_after: "2".into(),
        delay_ms: 50,
        ..Behavior::default()
    })
    .await;
    let config = provider_config(&fake, "max_concurrent = 1");
    let cluster = Cluster::start(3, &["fixture:hostile"], &config).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let id = submit_ok(
            &cluster.client,
            &cluster.base(n % 3),
            json!({"type": "hostile", "payload": {"mode": "sleep_llm"}}),
        )
        .await;
        ids.push(id);
    }
    for (n, id) in ids.iter().enumerate() {
        let job = wait_terminal(&cluster.client, &cluster.base(n % 3), id, LONG).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", cluster.logs());
    }
    let arrivals: Vec<Instant> = fake.seen().iter().map(|seen| seen.at).collect();
    assert_eq!(arrivals.len(), 7, "six calls and the refused one");
    let quiet = arrivals[1] - arrivals[0];
    assert!(
        quiet >= Duration::from_millis(1_950),
        "the next call came {quiet:?} after the 429"
    );
}

/// The shared limits themselves, on one database: a dead node's call in flight stops
/// counting, `max_concurrent` and `tokens_per_minute` admit up to the limit and no further,
/// a settled call frees the tokens it did not use, and a pause holds every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_provider_limits_count_exactly() {
    use kiln::llm::{AdmissionConfig, SharedAdmit};
    let pg = PgServer::start();
    let url = pg.database("kiln");
    let data = tempfile::tempdir().unwrap();
    let options = kiln::store::PostgresOptions::new(url);
    let store = kiln::store::Store::open_postgres(options, data.path(), 64, 1000)
        .await
        .unwrap();
    let limits = store.shared_limits(10_000).expect("a shared store");
    let config = AdmissionConfig {
        max_concurrent: 2,
        requests_per_minute: None,
        tokens_per_minute: Some(1_000),
    };
    // A call in flight on a node that has no heartbeat (it died) is not counted.
    pg.psql(
        "kiln",
        &format!(
            "INSERT INTO kiln_provider_calls (provider, node, started_ms, tokens) \
             VALUES ('p', '{}', 0, 0)",
            uuid::Uuid::now_v7()
        ),
    );
    let first = limits.admit("p", &config, 600).await.unwrap();
    let SharedAdmit::Admitted(first) = first else {
        panic!("{first:?}")
    };
    match limits.admit("p", &config, 600).await.unwrap() {
        SharedAdmit::WaitFor(wait) => assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_millis(60_500),
            "600 + 600 tokens wait for the window: {wait:?}"
        ),
        other => panic!("tokens_per_minute let {other:?} through"),
    }
    // Paid for 100 of its 600: 100 + 600 fit.
    limits.release(first, 100).await.unwrap();
    let second = limits.admit("p", &config, 600).await.unwrap();
    assert!(matches!(second, SharedAdmit::Admitted(_)), "{second:?}");
    let third = limits.admit("p", &config, 100).await.unwrap();
    assert!(matches!(third, SharedAdmit::Admitted(_)), "{third:?}");
    // Two in flight (the second and third): the fourth waits for one of them.
    let fourth = limits.admit("p", &config, 1).await.unwrap();
    assert_eq!(fourth, SharedAdmit::Busy);
    // Another provider has its own counts; a pause holds it whatever its counts.
    let other = limits.admit("q", &config, 1).await.unwrap();
    assert!(matches!(other, SharedAdmit::Admitted(_)), "{other:?}");
    limits.pause("q", Duration::from_secs(30)).await.unwrap();
    match limits.admit("q", &config, 1).await.unwrap() {
        SharedAdmit::WaitFor(wait) => assert!(wait > Duration::from_secs(25), "{wait:?}"),
        other => panic!("a paused provider admitted {other:?}"),
    }
    // A shorter pause asked later keeps the longer one.
    limits.pause("q", Duration::from_secs(1)).await.unwrap();
    match limits.admit("q", &config, 1).await.unwrap() {
        SharedAdmit::WaitFor(wait) => assert!(wait > Duration::from_secs(25), "{wait:?}"),
        other => panic!("the longer pause was lost: {other:?}"),
    }
}

/// `GET /v1/events` on a node that cannot run the jobs (it has no such job type) shows
/// them live as another node runs them, every event once, with the cluster's positions;
/// resuming on the other node after one of them gives exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_on_one_node_shows_jobs_run_on_another() {
    let mut cluster = Cluster::start(1, &["fixture:hostile"], "").await;
    let watcher_plugins = plugins_dir(&["fixture:noop"]);
    let watcher_dir = tempfile::tempdir().unwrap();
    let watcher = KilnProcess::start(
        watcher_dir.path(),
        watcher_plugins.path(),
        &format!("\n[store]\nurl = \"{}\"\n", cluster.url),
    );
    cluster.nodes.push(Some(watcher));
    cluster.wait_for_nodes(2).await;
    let feed = open_sse(&cluster.client, &cluster.node(1).url("/v1/events"), Some(0)).await;
    assert_eq!(feed.status(), 200);
    let mut reader = SseReader::new(feed);
    const JOBS: usize = 3;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let id = submit_ok(
            &cluster.client,
            &cluster.base(0),
            json!({"type": "hostile", "payload": {"mode": "events", "n": 5, "pace_ms": 20}}),
        )
        .await;
        ids.push(id);
    }
    let mut seen: Vec<SseEvent> = Vec::new();
    while seen.iter().filter(|e| e.event == "completed").count() < JOBS {
        let event = reader
            .next(LONG)
            .await
            .unwrap_or_else(|| panic!("the feed stopped: {seen:#?}\n{}", cluster.logs()));
        seen.push(event);
    }
    let positions: Vec<u64> = seen.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        positions,
        (1..=positions.len() as u64).collect::<Vec<_>>(),
        "every event of the cluster once, in order: {seen:#?}"
    );
    for id in &ids {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|e| e.data["job_id"] == *id)
            .map(|e| e.data["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{id}: {seen:#?}"
        );
    }
    let middle = positions[positions.len() / 2];
    let mut resumed = SseReader::new(
        open_sse(
            &cluster.client,
            &cluster.node(0).url("/v1/events"),
            Some(middle),
        )
        .await,
    );
    let mut rest = Vec::new();
    while rest.len() < positions.len() - middle as usize {
        rest.push(resumed.next(LONG).await.expect("the rest of the feed"));
    }
    assert_eq!(
        rest.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(),
        positions[middle as usize..].to_vec()
    );
}
