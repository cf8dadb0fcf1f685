//! The sandbox from the plugin's side, and the secrecy of provider keys and URLs.
//!
//! The `probe` fixture (`plugins/fixtures/probe`) runs as a real job and tries to read and
//! write files, read the environment and arguments, open TCP and UDP sockets and resolve
//! names, through Rust's `std` and through raw WASI 0.2 calls, and reports what happened to
//! each. WASI is linked with an empty context, which still backs the clocks and the random
//! sources with the host's: those, and calls that answer "nothing" (no variables, no
//! arguments, no preopened directory, closed stdin), are the only probes that may succeed.
//!
//! The secrecy tests run the probe's LLM calls, a streamed `characters` job, and jobs whose
//! provider answers 401 and 400 quoting the key back (once, or many times over in a long
//! message), against the fake provider with a canary key and debug logging, then grep
//! every event, every API answer and the whole server log for the key or any piece of it,
//! and every event and everything the plugin saw for the providers' addresses. They first
//! check that the key did reach the fake provider, so a clean grep means something.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::{Value, json};

use crate::fake_provider::{Behavior, FakeProvider};
use crate::support::*;

/// The variable holding the provider key in the secrecy test.
const KEY_ENV: &str = "KILN_SANDBOX_CANARY_KEY";
/// A variable set on the server process that no plugin may see.
const CANARY_ENV: &str = "KILN_SANDBOX_CANARY_ENV";

/// Sets the canary variables once per test process (servers, in-process or children,
/// inherit them) and returns `(key, env value)`: random, so a hit can come from nowhere
/// else.
fn canaries() -> &'static (String, String) {
    static CANARIES: OnceLock<(String, String)> = OnceLock::new();
    CANARIES.get_or_init(|| {
        let key = format!("sk-canary-{}", uuid::Uuid::new_v4().simple());
        let env = format!("env-canary-{}", uuid::Uuid::new_v4().simple());
        // SAFETY: set once, before any server of this process starts, under names nothing
        // else reads.
        unsafe {
            std::env::set_var(KEY_ENV, &key);
            std::env::set_var(CANARY_ENV, &env);
        }
        (key, env)
    })
}

/// The probes that may succeed under WASI's empty context, with what they must see when
/// they answer "nothing". Clocks and random sources (value `None`) are checked apart.
fn allowed_probes() -> BTreeMap<&'static str, Option<Value>> {
    BTreeMap::from([
        ("env.vars", Some(json!({}))),
        ("env.args", Some(json!([]))),
        // wasi-libc's own starting directory, not the host's.
        ("env.current_dir", Some(json!("/"))),
        ("stdin.read", Some(json!(""))),
        ("wasi.preopens", Some(json!([]))),
        ("wasi.environment", Some(json!({}))),
        ("wasi.arguments", Some(json!([]))),
        ("wasi.initial_cwd", Some(Value::Null)),
        ("wasi.terminal_stdin", Some(json!(false))),
        ("clock.wall", None),
        ("clock.monotonic", None),
        ("wasi.wall_clock", None),
        ("wasi.monotonic_clock", None),
        ("wasi.random", None),
        ("wasi.insecure_random", None),
        ("wasi.insecure_seed", None),
    ])
}

