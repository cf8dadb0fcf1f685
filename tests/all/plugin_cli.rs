//! `kiln plugin check` and `kiln plugin run`: the real `kiln` program as a child process,
//! on the real components, with the offline provider it uses by default.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{fixture_wasm, plugin_wasm, repo_root};

/// How long one `kiln plugin …` invocation may take before the test gives up on it.
const GUARD: Duration = Duration::from_secs(120);

/// What one invocation did.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `kiln <args>` from the repository root and waits (at most [`GUARD`]) for it.
fn kiln<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(args)
        .current_dir(repo_root())
        .env("KILN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kiln");
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for kiln") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kiln {:?} did not finish within {GUARD:?}; stderr so far:\n{}",
                args.iter()
                    .map(|a| a.as_ref().to_owned())
                    .collect::<Vec<_>>(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `kiln plugin run FILE --payload PAYLOAD [extra…]`.
fn plugin_run(file: &Path, payload: &str, extra: &[&str]) -> Outcome {
    let mut args: Vec<std::ffi::OsString> = vec!["plugin".into(), "run".into(), file.into()];
    args.push("--payload".into());
    args.push(payload.into());
    args.extend(extra.iter().map(Into::into));
    kiln(&args)
}

fn plugin_check(file: &Path) -> Outcome {
    kiln(&[
        std::ffi::OsStr::new("plugin"),
        "check".as_ref(),
        file.as_os_str(),
    ])
}

/// The progress lines of a run's stderr, `[####......]  40% message`, as (percent, message).
fn progress_lines(stderr: &str) -> Vec<(u8, String)> {
    stderr
        .lines()
        .filter(|line| line.starts_with('['))
        .filter_map(|line| {
            let (_, rest) = line.split_once("] ")?;
            let (percent, message) = rest.split_once("% ")?;
            Some((percent.trim().parse().ok()?, message.to_string()))
        })
        .collect()
}

/// The partial lines of a run's stderr, `partial NAME: JSON`, as (name, data).
fn partial_lines(stderr: &str) -> Vec<(String, Value)> {
    stderr
        .lines()
        .filter_map(|line| line.strip_prefix("partial "))
        .map(|rest| {
            let (name, data) = rest
                .split_once(": ")
                .unwrap_or_else(|| panic!("malformed partial line: {rest}"));
            let data = serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("partial {name} is not JSON ({e}): {data}"));
            (name.to_string(), data)
        })
        .collect()
}

/// Checks a successful run: exit 0, stdout one JSON value, progress climbing to 100%.
/// Returns the result and the progress lines.
fn completed(out: &Outcome) -> (Value, Vec<(u8, String)>) {
    assert_eq!(out.code, Some(0), "{out}");
    let result: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"));
    let progress = progress_lines(&out.stderr);
    assert!(!progress.is_empty(), "no progress lines:\n{out}");
    for pair in progress.windows(2) {
        assert!(
            pair[0].0 <= pair[1].0,
            "progress went down: {progress:?}\n{out}"
        );
    }
    assert_eq!(
        progress.last().unwrap().0,
        100,
        "progress does not end at 100%:\n{out}"
    );
    assert!(out.stderr.contains("completed in "), "{out}");
    (result, progress)
}

/// The value after `label:` on a line of `kiln plugin check`'s report.
fn field<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(&format!("{label}:")))
        .map(str::trim)
}

// ---------------------------------------------------------------------------------------
// kiln plugin check
// ---------------------------------------------------------------------------------------

