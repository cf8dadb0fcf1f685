//! The server-facing command line (`kiln submit`, `watch`, `jobs`, `doctor`) run as the
//! real program against real servers, and the Python example client run by `python3`.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fake_provider::{Behavior, FakeProvider};
use crate::support::*;

/// What a finished command printed.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

fn kiln_command(server: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"));
    command
        .args(args)
        .env("KILN_SERVER", server)
        .env("KILN_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `kiln ARGS` against `server` to its end (within the hang guard).
async fn kiln_cli(server: &str, args: &[&str]) -> Output {
    let output = tokio::time::timeout(LONG, kiln_command(server, args).output())
        .await
        .expect("the command hung")
        .expect("running kiln");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `(percent, message)` of every progress bar line printed (one per event off a
/// terminal).
fn bars(stderr: &str) -> Vec<(u64, String)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('[')?;
            let (bar, rest) = rest.split_once("] ")?;
            if bar.len() != 25 || !bar.chars().all(|c| c == '#' || c == '-') {
                return None;
            }
            let (percent, message) = rest.trim_start().split_once("% ")?;
            Some((percent.parse().ok()?, message.to_string()))
        })
        .collect()
}

/// The `(percent, message)` of every progress event in a job's log.
fn progress_events(events: &[SseEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| {
            (
                e.data["progress"].as_u64().unwrap(),
                e.data["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn wait_status(kiln: &InProcess, id: &str, status: &str) {
    for _ in 0..1000 {
        let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
        if job["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} never became {status}");
}

#[tokio::test]
async fn submit_watch_prints_progress_and_the_result() {
    let kiln = kiln("").await;
    let out = kiln_cli(
        &kiln.base,
        &[
            "submit",
            "hostile",
            "--payload",
            r#"{"mode": "events", "n": 5}"#,
            "--watch",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let expected: Vec<(u64, String)> = (1..=5).map(|i| (i * 20, format!("step {i}"))).collect();
    assert_eq!(bars(&out.stderr), expected, "{out:?}");
    assert!(out.stderr.contains("submitted "), "{out:?}");
    assert!(out.stderr.contains("completed (attempt 1)"), "{out:?}");
    let result: Value = serde_json::from_str(&out.stdout).expect("stdout is the result JSON");
    assert_eq!(result, json!({"count": 5}));

    // Without --watch: the id alone on stdout; with --json, the job.
    let out = kiln_cli(&kiln.base, &["submit", "noop", "--priority", "-5"]).await;
    assert!(out.status.success(), "{out:?}");
    let id = out.stdout.trim();
    let (status, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!((status, job["priority"].as_i64()), (200, Some(-5)), "{job}");
    let out = kiln_cli(
        &kiln.base,
        &[
            "submit",
            "noop",
            "--json",
            "--idempotency-key",
            "k-1",
            "--max-attempts",
            "2",
        ],
    )
    .await;
    let job: Value = serde_json::from_str(&out.stdout).expect("job JSON");
    assert_eq!(job["max_attempts"], 2);
    let again = kiln_cli(&kiln.base, &["submit", "noop", "--idempotency-key", "k-1"]).await;
    assert_eq!(
        again.stdout.trim(),
        job["id"].as_str().unwrap(),
        "{again:?}"
    );

    // Errors: the API's kind and message, non-zero exit.
    let out = kiln_cli(&kiln.base, &["submit", "nosuchtype"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("unknown_type"), "{out:?}");
    assert!(
        out.stderr.contains("unknown job type 'nosuchtype'"),
        "{out:?}"
    );
    let out = kiln_cli(&kiln.base, &["submit", "hostile", "--payload", "{nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--payload is not JSON"), "{out:?}");
    let out = kiln_cli(
        &kiln.base,
        &["submit", "hostile", "--payload", r#"{"mode": 3}"#],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid_payload"), "{out:?}");
    kiln.stop().await;
}

#[tokio::test]
async fn watch_exits_1_on_failure_and_2_on_cancel() {
    let kiln = kiln("").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "permanent"}, "max_attempts": 1}),
    )
    .await;
    let id = id_of(&job);
    let out = kiln_cli(&kiln.base, &["watch", &id]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("failed (attempt 1): permanent: hostile: permanent"),
        "{out:?}"
    );
    assert_eq!(out.stdout, "", "{out:?}");
    // Watching it again after the end: the same outcome from the log.
    let out = kiln_cli(&kiln.base, &["watch", &id]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // Cancelled while watched.
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let id = id_of(&job);
    wait_status(&kiln, &id, "running").await;
    let watcher = kiln_command(&kiln.base, &["watch", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    let output = tokio::time::timeout(LONG, watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");

    // An unknown job: the API's error, exit 1.
    let out = kiln_cli(
        &kiln.base,
        &["watch", "01a2046d-015a-77c1-a8be-cf4576ee5091"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("not_found (HTTP 404)"), "{out:?}");
    kiln.stop().await;
}

#[tokio::test]
async fn watch_follows_a_job_across_a_kill_and_restart_without_loss_or_repeats() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let config = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 400\n";
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = KilnProcess::start_on(&addr, data.path(), plugins.path(), config);
    let client = reqwest::Client::new();
    let (status, job) = submit(
        &client,
        &server.base,
        json!({"type": "characters", "payload": {"theme": "ferry pilots", "count": 2}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);

    let mut watcher = kiln_command(&server.base, &["watch", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr_log = Arc::new(Mutex::new(String::new()));
    let (first_bar_tx, first_bar) = tokio::sync::oneshot::channel();
    let reader = {
        let log = stderr_log.clone();
        let stderr = watcher.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut first_bar_tx = Some(first_bar_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with('[')
                    && let Some(tx) = first_bar_tx.take()
                {
                    let _ = tx.send(());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        })
    };
    let mut stdout = watcher.stdout.take().unwrap();
    let stdout_reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .unwrap();
        text
    });
    tokio::time::timeout(LONG, first_bar)
        .await
        .expect("no progress printed")
        .unwrap();
    server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = KilnProcess::start_on(&addr, data.path(), plugins.path(), config);

    let status = tokio::time::timeout(LONG, watcher.wait())
        .await
        .expect("watch hung")
        .unwrap();
    reader.await.unwrap();
    let stdout = stdout_reader.await.unwrap();
    let stderr = stderr_log.lock().unwrap().clone();
    let out = Output {
        status,
        stdout,
        stderr,
    };
    assert!(
        out.status.success(),
        "{out:?}\n--- server\n{}",
        server.log()
    );
    assert!(out.stderr.contains("reconnecting"), "{out:?}");
    assert!(
        out.stderr.contains("status: running (attempt 2)"),
        "{out:?}"
    );

    // Every progress event of the job's whole log, each printed exactly once, in order.
    let events = all_events(&client, &server.base, &id, LONG).await;
    let logged = progress_events(&events);
    assert!(!logged.is_empty());
    assert_eq!(bars(&out.stderr), logged, "{out:?}");
    let partials = events.iter().filter(|e| e.event == "partial").count();
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("partial "))
            .count(),
        partials,
        "{out:?}"
    );
    let statuses = events.iter().filter(|e| e.event == "status").count();
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("status: "))
            .count(),
        statuses,
        "{out:?}"
    );
    let result: Value = serde_json::from_str(&out.stdout).expect("result JSON on stdout");
    let completed = events.last().unwrap();
    assert_eq!(completed.event, "completed");
    assert_eq!(result, completed.data["result"]);
}

#[tokio::test]
async fn jobs_list_show_cancel_retry() {
    let kiln = kiln("").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "events", "n": 2}}),
    )
    .await;
    let done = id_of(&job);
    wait_terminal(&kiln.client, &kiln.base, &done, LONG).await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "permanent"}, "max_attempts": 1}),
    )
    .await;
    let failed = id_of(&job);
    wait_terminal(&kiln.client, &kiln.base, &failed, LONG).await;
    let (_, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    let noop = id_of(&job);
    wait_terminal(&kiln.client, &kiln.base, &noop, LONG).await;

    // list: a table, newest first, filters of the API.
    let out = kiln_cli(&kiln.base, &["jobs", "list"]).await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID "), "{out:?}");
    for column in ["TYPE", "STATUS", "PROGRESS", "AGE", "MESSAGE"] {
        assert!(lines[0].contains(column), "{out:?}");
    }
    assert_eq!(lines.len(), 4, "{out:?}");
    assert!(lines[1].starts_with(&noop), "{out:?}");
    assert!(lines[3].starts_with(&done), "{out:?}");
    assert!(
        lines[3].contains("completed") && lines[3].contains("100%"),
        "{out:?}"
    );
    assert!(lines[3].contains("step 2"), "{out:?}");
    assert!(lines[2].contains("failed") && lines[2].contains("hostile: permanent"));
    let out = kiln_cli(
        &kiln.base,
        &["jobs", "list", "--type", "hostile", "--status", "failed"],
    )
    .await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(lines[1].starts_with(&failed), "{out:?}");
    let out = kiln_cli(&kiln.base, &["jobs", "list", "--limit", "2", "--json"]).await;
    let page: Value = serde_json::from_str(&out.stdout).expect("page JSON");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let out = kiln_cli(
        &kiln.base,
        &["jobs", "list", "--limit", "2", "--cursor", &cursor],
    )
    .await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(lines[1].starts_with(&done), "{out:?}");
    let out = kiln_cli(&kiln.base, &["jobs", "list", "--status", "bogus"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid_query (HTTP 400)"), "{out:?}");
    assert!(out.stderr.contains("unknown status \"bogus\""), "{out:?}");

    // show.
    let out = kiln_cli(&kiln.base, &["jobs", "show", &done]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("status      completed"), "{out:?}");
    assert!(out.stdout.contains("\"count\": 2"), "{out:?}");
    let out = kiln_cli(&kiln.base, &["jobs", "show", &failed, "--json"]).await;
    let job: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(job["error"]["kind"], "permanent");
    let out = kiln_cli(&kiln.base, &["jobs", "show", "not-a-job"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("not_found"), "{out:?}");

    // retry: only failed or cancelled jobs.
    let out = kiln_cli(&kiln.base, &["jobs", "retry", &failed]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("queued (attempt 2)"), "{out:?}");
    let out = kiln_cli(&kiln.base, &["jobs", "retry", &done]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("conflict (HTTP 409)"), "{out:?}");
    assert!(
        out.stderr
            .contains("only failed or cancelled jobs can be retried")
    );

    // cancel: a running loop stops; a finished job cannot be cancelled.
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let looping = id_of(&job);
    wait_status(&kiln, &looping, "running").await;
    let out = kiln_cli(&kiln.base, &["jobs", "cancel", &looping]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.trim(), format!("{looping} cancelled"));
    let out = kiln_cli(&kiln.base, &["jobs", "cancel", &done]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("conflict"), "{out:?}");

    // No server there: a clear message.
    let out = kiln_cli(
        &format!("http://127.0.0.1:{}", free_port()),
        &["jobs", "list"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("could not reach the Kiln server"),
        "{out:?}"
    );
    kiln.stop().await;
}

#[tokio::test]
async fn doctor_reports_and_fixes_stuck_jobs() {
    let kiln = kiln("").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "trap"}, "max_attempts": 1}),
    )
    .await;
    let trapped = id_of(&job);
    wait_terminal(&kiln.client, &kiln.base, &trapped, LONG).await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let stuck = id_of(&job);
    wait_status(&kiln, &stuck, "running").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let out = kiln_cli(&kiln.base, &["doctor", "--stuck-after-s", "1"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("stuck jobs"), "{out:?}");
    assert!(out.stdout.contains(&stuck), "{out:?}");
    assert!(
        out.stdout.contains("failures in the last 24 h: 1"),
        "{out:?}"
    );
    assert!(out.stdout.contains("trap"), "{out:?}");
    assert!(out.stdout.contains(&trapped), "{out:?}");
    assert!(
        out.stdout.contains("hostile 0.1.0") || out.stdout.contains("hostile "),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("offline (offline): reachable"),
        "{out:?}"
    );
    let address = kiln.base.trim_start_matches("http://");
    assert!(
        out.stdout.contains("nodes: 1 (1 alive)")
            && out
                .stdout
                .lines()
                .any(|l| l.contains(address) && l.contains("this node")),
        "{out:?}"
    );
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{stuck}"))).await;
    assert_eq!(job["status"], "running", "a report alone changes nothing");

    let out = kiln_cli(
        &kiln.base,
        &["doctor", "--stuck-after-s", "1", "--fix-stuck", "--cleanup"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout
            .contains("fix-stuck: cancelled 1 stuck running job(s)"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("cleanup: deleted 0 expired job(s)"),
        "{out:?}"
    );
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{stuck}"))).await;
    assert_eq!(job["status"], "cancelled", "{job}");

    let out = kiln_cli(&kiln.base, &["doctor", "--json"]).await;
    let report: Value = serde_json::from_str(&out.stdout).expect("report JSON");
    assert_eq!(report["stuck"], json!([]));
    kiln.stop().await;
}

/// Runs `python3 ARGS` in the repository root.
async fn python(args: &[&str]) -> Output {
    let output = tokio::time::timeout(
        LONG,
        tokio::process::Command::new("python3")
            .args(args)
            .current_dir(repo_root())
            .env("PYTHONPATH", repo_root().join("examples/python"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python hung")
    .expect("python3 runs");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn python_example_client_submits_follows_and_resumes() {
    let kiln = kiln("").await;
    let out = python(&[
        "examples/python/kiln_client.py",
        "--server",
        &kiln.base,
        "hostile",
        r#"{"mode": "events", "n": 4}"#,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("submitted "), "{out:?}");
    let id = lines[0].trim_start_matches("submitted ").to_string();
    let progress: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("progress"))
        .collect();
    assert_eq!(
        progress,
        [
            "progress  25% step 1",
            "progress  50% step 2",
            "progress  75% step 3",
            "progress 100% step 4"
        ],
        "{out:?}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(r#"result {"count": 4}"#),
        "{out:?}"
    );

    // follow() resumes after a given event id: exactly the events after it, in order.
    let events = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let script = format!(
        "import kiln_client\n\
         k = kiln_client.Kiln({server:?})\n\
         for e in k.follow({id:?}, last_event_id=2):\n    print(e.id, e.event)\n",
        server = kiln.base
    );
    let out = python(&["-c", &script]).await;
    assert!(out.status.success(), "{out:?}");
    let expected: Vec<String> = events
        .iter()
        .filter(|e| e.id.unwrap() > 2)
        .map(|e| format!("{} {}", e.id.unwrap(), e.event))
        .collect();
    let printed: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(printed, expected, "{out:?}");

    // After the end, nothing follows the last id (204): follow() ends at once; the API's
    // errors are raised with their kind.
    let last = events.last().unwrap().id.unwrap();
    let script = format!(
        "import kiln_client\n\
         k = kiln_client.Kiln({server:?})\n\
         print(len(list(k.follow({id:?}, last_event_id={last}))))\n\
         try:\n    k.submit('nosuchtype', {{}})\n\
         except kiln_client.KilnError as e:\n    print(e.status, e.kind)\n",
        server = kiln.base
    );
    let out = python(&["-c", &script]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "0\n400 unknown_type\n", "{out:?}");
    kiln.stop().await;
}

// ---------------------------------------------------------------------------------------
// What `watch` prints of partials and tokens

#[tokio::test]
async fn watch_summarises_partials_in_a_line_and_prints_them_whole_with_partials() {
    let kiln = kiln("").await;
    let out = kiln_cli(
        &kiln.base,
        &[
            "submit",
            "characters",
            "--payload",
            r#"{"theme": "lighthouse keepers", "count": 2}"#,
            "--watch",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let result: Value = serde_json::from_str(&out.stdout).expect("result JSON on stdout");
    let id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the submitted line")
        .to_string();
    let events = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let partials: Vec<&SseEvent> = events.iter().filter(|e| e.event == "partial").collect();
    assert_eq!(partials.len(), 2, "{events:?}");

    // One short line per partial: its name, type, keys and size; no JSON.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("partial "))
        .collect();
    let expected: Vec<String> = partials
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let bytes = p.data["data"].to_string().len();
            let size = if bytes < 1024 {
                format!("{bytes} bytes")
            } else {
                format!("{:.1} KiB", bytes as f64 / 1024.0)
            };
            let hint = if i == 0 {
                " (--partials prints them whole)"
            } else {
                ""
            };
            format!("partial character-{}: object, 6 keys, {size}{hint}", i + 1)
        })
        .collect();
    assert_eq!(lines, expected, "{out:?}");
    assert!(!out.stderr.contains("\"backstory\""), "{out:?}");

    // --partials: each partial's whole JSON, equal to the event's data.
    let whole = kiln_cli(&kiln.base, &["watch", &id, "--partials"]).await;
    assert!(whole.status.success(), "{whole:?}");
    for (i, partial) in partials.iter().enumerate() {
        let head = format!("partial character-{}:\n", i + 1);
        let at = whole
            .stderr
            .find(&head)
            .unwrap_or_else(|| panic!("{whole:?}"));
        let json = &whole.stderr[at + head.len()..];
        let mut values = serde_json::Deserializer::from_str(json).into_iter::<Value>();
        let shown = values.next().unwrap().unwrap();
        assert_eq!(shown, partial.data["data"], "{whole:?}");
        assert_eq!(shown, result[i], "the partial is the result's item");
    }
    kiln.stop().await;
}

/// Kiln serving `characters` with `fake` as its default model's provider.
async fn characters_on(fake: &FakeProvider) -> InProcess {
    let config = format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\
         [models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    );
    InProcess::start_cached(&["characters"], &config).await
}

#[tokio::test]
async fn watch_tokens_marks_the_text_a_new_attempt_voids() {
    // Each streamed call takes about a second, so the test has time to make the next
    // calls fail (three times: the first try and the provider's two retries) while the
    // first is still streaming. Attempt 1 then fails `retryable` after streaming the name;
    // attempt 2 streams everything again.
    let fake = FakeProvider::with(Behavior {
        chunk_delay_ms: 120,
        ..Behavior::default()
    })
    .await;
    let kiln = characters_on(&fake).await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "ferry pilots", "count": 1}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    let watcher = kiln_command(&kiln.base, &["watch", &id, "--tokens"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = SseReader::new(
        open_sse(
            &kiln.client,
            &kiln.url(&format!("/v1/jobs/{id}/events")),
            None,
        )
        .await,
    );
    let seen = events.until(|e| e.event == "token", LONG).await;
    assert_eq!(
        seen.last().map(|e| e.event.as_str()),
        Some("token"),
        "{seen:?}"
    );
    let calls = fake.calls();
    fake.set(|b| {
        b.fail_first = calls + 3;
        b.first_status = 500;
    });
    let output = tokio::time::timeout(LONG, watcher.wait_with_output())
        .await
        .expect("watch hung")
        .unwrap();
    let out = Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    let running_2 = lines
        .iter()
        .position(|l| l.starts_with("status: running (attempt 2)"))
        .unwrap_or_else(|| panic!("no second attempt: {out:?}"));
    assert_eq!(
        lines[running_2 + 1],
        "[attempt 1: its streamed text is void; attempt 2 starts over]",
        "{out:?}"
    );
    // Attempt 1 streamed the name before the marker, attempt 2 every field after it.
    let labels = |part: &[&str]| -> std::collections::BTreeSet<String> {
        part.iter()
            .filter_map(|l| l.strip_prefix("token character-1/"))
            .filter_map(|l| l.split(':').next())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        labels(&lines[..running_2]),
        ["name".to_string()].into(),
        "{out:?}"
    );
    assert_eq!(labels(&lines[running_2..]).len(), 6, "{out:?}");
    assert_eq!(
        out.stderr.matches("starts over]").count(),
        1,
        "one void marker: {out:?}"
    );
    kiln.stop().await;
}

#[tokio::test]
async fn watch_tokens_marks_a_label_whose_stream_broke_off() {
    // Every stream sends two deltas, then breaks: the server voids the label's text.
    let fake = FakeProvider::with(Behavior {
        break_when_contains: Some(String::new()),
        cut_stream_after: 2,
        ..Behavior::default()
    })
    .await;
    let kiln = characters_on(&fake).await;
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "ferry pilots", "count": 1},
               "max_attempts": 1}),
    )
    .await;
    let output = tokio::time::timeout(
        LONG,
        kiln_command(&kiln.base, &["watch", &id, "--tokens"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output(),
    )
    .await
    .expect("watch hung")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "the job failed: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let marker = lines
        .iter()
        .position(|l| *l == "[character-1/name: restarted; its text so far is void]")
        .unwrap_or_else(|| panic!("no marker for the broken stream: {stderr}"));
    let streamed = lines[..marker]
        .iter()
        .filter(|l| l.starts_with("token character-1/name"))
        .count();
    assert!(
        streamed >= 1,
        "the text before the break is shown first: {stderr}"
    );
    kiln.stop().await;
}

// ---------------------------------------------------------------------------------------
// The server's log: colour only on a terminal; JSON lines on request

/// Runs `kiln serve` as a child on a free port with stderr piped (and
/// `KILN_LOG_FORMAT=format` when given), runs a `noop` job on it, stops it with SIGTERM
/// and returns every byte it wrote to stderr.
async fn serve_log(format: Option<&str>) -> Vec<u8> {
    use std::io::BufRead as _;
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["fixture:noop"]);
    seed_cache(data.path());
    let config = data.path().join("kiln.toml");
    std::fs::write(&config, test_config("")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"));
    command
        .args(["serve", "--addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--plugins-dir")
        .arg(plugins.path())
        .env("KILN_LOG", "info")
        .env_remove("KILN_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(format) = format {
        command.env("KILN_LOG_FORMAT", format);
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line);
            let url = match text.find("kiln listening on ") {
                Some(at) => Some(text[at + 18..].trim().to_string()),
                None => serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["fields"]["url"].as_str().map(str::to_string)),
            };
            if let Some(url) = url {
                let _ = url_tx.send(url);
            }
            all.extend_from_slice(&line);
            all.push(b'\n');
        }
        all
    });
    let base = match url_rx.recv_timeout(LONG) {
        Ok(base) => base,
        Err(_) => {
            let _ = child.kill();
            let log = reader.join().unwrap();
            panic!("kiln did not start:\n{}", String::from_utf8_lossy(&log));
        }
    };
    let client = reqwest::Client::new();
    let (_, job) = submit(&client, &base, json!({"type": "noop", "payload": {}})).await;
    let job = wait_terminal(&client, &base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "{job}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let log = reader.join().unwrap();
    assert!(
        status.success(),
        "kiln exited {status}:\n{}",
        String::from_utf8_lossy(&log)
    );
    save_cache(data.path());
    log
}

#[tokio::test]
async fn the_server_log_has_colour_on_a_terminal_only() {
    let log = serve_log(None).await;
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("kiln is serving"), "{text}");
    assert!(text.contains("WARN") && text.contains("stopped"), "{text}");
    assert!(
        !log.contains(&0x1b),
        "an ESC byte in a piped log:\n{text:?}"
    );

    // The same program on a terminal (a pty from util-linux's `script`) colours its levels.
    // It logs an error for a component that does not load, and stops on SIGINT.
    let data = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("broken.wasm"), b"not wasm").unwrap();
    let command = format!(
        "timeout -s INT 10 {} serve --addr 127.0.0.1:0 --data-dir {} --plugins-dir {}",
        env!("CARGO_BIN_EXE_kiln-test-server"),
        data.path().display(),
        plugins.path().display()
    );
    let output = tokio::time::timeout(
        LONG,
        tokio::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("KILN_LOG", "info")
            .env_remove("KILN_LOG_FORMAT")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("script hung")
    .expect("running script");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("plugin not loaded"), "{shown:?}");
    assert!(shown.contains("stopped"), "{shown:?}");
    assert!(
        output.stdout.windows(2).any(|w| w == b"\x1b["),
        "no colour on a terminal: {shown:?}"
    );
}

#[tokio::test]
async fn kiln_log_format_json_writes_one_json_object_per_line() {
    let log = serve_log(Some("json")).await;
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<Value> = text
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    let message = |line: &Value| line["fields"]["message"].as_str().unwrap_or("").to_string();
    let messages: Vec<String> = lines.iter().map(message).collect();
    for expected in [
        "kiln listening",
        "kiln is serving",
        "shutting down",
        "stopped",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} in {messages:?}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{text}"
    );
    assert!(!log.contains(&0x1b), "{text:?}");

    // An unknown format is refused before anything runs.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["jobs", "list", "--server", "http://127.0.0.1:9"])
        .env("KILN_LOG_FORMAT", "xml")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("KILN_LOG_FORMAT is \"xml\"; use \"text\" (the default) or \"json\""),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// `kiln serve` from another directory

/// Runs `kiln serve ARGS` in `cwd` until it listens (then kills it) or exits; returns
/// whether it listened and what it wrote to stderr.
async fn serve_in(cwd: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut child = kiln_command("http://127.0.0.1:9", &["serve"])
        .args(args)
        .env("KILN_LOG", "warn")
        .env_remove("KILN_CONFIG")
        .env_remove("KILN_PLUGINS_DIR")
        .env_remove("KILN_DATA_DIR")
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let listened = tokio::time::timeout(LONG, async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if line.starts_with("kiln listening on ") {
                return true;
            }
        }
        false
    })
    .await
    .expect("kiln serve neither listened nor exited");
    let _ = child.kill().await;
    (listened, log)
}

#[tokio::test]
async fn serve_takes_paths_in_the_config_file_relative_to_its_folder() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join("wasm")).unwrap();
    std::fs::copy(fixture_wasm("noop"), home.path().join("wasm/noop.wasm")).unwrap();
    let config = home.path().join("kiln.toml");
    std::fs::write(
        &config,
        "addr = \"127.0.0.1:0\"\nplugins_dir = \"wasm\"\ndata_dir = \"state\"\n",
    )
    .unwrap();
    let (listened, log) = serve_in(elsewhere.path(), &["--config", config.to_str().unwrap()]).await;
    assert!(listened, "{log}");
    assert!(home.path().join("state/kiln.redb").is_file(), "{log}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);

    // Without a config file the default plugins dir is the working directory's: the error
    // names the absolute path it tried and says how to fix it.
    let (listened, log) = serve_in(elsewhere.path(), &["--addr", "127.0.0.1:0"]).await;
    assert!(!listened, "{log}");
    let tried = elsewhere.path().join("plugins/dist");
    assert!(
        log.contains(&format!(
            "the plugins dir {} does not exist",
            tried.display()
        )),
        "{log}"
    );
    assert!(log.contains("scripts/build-plugins"), "{log}");
}

#[tokio::test]
async fn batch_submit_watch_follows_a_batch_and_exits_by_how_its_jobs_ended() {
    let kiln = kiln("").await;
    let items = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        items.path(),
        "{\"mode\": \"ok\"}\n{\"mode\": \"ok\"}\n{\"mode\": \"ok\"}\n",
    )
    .unwrap();
    let file = format!("@{}", items.path().display());
    let out = kiln_cli(
        &kiln.base,
        &["batch", "submit", "hostile", "--items", &file, "--watch"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("submitted batch"), "{out:?}");
    assert_eq!(out.stderr.matches(": completed").count(), 3, "{out:?}");
    let batch: Value = serde_json::from_str(&out.stdout).expect("the batch's JSON on stdout");
    assert_eq!(batch["counts"]["completed"], 3, "{out:?}");

    // One failing item: exit 1; watching the finished batch again says the same.
    let out = kiln_cli(
        &kiln.base,
        &[
            "batch",
            "submit",
            "hostile",
            "--items",
            r#"[{"mode": "ok"}, {"mode": "permanent"}]"#,
            "--max-attempts",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let id = out.stdout.trim().to_string();
    let out = kiln_cli(&kiln.base, &["batch", "watch", &id]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("permanent"), "{out:?}");
    let out = kiln_cli(&kiln.base, &["batch", "watch", &id]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // A bad item: the API's error naming it, exit 1.
    let out = kiln_cli(
        &kiln.base,
        &[
            "batch",
            "submit",
            "hostile",
            "--items",
            r#"[{"mode": "ok"}, {"mode": "explode"}]"#,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("items[1]"), "{out:?}");
    kiln.stop().await;
}

#[tokio::test]
async fn submit_and_batch_submit_send_the_concurrency_key_and_webhook() {
    let kiln = kiln("").await;
    let out = kiln_cli(
        &kiln.base,
        &["submit", "noop", "--concurrency-key", "user-7", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: Value = serde_json::from_str(&out.stdout).expect("the job's JSON on stdout");
    assert_eq!(job["concurrency_key"], "user-7", "{out:?}");

    let out = kiln_cli(
        &kiln.base,
        &[
            "batch",
            "submit",
            "noop",
            "--items",
            "[{}, {}]",
            "--concurrency-key",
            "user-8",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let batch: Value = serde_json::from_str(&out.stdout).expect("the batch's JSON on stdout");
    for id in batch["jobs"].as_array().expect("job ids") {
        let url = kiln.url(&format!("/v1/jobs/{}", id.as_str().unwrap()));
        let (_, job) = get_json(&kiln.client, &url).await;
        assert_eq!(job["concurrency_key"], "user-8", "{job:#}");
    }

    // --webhook sends the URL; this server has no secret to sign with, so it refuses,
    // and the refusal comes through: a failure exit with its message.
    let out = kiln_cli(
        &kiln.base,
        &[
            "submit",
            "noop",
            "--webhook",
            "https://hooks.example.com/kiln",
        ],
    )
    .await;
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("webhooks need a signing secret"),
        "{out:?}"
    );
    let out = kiln_cli(&kiln.base, &["submit", "noop", "--concurrency-key", ""]).await;
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.contains("concurrency_key"), "{out:?}");
}

#[tokio::test]
async fn submit_depends_on_sends_the_dependencies_and_jobs_list_shows_waiting_jobs() {
    let kiln = kiln("").await;
    let slow = json!({"type": "hostile", "payload": {"mode": "events", "n": 4, "pace_ms": 500}});
    let first = submit_ok(&kiln.client, &kiln.base, slow.clone()).await;
    let second = submit_ok(&kiln.client, &kiln.base, slow).await;
    let deps = format!("{first},{second}");
    let out = kiln_cli(
        &kiln.base,
        &[
            "submit",
            "noop",
            "--depends-on",
            &deps,
            "--run-if-dependency-fails",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: Value = serde_json::from_str(&out.stdout).expect("the job's JSON on stdout");
    assert_eq!(job["status"], "waiting", "{out:?}");
    assert_eq!(job["depends_on"], json!([first, second]), "{out:?}");
    assert_eq!(job["on_dependency_failure"], "run", "{out:?}");
    let id = job["id"].as_str().unwrap();
    let out = kiln_cli(&kiln.base, &["jobs", "list", "--status", "waiting"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains(id), "{out:?}");
    let end = wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
    assert_eq!(end["status"], "completed", "{end:#}");
    // An unknown id comes back as the server's refusal.
    let unknown = uuid::Uuid::now_v7().to_string();
    let out = kiln_cli(&kiln.base, &["submit", "noop", "--depends-on", &unknown]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("depends_on[0]"), "{out:?}");
}

#[tokio::test]
async fn schedules_add_list_and_delete() {
    let kiln = kiln("").await;
    let out = kiln_cli(
        &kiln.base,
        &[
            "schedules",
            "add",
            "nightly",
            "0 3 * * *",
            "hostile",
            "--payload",
            r#"{"mode": "ok"}"#,
            "--timezone",
            "Europe/Paris",
            "--skip-missed",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("nightly: next run 20"), "{out:?}");
    let out = kiln_cli(&kiln.base, &["schedules", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let row = out.stdout.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.starts_with("nightly")
            && row.contains("0 3 * * * (Europe/Paris)")
            && row.contains("hostile"),
        "{out:?}"
    );
    let (_, shown) = get_json(&kiln.client, &kiln.url("/v1/schedules/nightly")).await;
    assert_eq!(shown["catch_up"], "skip", "{shown:#}");
    // A refusal comes through with its message.
    let out = kiln_cli(
        &kiln.base,
        &["schedules", "add", "bad", "61 * * * *", "hostile"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid cron expression"), "{out:?}");
    let out = kiln_cli(&kiln.base, &["schedules", "delete", "nightly"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = kiln_cli(&kiln.base, &["schedules", "list"]).await;
    assert!(out.stderr.contains("no schedules"), "{out:?}");
}
