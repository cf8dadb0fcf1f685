//! The dashboard (`/`) and the browser example page (`/examples/browser`) as users see
//! them: a real headless Chromium (Debian's `chromium`, driven through Debian's
//! `chromedriver` with WebDriver) against a real Kiln on loopback. Each test saves
//! screenshots under `target/browser-artifacts/`.
//!
//! Install the browser with `scripts/install-test-deps` (`scripts/test` and `.ci/run` do).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::fake_provider::{Behavior, FakeProvider};
use crate::support::{
    InProcess, KilnProcess, LONG, SseEvent, all_events, free_port, get_json, id_of, plugins_dir,
    submit, submit_ok,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The offline provider slow enough for a `characters` job's progress to be seen moving.
const SLOW_PROVIDER: &str = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 300\n";

/// One browser at a time: the machine is small and the tests are about what users see,
/// not about many browsers.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where screenshots and driver logs go: `target/browser-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/browser-artifacts");
    dir
}

/// A headless Chromium session through a chromedriver this test started. Dropping it
/// kills the driver's process group (the driver and the browser it started).
struct Browser {
    client: Client,
    driver: Child,
    name: &'static str,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session; `name` prefixes the
    /// artifacts. Fails with how to install the browser when it is missing.
    async fn start(name: &'static str) -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Debian's `{package}`; install it \
                 with `scripts/install-test-deps` (as root; `scripts/test` runs it)"
            );
        }
        let port = free_port();
        let log = artifacts_dir().join(format!("{name}-chromedriver.log"));
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = http.get(format!("{url}/status")).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {url}; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let args = json!([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            format!("--user-data-dir={}", profile.path().display()),
        ]);
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("opening a Chromium session: {e}; see {}", log.display()));
        Self {
            client,
            driver,
            name,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Runs `script` until it returns something other than `null`/`false`, and returns
    /// that. `LONG` is only a hang guard.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + LONG;
        loop {
            let value = self.js(script).await;
            if !(value.is_null() || value == Value::Bool(false)) {
                return value;
            }
            if Instant::now() > deadline {
                self.screenshot("timeout").await;
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG screenshot as `target/browser-artifacts/<name>-<label>.png`.
    async fn screenshot(&self, label: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = artifacts_dir().join(format!("{}-{label}.png", self.name));
        std::fs::write(&path, png).expect("writing the screenshot");
        println!("screenshot: {}", path.display());
        path
    }

    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads its own process group; the browser it started is in it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// Opens the dashboard and waits until it has loaded and its live stream is open.
async fn open_dashboard(browser: &Browser, kiln: &InProcess) {
    open_dashboard_at(browser, &kiln.url("/")).await;
}

/// [`open_dashboard`] for the dashboard at `url`.
async fn open_dashboard_at(browser: &Browser, url: &str) {
    browser.goto(url).await;
    browser
        .wait_for(
            "the dashboard to load and connect",
            "return !!(window.kilnDashboard && window.kilnDashboard.loaded && \
             document.querySelector('[data-testid=conn-state]').dataset.state === 'live');",
        )
        .await;
    // Survives only if the page is never reloaded.
    browser
        .js("window.kilnTestMarker = 'same page'; return true;")
        .await;
}

/// What the dashboard shows for job `id`: `{status, class, progress, message}`, or null
/// while it has no row.
fn row_state_script(id: &str) -> String {
    format!(
        "const row = document.querySelector('[data-testid=job-row][data-job-id=\"{id}\"]');
         if (!row) return null;
         const status = row.querySelector('[data-testid=job-status]');
         return {{status: status.textContent, class: status.className,
                  progress: row.querySelector('[data-testid=job-progress]').value,
                  message: row.querySelector('[data-testid=job-message]').textContent}};"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_running_jobs_progress_and_completion_live() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["characters"], SLOW_PROVIDER).await;
    let browser = Browser::start("dashboard-progress").await;
    open_dashboard(&browser, &kiln).await;

    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "lighthouse keepers", "count": 2}}),
    )
    .await;

    // Sample the row until the job is over: the bar must be read moving while it runs.
    let script = row_state_script(&id);
    let mut samples: Vec<(String, f64)> = Vec::new();
    let mut shot = None;
    let deadline = Instant::now() + LONG;
    let last = loop {
        let state = browser.js(&script).await;
        if !state.is_null() {
            let status = state["status"].as_str().unwrap_or_default().to_string();
            let progress = state["progress"].as_f64().unwrap_or(-1.0);
            if status == "running" && progress > 0.0 && shot.is_none() {
                shot = Some(browser.screenshot("running").await);
            }
            samples.push((status.clone(), progress));
            if status == "completed" {
                break state;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job never completed on the dashboard; samples: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    let running: Vec<f64> = samples
        .iter()
        .filter(|(s, _)| s == "running")
        .map(|(_, p)| *p)
        .collect();
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "the progress bar went back: {running:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = running.iter().map(|p| *p as u64).collect();
    assert!(
        distinct.len() >= 2,
        "the progress bar was not seen moving while the job ran: samples {samples:?}"
    );
    assert!(shot.is_some(), "no screenshot of the running job");

    assert!(
        last["class"].as_str().unwrap().contains("status-completed"),
        "completed is not shown as such: {last}"
    );
    let completed_card = browser
        .js("return document.querySelector('[data-testid=card-completed] .n').textContent;")
        .await;
    assert_eq!(completed_card, json!("1"), "completed card");
    assert_eq!(
        browser.js("return window.kilnTestMarker || null;").await,
        json!("same page"),
        "the dashboard reloaded"
    );
    // The detail of the job: its event log read from /v1/jobs/{id}/events, and its result.
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=job-type]"),
    )
    .await;
    let log = logged_rows(&all_events(&kiln.client, &kiln.base, &id, LONG).await);
    browser
        .wait_for(
            "the job detail's whole event log and result",
            &format!(
                "const n = document.querySelectorAll('[data-testid=detail-event]').length;
                 const result = document.querySelector('[data-testid=detail-result]').textContent;
                 return n === {} && result.length > 0;",
                log.len()
            ),
        )
        .await;
    browser.screenshot("completed").await;
    browser.close().await;
    kiln.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_page_receives_every_event_of_a_job_in_order() {
    example_page_follows_a_job(
        "characters",
        r#"{"theme": "lighthouse keepers", "count": 2}"#,
    )
    .await;
}

/// The same page following the Python job type `settings`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_page_follows_a_python_job_to_its_end() {
    example_page_follows_a_job(
        "settings",
        r#"{"theme": "a drowned archipelago", "count": 2}"#,
    )
    .await;
}

/// The same page following the JavaScript job type `relics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_page_follows_a_js_job_to_its_end() {
    example_page_follows_a_job("relics", r#"{"theme": "a sunken cathedral", "count": 2}"#).await;
}

/// Drives the example page as a user would: picks `job_type`, types `payload`, submits,
/// and checks the page received the job's whole event log, in order, then closed.
async fn example_page_follows_a_job(job_type: &'static str, payload_text: &str) {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&[job_type], SLOW_PROVIDER).await;
    let browser = Browser::start(job_type).await;
    browser.goto(&kiln.url("/examples/browser")).await;
    browser
        .wait_for(
            "the job types to load",
            "return document.querySelector('[data-testid=type-select]').options.length > 0;",
        )
        .await;

    // Drive the form as a user would.
    let select = browser
        .client
        .find(Locator::Css("[data-testid=type-select]"))
        .await
        .expect("type select");
    select
        .select_by_value(job_type)
        .await
        .expect("choosing the job type");
    let payload = browser
        .client
        .find(Locator::Css("[data-testid=payload]"))
        .await
        .expect("payload box");
    payload.clear().await.expect("clearing the payload");
    payload
        .send_keys(payload_text)
        .await
        .expect("typing the payload");
    browser
        .client
        .find(Locator::Css("[data-testid=submit-button]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submitting");
    let id = browser
        .wait_for(
            "the submitted job's id",
            "const t = document.querySelector('[data-testid=job-id]').textContent;
             return t.length === 36 ? t : null;",
        )
        .await
        .as_str()
        .unwrap()
        .to_string();

    let mut shot = None;
    let deadline = Instant::now() + LONG;
    loop {
        let state = browser
            .js("const e = window.kilnEvents;
                 return {n: e.length, last: e.length ? e[e.length - 1].event : null,
                         progress: document.querySelector('[data-testid=progress]').value};")
            .await;
        let last = state["last"].as_str().unwrap_or_default();
        if matches!(last, "completed" | "failed" | "cancelled") {
            break;
        }
        if shot.is_none() && state["progress"].as_f64().unwrap_or(0.0) > 0.0 {
            shot = Some(browser.screenshot("running").await);
        }
        assert!(Instant::now() < deadline, "the page never saw the job end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.screenshot("completed").await;

    let page: Vec<Value> = serde_json::from_value(browser.js("return window.kilnEvents;").await)
        .expect("window.kilnEvents");
    let log = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(
        log.last().map(|e| e.event.as_str()),
        Some("completed"),
        "the job's own log"
    );
    let log_seen: Vec<(u64, &str, &Value)> = log
        .iter()
        .map(|e| (e.id.expect("event id"), e.event.as_str(), &e.data))
        .collect();
    let page_seen: Vec<(u64, &str, &Value)> = page
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().expect("page event id"),
                e["event"].as_str().expect("page event name"),
                &e["data"],
            )
        })
        .collect();
    assert_eq!(
        page_seen.iter().map(|e| e.0).collect::<Vec<_>>(),
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "the page's event ids are not 1..=n with no gap"
    );
    assert_eq!(
        page_seen, log_seen,
        "the page did not get the job's event log"
    );
    assert_eq!(
        browser
            .js("return document.querySelector('[data-testid=connection]').dataset.state;")
            .await,
        json!("closed"),
        "the page did not close its stream after the terminal event"
    );
    browser.close().await;
    kiln.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_the_dashboard_stops_a_looping_job() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["fixture:hostile"], "").await;
    let browser = Browser::start("dashboard-cancel").await;
    open_dashboard(&browser, &kiln).await;

    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let script = row_state_script(&id);
    browser
        .wait_for(
            "the looping job to show as running",
            &format!("const s = (() => {{ {script} }})(); return s && s.status === 'running';"),
        )
        .await;
    browser.screenshot("running").await;

    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=cancel-button]"),
    )
    .await;
    let state = browser
        .wait_for(
            "the job to show as cancelled",
            &format!(
                "const s = (() => {{ {script} }})(); return s && s.status === 'cancelled' ? s : null;"
            ),
        )
        .await;
    assert!(
        state["class"]
            .as_str()
            .unwrap()
            .contains("status-cancelled"),
        "{state}"
    );
    let buttons = browser
        .js(&format!(
            "return document.querySelectorAll('[data-job-id=\"{id}\"] [data-testid=cancel-button]').length;"
        ))
        .await;
    assert_eq!(buttons, json!(0), "a cancelled job still offers cancel");
    let notice = browser
        .js("const n = document.querySelector('[data-testid=notice]'); return {hidden: n.hidden, kind: n.dataset.kind || null, text: n.textContent};")
        .await;
    assert_ne!(
        notice["kind"],
        json!("error"),
        "the dashboard showed an error: {notice}"
    );
    browser.screenshot("cancelled").await;

    let (code, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(code, 200);
    assert_eq!(job["status"], "cancelled", "{job}");
    browser.close().await;
    kiln.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_failures_and_retries_them_in_bulk() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["fixture:hostile"], "").await;
    let browser = Browser::start("dashboard-bulk-retry").await;
    open_dashboard(&browser, &kiln).await;

    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "permanent"}}),
    )
    .await;
    let failure = browser
        .wait_for(
            "the failed job in the failures list",
            &format!(
                "const li = document.querySelector('[data-testid=failure][data-job-id=\"{id}\"]');
                 return li ? li.textContent : null;"
            ),
        )
        .await;
    assert!(
        failure
            .as_str()
            .unwrap()
            .contains("permanent: hostile: permanent"),
        "the failure does not show its error: {failure}"
    );

    browser
        .client
        .find(Locator::Css("[data-testid=bulk-retry]"))
        .await
        .expect("bulk retry button")
        .click()
        .await
        .expect("clicking bulk retry");
    // The page asks for confirmation first.
    let deadline = Instant::now() + LONG;
    while browser.client.accept_alert().await.is_err() {
        assert!(Instant::now() < deadline, "no confirmation was asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let notice = browser
        .wait_for(
            "the bulk retry's answer",
            "const n = document.querySelector('[data-testid=notice]');
             return n.hidden ? null : {kind: n.dataset.kind, text: n.textContent};",
        )
        .await;
    assert_eq!(notice["text"], json!("Retried 1 job(s)."), "{notice}");
    // The retried attempt fails again (the plugin always does), live on the page.
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert!(job["attempt"].as_u64() >= Some(2), "not retried: {job}");
    browser
        .wait_for(
            "the retried job to fail again on the page",
            &format!(
                "const j = window.kilnDashboard.jobs.get('{id}');
                 const row = document.querySelector('[data-testid=job-row][data-job-id=\"{id}\"]');
                 return j.attempt >= 2 && j.status === 'failed' && row.dataset.status === 'failed';"
            ),
        )
        .await;
    browser.screenshot("retried").await;
    browser.close().await;
    kiln.stop().await;
}

#[tokio::test]
async fn dashboard_files_are_served_with_types_and_caching() {
    let kiln = InProcess::start_cached(&["fixture:noop"], "").await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/examples/browser", "text/html; charset=utf-8"),
    ] {
        let response = kiln.client.get(kiln.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some(content_type),
            "{path}"
        );
        assert_eq!(
            header("cache-control").as_deref(),
            Some("no-cache"),
            "{path}"
        );
        let etag = header("etag").expect("etag");
        let again = kiln
            .client
            .get(kiln.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidation");
    }
    let (status, body) = get_json(&kiln.client, &kiln.url("/assets/nope.js")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["kind"], "not_found", "{body}");
    kiln.stop().await;
}

/// The rows a job detail's event log shows for `events`: every event but the token
/// events, which are folded into one text per label (a token `reset` keeps its row).
fn logged_rows(events: &[SseEvent]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter(|e| e.event != "token" || e.data["reset"] == true)
        .map(|e| (e.id.expect("event id"), e.event.clone()))
        .collect()
}

/// The text a page should show per label after `events`: the deltas of the last attempt
/// (a `running` status voids the text streamed before it), each `reset` voiding its
/// label's text so far.
fn token_texts(events: &[SseEvent]) -> BTreeMap<String, String> {
    let mut texts = BTreeMap::new();
    for event in events {
        match event.event.as_str() {
            "status" if event.data["status"] == "running" => texts.clear(),
            "token" => {
                let label = event.data["label"]
                    .as_str()
                    .expect("token label")
                    .to_string();
                let text: &mut String = texts.entry(label).or_default();
                if event.data["reset"] == true {
                    text.clear();
                } else {
                    text.push_str(event.data["delta"].as_str().expect("token delta"));
                }
            }
            _ => {}
        }
    }
    texts
}

/// The dashboard's job detail as `{status, rows: [[id, name]], tokens: {label: text}}`.
const DETAIL_STATE: &str = "
    const rows = [...document.querySelectorAll('[data-testid=detail-event]')]
      .map((tr) => [Number(tr.cells[0].textContent), tr.cells[1].textContent]);
    const tokens = {};
    for (const d of document.querySelectorAll('[data-testid=token-label]')) {
      tokens[d.dataset.label] = d.querySelector('pre').textContent;
    }
    return {status: document.querySelector('[data-testid=detail-status]').textContent,
            rows, tokens};";

/// Clicks the element at `css`, once the page shows it (a list may still be loading).
async fn click(browser: &Browser, css: &str) {
    let quoted = serde_json::to_string(css).unwrap();
    browser
        .wait_for(
            &format!("{css} to appear"),
            &format!("return document.querySelector({quoted}) !== null;"),
        )
        .await;
    browser
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("finding {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_end_of_each_job_id_and_copies_the_whole_id_on_click() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["fixture:noop"], "").await;
    let browser = Browser::start("dashboard-job-ids").await;
    open_dashboard(&browser, &kiln).await;

    // UUIDv7 ids made in the same minute share their first 8 hex digits.
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, job) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "noop", "payload": {}, "concurrency_key": format!("user-{i}")}),
        )
        .await;
        assert_eq!(status, 202, "{job}");
        ids.push(id_of(&job));
    }
    let shown = browser
        .wait_for(
            "a row for each job",
            &format!(
                "const ids = {ids:?};
                 const codes = ids.map((id) => document.querySelector(
                   `[data-testid=job-row][data-job-id=\"${{id}}\"] td:first-child code`));
                 return codes.every(Boolean) ? codes.map((c) => [c.textContent, c.title]) : null;"
            ),
        )
        .await;
    println!("ids {ids:?}, shown {shown}");
    for (id, seen) in ids.iter().zip(shown.as_array().unwrap()) {
        assert_eq!(
            seen[0].as_str().unwrap(),
            format!("…{}", &id[24..]),
            "the row of {id} does not show the id's end"
        );
        assert!(
            seen[1].as_str().unwrap().contains(id.as_str()),
            "no full id in the tooltip: {seen}"
        );
    }
    let distinct: BTreeSet<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), ids.len(), "two jobs look the same: {shown}");

    // A click copies the whole id, says so, and does not open the job.
    let target = &ids[1];
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{target}\"] [data-testid=job-id]"),
    )
    .await;
    let hint = browser
        .wait_for(
            "the copied hint",
            "const h = document.querySelector('[data-testid=copied-hint]');
             return h.hidden ? null : {text: h.textContent, id: h.dataset.copied,
               visible: h.getClientRects().length > 0};",
        )
        .await;
    assert_eq!(
        hint,
        json!({"text": "copied", "id": target, "visible": true}),
        "{hint}"
    );
    browser.screenshot("copied").await;
    assert_eq!(
        browser
            .js("return document.querySelector('[data-testid=job-detail]').hidden;")
            .await,
        json!(true),
        "clicking the id opened the job"
    );
    // What the clipboard holds, pasted into a text box as a user would.
    browser
        .js(
            "const box = document.createElement('textarea'); box.id = 'paste-here';
             document.body.append(box); box.focus(); return true;",
        )
        .await;
    browser
        .client
        .find(Locator::Id("paste-here"))
        .await
        .expect("paste box")
        .send_keys(&format!("{}v", char::from(fantoccini::key::Key::Control)))
        .await
        .expect("pasting");
    let pasted = browser
        .wait_for(
            "the pasted id",
            "const v = document.getElementById('paste-here').value; return v || null;",
        )
        .await;
    assert_eq!(
        pasted,
        json!(target),
        "the clipboard does not hold the job's id"
    );
    // The detail names the job's queue and concurrency key.
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{target}\"] [data-testid=job-type]"),
    )
    .await;
    let queue = browser
        .wait_for(
            "the detail's queue",
            "const q = document.querySelector('[data-testid=detail-queue]').textContent;
             return q || null;",
        )
        .await;
    assert_eq!(queue, json!("noop, key user-1"), "{queue}");
    browser.close().await;
    kiln.stop().await;
}

