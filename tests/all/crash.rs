//! Crash consistency: a real `kiln serve` is SIGKILLed over and over, at random moments,
//! while clients submit jobs (some with an `Idempotency-Key`) and follow job event streams,
//! and is restarted each time on the same data dir and port. After the last restart:
//!
//! - every acknowledged submit (a 202 or 200) made exactly one job, and a submit whose
//!   connection failed, retried with its key, made exactly one job too;
//! - every job reaches a terminal state;
//! - every stream, resumed with `Last-Event-ID` across the kills, saw the job's events
//!   1, 2, 3… with no gap and no duplicate, ending with `completed`, `failed` or
//!   `cancelled`, and exactly what the job's stored log holds.
//!
//! Only correctness is asserted, never timing. The randomness comes from one seed, printed
//! on failure (set `KILN_CRASH_SEED` to reuse it; thread timing still varies).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::support::*;

/// SIGKILLs per run.
const KILLS: usize = 24;

/// Submitting stops after this many kills, so the last kills hit running jobs and
/// streams with no new work arriving.
const SUBMIT_UNTIL_KILL: usize = KILLS - 4;

/// Client tasks submitting jobs.
const SUBMITTERS: usize = 2;

/// Tags are sent as the job's `priority` (-1000..=1000), one per logical submission: the
/// job list then shows which submission made each job, which is how duplicates and lost
/// jobs are told apart from jobs whose submit failed before it was acknowledged.
const FIRST_TAG: i32 = -1000;
const LAST_TAG: i32 = 1000;

/// Hang guards (never performance bounds).
const STALL: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Small xorshift generator: the test's kill timing and job mix, from one seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so nearby seeds give unrelated streams (never 0).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `1/n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// What the client learnt of one logical submission.
#[derive(Clone, Debug)]
enum Outcome {
    /// Answered 202, or 200 (an `Idempotency-Key` replayed), with this job id.
    Acked(String, u16),
    /// No answer, no key: the job may or may not exist (at most one).
    Unknown,
}

#[derive(Clone, Debug)]
struct Submission {
    tag: i32,
    key: Option<String>,
    body: Value,
    /// Times it was sent (a keyed one is resent until it is answered).
    sends: u32,
    outcome: Outcome,
}

/// One followed job stream, across every reconnection.
#[derive(Debug, Default)]
struct Followed {
    id: String,
    events: Vec<SseEvent>,
    /// Reconnections that resumed with `Last-Event-ID`.
    resumes: u32,
    problems: Vec<String>,
}

/// State the client tasks share with the test.
struct Shared {
    base: String,
    client: reqwest::Client,
    next_tag: AtomicI32,
    /// Set when submitting must stop.
    stop: AtomicBool,
    /// Set at the final restart: the followers' deadline starts then.
    final_deadline_ms: AtomicU64,
    submissions: Mutex<Vec<Submission>>,
    problems: Mutex<Vec<String>>,
}

impl Shared {
    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }

    /// Whether the hang guard after the final restart has run out.
    fn past_deadline(&self) -> bool {
        let deadline = self.final_deadline_ms.load(Ordering::SeqCst);
        deadline != 0 && unix_ms() > deadline
    }
}

fn is_terminal(event: &str) -> bool {
    matches!(event, "completed" | "failed" | "cancelled")
}

/// A random job: mostly `hostile` in `events` mode (it takes a while, so it spans kills,
/// and its stream has events to resume), else `noop`. Some may only run twice, so an
/// interrupted one can end `failed` (`interrupted`).
fn job_body(rng: &mut Rng, tag: i32) -> Value {
    if rng.one_in(3) {
        return json!({"type": "noop", "priority": tag});
    }
    let max_attempts = if rng.one_in(4) { 2 } else { 20 };
    json!({
        "type": "hostile",
        "payload": {"mode": "events", "n": rng.range(3, 20), "pace_ms": rng.range(5, 60)},
        "priority": tag,
        "max_attempts": max_attempts,
    })
}

