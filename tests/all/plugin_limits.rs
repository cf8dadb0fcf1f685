//! Limits on what one plugin can do to the server beyond its own job: how much it may
//! write to the server's log, and a token budget checked before a request is sent.
//! Each limit has an obeyed and a violated test.

use serde_json::json;

use crate::fake_provider::FakeProvider;
use crate::support::*;

/// Runs one hostile `log_lines` job of `lines` lines on a child `kiln serve` with `config`;
/// returns the finished job and the server's log.
async fn log_lines(lines: u64, config: &str) -> (serde_json::Value, String) {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["fixture:hostile"]);
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), config);
    let client = reqwest::Client::new();
    let body = json!({"type": "hostile", "payload": {"mode": "log_lines", "n": lines}});
    let id = submit_ok(&client, &kiln.base, body).await;
    let done = wait_terminal(&client, &kiln.base, &id, LONG).await;
    // The end-of-attempt summary is written when the attempt's state is dropped, just
    // after the job's end is committed.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = kiln.log();
    kiln.terminate(std::time::Duration::from_secs(10));
    (done, log)
}

fn written(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("hostile log line"))
        .count()
}

/// The log without terminal colour codes (`ESC [ … m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The `dropped_lines=N` of the end-of-attempt summary.
fn dropped(log: &str) -> Option<usize> {
    let log = plain(log);
    let at = log.find("dropped_lines=")? + "dropped_lines=".len();
    log[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn plugin_log_lines_within_the_limits_are_all_written() {
    let (done, log) = log_lines(50, "").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(written(&log), 50, "{log}");
    assert_eq!(dropped(&log), None, "{log}");
}

#[tokio::test]
async fn a_plugin_logging_in_a_loop_is_cut_to_its_rate_and_the_rest_counted() {
    let lines = 100_000;
    let (done, log) = log_lines(lines, "").await;
    assert_eq!(
        done["status"], "completed",
        "the job itself goes on: {done}"
    );
    let (kept, dropped) = (
        written(&log),
        dropped(&log).expect("a summary of what was dropped"),
    );
    assert!(kept >= 100, "the first second's burst is written: {kept}");
    assert!(kept < 2_000, "the rest is not: {kept} lines written");
    assert_eq!(
        kept + dropped,
        lines as usize,
        "every line is written or counted"
    );
    assert!(
        log.contains("further lines of this attempt are dropped"),
        "the drop is announced when it starts"
    );
}

#[tokio::test]
async fn plugin_log_bytes_beyond_the_limit_are_dropped() {
    // 50- and 51-byte lines, 600 bytes allowed (eleven lines), a rate that never binds.
    let config = "[limits]\nmax_log_bytes = 600\nmax_log_lines_per_second = 100000\n";
    let (done, log) = log_lines(50, config).await;
    assert_eq!(done["status"], "completed", "{done}");
    let kept = written(&log);
    assert_eq!(kept, 11, "{log}");
    assert_eq!(dropped(&log), Some(50 - kept), "{log}");
}

/// TOML for the fake provider as the default model, with a token budget.
fn budget_config(fake: &FakeProvider, max_llm_tokens: u64) -> String {
    format!(
        "[limits]\nmax_llm_tokens = {max_llm_tokens}\n\n[providers.fake]\nkind = \"openai\"\n\
         base_url = \"{}\"\n\n[models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    )
}

async fn big_prompt(kiln: &InProcess, kib: u64) -> serde_json::Value {
    let body =
        json!({"type": "hostile", "payload": {"mode": "big_prompt", "n": kib}, "max_attempts": 1});
    let id = submit_ok(&kiln.client, &kiln.base, body).await;
    wait_terminal(&kiln.client, &kiln.base, &id, LONG).await
}

#[tokio::test]
async fn a_prompt_within_the_token_budget_is_sent() {
    let fake = FakeProvider::start().await;
    let kiln = InProcess::start(&["fixture:hostile"], &budget_config(&fake, 100_000)).await;
    // 100 KiB is about 25,600 tokens.
    let done = big_prompt(&kiln, 100).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn a_prompt_over_the_token_budget_is_refused_before_it_is_paid_for() {
    let fake = FakeProvider::start().await;
    let kiln = InProcess::start(&["fixture:hostile"], &budget_config(&fake, 100_000)).await;
    // 1 MiB is about 262,000 tokens.
    let done = big_prompt(&kiln, 1024).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["kind"], "llm_limit", "{done:#}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("not sent"), "{message}");
    assert_eq!(fake.calls(), 0, "nothing reached the provider");
    assert_eq!(done["usage"]["input_tokens"], 0, "{done:#}");
}
