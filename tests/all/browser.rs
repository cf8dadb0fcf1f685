//! The dashboard (`/`) and the browser example page (`/examples/browser`) as users see
//! them: a real headless Chromium (Debian's `chromium`, driven through Debian's
//! `chromedriver` with WebDriver) against a real Kiln on loopback. Each test saves
//! screenshots under `target/browser-artifacts/`.
//!
//! Install the browser with `scripts/install-test-deps` (`scripts/test` and `.ci/run` do).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::support::{InProcess, LONG, all_events, get_json, id_of, submit};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
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
    browser.goto(&kiln.url("/")).await;
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

    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "lighthouse keepers", "count": 2}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);

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
    browser
        .client
        .find(Locator::Css(&format!(
            "[data-testid=job-row][data-job-id=\"{id}\"] code"
        )))
        .await
        .expect("the job's row")
        .click()
        .await
        .expect("clicking the job");
    let log = all_events(&kiln.client, &kiln.base, &id, LONG).await;
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
    let _turn = ONE_BROWSER.lock().await;
    let kiln = InProcess::start_cached(&["characters"], SLOW_PROVIDER).await;
    let browser = Browser::start("example-page").await;
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
        .select_by_value("characters")
        .await
        .expect("choosing characters");
    let payload = browser
        .client
        .find(Locator::Css("[data-testid=payload]"))
        .await
        .expect("payload box");
    payload.clear().await.expect("clearing the payload");
    payload
        .send_keys(r#"{"theme": "lighthouse keepers", "count": 2}"#)
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

    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    let script = row_state_script(&id);
    browser
        .wait_for(
            "the looping job to show as running",
            &format!("const s = (() => {{ {script} }})(); return s && s.status === 'running';"),
        )
        .await;
    browser.screenshot("running").await;

    browser
        .client
        .find(Locator::Css(&format!(
            "[data-testid=job-row][data-job-id=\"{id}\"] [data-testid=cancel-button]"
        )))
        .await
        .expect("the job's cancel button")
        .click()
        .await
        .expect("clicking cancel");
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

    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "permanent"}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
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