#[test]
fn check_describes_a_bundled_plugin() {
    let out = plugin_check(&plugin_wasm("characters"));
    assert_eq!(out.code, Some(0), "{out}");
    let stdout = &out.stdout;
    assert!(stdout.contains("kiln:plugin@0.2.0"), "{out}");
    assert_eq!(field(stdout, "contract"), Some("0.2.0"), "{out}");
    assert_eq!(field(stdout, "type"), Some("characters"), "{out}");
    let version = field(stdout, "version").unwrap_or_else(|| panic!("no version:\n{out}"));
    assert_eq!(
        version.split('.').count(),
        3,
        "not semver: {version}\n{out}"
    );
    assert!(
        field(stdout, "description").is_some_and(|d| !d.is_empty()),
        "{out}"
    );

    // The imports section: each one a Kiln interface or WASI, progress and llm among them.
    let imports: Vec<&str> = stdout
        .lines()
        .skip_while(|line| line.trim() != "imports:")
        .skip(1)
        .take_while(|line| line.trim() != "payload schema:")
        .map(str::trim)
        .collect();
    assert!(
        imports.contains(&"kiln:plugin/progress@0.2.0"),
        "imports {imports:?}\n{out}"
    );
    assert!(
        imports.contains(&"kiln:plugin/llm@0.2.0"),
        "imports {imports:?}\n{out}"
    );
    for import in &imports {
        assert!(
            import.starts_with("kiln:plugin/") || import.starts_with("wasi:"),
            "unexpected import {import}\n{out}"
        );
    }

    // The schema: the rest of stdout, as JSON.
    let (_, schema) = stdout
        .split_once("payload schema:")
        .unwrap_or_else(|| panic!("no schema:\n{out}"));
    let schema: Value = serde_json::from_str(schema.trim())
        .unwrap_or_else(|e| panic!("the schema is not JSON ({e}):\n{out}"));
    assert_eq!(
        schema["properties"]["theme"]["type"], "string",
        "{schema:#}"
    );
    assert_eq!(schema["properties"]["count"]["maximum"], 10, "{schema:#}");
    assert_eq!(schema["required"], json!(["theme"]), "{schema:#}");
}

#[test]
fn check_accepts_every_bundled_plugin() {
    for name in ["characters", "factions", "documents"] {
        let out = plugin_check(&plugin_wasm(name));
        assert_eq!(out.code, Some(0), "{name}: {out}");
        assert_eq!(field(&out.stdout, "type"), Some(name), "{out}");
    }
}

#[test]
fn check_refuses_a_describe_that_calls_an_import() {
    let out = plugin_check(&fixture_wasm("describe_import"));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("`describe` failed: it called `kiln:plugin/log@0.2.0#write`"),
        "{out}"
    );
    assert!(out.stderr.contains("must not call any import"), "{out}");
    assert!(!out.stdout.contains("ok:"), "{out}");
}

#[test]
fn check_refuses_a_description_kiln_cannot_serve() {
    let out = plugin_check(&fixture_wasm("describe_invalid"));
    assert_eq!(out.code, Some(1), "{out}");
    for wanted in [
        "version \"latest\" is not a semver version",
        "the description is 1048576 bytes; the limit is 4096",
        "the limit is 65536",
    ] {
        assert!(out.stderr.contains(wanted), "{wanted:?}: {out}");
    }
}

/// `kiln plugin check DIR` loads a plugins dir as `kiln serve` does: of two files
/// claiming one job type the first by name serves it, the other is named as not loaded,
/// and the exit code says a file would not be served.
#[test]
fn check_of_a_dir_says_which_file_serves_a_job_type_two_claim() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["b-noop.wasm", "a-noop.wasm"] {
        std::fs::copy(fixture_wasm("noop"), dir.path().join(file)).unwrap();
    }
    std::fs::copy(
        plugin_wasm("characters"),
        dir.path().join("characters.wasm"),
    )
    .unwrap();
    let out = plugin_check(dir.path());
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("a-noop.wasm serves job type 'noop'"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("characters.wasm serves job type 'characters'"),
        "{out}"
    );
    assert!(
        out.stderr.contains("both describe the job type 'noop'")
            && out.stderr.contains("a-noop.wasm serves it")
            && out.stderr.contains("b-noop.wasm is not loaded"),
        "{out}"
    );
    assert!(out.stdout.contains("2 job types served"), "{out}");

    // Without the second claimant every file is served: exit 0.
    std::fs::remove_file(dir.path().join("b-noop.wasm")).unwrap();
    let out = plugin_check(dir.path());
    assert_eq!(out.code, Some(0), "{out}");
}

