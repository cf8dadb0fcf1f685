//! Helpers shared by the tests: where the built components are, a Kiln started in this
//! process or as a child process, and a small SSE client. A failing test prints the
//! server's log and the events it received.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use kiln::config::{Config, Overrides};
use kiln::server::Server;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn must_exist(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the components first with `scripts/build-plugins`",
        path.display()
    );
    path
}

/// Copies the folder `from` (a fixture) to `to`, with everything under it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A bundled job type's component: `characters`, `factions` or `documents`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    must_exist(
        repo_root()
            .join("plugins/dist")
            .join(format!("{name}.wasm")),
    )
}

/// A test fixture's component: `noop`, `hostile` or `wrong_version`.
pub fn fixture_wasm(name: &str) -> PathBuf {
    must_exist(
        repo_root()
            .join("target/plugins/wasm32-wasip2/release")
            .join(format!("kiln_fixture_{name}.wasm")),
    )
}

/// A temp folder holding copies of the named components: bundled plugins by name, and
/// fixtures as `fixture:NAME`.
pub fn plugins_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let (source, file) = match name.strip_prefix("fixture:") {
            Some(fixture) => (fixture_wasm(fixture), format!("{fixture}.wasm")),
            None => (plugin_wasm(name), format!("{name}.wasm")),
        };
        std::fs::copy(source, dir.path().join(file)).unwrap();
    }
    dir
}

/// The bundled plugins plus the `noop` and `hostile` fixtures.
pub const ALL_PLUGINS: &[&str] = &[
    "characters",
    "factions",
    "documents",
    "fixture:noop",
    "fixture:hostile",
];

/// Config for tests: quick retries, a short shutdown grace, and an offline provider with
/// no latency unless `extra` (more TOML, appended) configures `[providers.…]` itself, e.g.
/// `[providers.offline]\nkind = "offline"\nlatency_ms = 200` for jobs that take a while.
pub fn test_config(extra: &str) -> String {
    let provider = if extra.contains("[providers.") {
        ""
    } else {
        "[providers.offline]\nkind = \"offline\"\nlatency_ms = 0\n"
    };
    format!("retry_base_ms = 50\nretry_max_ms = 200\nshutdown_grace_secs = 2\n{extra}\n{provider}")
}

/// A Kiln running inside the test process, on a real port, with its own data dir.
pub struct InProcess {
    pub server: Option<Server>,
    pub base: String,
    pub client: reqwest::Client,
    pub data: tempfile::TempDir,
    pub plugins: tempfile::TempDir,
}

impl InProcess {
    /// Starts Kiln with `plugins` (see [`plugins_dir`]) and extra TOML config.
    pub async fn start(plugins: &[&str], extra_config: &str) -> Self {
        let plugins = plugins_dir(plugins);
        let data = tempfile::tempdir().unwrap();
        Self::start_in(data, plugins, extra_config).await
    }

    /// Starts Kiln on an existing data dir (to test restarts in-process).
    pub async fn start_in(
        data: tempfile::TempDir,
        plugins: tempfile::TempDir,
        extra_config: &str,
    ) -> Self {
        let text = test_config(extra_config) + &crate::pg::store_config(data.path(), extra_config);
        let config: Config = toml::from_str(&text).expect("test config parses");
        let resolved = config
            .resolve(Overrides {
                addr: Some("127.0.0.1:0".into()),
                data_dir: Some(data.path().to_path_buf()),
                plugins_dir: Some(plugins.path().to_path_buf()),
                database_url: None,
            })
            .unwrap();
        let server = Server::start(resolved).await.expect("kiln starts");
        Self {
            base: format!("http://{}", server.addr),
            server: Some(server),
            client: reqwest::Client::new(),
            data,
            plugins,
        }
    }

