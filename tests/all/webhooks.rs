//! Webhooks: a job's end is POSTed to its URL as the job's JSON, signed per Standard
//! Webhooks with the tenant's secret, from a durable outbox: retried with backoff until a
//! 2xx or the retry window passes, never following redirects, never slowing jobs, and
//! delivered after a kill -9. Private addresses are refused unless allowed. The receiver
//! is a real HTTP server on loopback. Also run against PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::*;

/// The signing secret of the tests (whsec_ + base64 of 24 bytes).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A webhook receiver on loopback. `answers` are the statuses of the first requests in
/// turn (then 200); `hang` makes it never answer.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(answers: Vec<u16>, hang: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answers, hang)
    }

    fn serve(listener: tokio::net::TcpListener, answers: Vec<u16>, hang: bool) -> Self {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let (sink, location) = (received.clone(), format!("{url}/moved"));
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (sink, answers, location) = (sink.clone(), answers.clone(), location.clone());
                async move {
                    sink.lock().unwrap().push(Received {
                        path: uri.path().to_string(),
                        headers,
                        body: body.to_vec(),
                    });
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let status = answers.lock().unwrap().next().unwrap_or(200);
                    let mut reply = HeaderMap::new();
                    reply.insert("location", location.parse().unwrap());
                    (StatusCode::from_u16(status).unwrap(), reply, "")
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Server config: webhooks signed with [`SECRET`] from `KILN_TEST_WEBHOOK_SECRET`, fast
/// retries, loopback allowed, then `extra`.
pub fn config(extra: &str) -> String {
    format!(
        "[webhooks]\nsecret_env = \"KILN_TEST_WEBHOOK_SECRET\"\nallow_private = true\n\
         retry_base_ms = 100\nretry_max_ms = 400\n{extra}"
    )
}

/// A data dir and a plugins dir with the hostile fixture.
pub fn dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    (
        tempfile::tempdir().unwrap(),
        plugins_dir(&["fixture:hostile"]),
    )
}

pub fn start(data: &std::path::Path, plugins: &std::path::Path, config: &str) -> KilnProcess {
    KilnProcess::start_with_env(
        data,
        plugins,
        config,
        &[("KILN_TEST_WEBHOOK_SECRET", SECRET)],
    )
}

/// Submits a hostile job with a webhook to `url`; its id.
async fn submit_hooked(base: &str, payload: Value, url: &str) -> String {
    let body = json!({"type": "hostile", "payload": payload, "webhook": {"url": url}});
    submit_ok(&reqwest::Client::new(), base, body).await
}

/// Polls job `id` until its delivery's state is `state` (within the hang guard).
async fn delivery_in(base: &str, id: &str, state: &str, log: &dyn Fn() -> String) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + LONG;
    loop {
        let (_, job) = get_json(&client, &format!("{base}/v1/jobs/{id}")).await;
        if job["webhook"]["delivery"]["state"] == state {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "delivery never {state}: {job:#}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `received` carries a valid Standard Webhooks signature by [`SECRET`].
fn signed_by_secret(received: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    let signed = format!(
        "{}.{}.",
        received.header("webhook-id"),
        received.header("webhook-timestamp")
    );
    mac.update(signed.as_bytes());
    mac.update(&received.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    received
        .header("webhook-signature")
        .split(' ')
        .any(|sig| sig == format!("v1,{expected}"))
}

#[tokio::test]
async fn a_job_end_is_posted_signed_with_the_job_json_and_shown_delivered() {
    let receiver = Receiver::start(vec![], false).await;
    let (data, plugins) = dirs();
    let kiln = start(data.path(), plugins.path(), &config(""));
    let id = submit_hooked(
        &kiln.base,
        json!({"mode": "ok"}),
        &format!("{}/hook", receiver.url),
    )
    .await;
    let job = delivery_in(&kiln.base, &id, "delivered", &|| kiln.log()).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    let sent = &got[0];
    assert_eq!(sent.path, "/hook");
    assert_eq!(sent.header("content-type"), "application/json");
    assert_eq!(sent.header("webhook-id"), format!("{id}.1"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp: u64 = sent
        .header("webhook-timestamp")
        .parse()
        .expect("a unix time");
    assert!(stamp.abs_diff(now) < 300, "timestamp {stamp}, now {now}");
    assert!(signed_by_secret(sent), "bad signature: {sent:#?}");
    let body = sent.json();
    assert_eq!(body["id"], id.as_str(), "{body:#}");
    assert_eq!(body["status"], "completed", "{body:#}");
    assert_eq!(body["result"], job["result"], "{body:#}");
    assert_eq!(body["webhook"]["url"], format!("{}/hook", receiver.url));
    let delivery = &job["webhook"]["delivery"];
    assert_eq!(delivery["attempts"], 1, "{job:#}");
    assert_eq!(delivery["last_status"], 200, "{job:#}");
    assert!(delivery["delivered_at"].is_string(), "{job:#}");
    // Delivered once: nothing more comes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_with_the_same_id_until_it_answers_2xx() {
    let receiver = Receiver::start(vec![500, 503], false).await;
    let (data, plugins) = dirs();
    let kiln = start(data.path(), plugins.path(), &config(""));
    let id = submit_hooked(&kiln.base, json!({"mode": "permanent"}), &receiver.url).await;
    let job = delivery_in(&kiln.base, &id, "delivered", &|| kiln.log()).await;
    assert_eq!(
        job["status"], "failed",
        "failures are delivered too: {job:#}"
    );
    let got = receiver.received();
    assert_eq!(got.len(), 3, "{got:#?}");
    for sent in &got {
        assert_eq!(sent.header("webhook-id"), format!("{id}.1"));
        assert!(signed_by_secret(sent), "{sent:#?}");
    }
    assert_eq!(job["webhook"]["delivery"]["attempts"], 3, "{job:#}");
    let sends = sends_by_outcome(&kiln.base).await;
    assert_eq!(sends, (1.0, 2.0, 0.0), "delivered, failed, gave up");
}

/// `kiln_webhook_sends_total` by outcome: (delivered, failed, gave_up).
async fn sends_by_outcome(base: &str) -> (f64, f64, f64) {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = crate::metrics::parse_exposition(&text);
    let count = |outcome: &str| {
        let series = format!("kiln_webhook_sends_total{{outcome=\"{outcome}\"}}");
        samples.get(&series).copied().unwrap_or(0.0)
    };
    (count("delivered"), count("failed"), count("gave_up"))
}

/// A job whose receiver always answers `status`, on a server retrying for 1 s: the job
/// once its delivery is given up, and every request the receiver got.
async fn given_up_with(status: u16) -> (Value, Vec<Received>, (f64, f64, f64)) {
    let receiver = Receiver::start(vec![status; 1000], false).await;
    let (data, plugins) = dirs();
    let kiln = start(data.path(), plugins.path(), &config("retry_for_secs = 1\n"));
    let id = submit_hooked(&kiln.base, json!({"mode": "ok"}), &receiver.url).await;
    let job = delivery_in(&kiln.base, &id, "gave_up", &|| kiln.log()).await;
    let sends = receiver.received().len();
    assert!(sends >= 2, "retried within the window: {sends}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.received().len(), sends, "sent after giving up");
    (job, receiver.received(), sends_by_outcome(&kiln.base).await)
}

#[tokio::test]
async fn past_the_retry_window_a_delivery_is_given_up() {
    // Violated: the receiver never answers 2xx within the window (the obeyed side is the
    // retry test above, delivered within the default window).
    let (job, received, sends) = given_up_with(500).await;
    assert_eq!(sends.2, 1.0, "one send gave up: {sends:?}");
    assert_eq!(
        sends.1 + 1.0,
        received.len() as f64,
        "the others failed: {sends:?}"
    );
    let delivery = &job["webhook"]["delivery"];
    assert_eq!(delivery["last_status"], 500, "{job:#}");
    assert!(delivery["next_attempt_at"].is_null(), "{job:#}");
    assert_eq!(delivery["attempts"], received.len(), "{job:#}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (job, received, _) = given_up_with(302).await;
    let delivery = &job["webhook"]["delivery"];
    assert_eq!(delivery["last_status"], 302, "{job:#}");
    let error = delivery["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("redirects are not followed"), "{job:#}");
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert!(
        !paths.contains(&"/moved"),
        "the redirect was followed: {paths:?}"
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_slows_no_job() {
    let receiver = Receiver::start(vec![], true).await;
    let (data, plugins) = dirs();
    let kiln = start(data.path(), plugins.path(), &config("timeout_secs = 1\n"));
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(submit_hooked(&kiln.base, json!({"mode": "ok"}), &receiver.url).await);
    }
    let client = reqwest::Client::new();
    for id in &ids {
        let job = wait_terminal(&client, &kiln.base, id, LONG).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", kiln.log());
    }
    // Meanwhile the first delivery waits out its timeout, and stays pending.
    let deadline = Instant::now() + LONG;
    loop {
        let (_, job) = get_json(&client, &format!("{}/v1/jobs/{}", kiln.base, ids[0])).await;
        let delivery = &job["webhook"]["delivery"];
        if delivery["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 1 s"))
        {
            assert_eq!(delivery["state"], "pending", "{job:#}");
            break;
        }
        assert!(Instant::now() < deadline, "{job:#}\n{}", kiln.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_undelivered_end_is_delivered_after_kill_9() {
    // The receiver's port, closed while the job ends and the server dies.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = parked.local_addr().unwrap();
    drop(parked);
    let url = format!("http://{addr}/hook");
    let (data, plugins) = dirs();
    let mut kiln = start(data.path(), plugins.path(), &config(""));
    let id = submit_hooked(&kiln.base, json!({"mode": "ok"}), &url).await;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + LONG;
    loop {
        let (_, job) = get_json(&client, &format!("{}/v1/jobs/{id}", kiln.base)).await;
        if job["webhook"]["delivery"]["attempts"].as_u64() >= Some(1) {
            assert_eq!(job["webhook"]["delivery"]["state"], "pending", "{job:#}");
            break;
        }
        assert!(Instant::now() < deadline, "{job:#}\n{}", kiln.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kiln.kill9();
    let receiver = Receiver::serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        vec![],
        false,
    );
    let kiln = start(data.path(), plugins.path(), &config(""));
    let job = delivery_in(&kiln.base, &id, "delivered", &|| kiln.log()).await;
    let got = receiver.received();
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == format!("{id}.1")),
        "{got:#?}"
    );
    assert_eq!(got.last().unwrap().json()["status"], "completed");
    assert!(
        job["webhook"]["delivery"]["attempts"].as_u64() >= Some(2),
        "{job:#}"
    );
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_sent_without_its_result() {
    let receiver = Receiver::start(vec![], false).await;
    let (data, plugins) = dirs();
    let kiln = start(
        data.path(),
        plugins.path(),
        &config("max_body_bytes = 4096\n"),
    );
    // Obeyed: a small result is in the body; violated: a large one is left out.
    let small = submit_hooked(&kiln.base, json!({"mode": "ok"}), &receiver.url).await;
    let large = submit_hooked(
        &kiln.base,
        json!({"mode": "huge_result", "n": 20000}),
        &receiver.url,
    )
    .await;
    delivery_in(&kiln.base, &small, "delivered", &|| kiln.log()).await;
    let job = delivery_in(&kiln.base, &large, "delivered", &|| kiln.log()).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    for sent in receiver.received() {
        let body = sent.json();
        assert!(sent.body.len() <= 4096, "{} bytes", sent.body.len());
        if body["id"] == small.as_str() {
            assert_eq!(body["result"], json!({"ok": true}), "{body:#}");
            assert!(body.get("result_omitted").is_none(), "{body:#}");
        } else {
            assert!(body["result"].is_null(), "{body:#}");
            assert_eq!(body["result_omitted"], true, "{body:#}");
        }
    }
}

#[tokio::test]
async fn bad_webhooks_are_refused_at_submit() {
    let (data, plugins) = dirs();
    // No allow_private: loopback and private addresses are refused.
    let strict = "[webhooks]\nsecret_env = \"KILN_TEST_WEBHOOK_SECRET\"\n";
    let kiln = start(data.path(), plugins.path(), strict);
    let client = reqwest::Client::new();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/hook",
        "ftp://hooks.example.com/",
        "not a url",
    ] {
        let body = json!({"type": "hostile", "payload": {"mode": "ok"}, "webhook": {"url": url}});
        let (status, answer) = submit(&client, &kiln.base, body).await;
        assert_eq!(status, 400, "{url}: {answer:#}");
        assert_eq!(
            answer["error"]["kind"], "invalid_request",
            "{url}: {answer:#}"
        );
    }
    let body = json!({"type": "hostile", "payload": {"mode": "ok"},
                      "webhook": {"url": "https://hooks.example.com/kiln"}});
    let (status, answer) = submit(&client, &kiln.base, body).await;
    assert_eq!(status, 202, "a public URL is accepted: {answer:#}");
    drop(kiln);

    // Without a secret there is nothing to sign with.
    let data = tempfile::tempdir().unwrap();
    let kiln = KilnProcess::start(data.path(), plugins.path(), "");
    let body = json!({"type": "hostile", "payload": {"mode": "ok"},
                      "webhook": {"url": "https://hooks.example.com/kiln"}});
    let (status, answer) = submit(&client, &kiln.base, body).await;
    assert_eq!(status, 400, "{answer:#}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret"),
        "{answer:#}"
    );
}

#[tokio::test]
async fn a_default_url_applies_to_jobs_that_name_none() {
    let receiver = Receiver::start(vec![], false).await;
    let (data, plugins) = dirs();
    let extra = format!("url = \"{}/default\"\n", receiver.url);
    let kiln = start(data.path(), plugins.path(), &config(&extra));
    let client = reqwest::Client::new();
    let id = submit_ok(
        &client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "ok"}}),
    )
    .await;
    delivery_in(&kiln.base, &id, "delivered", &|| kiln.log()).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].path, "/default");
}