/// Sends one submit. `None` when no whole answer came back (the server died, or was down).
async fn send_submit(shared: &Shared, body: &Value, key: Option<&str>) -> Option<(u16, Value)> {
    let mut request = shared
        .client
        .post(format!("{}/v1/jobs", shared.base))
        .timeout(REQUEST_TIMEOUT)
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let job: Value = response.json().await.ok()?;
    Some((status, job))
}

/// Submits jobs until told to stop, following each acknowledged `hostile` job's stream
/// in its own task. A keyed submit with no answer is resent with the same key until it
/// is answered (after the restart); an unkeyed one is left as `Unknown`.
async fn submitter(shared: Arc<Shared>, mut rng: Rng, index: usize) -> JoinSet<Followed> {
    let mut followers = JoinSet::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let tag = shared.next_tag.fetch_add(1, Ordering::SeqCst);
        if tag > LAST_TAG {
            break;
        }
        let key = rng.one_in(2).then(|| format!("crash-{index}-{tag}"));
        let body = job_body(&mut rng, tag);
        let mut sends = 0;
        let outcome = loop {
            sends += 1;
            match send_submit(&shared, &body, key.as_deref()).await {
                Some((status @ (200 | 202), job)) => match job["id"].as_str() {
                    Some(id) => break Outcome::Acked(id.to_string(), status),
                    None => {
                        shared.problem(format!("submit tag {tag}: an answer with no id: {job}"));
                        break Outcome::Unknown;
                    }
                },
                Some((status, job)) => {
                    shared.problem(format!(
                        "submit tag {tag} (key {key:?}): unexpected {status}: {job}"
                    ));
                    break Outcome::Unknown;
                }
                None if key.is_some() && !shared.past_deadline() => {
                    tokio::time::sleep(rng.millis(20, 100)).await;
                }
                None => {
                    if key.is_some() {
                        shared.problem(format!(
                            "submit tag {tag} (key {key:?}): never answered in {sends} sends"
                        ));
                    }
                    break Outcome::Unknown;
                }
            }
        };
        if let (Outcome::Acked(id, _), "hostile") = (&outcome, body["type"].as_str().unwrap()) {
            followers.spawn(follow(shared.clone(), id.clone()));
        }
        shared.submissions.lock().unwrap().push(Submission {
            tag,
            key,
            body,
            sends,
            outcome,
        });
        tokio::time::sleep(rng.millis(10, 70)).await;
    }
    followers
}