/// Whether the dashboard's sign-in form is shown (laid out, not merely in the page).
const LOGIN_SHOWN: &str =
    "return document.querySelector('[data-testid=login]').getClientRects().length > 0;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_key_only_when_the_server_has_keys() {
    let _turn = ONE_BROWSER.lock().await;
    let browser = Browser::start("dashboard-sign-in").await;

    // Open mode: no key exists, so there is nothing to sign in with.
    let open = InProcess::start_cached(&["fixture:noop"], "").await;
    open_dashboard(&browser, &open).await;
    browser.screenshot("open-mode").await;
    assert_eq!(
        browser.js(LOGIN_SHOWN).await,
        json!(false),
        "open mode shows a sign-in form"
    );
    open.stop().await;

    // With keys: the form is shown, and a key signs in.
    let key = ::kiln::auth::new_key().unwrap();
    let config = format!(
        "[auth]\n[[auth.keys]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        ::kiln::auth::hash_key(&key)
    );
    let keyed = InProcess::start_cached(&["fixture:noop"], &config).await;
    browser.goto(&keyed.url("/")).await;
    browser.wait_for("the sign-in form", LOGIN_SHOWN).await;
    browser.screenshot("keys-sign-in").await;
    let input = browser
        .client
        .find(Locator::Css("[data-testid=login-key]"))
        .await
        .expect("key box");
    input.send_keys(&key).await.expect("typing the key");
    click(&browser, "[data-testid=login-submit]").await;
    browser
        .wait_for(
            "the signed-in dashboard to load and connect",
            "return !!(window.kilnDashboard && window.kilnDashboard.loaded && \
             document.querySelector('[data-testid=conn-state]').dataset.state === 'live');",
        )
        .await;
    assert_eq!(
        browser.js(LOGIN_SHOWN).await,
        json!(false),
        "signed in, the form is still shown"
    );
    browser.screenshot("keys-signed-in").await;
    browser.close().await;
    keyed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queues_table_fits_its_column_at_1400_px() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["characters", "factions", "documents"], "").await;
    let browser = Browser::start("dashboard-queues").await;
    open_dashboard(&browser, &kiln).await;
    browser
        .wait_for(
            "the three queues",
            "const text = document.querySelector('[data-testid=queues]').textContent;
             return ['characters', 'documents', 'factions'].every((q) => text.includes(q));",
        )
        .await;
    // The nodes table (one node here: this one, alive, from GET /v1/nodes).
    browser
        .wait_for(
            "this node in the nodes table",
            "const rows = [...document.querySelectorAll('[data-testid=node]')];
             return rows.length === 1 && rows[0].dataset.status === 'alive'
                 && rows[0].textContent.includes('this node');",
        )
        .await;
    let shot = browser.screenshot("queues").await;
    let geometry = browser
        .js(
            "const table = document.querySelector('[data-testid=queues]');
             const box = table.parentElement;
             return {window: window.innerWidth, page: document.documentElement.scrollWidth,
                     viewport: document.documentElement.clientWidth,
                     table: table.scrollWidth, box: box.clientWidth,
                     right: Math.ceil(box.getBoundingClientRect().right),
                     overflow: getComputedStyle(box).overflowX};",
        )
        .await;
    println!("geometry {geometry}, see {}", shot.display());
    assert_eq!(geometry["window"], json!(1400), "{geometry}");
    let n = |k: &str| geometry[k].as_f64().unwrap();
    assert!(
        n("table") <= n("box"),
        "the queues table is wider than its box (cut off): {geometry}"
    );
    assert!(
        n("right") <= n("viewport"),
        "the queues box reaches past the window: {geometry}"
    );
    assert!(
        n("page") <= n("viewport"),
        "the page scrolls sideways: {geometry}"
    );
    // Wider content (many queues) scrolls inside the box instead of being cut.
    assert_eq!(geometry["overflow"], json!("auto"), "{geometry}");
    browser.close().await;
    kiln.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_detail_lists_status_progress_and_partials_with_tokens_folded_per_label() {
    let _turn = ONE_BROWSER.lock().await;
    let provider = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 40\n";
    let kiln = InProcess::start_cached(&["characters"], provider).await;
    let browser = Browser::start("dashboard-detail-log").await;
    open_dashboard(&browser, &kiln).await;
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "lighthouse keepers", "count": 2}}),
    )
    .await;
    browser
        .wait_for(
            "the job's row",
            &format!(
                "return !!document.querySelector('[data-testid=job-row][data-job-id=\"{id}\"]');"
            ),
        )
        .await;
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=job-type]"),
    )
    .await;

    let log = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let rows = logged_rows(&log);
    let texts = token_texts(&log);
    let tokens = log.iter().filter(|e| e.event == "token").count();
    for name in ["status", "progress", "partial", "completed"] {
        assert!(
            rows.iter().any(|(_, n)| n == name),
            "the job logged no {name}: {log:?}"
        );
    }
    assert!(
        tokens > rows.len(),
        "too few token events to test the folding: {log:?}"
    );
    let state = browser
        .wait_for(
            "the detail's whole log",
            &format!(
                "const s = (() => {{ {DETAIL_STATE} }})();
                 return s.status === 'completed' && s.rows.length >= {} ? s : null;",
                rows.len()
            ),
        )
        .await;
    let shown: Vec<(u64, String)> = serde_json::from_value(state["rows"].clone()).unwrap();
    assert_eq!(
        shown, rows,
        "the event log's rows are not the job's non-token events"
    );
    let shown_texts: BTreeMap<String, String> =
        serde_json::from_value(state["tokens"].clone()).unwrap();
    assert_eq!(shown_texts, texts, "the folded token text per label");

    // A label opens to its whole text.
    let label = texts.keys().next().unwrap();
    click(
        &browser,
        &format!("[data-testid=token-label][data-label=\"{label}\"] summary"),
    )
    .await;
    let opened = browser
        .js(&format!(
            "const d = document.querySelector('[data-testid=token-label][data-label=\"{label}\"]');
             return {{open: d.open, visible: d.querySelector('pre').getClientRects().length > 0}};"
        ))
        .await;
    assert_eq!(opened, json!({"open": true, "visible": true}), "{opened}");
    browser
        .js("document.querySelector('[data-testid=detail-tokens]').scrollIntoView(); return true;")
        .await;
    browser.screenshot("detail").await;
    browser.close().await;
    kiln.stop().await;
}