    /// Graceful shutdown; returns the dirs so a test can start again on them.
    pub async fn stop(mut self) -> (tempfile::TempDir, tempfile::TempDir) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        (self.data, self.plugins)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The `kiln` program as a child process (for kill -9, signals and restarts).
pub struct KilnProcess {
    pub child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl KilnProcess {
    /// Starts `kiln serve` on 127.0.0.1:0 with `data_dir`, `plugins_dir` and extra TOML
    /// config, and waits until it listens.
    pub fn start(data_dir: &Path, plugins_dir: &Path, extra_config: &str) -> Self {
        Self::start_logging(data_dir, plugins_dir, extra_config, "info")
    }

    /// [`KilnProcess::start`] with the log filter `KILN_LOG=log_filter`.
    pub fn start_logging(
        data_dir: &Path,
        plugins_dir: &Path,
        extra_config: &str,
        log_filter: &str,
    ) -> Self {
        Self::spawn(
            "127.0.0.1:0",
            data_dir,
            plugins_dir,
            extra_config,
            log_filter,
            &[],
        )
    }

    /// [`KilnProcess::start`] with more environment variables (e.g. `KILN_DATABASE_URL`).
    pub fn start_with_env(
        data_dir: &Path,
        plugins_dir: &Path,
        extra_config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(
            "127.0.0.1:0",
            data_dir,
            plugins_dir,
            extra_config,
            "info",
            env,
        )
    }

    /// Starts `kiln serve` on `addr` and waits until it listens.
    fn spawn(
        addr: &str,
        data_dir: &Path,
        plugins_dir: &Path,
        extra_config: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = data_dir.with_extension("toml");
        let text = test_config(extra_config) + &crate::pg::store_config(data_dir, extra_config);
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
            .args(["serve", "--addr", addr, "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--plugins-dir")
            .arg(plugins_dir)
            .env("KILN_LOG", log_filter)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kiln");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("kiln listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("kiln did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        Self { child, base, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `wait` for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self, wait: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for KilnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Server-Sent Event as received.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// Opens an SSE stream at `url`, resuming after `last_event_id` (sent as the header).
pub async fn open_sse(
    client: &reqwest::Client,
    url: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    request.send().await.expect("SSE request")
}

/// Reads events from an open SSE response until the stream ends, a terminal event
/// arrives (and the stream then ends), `stop_after` events were read, or `timeout`.
/// Comments and the retry hint are skipped.
pub async fn read_sse(
    response: reqwest::Response,
    stop_after: Option<usize>,
    timeout: Duration,
) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(event) = parse_frame(&frame) {
                events.push(event);
                if stop_after.is_some_and(|n| events.len() >= n) {
                    return events;
                }
            }
        }
    }
    events
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    let event = event?;
    Some(SseEvent {
        id,
        event,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
    })
}

/// Every event of a job from the start until its stream ends.
pub async fn all_events(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    timeout: Duration,
) -> Vec<SseEvent> {
    let response = open_sse(client, &format!("{base}/v1/jobs/{id}/events"), None).await;
    let status = response.status();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        panic!("SSE of job {id}: status {status}, body {body}");
    }
    read_sse(response, None, timeout).await
}

/// Submits a job; returns the response status and JSON.
pub async fn submit(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/jobs"))
        .json(&body)
        .send()
        .await
        .expect("submit");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Submits a job that must be accepted (`202`); returns its id.
pub async fn submit_ok(client: &reqwest::Client, base: &str, body: Value) -> String {
    let (status, job) = submit(client, base, body).await;
    assert_eq!(status, 202, "{job}");
    id_of(&job)
}

/// Polls `GET /v1/jobs/{id}` until its status is terminal or `timeout`; returns the job.
pub async fn wait_terminal(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .expect("get job")
            .json()
            .await
            .expect("job JSON");
        let status = job["status"].as_str().unwrap_or_default();
        if matches!(status, "completed" | "failed" | "cancelled") || Instant::now() > deadline {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Helpers added for the api, sse, lifecycle and durability modules.

/// An open SSE stream read one event at a time. `raw` keeps every byte received (to check
/// comments and the `retry:` hint); `ended` says the server closed the stream.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, Result<Vec<u8>, reqwest::Error>>,
    buffer: String,
    pub raw: String,
    pub ended: bool,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: String::new(),
            raw: String::new(),
            ended: false,
        }
    }

    /// The next event, or `None` when the stream ended or `timeout` passed.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_frame(&frame) {
                    return Some(event);
                }
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let text = String::from_utf8_lossy(&chunk).into_owned();
                    self.raw.push_str(&text);
                    self.buffer.push_str(&text);
                }
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
                Err(_) => return None,
            }
        }
    }

    /// Reads until `done` is true for an event (included), the stream ends or `timeout`.
    pub async fn until(
        &mut self,
        mut done: impl FnMut(&SseEvent) -> bool,
        timeout: Duration,
    ) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => {
                    let stop = done(&event);
                    events.push(event);
                    if stop {
                        return events;
                    }
                }
                None => return events,
            }
        }
    }

    /// Reads until the stream ends (check `ended`) or `timeout`.
    pub async fn read_to_end(&mut self, timeout: Duration) -> Vec<SseEvent> {
        self.until(|_| false, timeout).await
    }
}

/// `GET url`: status and JSON body (`Null` when the body is not JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST url` with no body: status and JSON body.
pub async fn post_empty(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.post(url).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// An RFC 3339 UTC time (`2024-05-01T12:00:00.123Z`) for `ms` since the epoch.
pub fn rfc3339_at(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// An RFC 3339 time `delta` from now.
pub fn rfc3339_in(delta: Duration) -> String {
    rfc3339_at(unix_ms() + delta.as_millis() as u64)
}

/// Parses an RFC 3339 time (`T` or space, optional fraction, `Z` or `±hh:mm`) to ms since
/// the epoch; `None` when it is not one.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &text[start..i.min(start + 3)];
        frac_ms = format!("{digits:0<3}").parse().ok()?;
    }
    let offset_min = match text.get(i..)? {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    u64::try_from(secs * 1000 + frac_ms).ok()
}

/// A compiled-component cache shared by the tests of this binary (and kept between runs),
/// so each new data dir does not compile every component again. The artifacts are keyed
/// by component digest and engine hash, so sharing them is what Kiln's own cache does
/// across restarts.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-compiled-cache")
}

