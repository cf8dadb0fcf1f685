//! `kiln plugin new` and `kiln plugin build`, in Rust, Python and JavaScript: a project
//! written into a folder outside the repository builds with `kiln plugin build`, passes
//! its own unit test, runs with `kiln plugin run` and is served by `kiln serve`.
//!
//! The builds share what `scripts/build-plugins` uses (the cargo target dir
//! `target/plugin-new/`, componentize-py under `target/toolchains/`), so the tools install
//! and the dependencies compile once and later runs take seconds. npm installs each
//! JavaScript project's pinned tools into the project, as it does for an author.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_provider::FakeProvider;
use crate::support::{KilnProcess, all_events, repo_root, submit_ok, wait_terminal};

/// What one command did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` in `dir` to its end, within `guard`.
fn run(mut command: Command, dir: &Path, guard: Duration) -> Ran {
    let child = command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the command");
    let started = Instant::now();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(guard) {
        Ok(output) => output.expect("waiting for the command"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("{command:?} did not finish within {guard:?}");
        }
    };
    eprintln!("{command:?}: {:.1} s", started.elapsed().as_secs_f64());
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn kiln(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln-test-server"));
    command.args(args).env("KILN_LOG", "warn");
    command
}

/// The environment every build in these tests shares, as `scripts/build-plugins` does:
/// one cargo target dir, one componentize-py, one compiled-component cache.
fn shared_build_env(command: &mut Command) {
    let target = repo_root().join("target");
    command
        .env("CARGO_TARGET_DIR", target.join("plugin-new"))
        .env("KILN_TOOLCHAINS_DIR", target.join("toolchains"))
        .env("KILN_CACHE_DIR", target.join("kiln-cache"));
}

/// What a plugin author does, in `lang`: `kiln plugin new quests --lang LANG` in a folder
/// outside the repository, edit the prompt, `kiln plugin build`, the unit test in the
/// language's own runner, `kiln plugin run` on `example.json`, then the component served
/// by `kiln serve` with a job followed over SSE to its end.
async fn a_new_project_builds_tests_runs_and_serves(lang: &str, source: &str, unit_test: &[&str]) {
    let outside = tempfile::tempdir().unwrap();
    let repo = repo_root().canonicalize().unwrap();
    assert!(
        !outside.path().canonicalize().unwrap().starts_with(&repo),
        "the temp dir must be outside the repository"
    );
    let dir = outside.path().to_str().unwrap();
    let out = run(
        kiln(&["plugin", "new", "quests", "--lang", lang, "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let project = outside.path().join("quests");
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    for command in ["kiln plugin build", "kiln plugin run quests.wasm"] {
        assert!(
            readme.contains(command),
            "the README lacks {command:?}:\n{readme}"
        );
    }
    assert!(
        readme.lines().count() < 60,
        "the README should be short:\n{readme}"
    );

    // The author's edit: a prompt of their own, which must reach the model.
    let code_path = project.join(source);
    let code = std::fs::read_to_string(&code_path).unwrap();
    let marker = "PROMPT-EDITED-BY-THE-AUTHOR";
    let edited = add_to_first_prompt(&code, marker)
        .unwrap_or_else(|| panic!("no prompt string found to edit in {source}:\n{code}"));
    std::fs::write(&code_path, edited).unwrap();

    let mut build = kiln(&["plugin", "build"]);
    shared_build_env(&mut build);
    let built = run(build, &project, Duration::from_secs(900));
    assert_eq!(built.code, Some(0), "{built}");
    assert!(
        built
            .stdout
            .contains("example.json passes the payload schema"),
        "{built}"
    );
    let wasm = project.join("quests.wasm");
    assert!(wasm.is_file(), "no {}:\n{built}", wasm.display());

    let mut test = Command::new(unit_test[0]);
    test.args(&unit_test[1..]);
    shared_build_env(&mut test);
    let tested = run(test, &project, Duration::from_secs(900));
    assert_eq!(
        tested.code,
        Some(0),
        "the template's unit test fails:\n{tested}"
    );

    let mut ran = kiln(&[
        "plugin",
        "run",
        "quests.wasm",
        "--payload",
        "@example.json",
        "--tokens",
    ]);
    shared_build_env(&mut ran);
    let ran = run(ran, &project, Duration::from_secs(300));
    assert_eq!(ran.code, Some(0), "{ran}");
    serde_json::from_str::<Value>(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {ran}"));

    // Served: copied into a plugins folder, a job followed over SSE to the end, its LLM
    // calls answered by the fake OpenAI-format provider, which shows what the model got.
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&wasm, plugins.path().join("quests.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start().await;
    static KEY: Once = Once::new();
    // SAFETY: set once, before any server starts, under a name nothing else uses.
    KEY.call_once(|| unsafe { std::env::set_var("KILN_PLUGIN_NEW_KEY", "sk-plugin-new") });
    let config = format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         api_key_env = \"KILN_PLUGIN_NEW_KEY\"\n[models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    );
    let server = KilnProcess::start_cached(data.path(), plugins.path(), &config);
    let client = reqwest::Client::new();
    let payload: Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("example.json")).unwrap())
            .unwrap();
    let id = submit_ok(
        &client,
        &server.base,
        json!({"type": "quests", "payload": payload}),
    )
    .await;
    let events = all_events(&client, &server.base, &id, Duration::from_secs(120)).await;
    let named = |name: &str| events.iter().filter(|e| e.event == name).count();
    let shown = || format!("events: {events:#?}\nserver log:\n{}", server.log());
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{}",
        shown()
    );
    let stages: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e.event == "progress")
        .filter_map(|e| e.data["message"].as_str().map(str::to_string))
        .collect();
    assert!(
        stages.len() >= 2,
        "two progress stages expected: {}",
        shown()
    );
    assert!(named("partial") >= 1, "a partial expected: {}", shown());
    assert!(named("token") >= 1, "streamed tokens expected: {}", shown());
    let job = wait_terminal(&client, &server.base, &id, Duration::from_secs(10)).await;
    assert!(job["usage"]["llm_calls"].as_u64() >= Some(1), "{job:#}");
    let prompts: Vec<String> = fake
        .seen()
        .iter()
        .map(|seen| seen.body.to_string())
        .collect();
    assert!(
        prompts.iter().any(|body| body.contains(marker)),
        "the edited prompt never reached the model: {prompts:#?}"
    );
}

/// `code` with `marker` added inside its first system or user prompt string.
fn add_to_first_prompt(code: &str, marker: &str) -> Option<String> {
    let at = ["You write", "You are", "Write "]
        .iter()
        .filter_map(|start| code.find(start))
        .min()?;
    Some(format!("{}{marker} {}", &code[..at], &code[at..]))
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_a_new_project_builds_tests_runs_and_serves() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    a_new_project_builds_tests_runs_and_serves("rust", "src/lib.rs", &[&cargo, "test"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_a_new_project_builds_tests_runs_and_serves() {
    a_new_project_builds_tests_runs_and_serves("python", "app.py", &["python3", "-m", "unittest"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn js_a_new_project_builds_tests_runs_and_serves() {
    a_new_project_builds_tests_runs_and_serves("js", "src/job.js", &["npm", "test"]).await;
}

/// `kiln plugin build` in a folder with no project says what it looks for.
#[test]
fn plugin_build_without_a_project_names_the_manifests_it_looks_for() {
    let empty = tempfile::tempdir().unwrap();
    let out = run(
        kiln(&["plugin", "build"]),
        empty.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(1), "{out}");
    for manifest in [
        "Cargo.toml",
        "pyproject.toml",
        "package.json",
        "kiln plugin new",
    ] {
        assert!(out.stderr.contains(manifest), "{out}");
    }
}

/// `kiln plugin build` of a new `lang` project with `env` set: its output.
fn build_new_project_with(lang: &str, env: &[(&str, &str)]) -> Ran {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().to_str().unwrap();
    let out = run(
        kiln(&["plugin", "new", "quests", "--lang", lang, "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(0), "{out}");
    let mut build = kiln(&["plugin", "build"]);
    build.env("KILN_TOOLCHAINS_DIR", outside.path().join("toolchains"));
    for (name, value) in env {
        build.env(name, value);
    }
    run(
        build,
        &outside.path().join("quests"),
        Duration::from_secs(60),
    )
}

/// A Python build on a machine without a usable Python says so and how to get one.
#[test]
fn plugin_build_names_a_missing_python() {
    let out = build_new_project_with("python", &[("KILN_PYTHON", "/nonexistent/python3")]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("/nonexistent/python3"), "{out}");
    assert!(out.stderr.contains("install Python 3"), "{out}");
}

/// A JavaScript build on a machine without Node.js says so and how to get it.
#[test]
fn plugin_build_names_a_missing_node() {
    let out = build_new_project_with("js", &[("PATH", "/nonexistent")]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("`node` was not found"), "{out}");
    assert!(out.stderr.contains("Node.js 20 or newer"), "{out}");
}

#[test]
fn plugin_new_refuses_bad_names_and_existing_projects() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path().to_str().unwrap();
    let out = run(
        kiln(&["plugin", "new", "Tide Tables", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("lowercase letters"), "{out}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

    let first = run(
        kiln(&["plugin", "new", "tides", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(first.code, Some(0), "{first}");
    let lib = outside.path().join("tides/src/lib.rs");
    std::fs::write(&lib, "// my own work").unwrap();
    let again = run(
        kiln(&["plugin", "new", "tides", "--dir", dir]),
        outside.path(),
        Duration::from_secs(60),
    );
    assert_eq!(again.code, Some(1), "{again}");
    assert!(again.stderr.contains("already exists"), "{again}");
    assert_eq!(std::fs::read_to_string(&lib).unwrap(), "// my own work");
}