/// The browser example's token lines, `{label: text}`.
const EXAMPLE_TOKENS: &str = "const t = {};
    for (const line of document.querySelectorAll('[data-testid=token-line]')) {
      t[line.dataset.label] = line.querySelector('span').textContent;
    }
    return t;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_attempt_clears_the_token_text_of_the_last_one_on_both_pages() {
    let _turn = ONE_BROWSER.lock().await;
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let addr = format!("127.0.0.1:{}", free_port());
    let start = {
        let (addr, data, plugins) = (
            addr.clone(),
            data.path().to_owned(),
            plugins.path().to_owned(),
        );
        // Slow enough (5 steps of 1.5 s) for the kill to land inside attempt 1.
        let provider = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 1500\n";
        move || KilnProcess::start_on(&addr, &data, &plugins, provider)
    };
    let mut server = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    let client = reqwest::Client::new();
    let base = server.base.clone();

    // The example page submits and follows the job; the dashboard shows its detail.
    let browser = Browser::start("new-attempt-tokens").await;
    browser.goto(&server.url("/examples/browser")).await;
    let example = browser.client.window().await.expect("window");
    let id = browser
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             window.kiln.submitJob('characters', {theme: 'lighthouse keepers', count: 2})
               .then((job) => { window.kiln.follow(job.id, job.events_token); done(job.id); },
                     (e) => done('error: ' + e.message));",
            Vec::new(),
        )
        .await
        .expect("submitting from the example page");
    let id = id.as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let dashboard = browser
        .client
        .new_window(false)
        .await
        .expect("a second window")
        .handle;
    browser
        .client
        .switch_to_window(dashboard.clone())
        .await
        .unwrap();
    open_dashboard_at(&browser, &server.url("/")).await;
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=job-type]"),
    )
    .await;
    browser
        .wait_for(
            "streamed text in the detail",
            &format!(
                "const s = (() => {{ {DETAIL_STATE} }})(); return Object.keys(s.tokens).length > 0;"
            ),
        )
        .await;

    // Kill the server while the first attempt streams; its restart runs attempt 2.
    let (_, job) = get_json(&client, &format!("{base}/v1/jobs/{id}")).await;
    assert_eq!(
        job["status"], "running",
        "the job ended before the kill: {job}"
    );
    server.kill9();
    let server = tokio::task::spawn_blocking(start).await.unwrap();
    let job = crate::support::wait_terminal(&client, &base, &id, LONG).await;
    assert_eq!(job["status"], "completed", "{job}\n{}", server.log());
    let log = all_events(&client, &base, &id, LONG).await;
    let last_running = log
        .iter()
        .rposition(|e| e.event == "status" && e.data["status"] == "running")
        .expect("a running status");
    assert_eq!(
        log[last_running].data["attempt"], 2,
        "{:?}",
        log[last_running]
    );
    assert!(
        log[..last_running].iter().any(|e| e.event == "token"),
        "attempt 1 streamed nothing before the kill: {log:?}"
    );
    let texts = token_texts(&log);

    let state = browser
        .wait_for(
            "the dashboard detail to show the completed job",
            &format!(
                "const s = (() => {{ {DETAIL_STATE} }})();
                 return s.status === 'completed' && s.rows.length >= {} ? s : null;",
                logged_rows(&log).len()
            ),
        )
        .await;
    browser.screenshot("dashboard").await;
    let shown: BTreeMap<String, String> = serde_json::from_value(state["tokens"].clone()).unwrap();
    assert_eq!(shown, texts, "the dashboard kept text of attempt 1");

    browser.client.switch_to_window(example).await.unwrap();
    browser
        .wait_for(
            "the example page to see the job complete",
            "const e = window.kilnEvents; return e.length > 0 && e[e.length - 1].event === 'completed';",
        )
        .await;
    browser.screenshot("example").await;
    let shown: BTreeMap<String, String> =
        serde_json::from_value(browser.js(EXAMPLE_TOKENS).await).unwrap();
    assert_eq!(shown, texts, "the example page kept text of attempt 1");
    browser.close().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reset_clears_its_labels_text_on_both_pages() {
    let _turn = ONE_BROWSER.lock().await;
    // The fake provider breaks off every stream asking for a backstory, after 2 deltas:
    // the host then voids that label's text with a `reset` token event.
    let fake = FakeProvider::with(Behavior {
        break_when_contains: Some("backstory".into()),
        cut_stream_after: 2,
        ..Behavior::default()
    })
    .await;
    let config = format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    );
    let kiln = InProcess::start_cached(&["characters"], &config).await;
    let browser = Browser::start("token-reset").await;
    browser.goto(&kiln.url("/examples/browser")).await;
    // One attempt, so the text of the calls that did not break stays in the last one.
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "ropewalkers", "count": 2},
               "max_attempts": 1}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    browser
        .js(&format!(
            "window.kiln.follow({id:?}, {}); return true;",
            job["events_token"]
        ))
        .await;
    browser
        .wait_for(
            "the example page to see the job end",
            "const e = window.kilnEvents;
             return e.length > 0 && ['completed', 'failed'].includes(e[e.length - 1].event);",
        )
        .await;
    browser.screenshot("example").await;
    let log = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let reset = log
        .iter()
        .position(|e| e.event == "token" && e.data["reset"] == true)
        .unwrap_or_else(|| panic!("no token reset in the job's log: {log:?}"));
    let label = &log[reset].data["label"];
    assert!(
        log[..reset]
            .iter()
            .any(|e| e.event == "token" && e.data["label"] == *label && e.data["delta"] != ""),
        "nothing streamed under {label} before its reset: {log:?}"
    );
    let texts = token_texts(&log);
    assert_eq!(
        texts.get(label.as_str().unwrap()).map(String::as_str),
        Some(""),
        "the oracle keeps text of {label}: {texts:?}"
    );
    assert!(
        texts.values().any(|t| !t.is_empty()),
        "no label kept its text: {texts:?}"
    );
    let shown: BTreeMap<String, String> =
        serde_json::from_value(browser.js(EXAMPLE_TOKENS).await).unwrap();
    assert_eq!(shown, texts, "the example page's text per label");

    // The dashboard's detail replays the same log.
    open_dashboard(&browser, &kiln).await;
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=job-type]"),
    )
    .await;
    let state = browser
        .wait_for(
            "the detail's whole log",
            &format!(
                "const s = (() => {{ {DETAIL_STATE} }})();
                 return ['completed', 'failed'].includes(s.status) && s.rows.length >= {} ? s : null;",
                logged_rows(&log).len()
            ),
        )
        .await;
    browser
        .js("document.querySelector('[data-testid=detail-tokens]').scrollIntoView(); return true;")
        .await;
    browser.screenshot("dashboard").await;
    let shown: BTreeMap<String, String> = serde_json::from_value(state["tokens"].clone()).unwrap();
    assert_eq!(shown, texts, "the dashboard's text per label");
    let rows: Vec<(u64, String)> = serde_json::from_value(state["rows"].clone()).unwrap();
    assert_eq!(
        rows,
        logged_rows(&log),
        "the detail's log rows (resets included)"
    );
    browser.close().await;
    kiln.stop().await;
}