/// Follows a job's stream until its terminal event, reconnecting with `Last-Event-ID`
/// whenever it breaks (a kill), and records every departure from 1, 2, 3….
async fn follow(shared: Arc<Shared>, id: String) -> Followed {
    let mut followed = Followed {
        id: id.clone(),
        ..Followed::default()
    };
    let url = format!("{}/v1/jobs/{id}/events", shared.base);
    let mut last: Option<u64> = None;
    loop {
        if shared.past_deadline() {
            followed.problems.push(format!(
                "job {id}: no terminal event after the final restart; last seq seen {last:?}"
            ));
            return followed;
        }
        let mut request = shared
            .client
            .get(&url)
            .header("accept", "text/event-stream");
        if let Some(seq) = last {
            request = request.header("last-event-id", seq.to_string());
        }
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) | Err(_) => {
                // Down: try again soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match response.status().as_u16() {
            200 => {}
            204 => {
                followed.problems.push(format!(
                    "job {id}: 204 (over, nothing after) for Last-Event-ID {last:?}, \
                     but no terminal event was seen"
                ));
                return followed;
            }
            404 => {
                followed.problems.push(format!(
                    "job {id}: acknowledged, but its stream answers 404 (lost) after seq {last:?}"
                ));
                return followed;
            }
            status => {
                let body = response.text().await.unwrap_or_default();
                followed.problems.push(format!(
                    "job {id}: stream answered {status} for Last-Event-ID {last:?}: {body}"
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        if last.is_some() {
            followed.resumes += 1;
        }
        let mut reader = SseReader::new(response);
        // Until the stream breaks (a kill) or stalls; then resume.
        while let Some(event) = reader.next(STALL).await {
            let expected = last.map_or(1, |seq| seq + 1);
            let Some(seq) = event.id else {
                followed.problems.push(format!(
                    "job {id}: event without an id after seq {last:?}: {event:?}"
                ));
                continue;
            };
            if seq < expected {
                followed.problems.push(format!(
                    "job {id}: duplicate: seq {seq} again after seq {} (resumed {} times) \
                     as {} {}",
                    expected - 1,
                    followed.resumes,
                    event.event,
                    event.data
                ));
                continue;
            }
            if seq > expected {
                followed.problems.push(format!(
                    "job {id}: gap: seq {expected}..={} missing, next came {seq} ({})",
                    seq - 1,
                    event.event
                ));
            }
            last = Some(seq);
            let terminal = is_terminal(&event.event);
            followed.events.push(event);
            if terminal {
                return followed;
            }
        }
    }
}

/// Starts `kiln serve` on `addr` off the async runtime (it blocks until it listens).
async fn start(addr: &str, data: &Path, plugins: &Path, config: &str) -> KilnProcess {
    let (addr, data, plugins, config) = (
        addr.to_string(),
        data.to_path_buf(),
        plugins.to_path_buf(),
        config.to_string(),
    );
    tokio::task::spawn_blocking(move || KilnProcess::start_on(&addr, &data, &plugins, &config))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// SIGKILLs `kiln` and returns its log.
async fn kill(mut kiln: KilnProcess) -> String {
    tokio::task::spawn_blocking(move || {
        kiln.kill9();
        kiln.log()
    })
    .await
    .unwrap()
}

/// Every job, paging through `GET /v1/jobs`; a job listed twice is a problem.
async fn list_all(client: &reqwest::Client, base: &str, problems: &mut Vec<String>) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let url = match &cursor {
            Some(c) => format!("{base}/v1/jobs?limit=100&cursor={c}"),
            None => format!("{base}/v1/jobs?limit=100"),
        };
        let (status, body) = get_json(client, &url).await;
        assert_eq!(status, 200, "GET {url}: {body:#}");
        for job in body["jobs"].as_array().expect("jobs") {
            let id = id_of(job);
            if !seen.insert(id.clone()) {
                problems.push(format!("job {id} listed twice (again on page {page})"));
            }
            jobs.push(job.clone());
        }
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    jobs
}

fn job_is_terminal(job: &Value) -> bool {
    is_terminal(job["status"].as_str().unwrap_or_default())
}

/// Lists every job until all are terminal (or the hang guard runs out).
async fn wait_all_terminal(
    client: &reqwest::Client,
    base: &str,
    deadline: Instant,
    problems: &mut Vec<String>,
) -> Vec<Value> {
    loop {
        let mut listing_problems = Vec::new();
        let jobs = list_all(client, base, &mut listing_problems).await;
        let pending: Vec<&Value> = jobs.iter().filter(|j| !job_is_terminal(j)).collect();
        if pending.is_empty() || Instant::now() > deadline {
            problems.extend(listing_problems);
            for job in pending {
                problems.push(format!(
                    "job {} still {} (attempt {}) after the final restart",
                    id_of(job),
                    job["status"],
                    job["attempt"]
                ));
            }
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the jobs against the submissions: one job per acknowledged submission (the one
/// it was told), at most one per unanswered one, none from nowhere.
fn check_submissions(submissions: &[Submission], jobs: &[Value], problems: &mut Vec<String>) {
    let mut by_tag: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for job in jobs {
        let tag = job["priority"].as_i64().unwrap_or(i64::MIN);
        by_tag.entry(tag).or_default().push(id_of(job));
    }
    for submission in submissions {
        let made = by_tag
            .remove(&i64::from(submission.tag))
            .unwrap_or_default();
        let who = format!(
            "submission tag {} (key {:?}, sent {} times, {})",
            submission.tag, submission.key, submission.sends, submission.body
        );
        match &submission.outcome {
            Outcome::Acked(id, _) if made != [id.clone()] => problems.push(format!(
                "{who}: acknowledged as job {id}, but the jobs with its tag are {made:?}"
            )),
            Outcome::Unknown if made.len() > 1 => problems.push(format!(
                "{who}: unanswered, yet it made {} jobs: {made:?}",
                made.len()
            )),
            _ => {}
        }
    }
    for (tag, ids) in by_tag {
        problems.push(format!(
            "jobs {ids:?} have priority {tag}, which no submission used"
        ));
    }
}

/// Resends every keyed submission: the server must answer with the job it made first.
async fn check_keys_replay(
    client: &reqwest::Client,
    base: &str,
    submissions: &[Submission],
    problems: &mut Vec<String>,
) {
    for submission in submissions {
        let (Some(key), Outcome::Acked(id, _)) = (&submission.key, &submission.outcome) else {
            continue;
        };
        let response = client
            .post(format!("{base}/v1/jobs"))
            .header("idempotency-key", key)
            .json(&submission.body)
            .send()
            .await
            .expect("resend");
        let status = response.status().as_u16();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let job: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 || !replayed || job["id"].as_str() != Some(id.as_str()) {
            problems.push(format!(
                "key {key:?} made job {id}; resent after the crashes it answered {status} \
                 (Idempotent-Replayed: {replayed}) with {}",
                job["id"]
            ));
        }
    }
}

/// Checks a followed stream against the job's stored log and final status.
async fn check_stream(
    client: &reqwest::Client,
    base: &str,
    followed: &Followed,
    jobs: &BTreeMap<String, Value>,
    deadline: Instant,
    problems: &mut Vec<String>,
) {
    let id = &followed.id;
    problems.extend(followed.problems.iter().cloned());
    let Some(last) = followed.events.last() else {
        problems.push(format!("job {id}: its stream never delivered an event"));
        return;
    };
    if !is_terminal(&last.event) {
        return; // already reported by the follower
    }
    // Recovery re-queues an interrupted job as its next attempt: attempts never go back.
    let attempts: Vec<u64> = followed
        .events
        .iter()
        .filter(|e| e.event == "status")
        .filter_map(|e| e.data["attempt"].as_u64())
        .collect();
    if attempts.windows(2).any(|w| w[1] < w[0]) {
        problems.push(format!(
            "job {id}: the attempts of its status events go back: {attempts:?}"
        ));
    }
    // What is left of the hang guard, so a job that never ends costs it once, not once
    // per stream (and the test reports before the runner kills it).
    let left = deadline.saturating_duration_since(Instant::now());
    let stored = all_events(client, base, id, left.max(Duration::from_secs(2))).await;
    if stored != followed.events {
        let at = stored
            .iter()
            .zip(&followed.events)
            .position(|(a, b)| a != b)
            .unwrap_or(stored.len().min(followed.events.len()));
        problems.push(format!(
            "job {id}: the resumed stream differs from the stored log at index {at}: \
             streamed {} events, stored {}; streamed there {:?}, stored {:?}",
            followed.events.len(),
            stored.len(),
            followed.events.get(at),
            stored.get(at)
        ));
    }
    let status = jobs
        .get(id)
        .map(|j| j["status"].clone())
        .unwrap_or(Value::Null);
    if status != json!(last.event) {
        problems.push(format!(
            "job {id}: the stream ended with {} but the job is {status}",
            last.event
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kill_9_loses_no_job_and_no_event() {
    let seed = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(unix_ms);
    let mut rng = Rng::new(seed);
    // The data dir and plugins dir outlive every process that uses them.
    let root = tempfile::tempdir().unwrap();
    let data: PathBuf = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let plugins = plugins_dir(&["fixture:noop", "fixture:hostile"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let config = "keep_alive_secs = 1";
    let started = Instant::now();

    let mut kiln = start(&addr, &data, plugins.path(), config).await;
    let shared = Arc::new(Shared {
        base: kiln.base.clone(),
        client: reqwest::Client::new(),
        next_tag: AtomicI32::new(FIRST_TAG),
        stop: AtomicBool::new(false),
        final_deadline_ms: AtomicU64::new(0),
        submissions: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
    });
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|i| {
            let rng = Rng::new(seed.wrapping_add(i as u64 + 1));
            tokio::spawn(submitter(shared.clone(), rng, i))
        })
        .collect();

    // The kills: mostly after a while up, sometimes right after the restart (during
    // recovery); then down for a moment, so clients see the server gone.
    let mut logs = Vec::new();
    for round in 1..=KILLS {
        let up = if rng.one_in(6) {
            rng.millis(0, 40)
        } else {
            rng.millis(150, 1200)
        };
        tokio::time::sleep(up).await;
        logs.push(kill(kiln).await);
        if round == SUBMIT_UNTIL_KILL {
            shared.stop.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(rng.millis(0, 250)).await;
        kiln = start(&addr, &data, plugins.path(), config).await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    // One hang guard for everything after the final restart.
    let deadline = Instant::now() + LONG;
    shared
        .final_deadline_ms
        .store(unix_ms() + LONG.as_millis() as u64, Ordering::SeqCst);

    // Every client task ends: keyed submits answered, streams at their terminal event.
    let mut followed = Vec::new();
    for task in submitters {
        let mut followers = task.await.expect("submitter");
        while let Some(result) = followers.join_next().await {
            followed.push(result.expect("follower"));
        }
    }
    let client = reqwest::Client::new();
    let base = kiln.base.clone();
    let mut problems = std::mem::take(&mut *shared.problems.lock().unwrap());
    let submissions = shared.submissions.lock().unwrap().clone();

    let jobs = wait_all_terminal(&client, &base, deadline, &mut problems).await;
    check_submissions(&submissions, &jobs, &mut problems);
    for submission in &submissions {
        if let Outcome::Acked(id, _) = &submission.outcome {
            let (status, job) = get_json(&client, &format!("{base}/v1/jobs/{id}")).await;
            if status != 200 {
                problems.push(format!(
                    "acknowledged job {id}: GET answers {status}: {job}"
                ));
            }
        }
    }
    check_keys_replay(&client, &base, &submissions, &mut problems).await;
    let by_id: BTreeMap<String, Value> = jobs.iter().map(|j| (id_of(j), j.clone())).collect();
    for stream in &followed {
        check_stream(&client, &base, stream, &by_id, deadline, &mut problems).await;
    }
    logs.push(kiln.log());
    for (run, log) in logs.iter().enumerate() {
        if log.contains("panicked") {
            problems.push(format!("run {run} of the server panicked"));
        }
    }

    let acked = submissions
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Acked(..)))
        .count();
    let resent = submissions.iter().filter(|s| s.sends > 1).count();
    // Resent and answered 200: the first send was committed, its answer lost in the kill.
    let committed_unanswered = submissions
        .iter()
        .filter(|s| s.sends > 1 && matches!(s.outcome, Outcome::Acked(_, 200)))
        .count();
    let resumes: u32 = followed.iter().map(|s| s.resumes).sum();
    let summary = format!(
        "seed {seed}: {KILLS} kills in {:.1}s; {} submissions ({acked} acknowledged, {resent} \
         resent with their key, {committed_unanswered} of which the first send had made), {} \
         jobs, {} streams followed, {resumes} resumed with Last-Event-ID",
        started.elapsed().as_secs_f64(),
        submissions.len(),
        jobs.len(),
        followed.len(),
    );
    println!("{summary}");
    if !problems.is_empty() {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{seed}.log"));
        let text: String = logs
            .iter()
            .enumerate()
            .map(|(run, log)| format!("===== run {run}\n{log}"))
            .collect();
        let _ = std::fs::write(&path, text);
        panic!(
            "{summary}\n{} problems:\n{}\nevery run's server log: {}",
            problems.len(),
            problems.join("\n"),
            path.display()
        );
    }
    assert!(acked > 0, "no submit was ever acknowledged: {summary}");
    assert!(
        resumes > 0,
        "no stream was resumed across a kill, so nothing was tested: {summary}"
    );
}