/// What `scripts/build-plugins` compiled while it checked the Python and JavaScript
/// components it built (`kiln plugin build` caches under `KILN_CACHE_DIR/compiled`).
fn build_cache() -> PathBuf {
    repo_root().join("target/kiln-cache/compiled")
}

/// Links the shared compiled artifacts into `data_dir/cache` (hard links: a Python or JS
/// artifact is tens of MB, and Kiln never changes an artifact file in place; it writes a
/// new one and renames it over). Copies where linking fails.
pub fn seed_cache(data_dir: &Path) {
    let target = data_dir.join("cache");
    let _ = std::fs::create_dir_all(&target);
    for source in [build_cache(), shared_cache()] {
        let Ok(entries) = std::fs::read_dir(source) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let dest = target.join(entry.file_name());
            if path.extension().is_some_and(|e| e == "cwasm")
                && !dest.exists()
                && std::fs::hard_link(&path, &dest).is_err()
            {
                let _ = std::fs::copy(&path, &dest);
            }
        }
    }
}

/// Saves the artifacts `data_dir/cache` has and the shared cache lacks (atomically).
pub fn save_cache(data_dir: &Path) {
    let shared = shared_cache();
    let _ = std::fs::create_dir_all(&shared);
    let Ok(entries) = std::fs::read_dir(data_dir.join("cache")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let dest = shared.join(entry.file_name());
        if path.extension().is_some_and(|e| e == "cwasm") && !dest.exists() {
            let tmp = shared.join(format!(
                "{}.part{}",
                entry.file_name().to_string_lossy(),
                std::process::id()
            ));
            let saved =
                std::fs::hard_link(&path, &tmp).is_ok() || std::fs::copy(&path, &tmp).is_ok();
            if saved {
                let _ = std::fs::rename(&tmp, &dest);
            }
        }
    }
}

impl InProcess {
    /// [`InProcess::start`] with the shared compiled-component cache.
    pub async fn start_cached(plugins: &[&str], extra_config: &str) -> Self {
        let plugins = plugins_dir(plugins);
        let data = tempfile::tempdir().unwrap();
        seed_cache(data.path());
        let kiln = Self::start_in(data, plugins, extra_config).await;
        save_cache(kiln.data.path());
        kiln
    }
}

impl KilnProcess {
    /// [`KilnProcess::start`] with the shared compiled-component cache.
    pub fn start_cached(data_dir: &Path, plugins_dir: &Path, extra_config: &str) -> Self {
        seed_cache(data_dir);
        let kiln = Self::start(data_dir, plugins_dir, extra_config);
        save_cache(data_dir);
        kiln
    }
}

/// Hang guard for tests that wait on jobs and streams (never a performance bound).
pub const LONG: Duration = Duration::from_secs(120);

/// Kiln in process with every test component, sharing the compiled-component cache.
pub async fn kiln(extra: &str) -> InProcess {
    InProcess::start_cached(ALL_PLUGINS, extra).await
}

/// The `id` of a job's JSON.
pub fn id_of(job: &Value) -> String {
    job["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {job:#}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Helpers added for the cli and ops modules.

/// A free loopback port (bound and released: good enough for one test's restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl KilnProcess {
    /// Starts `kiln serve` on the fixed address `addr` (e.g. `127.0.0.1:PORT`, so a
    /// client can follow the server across a kill -9 and a restart on the same port), with
    /// the shared compiled-component cache.
    pub fn start_on(addr: &str, data_dir: &Path, plugins_dir: &Path, extra_config: &str) -> Self {
        seed_cache(data_dir);
        Self::spawn(addr, data_dir, plugins_dir, extra_config, "info", &[])
    }
}

/// `GET /v1/queues`, by queue name.
pub async fn queues(kiln: &InProcess) -> std::collections::BTreeMap<String, Value> {
    let (status, body) = get_json(&kiln.client, &kiln.url("/v1/queues")).await;
    assert_eq!(status, 200, "{body}");
    body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_string(), q.clone()))
        .collect()
}

/// A job's `started_at` or `finished_at`, ms since the epoch.
pub fn time_ms(job: &Value, field: &str) -> Option<u64> {
    let text = job[field].as_str()?;
    let time = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{field} {text}: {e}"));
    let since = time
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    Some(since.as_millis() as u64)
}

/// The most of `jobs` that ran at one moment, from their start and finish times.
pub fn most_at_once(jobs: &[Value]) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for job in jobs {
        let (Some(start), Some(end)) = (time_ms(job, "started_at"), time_ms(job, "finished_at"))
        else {
            panic!("job has not run: {job:#}");
        };
        // An end sorts before a start at the same millisecond: a slot handed over.
        edges.push((start, 1));
        edges.push((end, -1));
    }
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// `POST /v1/batches`: status and body.
pub async fn submit_batch(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/batches"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/batches");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The strings of the JSON array `value[field]` (job ids, say); panics, showing `value`,
/// when it is not one.
pub fn strings_of(value: &Value, field: &str) -> Vec<String> {
    value[field]
        .as_array()
        .unwrap_or_else(|| panic!("no array {field} in {value:#}"))
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("{field} holds a non-string: {value:#}"))
                .to_string()
        })
        .collect()
}