/// A TCP forwarder on loopback in front of a server that can cut the browser off: every
/// open connection is dropped and new ones are closed at once (a network error, so an
/// `EventSource` keeps retrying) until [`Cutter::restore`]. The server runs on meanwhile.
struct Cutter {
    base: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cutter {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (cut, open) = (cut.clone(), open.clone());
            async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: closed before any answer
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut socket, &mut server).await;
                        }
                    });
                    open.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        Self {
            base,
            cut,
            open,
            accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.open.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// How many times the page read the job list (`GET /v1/jobs?limit=…`).
const LIST_READS: &str = "return performance.getEntriesByType('resource')
    .filter((e) => new URL(e.name).pathname === '/v1/jobs' && new URL(e.name).search.includes('limit')).length;";

/// Opens the dashboard through a [`Cutter`] on a Kiln with `extra_config`, shows it one
/// job live, cuts it off while `away` more jobs run to the end, restores it, and waits
/// until it shows them completed on the same page. Returns how many times the page read
/// the job list.
async fn jobs_end_while_the_dashboard_is_cut_off(
    name: &'static str,
    extra_config: &str,
    away: usize,
) -> Value {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["fixture:noop"], extra_config).await;
    let cutter = Cutter::start(&kiln.base).await;
    let browser = Browser::start(name).await;
    open_dashboard_at(&browser, &cutter.url("/")).await;
    let noop = json!({"type": "noop", "payload": {}});
    let completed = |id: &str| {
        format!(
            "const s = (() => {{ {} }})(); return s && s.status === 'completed';",
            row_state_script(id)
        )
    };

    // One job seen live, so the stream has a position to resume from.
    let (_, first) = submit(&kiln.client, &kiln.base, noop.clone()).await;
    let first = id_of(&first);
    browser
        .wait_for("the first job to show completed", &completed(&first))
        .await;
    assert_eq!(
        browser.js(LIST_READS).await,
        json!(1),
        "list reads before the cut"
    );

    cutter.cut();
    browser
        .wait_for(
            "the dashboard to notice the cut",
            "return document.querySelector('[data-testid=conn-state]').dataset.state !== 'live';",
        )
        .await;
    browser.screenshot("cut-off").await;
    let mut ids = Vec::new();
    for _ in 0..away {
        let (status, job) = submit(&kiln.client, &kiln.base, noop.clone()).await;
        assert_eq!(status, 202, "{job}");
        ids.push(id_of(&job));
    }
    for id in &ids {
        let job = crate::support::wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
        assert_eq!(job["status"], "completed", "{job}");
    }
    assert!(
        browser.js(&row_state_script(&ids[0])).await.is_null(),
        "the cut-off page already shows a job made while it was away"
    );

    cutter.restore();
    for id in &ids {
        browser
            .wait_for(
                "a job that ended while the page was away to show completed",
                &completed(id),
            )
            .await;
    }
    browser.screenshot("back").await;
    assert_eq!(
        browser.js("return window.kilnTestMarker || null;").await,
        json!("same page"),
        "the dashboard reloaded"
    );
    let reads = browser.js(LIST_READS).await;
    browser.close().await;
    drop(cutter);
    kiln.stop().await;
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_resumes_its_stream_and_shows_jobs_that_ended_while_it_was_cut_off() {
    let reads = jobs_end_while_the_dashboard_is_cut_off("dashboard-resume", "", 3).await;
    assert_eq!(
        reads,
        json!(1),
        "the dashboard read the job list again instead of resuming its stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_reads_the_jobs_again_when_its_position_has_expired() {
    // 3 jobs of 3 events each while away: more than the 5 the feed keeps, so the resume
    // is answered 410 events_expired.
    let reads = jobs_end_while_the_dashboard_is_cut_off(
        "dashboard-resume-expired",
        "events_feed_retention = 5",
        3,
    )
    .await;
    assert_eq!(
        reads,
        json!(2),
        "the dashboard did not read the job list again after 410"
    );
}

/// The dashboard's Batches table shows a batch's mean progress and counts as its jobs run,
/// and its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_batch_with_its_progress_and_counts() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(
        &["fixture:hostile"],
        "[queues.hostile]\nmax_concurrent = 1\n",
    )
    .await;
    let browser = Browser::start("dashboard-batches").await;
    open_dashboard(&browser, &kiln).await;
    let items: Vec<Value> = (0..4)
        .map(|_| json!({"mode": "events", "n": 4, "pace_ms": 400}))
        .collect();
    let response = kiln
        .client
        .post(kiln.url("/v1/batches"))
        .json(&json!({"type": "hostile", "items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = id_of(&body);
    let row = |condition: &str| {
        format!(
            "const row = document.querySelector('[data-testid=batch][data-batch=\"{id}\"]');
             if (!row) return null;
             const s = {{progress: row.querySelector('[data-testid=batch-progress]').textContent.trim(),
                        counts: row.querySelector('[data-testid=batch-counts]').textContent,
                        finished: row.dataset.finished}};
             return ({condition}) ? s : null;"
        )
    };
    let midway = browser
        .wait_for(
            "the batch part done",
            &row("s.finished === 'no' && s.progress !== '0%' && s.counts.includes('completed')"),
        )
        .await;
    println!("midway {midway}");
    browser.screenshot("batch-midway").await;
    let done = browser
        .wait_for("the batch finished", &row("s.finished === 'yes'"))
        .await;
    assert_eq!(done["progress"], "100%", "{done}");
    assert_eq!(done["counts"], "4: 4 completed", "{done}");
    browser.close().await;
    kiln.stop().await;
}

/// The job detail shows the job's webhook and how its delivery went, as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_jobs_webhook_delivery() {
    let _turn = ONE_BROWSER.lock().await;
    let receiver = crate::webhooks::Receiver::start(vec![500], false).await;
    let (data, plugins) = crate::webhooks::dirs();
    let kiln = crate::webhooks::start(data.path(), plugins.path(), &crate::webhooks::config(""));
    let browser = Browser::start("dashboard-webhook").await;
    open_dashboard_at(&browser, &kiln.url("/")).await;
    let url = format!("{}/hook", receiver.url);
    let body = json!({"type": "hostile", "payload": {"mode": "ok"}, "webhook": {"url": url}});
    let id = submit_ok(&reqwest::Client::new(), &kiln.base, body).await;
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=job-type]"),
    )
    .await;
    let shown = browser
        .wait_for(
            "the delivery, retried once",
            "const t = document.querySelector('[data-testid=detail-webhook]').textContent;
             return t.includes('delivered') ? t : null;",
        )
        .await;
    browser.screenshot("webhook").await;
    assert_eq!(
        shown,
        json!(format!("{url} (delivered, 2 attempts, 200)")),
        "{}",
        kiln.log()
    );
    assert_eq!(receiver.received().len(), 2);
    browser.close().await;
}