/// `check` shows the timeout jobs will get, not a claim the cap lowers.
#[test]
fn check_shows_the_effective_timeout() {
    let out = plugin_check(&fixture_wasm("noop"));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        field(&out.stdout, "timeout"),
        Some("300 s (the host default)"),
        "{out}"
    );
}

#[test]
fn check_refuses_another_contract_version() {
    let out = plugin_check(&fixture_wasm("wrong_version"));
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("9.9.9"), "{out}");
    assert!(out.stderr.contains("0.1.0, 0.2.0"), "{out}");
    assert!(!out.stdout.contains("ok:"), "{out}");
}

#[test]
fn check_refuses_a_core_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, wat::parse_str("(module)").unwrap()).unwrap();
    let out = plugin_check(&path);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("core WebAssembly module"), "{out}");
    // The reason says how to fix it.
    assert!(out.stderr.contains("wasm32-wasip2"), "{out}");
}

#[test]
fn check_refuses_a_file_that_is_not_webassembly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "just some text\n").unwrap();
    let out = plugin_check(&path);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("not a WebAssembly file"), "{out}");
}

#[test]
fn check_refuses_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.wasm");
    let out = plugin_check(&path);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("nowhere.wasm"), "{out}");
}

// ---------------------------------------------------------------------------------------
// kiln plugin run
// ---------------------------------------------------------------------------------------

#[test]
fn run_characters_prints_progress_partials_and_the_result() {
    let out = plugin_run(
        &plugin_wasm("characters"),
        r#"{"theme": "a cyberpunk heist crew", "count": 3}"#,
        &[],
    );
    let (result, progress) = completed(&out);
    let characters = result
        .as_array()
        .unwrap_or_else(|| panic!("not an array:\n{out}"));
    assert_eq!(characters.len(), 3, "{out}");
    for character in characters {
        let mut keys: Vec<&str> = character
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "appearance",
                "backstory",
                "name",
                "skills",
                "stats",
                "traits"
            ],
            "{out}"
        );
    }
    let messages: Vec<&str> = progress.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        [
            "Generated names (3/3)",
            "Generated appearances (3/3)",
            "Generated backstories (3/3)",
            "Generated traits (3/3)",
            "Generated skills (3/3)",
            "Generated stats (3/3)",
        ],
        "{out}"
    );
    let partials = partial_lines(&out.stderr);
    let names: Vec<&str> = partials.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["character-1", "character-2", "character-3"],
        "{out}"
    );
    for (i, (_, data)) in partials.iter().enumerate() {
        assert_eq!(
            data,
            &characters[i],
            "partial {} differs from the result\n{out}",
            i + 1
        );
    }
    assert!(out.stderr.contains("; 18 LLM calls"), "{out}");
    // Without --tokens, streamed tokens are not printed.
    assert!(!out.stderr.contains("token character-"), "{out}");
}

#[test]
fn run_factions_prints_progress_partials_and_the_result() {
    let out = plugin_run(
        &plugin_wasm("factions"),
        r#"{"theme": "a drowned archipelago", "count": 2}"#,
        &[],
    );
    let (result, progress) = completed(&out);
    let factions = result
        .as_array()
        .unwrap_or_else(|| panic!("not an array:\n{out}"));
    assert_eq!(factions.len(), 2, "{out}");
    for faction in factions {
        for key in ["name", "ideology", "appearance", "summary"] {
            assert!(faction[key].is_string(), "{key} missing:\n{out}");
        }
        assert_eq!(faction.as_object().unwrap().len(), 4, "{out}");
    }
    assert_eq!(
        progress.last().unwrap().1,
        "Generated summaries (2/2)",
        "{out}"
    );
    assert!(
        progress
            .iter()
            .any(|(_, m)| m == "Generated ideologies (2/2)"),
        "{out}"
    );
    let names: Vec<String> = partial_lines(&out.stderr)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["faction-1", "faction-2"], "{out}");
    assert!(out.stderr.contains("; 8 LLM calls"), "{out}");
}

