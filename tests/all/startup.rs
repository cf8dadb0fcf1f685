//! Starting the server: the listener is bound first (a port in use is said plainly),
//! plugins load all at once under the `describe` deadline while `/healthz` and the job
//! routes answer `503 starting`, every log line about a plugin names
//! its file, and of two files claiming one job type the first by name serves it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use kiln::config::{Config, Overrides};
use kiln::server::Server;

use crate::support::*;

/// A plugins dir with `noop` and `loops` copies of the fixture whose `describe` never
/// returns.
fn slow_plugins(loops: usize) -> tempfile::TempDir {
    let dir = plugins_dir(&["fixture:noop"]);
    for i in 0..loops {
        std::fs::copy(
            fixture_wasm("describe_loop"),
            dir.path().join(format!("loop-{i}.wasm")),
        )
        .unwrap();
    }
    dir
}

/// Kiln's config for an in-process server on port 0 over `data` and `plugins`.
fn resolved(data: &Path, plugins: &Path, extra: &str) -> kiln::config::Resolved {
    let text = test_config(extra) + &crate::pg::store_config(data, extra);
    let config: Config = toml::from_str(&text).expect("test config parses");
    config
        .resolve(Overrides {
            addr: Some("127.0.0.1:0".into()),
            data_dir: Some(data.to_path_buf()),
            plugins_dir: Some(plugins.to_path_buf()),
            database_url: None,
        })
        .unwrap()
}

/// While three `describe`s loop, the server already answers: `/healthz` at once and the
/// job routes after waiting [`kiln::api::STARTING_HOLD`] answer `503 starting` in the
/// error shape; once the describes hit their deadline it serves the one good plugin.
#[tokio::test]
async fn answers_while_plugins_load_then_serves() {
    let plugins = slow_plugins(3);
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    // A deadline past the hold of job routes (5 s), so they answer `503 starting`; the
    // requests must land before it, even on a busy machine.
    let config = "describe_timeout_ms = 12000";
    let mut server = Server::launch(resolved(data.path(), plugins.path(), config))
        .await
        .expect("kiln listens");
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    let (status, health) = get_json(&client, &format!("{base}/healthz")).await;
    assert_eq!(
        (status, health["error"]["kind"].as_str()),
        (503, Some("starting")),
        "{health}"
    );
    let held = Instant::now();
    let (status, refused) = submit(&client, &base, json!({"type": "noop"})).await;
    assert!(
        held.elapsed() >= kiln::api::STARTING_HOLD,
        "a job route waits for the start before it answers 503"
    );
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["kind"], "starting", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let (status, _) = get_json(&client, &format!("{base}/openapi.json")).await;
    assert_eq!(status, 200, "the OpenAPI document is served while starting");

    server.ready().await.expect("kiln starts");
    let (status, health) = get_json(&client, &format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health, json!({"status": "ok", "plugins": 1}));
    let (status, job) = submit(&client, &base, json!({"type": "noop"})).await;
    assert_eq!(status, 202, "{job}");
    let job = wait_terminal(&client, &base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "{job}");
    save_cache(data.path());
    server.shutdown().await;
}

/// A start shorter than [`kiln::api::STARTING_HOLD`] shows no error to a job route: a
/// submit sent while a `describe` loops waits for the start to end, then is accepted.
#[tokio::test]
async fn job_routes_wait_for_a_start_shorter_than_the_hold() {
    let plugins = slow_plugins(1);
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    let config = "describe_timeout_ms = 1500";
    let mut server = Server::launch(resolved(data.path(), plugins.path(), config))
        .await
        .expect("kiln listens");
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let (status, health) = get_json(&client, &format!("{base}/healthz")).await;
    assert_eq!(status, 503, "still starting: {health}");
    let (status, job) = submit(&client, &base, json!({"type": "noop"})).await;
    assert_eq!(status, 202, "{job}");
    assert!(server.service.is_started());
    server.ready().await.expect("kiln starts");
    let job = wait_terminal(&client, &base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "{job}");
    save_cache(data.path());
    server.shutdown().await;
}

/// How long `Server::start` takes with `loops` looping `describe`s (default deadline).
async fn start_time(loops: usize) -> Duration {
    let plugins = slow_plugins(loops);
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    let started = Instant::now();
    let server = Server::start(resolved(data.path(), plugins.path(), ""))
        .await
        .expect("kiln starts");
    let took = started.elapsed();
    assert_eq!(server.service.plugins().names(), ["noop"]);
    save_cache(data.path());
    server.shutdown().await;
    took
}

/// Three looping `describe`s cost one deadline, not three: the start-up with three is
/// compared with the start-up with one, measured in the same test. Loaded one after the
/// other they would add two deadlines (4 s); the bound allows one.
#[tokio::test]
async fn looping_describes_cost_one_deadline_not_one_each() {
    let deadline = kiln::runtime::DEFAULT_DESCRIBE_TIMEOUT;
    assert_eq!(deadline, Duration::from_secs(2), "the documented default");
    let one = start_time(1).await;
    let three = start_time(3).await;
    eprintln!("start-up with one looping describe: {one:?}, with three: {three:?}");
    assert!(
        one >= deadline,
        "a looping describe must run to its deadline: {one:?}"
    );
    assert!(
        three < one + deadline,
        "three looping describes took {three:?}, one took {one:?}: they are not loaded at once"
    );
}