/// A job waiting on others shows as `waiting` (its card counts it) with what it waits
/// for, then runs when they have completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_waiting_job_and_what_it_waits_for() {
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["fixture:hostile"], "").await;
    let browser = Browser::start("dashboard-waiting").await;
    open_dashboard(&browser, &kiln).await;
    let slow = json!({"type": "hostile", "payload": {"mode": "events", "n": 4, "pace_ms": 600}});
    let first = submit_ok(&kiln.client, &kiln.base, slow).await;
    let body = json!({"type": "hostile", "payload": {"mode": "ok"}, "depends_on": [first]});
    let waiting = submit_ok(&kiln.client, &kiln.base, body).await;
    click(
        &browser,
        &format!("[data-testid=job-row][data-job-id=\"{waiting}\"] [data-testid=job-type]"),
    )
    .await;
    let short = format!("…{}", &first[first.len() - 8..]);
    let shown = browser
        .wait_for(
            "the waiting job's detail",
            &format!(
                "const t = document.querySelector('[data-testid=detail-dependencies]').textContent;
                 const s = document.querySelector('[data-testid=detail-status]').textContent;
                 const card = document.querySelector('[data-testid=card-waiting] .n').textContent;
                 return s === 'waiting' && t.includes('waiting for {short}') ? {{t, card}} : null;"
            ),
        )
        .await;
    assert_eq!(shown["card"], "1", "{shown}");
    browser.screenshot("waiting").await;
    let done = browser
        .wait_for(
            "the job run once its dependency completed",
            "const t = document.querySelector('[data-testid=detail-dependencies]').textContent;
             const s = document.querySelector('[data-testid=detail-status]').textContent;
             return s === 'completed' ? t : null;",
        )
        .await;
    assert_eq!(done, json!(format!("{short}: all ended")), "{}", done);
    browser.close().await;
    kiln.stop().await;
}