#[test]
fn run_documents_prints_progress_partials_and_the_result() {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 20_000 {
        i += 1;
        text += &format!(
            "Section {i}. The committee reviewed the quarterly figures and found that \
             revenue rose by {i} percent while costs stayed flat. Three proposals were \
             tabled for the next meeting, and the chair asked for written comments.\n\n"
        );
    }
    let payload = json!({"text": text, "title": "Committee minutes"}).to_string();
    let out = plugin_run(&plugin_wasm("documents"), &payload, &[]);
    let (result, progress) = completed(&out);
    assert!(
        result["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{out}"
    );
    assert!(result["key_points"].is_array(), "{out}");
    assert!(result["sections"].is_array(), "{out}");
    let partials = partial_lines(&out.stderr);
    let n = partials.len();
    assert!(n >= 3, "{n} chunks:\n{out}");
    for (i, (name, data)) in partials.iter().enumerate() {
        assert_eq!(name, &format!("chunk-{}", i + 1), "{out}");
        assert!(data["summary"].is_string(), "{out}");
    }
    let last_chunk = format!("Summarised chunks ({n}/{n})");
    assert!(
        progress.iter().any(|(_, m)| *m == last_chunk),
        "no {last_chunk:?}:\n{out}"
    );
    assert_eq!(
        progress.last().unwrap().1,
        "Wrote the final summary",
        "{out}"
    );
}

#[test]
fn run_with_tokens_prints_the_streamed_output() {
    let out = plugin_run(
        &plugin_wasm("characters"),
        r#"{"theme": "lighthouse keepers", "count": 1}"#,
        &["--tokens"],
    );
    completed(&out);
    for field in [
        "name",
        "appearance",
        "backstory",
        "traits",
        "skills",
        "stats",
    ] {
        let label = format!("token character-1/{field}: ");
        assert!(out.stderr.contains(&label), "no {label:?}:\n{out}");
    }
}

#[test]
fn run_refuses_a_payload_failing_the_schema() {
    let out = plugin_run(
        &plugin_wasm("characters"),
        r#"{"theme": "pirates", "count": 11}"#,
        &[],
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("does not match the 'characters' schema"),
        "{out}"
    );
    assert!(out.stderr.contains("/count"), "{out}");
    assert!(out.stdout.trim().is_empty(), "{out}");
    assert!(
        progress_lines(&out.stderr).is_empty(),
        "the job ran anyway:\n{out}"
    );

    // Several violations are all listed.
    let out = plugin_run(&plugin_wasm("characters"), r#"{"count": 0}"#, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("/count"), "{out}");
    assert!(out.stderr.contains("theme"), "{out}");
}

#[test]
fn run_refuses_a_payload_that_is_not_json() {
    let out = plugin_run(&plugin_wasm("characters"), r#"{"theme": "#, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("--payload is not JSON"), "{out}");
    assert!(out.stdout.trim().is_empty(), "{out}");
}

#[test]
fn run_reports_a_trap() {
    let out = plugin_run(&fixture_wasm("hostile"), r#"{"mode": "trap"}"#, &[]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("error (trap)"), "{out}");
    assert!(out.stdout.trim().is_empty(), "{out}");
}

#[test]
fn run_reports_a_panic_with_its_message() {
    let out = plugin_run(&fixture_wasm("hostile"), r#"{"mode": "panic"}"#, &[]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("error (trap)"), "{out}");
    assert!(
        out.stderr.contains("hostile plugin panicked on purpose"),
        "{out}"
    );
}

#[test]
fn run_timeout_flag_stops_a_looping_plugin() {
    let out = plugin_run(
        &fixture_wasm("hostile"),
        r#"{"mode": "loop"}"#,
        &["--timeout-s", "1"],
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("error (timeout)"), "{out}");
}

#[test]
fn run_reports_the_plugins_own_error() {
    let out = plugin_run(&fixture_wasm("hostile"), r#"{"mode": "permanent"}"#, &[]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("error (permanent): hostile: permanent"),
        "{out}"
    );
}

#[test]
fn run_refuses_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = plugin_run(&dir.path().join("gone.wasm"), "{}", &[]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("gone.wasm"), "{out}");
}