/// Submits `body` and follows the job's stream to its end; returns the job as `GET` shows
/// it then, and its events.
async fn run_job(client: &reqwest::Client, base: &str, body: Value) -> (Value, Vec<SseEvent>) {
    let (status, job) = submit(client, base, body).await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    let events = all_events(client, base, &id, LONG).await;
    let job = wait_terminal(client, base, &id, LONG).await;
    (job, events)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// One probe job run on an in-process Kiln, with what the test set up around it: a secret
/// file in the server's data dir, files the probe is asked to write, and a loopback TCP
/// listener and UDP socket it is asked to reach (where a connection or datagram would be
/// seen).
struct ProbeRun {
    /// The probe's result.
    result: Value,
    kiln: InProcess,
    secret: PathBuf,
    wrote: [PathBuf; 2],
    listener: TcpListener,
    udp: UdpSocket,
    /// The host's wall clock just before the job was submitted and just after it ended.
    wall_ms: (u64, u64),
    /// Monotonic time from before the server started to after the job ended.
    elapsed_ns: u64,
}

const SECRET: &str = "secret-file-canary";

impl ProbeRun {
    async fn start() -> Self {
        canaries();
        let started = Instant::now();
        let kiln = InProcess::start_cached(&["fixture:probe"], "").await;
        let data = kiln.data.path().to_path_buf();
        let secret = data.join("secret.txt");
        std::fs::write(&secret, SECRET).unwrap();
        let wrote = [
            data.join(format!("probe-{}.txt", uuid::Uuid::new_v4())),
            std::env::temp_dir().join(format!("kiln-probe-{}.txt", uuid::Uuid::new_v4())),
        ];
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();

        let before_ms = unix_ms();
        let (job, _) = run_job(
            &kiln.client,
            &kiln.base,
            json!({"type": "probe", "payload": {
                "read": [path(&secret), path(&data), path(&data.join("kiln.redb"))],
                "list": [path(&data), path(kiln.plugins.path()), path(&std::env::temp_dir())],
                "write": [path(&wrote[0]), path(&wrote[1])],
                "tcp": listener.local_addr().unwrap().to_string(),
                "udp": udp.local_addr().unwrap().to_string(),
            }}),
        )
        .await;
        assert_eq!(job["status"], "completed", "{job:#}");
        Self {
            result: job["result"].clone(),
            wall_ms: (before_ms, unix_ms()),
            elapsed_ns: started.elapsed().as_nanos() as u64,
            kiln,
            secret,
            wrote,
            listener,
            udp,
        }
    }

    /// A probe's outcome by name, failing the test when the probe did not run it.
    fn outcome(&self, name: &str) -> &Value {
        let outcome = &self.result["probes"][name];
        assert!(
            outcome.is_object(),
            "the probe did not report {name}: {:#}",
            self.result
        );
        outcome
    }

    fn assert_denied(&self, name: &str) {
        let outcome = self.outcome(name);
        assert_eq!(
            outcome["ok"], false,
            "{name} worked from inside the sandbox: {outcome}"
        );
    }

    /// Names of the probes that succeeded.
    fn succeeded(&self) -> BTreeSet<String> {
        self.result["probes"]
            .as_object()
            .expect("probes")
            .iter()
            .filter(|(_, o)| o["ok"] == true)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[tokio::test]
async fn a_plugin_reads_lists_and_writes_no_file_the_data_dir_included() {
    let run = ProbeRun::start().await;
    let data = run.kiln.data.path();
    for file in ["/", ".", "/etc/passwd", "/proc/self/environ"] {
        run.assert_denied(&format!("fs.read:{file}"));
    }
    run.assert_denied(&format!("fs.read:{}", path(&run.secret)));
    for dir in [
        "/".into(),
        ".".into(),
        path(data),
        path(run.kiln.plugins.path()),
    ] {
        run.assert_denied(&format!("fs.list:{dir}"));
    }
    for file in ["probe-wrote.txt", "/tmp/kiln-probe.txt"] {
        run.assert_denied(&format!("fs.write:{file}"));
    }
    for file in &run.wrote {
        run.assert_denied(&format!("fs.write:{}", path(file)));
        assert!(!file.exists(), "the plugin wrote {}", file.display());
    }
    assert_eq!(run.outcome("wasi.preopens")["saw"], json!([]));
    assert!(
        !run.result.to_string().contains(SECRET),
        "the plugin read a host file: {:#}",
        run.result
    );
}

#[tokio::test]
async fn a_plugin_connects_listens_sends_and_resolves_nothing() {
    let run = ProbeRun::start().await;
    let tcp = run.listener.local_addr().unwrap();
    let udp = run.udp.local_addr().unwrap();
    run.assert_denied(&format!("net.tcp_connect:{tcp}"));
    run.assert_denied("net.tcp_listen:127.0.0.1:0");
    run.assert_denied("net.udp_bind:0.0.0.0:0");
    run.assert_denied(&format!("net.udp_send:{udp}"));
    run.assert_denied("net.dns:localhost:80");
    run.assert_denied("net.dns:example.com:443");
    // The other side saw nothing either (a connection made and closed at once would still
    // wait in the listener's backlog).
    assert!(
        matches!(run.listener.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the plugin opened a TCP connection to the test's listener"
    );
    let mut buffer = [0u8; 64];
    assert!(
        matches!(run.udp.recv_from(&mut buffer), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the plugin sent a datagram to the test's socket"
    );
}

#[tokio::test]
async fn a_plugin_sees_no_variable_argument_directory_or_input_of_the_host() {
    let (_, env_canary) = canaries();
    let run = ProbeRun::start().await;
    for (name, expected) in allowed_probes() {
        if let Some(expected) = expected {
            assert_eq!(run.outcome(name)["saw"], expected, "{name}");
        }
    }
    // The canary variable is set on this very process, which runs the server.
    let text = run.result.to_string();
    assert!(
        !text.contains(env_canary.as_str()),
        "the plugin saw the host's environment: {text}"
    );
    let host_cwd = path(&std::env::current_dir().unwrap());
    assert!(
        !text.contains(&host_cwd),
        "the plugin saw the host's working directory: {text}"
    );
}

/// What WASI's default context does give a plugin, and that it is all: the host's real
/// wall clock, a monotonic clock that starts with the job's context (so it tells nothing
/// of the host's uptime), random bytes, and the empty answers checked above.
#[tokio::test]
async fn only_clocks_random_and_empty_answers_work_in_the_sandbox() {
    let run = ProbeRun::start().await;
    let allowed: BTreeSet<String> = allowed_probes().keys().map(|s| s.to_string()).collect();
    assert_eq!(run.succeeded(), allowed, "{:#}", run.result);

    let wall = run.outcome("clock.wall")["saw"].as_u64().unwrap();
    let (before, after) = run.wall_ms;
    assert!(
        (before - 60_000..=after + 60_000).contains(&wall),
        "the wall clock is the host's: {wall} vs {before}..{after}"
    );
    let mono = run.outcome("wasi.monotonic_clock")["saw"]["now_ns"]
        .as_u64()
        .unwrap();
    assert!(
        mono <= run.elapsed_ns,
        "the monotonic clock counts from the job's start: it read {mono} ns, but the server \
         started only {} ns ago",
        run.elapsed_ns
    );
    for name in ["wasi.random", "wasi.insecure_random"] {
        let bytes = run.outcome(name)["saw"].as_str().unwrap();
        assert_eq!(bytes.len(), 32, "{name}: {bytes}");
        assert_ne!(bytes, "0".repeat(32), "{name} gave zeros");
    }
}

/// Every event of the `/v1/events` stream, read in the background from before the first
/// job is submitted.
struct GlobalEvents {
    seen: Arc<Mutex<Vec<SseEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GlobalEvents {
    async fn follow(client: &reqwest::Client, base: &str) -> Self {
        let response = open_sse(client, &format!("{base}/v1/events"), None).await;
        assert_eq!(response.status(), 200);
        let mut reader = SseReader::new(response);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = reader.next(LONG).await {
                sink.lock().unwrap().push(event);
            }
        });
        Self { seen, task }
    }

    /// The events read once every job of `ids` has had its terminal event.
    async fn until_finished(self, ids: &[String]) -> Vec<SseEvent> {
        let deadline = Instant::now() + LONG;
        loop {
            let events = self.seen.lock().unwrap().clone();
            let finished = |id: &String| {
                events.iter().any(|e| {
                    e.data["job_id"] == id.as_str()
                        && matches!(e.event.as_str(), "completed" | "failed" | "cancelled")
                })
            };
            if ids.iter().all(finished) || Instant::now() > deadline {
                self.task.abort();
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Texts someone could read, each with where it came from, to grep for secrets.
#[derive(Default)]
struct Exposed(Vec<(String, String)>);

impl Exposed {
    fn add(&mut self, place: impl Into<String>, text: impl Into<String>) {
        self.0.push((place.into(), text.into()));
    }

    /// Where `needle` appears: each place, with an excerpt around the first hit there.
    fn find(&self, needle: &str) -> Vec<(String, String)> {
        let mut hits = Vec::new();
        for (place, text) in &self.0 {
            if let Some(at) = text.find(needle) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(120)
                    .map_or(0, |(i, _)| i);
                let excerpt: String = text[from..].chars().take(240 + needle.len()).collect();
                hits.push((place.clone(), format!("{needle:?} in {place}: …{excerpt}…")));
            }
        }
        hits
    }
}

/// The pieces of the canary key whose presence anywhere is a leak: the key; its prefix
/// with the first character of its random part (any cut-off head of the key); and every
/// 12-character piece of its random part (48 random bits each: none turns up by chance).
fn key_pieces(key: &str) -> Vec<&str> {
    let secret_from = "sk-canary-".len();
    let secret = &key[secret_from..];
    let mut pieces = vec![key, &key[..secret_from + 1]];
    pieces.extend((0..=secret.len() - 12).map(|at| &secret[at..at + 12]));
    pieces
}

/// Every place of `exposed` holding a piece of `key` (see [`key_pieces`]), with the first
/// piece found there.
fn key_leaks(key: &str, exposed: &[&Exposed]) -> Vec<String> {
    let mut leaks = BTreeMap::new();
    for (place, hit) in exposed
        .iter()
        .flat_map(|e| key_pieces(key).into_iter().flat_map(|piece| e.find(piece)))
    {
        leaks.entry(place).or_insert(hit);
    }
    leaks.into_values().collect()
}

/// `host:port` of an `http://host:port/v1` base URL.
fn authority(base_url: &str) -> String {
    let rest = base_url.strip_prefix("http://").unwrap();
    rest.split('/').next().unwrap().to_string()
}

/// The base URL of a loopback port that was free a moment ago (connections are refused).
fn refused_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/v1")
}

/// A `kiln serve` process logging at debug level, with the `characters` and `probe` job
/// types and three providers sharing the canary key: `fake` (openai format, the default
/// model) and `anth` (anthropic format, model alias `anth`) at the fake provider, and
/// `down` (alias `down`) at a loopback port where nothing listens.
struct KeyedKiln {
    kiln: KilnProcess,
    fake: FakeProvider,
    down_url: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl KeyedKiln {
    async fn start() -> Self {
        canaries();
        let fake = FakeProvider::with(Behavior {
            chunk_delay_ms: 1,
            ..Behavior::default()
        })
        .await;
        let down_url = refused_url();
        let base = &fake.base_url;
        let config = format!(
            "[providers.fake]\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"{KEY_ENV}\"\n\
             [providers.anth]\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"{KEY_ENV}\"\n\
             [providers.down]\nkind = \"openai\"\nbase_url = \"{down_url}\"\napi_key_env = \"{KEY_ENV}\"\n\
             [models]\ndefault = \"fake/test-model\"\nanth = \"anth/claude-test\"\ndown = \"down/test-model\"\n"
        );
        let data = tempfile::tempdir().unwrap();
        let plugins = plugins_dir(&["characters", "fixture:probe"]);
        seed_cache(data.path());
        let kiln = KilnProcess::start_logging(data.path(), plugins.path(), &config, "debug");
        save_cache(data.path());
        Self {
            kiln,
            fake,
            down_url,
            _dirs: (data, plugins),
        }
    }

    /// The proof that a grep for the key means something: the key did reach the provider,
    /// in the header of each wire format.
    fn assert_key_reached_provider(&self, key: &str) {
        let seen = self.fake.seen();
        let with =
            |suffix: &str| -> Vec<_> { seen.iter().filter(|s| s.path.ends_with(suffix)).collect() };
        let (openai, anthropic) = (with("/chat/completions"), with("/messages"));
        assert!(!openai.is_empty() && !anthropic.is_empty(), "{seen:?}");
        let bearer = format!("Bearer {key}");
        for request in openai {
            assert_eq!(request.header("authorization"), Some(bearer.as_str()));
        }
        for request in anthropic {
            assert_eq!(request.header("x-api-key"), Some(key));
        }
    }

    /// Stops the server cleanly and returns its whole log, up to its last line.
    fn final_log(&mut self) -> Exposed {
        assert!(self.kiln.terminate(LONG), "kiln did not stop cleanly");
        let deadline = Instant::now() + LONG;
        let mut log = self.kiln.log();
        while !log.trim_end().ends_with("stopped") && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            log = self.kiln.log();
        }
        let mut exposed = Exposed::default();
        exposed.add("the server log", log);
        exposed
    }

    /// Makes every provider call fail with `status`, quoting the key `echo` times.
    fn fail_quoting_the_key(&self, status: u16, echo: usize) {
        self.fake.set(|b| {
            b.status_always = Some(status);
            b.echo_credentials = echo;
        });
    }
}

/// A client of a [`KeyedKiln`] that keeps everything it was shown: what the probe saw,
/// every job's events, every API answer.
struct Witness {
    client: reqwest::Client,
    base: String,
    plugin_saw: Exposed,
    events: Exposed,
    answers: Exposed,
    ids: Vec<String>,
}

impl Witness {
    fn new(kiln: &KilnProcess) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: kiln.base.clone(),
            plugin_saw: Exposed::default(),
            events: Exposed::default(),
            answers: Exposed::default(),
            ids: Vec::new(),
        }
    }

    /// Runs a job to its end, expecting status `expect`; returns the job and its events.
    async fn job(&mut self, label: &str, body: Value, expect: &str) -> (Value, Vec<SseEvent>) {
        let (job, stream) = run_job(&self.client, &self.base, body).await;
        assert_eq!(job["status"], expect, "{label}: {job:#}\n{stream:?}");
        self.ids.push(id_of(&job));
        self.events
            .add(format!("the events of {label}"), format!("{stream:?}"));
        self.answers
            .add(format!("GET /v1/jobs/{{id}} of {label}"), job.to_string());
        if job["type"] == "probe" {
            self.plugin_saw
                .add(format!("what {label} saw"), job["result"].to_string());
        }
        (job, stream)
    }

    /// `GET path`, kept under `label`.
    async fn get(&mut self, path: &str, label: &str) {
        let url = format!("{}{path}", self.base);
        let response = self.client.get(&url).send().await.expect("GET");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        self.answers.add(label, response.text().await.unwrap());
    }
}

/// A probe job making one streamed LLM call per model alias.
fn probe_llm(models: &[&str]) -> Value {
    json!({"type": "probe", "payload": {"llm": true, "models": models}})
}

/// A one-character `characters` job (six streamed calls), not retried.
fn characters() -> Value {
    json!({"type": "characters", "max_attempts": 1, "payload": {"theme": "canaries", "count": 1}})
}

#[tokio::test]
async fn no_key_or_provider_url_reaches_plugins_events_api_answers_or_logs() {
    let (key, _) = canaries();
    let mut keyed = KeyedKiln::start().await;
    let mut witness = Witness::new(&keyed.kiln);
    let global = GlobalEvents::follow(&witness.client, &witness.base).await;

    // A working provider in both wire formats, streamed, and one that cannot be reached.
    let (job, _) = witness
        .job(
            "the probe",
            probe_llm(&["default", "anth", "down"]),
            "completed",
        )
        .await;
    let (llm, text) = (&job["result"]["llm"], keyed.fake.behavior().text());
    assert_eq!(llm["default"]["saw"]["text"], text, "{llm:#}");
    assert_eq!(llm["anth"]["saw"]["text"], text, "{llm:#}");
    assert_eq!(llm["down"]["ok"], false, "{llm:#}");
    let (_, stream) = witness
        .job("a characters job", characters(), "completed")
        .await;
    assert!(
        stream.iter().any(|e| e.event == "token"),
        "the characters job streamed no token: {stream:?}"
    );

    // The provider refuses the key and quotes it back: 401 (credentials) and 400 (a
    // request error, whose message the host passes on to the plugin and the client).
    for status in [401, 400] {
        keyed.fail_quoting_the_key(status, 1);
        let label = format!("the probe under {status}s quoting the key");
        let (job, _) = witness
            .job(&label, probe_llm(&["default", "anth"]), "completed")
            .await;
        let llm = &job["result"]["llm"];
        assert!(
            llm["default"]["ok"] == false && llm["anth"]["ok"] == false,
            "{llm:#}"
        );
        let label = format!("a characters job under {status}s quoting the key");
        witness.job(&label, characters(), "failed").await;
        witness
            .get("/v1/doctor", &format!("/v1/doctor under {status}s"))
            .await;
    }
    keyed.fake.set(|b| *b = Behavior::default());

    for path in [
        "/v1/jobs?limit=100",
        "/v1/queues",
        "/metrics",
        "/v1/plugins",
        "/v1/doctor",
        "/openapi.json",
        "/healthz",
    ] {
        witness.get(path, path).await;
    }
    let dashboard = global.until_finished(&witness.ids).await;
    witness.events.add("/v1/events", format!("{dashboard:?}"));
    let log = keyed.final_log();

    keyed.assert_key_reached_provider(key);
    let Witness {
        plugin_saw,
        events,
        answers,
        ..
    } = &witness;
    let leaks = key_leaks(key, &[plugin_saw, events, answers, &log]);
    assert!(
        leaks.is_empty(),
        "the provider key leaked:\n{}",
        leaks.join("\n\n")
    );
    for url in [authority(&keyed.fake.base_url), authority(&keyed.down_url)] {
        let leaks: Vec<String> = [plugin_saw, events]
            .iter()
            .flat_map(|exposed| exposed.find(&url))
            .map(|(_, hit)| hit)
            .collect();
        assert!(
            leaks.is_empty(),
            "a provider's address leaked:\n{}",
            leaks.join("\n\n")
        );
    }
}

/// A provider (or a proxy in front of it) that dumps the request's headers into a long
/// error message: the host shortens such messages, and must hide the key before it does,
/// or the shortening leaves a piece of the key that matches the whole key no longer.
#[tokio::test]
async fn a_key_quoted_in_a_long_provider_error_is_hidden_before_the_error_is_cut_short() {
    let (key, _) = canaries();
    let mut keyed = KeyedKiln::start().await;
    let mut witness = Witness::new(&keyed.kiln);
    keyed.fail_quoting_the_key(400, 8);
    let (job, _) = witness
        .job("the probe", probe_llm(&["default", "anth"]), "completed")
        .await;
    let llm = &job["result"]["llm"];
    assert!(
        llm["default"]["ok"] == false && llm["anth"]["ok"] == false,
        "{llm:#}"
    );
    witness
        .job("a characters job", characters(), "failed")
        .await;
    witness.get("/v1/doctor", "/v1/doctor").await;
    let log = keyed.final_log();

    keyed.assert_key_reached_provider(key);
    let leaks = key_leaks(
        key,
        &[&witness.plugin_saw, &witness.events, &witness.answers, &log],
    );
    assert!(
        leaks.is_empty(),
        "the provider key leaked:\n{}",
        leaks.join("\n\n")
    );
}