/// The dashboard lists the schedules with their next run and the latest tick's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_the_schedules() {
    let _turn = ONE_BROWSER.lock().await;
    let config = "[schedules.beat]\ncron = \"* * * * * *\"\ntype = \"hostile\"\n\
                  payload = { mode = \"ok\" }\n";
    let kiln = InProcess::start_cached(&["fixture:hostile"], config).await;
    let browser = Browser::start("dashboard-schedules").await;
    open_dashboard(&browser, &kiln).await;
    let shown = browser
        .wait_for(
            "the schedule with its latest job",
            "const row = document.querySelector('[data-testid=schedule][data-schedule=beat]');
             const job = row && row.querySelector('[data-testid=schedule-last-job]');
             return job && job.textContent.startsWith('…')
               ? {job: job.title, next: row.querySelector('[data-testid=schedule-next]').textContent,
                  cron: row.children[1].textContent}
               : null;",
        )
        .await;
    browser.screenshot("schedules").await;
    assert_eq!(shown["cron"], "* * * * * * (UTC)", "{shown}");
    let job = shown["job"].as_str().unwrap();
    let (status, body) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{job}"))).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["schedule"]["name"], "beat", "{body:#}");
    assert!(
        crate::support::parse_rfc3339_ms(shown["next"].as_str().unwrap()).is_some(),
        "{shown}"
    );
    browser.close().await;
    kiln.stop().await;
}