/// Every log line about a plugin file names it: loaded, timed out, refused for calling
/// an import, refused for what it describes, and left out for a job type another file
/// serves (that warning names both files and says which one serves it).
#[test]
fn every_log_line_about_a_plugin_names_its_file() {
    let plugins = slow_plugins(2);
    for (fixture, file) in [
        ("describe_import", "import.wasm"),
        ("describe_invalid", "invalid.wasm"),
        ("noop", "zz-noop.wasm"),
    ] {
        std::fs::copy(fixture_wasm(fixture), plugins.path().join(file)).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::start_cached(data.path(), plugins.path(), "describe_timeout_ms = 500");
    let log = kiln.log();
    let about_plugins: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["plugin", "describe", "job type"]
                .iter()
                .any(|word| l.contains(word))
        })
        .filter(|l| !l.contains("kiln is serving") && !l.contains("listening"))
        .collect();
    for line in &about_plugins {
        assert!(
            line.contains(".wasm"),
            "a log line about a plugin names no file: {line}\nlog:\n{log}"
        );
    }
    for file in [
        "loop-0.wasm",
        "loop-1.wasm",
        "import.wasm",
        "invalid.wasm",
        "noop.wasm",
        "zz-noop.wasm",
    ] {
        assert!(
            about_plugins.iter().any(|l| l.contains(file)),
            "no log line names {file}; log:\n{log}"
        );
    }
    let has = |needles: &[&str]| {
        about_plugins
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        has(&["loop-0.wasm", "did not return within 0.5 s"]),
        "log:\n{log}"
    );
    assert!(
        has(&[
            "import.wasm",
            "`describe` failed: it called `kiln:plugin/log@0.2.0#write`"
        ]),
        "log:\n{log}"
    );
    assert!(
        has(&["invalid.wasm", "is not a semver version"]),
        "log:\n{log}"
    );
    assert!(
        has(&[
            "WARN",
            "noop.wasm and ",
            "zz-noop.wasm both describe the job type 'noop'",
            "noop.wasm serves it",
            "zz-noop.wasm is not loaded"
        ]),
        "log:\n{log}"
    );
}

/// Two files claiming one job type: the first by file name serves it, in
/// `GET /v1/plugins` as in `kiln plugin check DIR` (see `plugin_cli.rs`).
#[tokio::test]
async fn the_first_file_by_name_serves_a_job_type_two_claim() {
    let plugins = plugins_dir(&["fixture:noop"]);
    std::fs::rename(
        plugins.path().join("noop.wasm"),
        plugins.path().join("b-noop.wasm"),
    )
    .unwrap();
    std::fs::copy(fixture_wasm("noop"), plugins.path().join("a-noop.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let kiln = InProcess::start_in(data, plugins, "").await;
    let (status, listed) = get_json(&kiln.client, &kiln.url("/v1/plugins")).await;
    assert_eq!(status, 200, "{listed}");
    let plugins = listed["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1, "{listed}");
    assert_eq!(plugins[0]["name"], "noop");
    assert_eq!(plugins[0]["file"], "a-noop.wasm", "{listed}");
    kiln.stop().await;
}

/// `GET /v1/plugins` shows the timeout jobs get: the plugin's claim (characters asks
/// 300 s) within the operator's `max_timeout_secs`, and the host default for a plugin
/// that names none.
#[tokio::test]
async fn plugins_show_the_effective_default_timeout() {
    for (config, characters, noop) in [
        ("", 300, 300),
        ("[limits]\nmax_timeout_secs = 60", 60, 60),
        ("[limits]\ndefault_timeout_secs = 20", 300, 20),
    ] {
        let kiln = InProcess::start_cached(&["characters", "fixture:noop"], config).await;
        let (status, listed) = get_json(&kiln.client, &kiln.url("/v1/plugins")).await;
        assert_eq!(status, 200, "{listed}");
        let timeout_of = |name: &str| {
            listed["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["default_timeout_s"].clone())
        };
        assert_eq!(
            (timeout_of("characters"), timeout_of("noop")),
            (Some(json!(characters)), Some(json!(noop))),
            "with config {config:?}: {listed:#}"
        );
        kiln.stop().await;
    }
}

/// A port in use is said at once, before any plugin is loaded, naming `--addr`.
#[test]
fn a_port_in_use_is_said_before_loading_plugins() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let plugins = slow_plugins(1);
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["serve", "--addr", &addr, "--data-dir"])
        .arg(data.path())
        .arg("--plugins-dir")
        .arg(plugins.path())
        .env("KILN_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("running kiln");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{addr} is in use: stop the other process or pass --addr"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains(".wasm"),
        "plugins were loaded before the port was tried: {stderr}"
    );
    drop(taken);
}
