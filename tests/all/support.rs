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
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn must_exist(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the components first with `scripts/build-plugins`",
        path.display()
    );
    path
}

/// A bundled job type's component: `characters`, `factions` or `documents`.
pub fn plugin_wasm(name: &str) -> PathBuf {
    must_exist(repo_root().join("plugins/dist").join(format!("{name}.wasm")))
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
    pub async fn start_in(data: tempfile::TempDir, plugins: tempfile::TempDir, extra_config: &str) -> Self {
        let config: Config = toml::from_str(&test_config(extra_config)).expect("test config parses");
        let resolved = config
            .resolve(Overrides {
                addr: Some("127.0.0.1:0".into()),
                data_dir: Some(data.path().to_path_buf()),
                plugins_dir: Some(plugins.path().to_path_buf()),
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
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, test_config(extra_config)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
            .args(["serve", "--addr", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--plugins-dir")
            .arg(plugins_dir)
            .env("KILN_LOG", "info")
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
pub async fn open_sse(client: &reqwest::Client, url: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    request.send().await.expect("SSE request")
}

/// Reads events from an open SSE response until the stream ends, a terminal event
/// arrives (and the stream then ends), `stop_after` events were read, or `timeout`.
/// Comments and the retry hint are skipped.
pub async fn read_sse(response: reqwest::Response, stop_after: Option<usize>, timeout: Duration) -> Vec<SseEvent> {
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
pub async fn all_events(client: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Vec<SseEvent> {
    let response = open_sse(client, &format!("{base}/v1/jobs/{id}/events"), None).await;
    assert_eq!(response.status(), 200, "SSE status");
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

/// Polls `GET /v1/jobs/{id}` until its status is terminal or `timeout`; returns the job.
pub async fn wait_terminal(client: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
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
