//! Access control: API keys by hash, roles, tenants, events tokens, session cookies, CORS
//! and open mode, against a real server.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::support::{InProcess, KilnProcess, LONG, SseReader, id_of, kiln, plugins_dir};

/// The keys of one test server: an admin, two clients of tenant `a`, one of tenant `b`.
struct Keys {
    admin: String,
    a: String,
    a2: String,
    b: String,
}

impl Keys {
    fn new() -> Self {
        let key = || ::kiln::auth::new_key().unwrap();
        Self {
            admin: key(),
            a: key(),
            a2: key(),
            b: key(),
        }
    }

    /// The `[auth]` config that accepts these keys, plus `extra` lines in `[auth]`.
    fn config(&self, extra: &str) -> String {
        let entry = |name: &str, role: &str, tenant: Option<&str>, key: &str| {
            let tenant = tenant.map_or(String::new(), |t| format!("tenant = \"{t}\"\n"));
            format!(
                "[[auth.keys]]\nname = \"{name}\"\nrole = \"{role}\"\n{tenant}sha256 = \"{}\"\n",
                ::kiln::auth::hash_key(key)
            )
        };
        format!(
            "[auth]\n{extra}\n{}{}{}{}",
            entry("ops", "admin", None, &self.admin),
            entry("web-a", "client", Some("a"), &self.a),
            entry("worker-a", "client", Some("a"), &self.a2),
            entry("web-b", "client", Some("b"), &self.b),
        )
    }
}

/// A request to `path` with `key` as the bearer.
fn call(server: &InProcess, method: Method, path: &str, key: &str) -> RequestBuilder {
    server
        .client
        .request(method, server.url(path))
        .header(AUTHORIZATION, format!("Bearer {key}"))
}

async fn json_of(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn submit_as(server: &InProcess, key: &str, body: Value) -> Value {
    let (status, job) = json_of(call(server, Method::POST, "/v1/jobs", key).json(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job
}

/// A job that takes a while, so it is still running while other tenants look for it.
fn slow_job() -> Value {
    json!({"type": "hostile", "payload": {"mode": "events", "n": 40, "pace_ms": 50}})
}

fn quick_job() -> Value {
    json!({"type": "hostile", "payload": {"mode": "ok"}})
}

async fn wait_done(server: &InProcess, key: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (_, job) = json_of(call(server, Method::GET, &format!("/v1/jobs/{id}"), key)).await;
        if matches!(
            job["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never ended"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Status and error kind; the message is compared separately where it matters.
async fn status_kind(request: RequestBuilder) -> (StatusCode, String) {
    let (status, body) = json_of(request).await;
    (
        status,
        body["error"]["kind"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn a_tenant_sees_nothing_of_another_tenant_by_any_route() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let running = submit_as(&server, &keys.a, slow_job()).await;
    let finished = submit_as(&server, &keys.a, quick_job()).await;
    let running_id = id_of(&running);
    let finished_id = id_of(&finished);
    wait_done(&server, &keys.a, &finished_id).await;

    // B follows every job's events from before A's jobs make more progress.
    let response = call(&server, Method::GET, "/v1/events", &keys.b)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut b_dashboard = SseReader::new(response);

    // Every per-job route answers B exactly as for a job that never existed.
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [&running_id, &finished_id] {
        let routes = [
            (Method::GET, format!("/v1/jobs/{id}")),
            (Method::GET, format!("/v1/jobs/{id}/events")),
            (Method::POST, format!("/v1/jobs/{id}/cancel")),
            (Method::POST, format!("/v1/jobs/{id}/retry")),
            (Method::POST, format!("/v1/jobs/{id}/token")),
        ];
        for (method, path) in routes {
            let (status, body) = json_of(call(&server, method.clone(), &path, &keys.b)).await;
            let (unknown_status, unknown_body) = json_of(call(
                &server,
                method.clone(),
                &path.replace(id.as_str(), &unknown),
                &keys.b,
            ))
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_eq!(unknown_status, StatusCode::NOT_FOUND);
            assert_eq!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(id.as_str(), "ID"),
                unknown_body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(&unknown, "ID"),
                "{method} {path}: the answer must not differ from an unknown id's"
            );
        }
    }
    // B's cancel did not touch A's running job.
    let (_, job) = json_of(call(
        &server,
        Method::GET,
        &format!("/v1/jobs/{running_id}"),
        &keys.a,
    ))
    .await;
    assert_ne!(job["status"], "cancelled", "{job}");

    // Listings: B sees its own job only, under every filter.
    let own = submit_as(&server, &keys.b, quick_job()).await;
    let own_id = id_of(&own);
    for query in ["", "?status=completed", "?status=running", "?type=hostile"] {
        let (status, page) = json_of(call(
            &server,
            Method::GET,
            &format!("/v1/jobs{query}"),
            &keys.b,
        ))
        .await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert!(
            !ids.contains(&running_id.as_str()) && !ids.contains(&finished_id.as_str()),
            "B's listing {query:?} shows A's jobs: {ids:?}"
        );
    }
    wait_done(&server, &keys.b, &own_id).await;

    // The same Idempotency-Key in two tenants makes two jobs.
    let keyed = |key: &str| {
        call(&server, Method::POST, "/v1/jobs", key)
            .header("idempotency-key", "order-1")
            .json(&quick_job())
    };
    let (_, from_a) = json_of(keyed(&keys.a)).await;
    let (status_b, from_b) = json_of(keyed(&keys.b)).await;
    assert_eq!(status_b, StatusCode::ACCEPTED, "{from_b}");
    assert_ne!(id_of(&from_a), id_of(&from_b));

    // B's dashboard stream carried B's events and none of A's.
    let own_done = b_dashboard
        .until(
            |event| event.event == "completed" && event.data["job_id"] == own_id.as_str(),
            LONG,
        )
        .await;
    assert!(
        own_done.iter().any(|e| e.data["job_id"] == own_id.as_str()),
        "B's stream must carry B's own events"
    );
    for event in &own_done {
        let job = event.data["job_id"].as_str().unwrap_or("");
        assert!(
            job != running_id && job != finished_id,
            "B saw A's event: {event:?}"
        );
    }

    // A's other key (same tenant) and the admin see A's job; A's key sees B's as unknown.
    for key in [&keys.a2, &keys.admin] {
        let (status, _) = json_of(call(
            &server,
            Method::GET,
            &format!("/v1/jobs/{running_id}"),
            key,
        ))
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = json_of(call(
        &server,
        Method::GET,
        &format!("/v1/jobs/{own_id}"),
        &keys.a,
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, all) = json_of(call(
        &server,
        Method::GET,
        "/v1/jobs?limit=100",
        &keys.admin,
    ))
    .await;
    assert!(all["jobs"].as_array().unwrap().len() >= 4, "{all}");
    server.stop().await;
}

#[tokio::test]
async fn operator_routes_need_an_admin_key() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let routes = [
        (Method::POST, "/v1/jobs/bulk/retry"),
        (Method::POST, "/v1/jobs/bulk/cancel"),
        (Method::GET, "/v1/doctor"),
        (Method::POST, "/v1/doctor/cleanup"),
        (Method::GET, "/v1/queues"),
        (Method::GET, "/v1/nodes"),
        (Method::GET, "/metrics"),
    ];
    for (method, path) in routes {
        let (status, kind) = status_kind(call(&server, method.clone(), path, &keys.a)).await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path} as a client"
        );
        let response = call(&server, method.clone(), path, &keys.admin)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path} as admin: {}",
            response.status()
        );
    }
    // Any valid key reads the job types.
    let (status, _) = json_of(call(&server, Method::GET, "/v1/plugins", &keys.b)).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn public_metrics_need_no_key_when_configured() {
    let keys = Keys::new();
    let server = kiln(&keys.config("public_metrics = true")).await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = json_of(server.client.get(server.url("/v1/queues"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn calls_without_a_valid_key_are_refused_with_401() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let no_key = server
        .client
        .post(server.url("/v1/jobs"))
        .json(&quick_job());
    let response = no_key.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers()
            .get(WWW_AUTHENTICATE)
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
        "a 401 names the scheme"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "unauthorized");

    let wrong = ::kiln::auth::new_key().unwrap();
    let hash_as_key = ::kiln::auth::hash_key(&keys.a);
    for bad in [
        format!("Bearer {wrong}"),
        format!("Bearer {hash_as_key}"),
        format!("Basic {}", keys.a),
        "Bearer".to_string(),
        keys.a.clone(),
    ] {
        let (status, kind) = status_kind(
            server
                .client
                .get(server.url("/v1/jobs"))
                .header(AUTHORIZATION, bad.clone()),
        )
        .await;
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{bad}"
        );
    }
    // Nothing was created by the refused submit.
    let (_, page) = json_of(call(&server, Method::GET, "/v1/jobs", &keys.admin)).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0, "{page}");

    // Health, the API description and the dashboard's page need no key.
    for path in ["/healthz", "/openapi.json", "/"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_events_token_opens_that_jobs_stream_and_nothing_else() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let job = submit_as(&server, &keys.a, quick_job()).await;
    let other = submit_as(&server, &keys.a, quick_job()).await;
    let id = id_of(&job);
    let token = job["events_token"]
        .as_str()
        .expect("events_token")
        .to_string();
    assert!(job["events_token_expires_at"].is_string(), "{job}");
    assert!(!token.starts_with(::kiln::auth::KEY_PREFIX));

    // No headers at all, as EventSource sends it.
    let events_url = |job_id: &str, token: &str| {
        server
            .url(&format!("/v1/jobs/{job_id}/events?token={token}"))
            .to_string()
    };
    let response = server
        .client
        .get(events_url(&id, &token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = SseReader::new(response).read_to_end(LONG).await;
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("completed"));

    // The token opens neither another job's stream nor any other route.
    let (status, kind) = status_kind(server.client.get(events_url(&id_of(&other), &token))).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
        (Method::GET, "/v1/jobs".to_string()),
    ] {
        let (status, _) = status_kind(call(&server, method.clone(), &path, &token)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with the token"
        );
    }
    // Flip the MAC's last hex digit: always a different token, never the same by chance.
    let (head, last) = token.split_at(token.len() - 1);
    let forged = format!("{head}{}", if last == "0" { "1" } else { "0" });
    assert_ne!(forged, token);
    let (status, _) = status_kind(server.client.get(events_url(&id, &forged))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a forged token");

    // An API key is never accepted in a URL, even a valid one.
    let (status, kind) = status_kind(server.client.get(events_url(&id, &keys.a))).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::BAD_REQUEST, "key_in_url")
    );

    // A fresh token for the same job, for a page that reloads later.
    let (status, fresh) = json_of(call(
        &server,
        Method::POST,
        &format!("/v1/jobs/{id}/token"),
        &keys.a2,
    ))
    .await;
    assert_eq!(status, 200);
    let fresh = fresh["events_token"].as_str().unwrap();
    let response = server
        .client
        .get(events_url(&id, fresh))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the fresh token replays the log");
    server.stop().await;
}

#[tokio::test]
async fn an_expired_events_token_is_refused() {
    let keys = Keys::new();
    let server = kiln(&keys.config("job_token_ttl_secs = 1")).await;
    let job = submit_as(&server, &keys.a, slow_job()).await;
    let id = id_of(&job);
    let url = server.url(&format!(
        "/v1/jobs/{id}/events?token={}",
        job["events_token"].as_str().unwrap()
    ));
    // Token expiry has whole-second resolution: after 2 s it is certainly past.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _) = status_kind(server.client.get(url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn a_session_cookie_stands_in_for_the_key_on_the_same_origin() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let own = submit_as(&server, &keys.a, quick_job()).await;
    let others = submit_as(&server, &keys.b, quick_job()).await;

    let response = call(&server, Method::POST, "/v1/session", &keys.a)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(&keys.a),
        "the cookie must not be the key"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["tenant"], "a");

    let with_cookie = |path: String| server.client.get(server.url(&path)).header(COOKIE, &cookie);
    let (status, _) = json_of(with_cookie(format!("/v1/jobs/{}", id_of(&own)))).await;
    assert_eq!(status, 200);
    let (status, _) = json_of(with_cookie(format!("/v1/jobs/{}", id_of(&others)))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the session is tenant a's");
    let (status, _) = json_of(with_cookie("/v1/queues".into())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _) = json_of(
        server
            .client
            .get(server.url("/v1/jobs"))
            .header(COOKIE, "kiln_session=session.web-a.99999999999.00"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a forged cookie");

    let response = server
        .client
        .delete(server.url("/v1/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        response.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    server.stop().await;
}

#[tokio::test]
async fn cors_answers_listed_origins_only() {
    let server = kiln("cors_origins = [\"http://app.example\"]").await;
    let preflight = |origin: &str| {
        server
            .client
            .request(Method::OPTIONS, server.url("/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
    };
    let allowed = preflight("http://app.example").send().await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let methods = allowed.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");

    let refused = preflight("http://evil.example").send().await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "an unlisted origin got CORS headers"
    );
    let simple = server
        .client
        .get(server.url("/v1/jobs"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        simple
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn without_cors_origins_no_origin_is_allowed() {
    let server = kiln("").await;
    let response = server
        .client
        .get(server.url("/v1/jobs"))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    server.stop().await;
}

#[tokio::test]
async fn open_mode_is_logged_and_refused_off_loopback_unless_configured() {
    let plugins = plugins_dir(&["fixture:noop"]);
    let data = tempfile::tempdir().unwrap();
    let server = KilnProcess::start(data.path(), plugins.path(), "");
    let log = server.log();
    assert!(
        log.contains("open mode"),
        "the startup log must say so:\n{log}"
    );
    drop(server);

    let config = data.path().with_extension("refused.toml");
    std::fs::write(&config, crate::support::test_config("")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["serve", "--addr", "0.0.0.0:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .arg("--plugins-dir")
        .arg(plugins.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without API keys"), "{stderr}");
}

#[tokio::test]
async fn keys_new_prints_a_key_and_the_hash_that_accepts_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["keys", "new", "--name", "web", "--tenant", "acme"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let entry = String::from_utf8(output.stderr).unwrap();
    assert!(key.starts_with(::kiln::auth::KEY_PREFIX), "{key}");
    assert!(
        entry.contains(&::kiln::auth::hash_key(&key)),
        "the printed entry must hold the key's hash:\n{entry}"
    );
    assert!(
        !entry.contains(&key),
        "the config entry must not hold the key"
    );
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["keys", "new", "--name", "web"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a client key without a tenant");
}

#[tokio::test]
async fn a_tenant_lists_and_reads_only_its_own_batches() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let batch = json!({"type": "hostile", "items": [{"mode": "ok"}]});
    let (status, of_a) =
        json_of(call(&server, Method::POST, "/v1/batches", &keys.a).json(&batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{of_a}");
    let (status, of_b) =
        json_of(call(&server, Method::POST, "/v1/batches", &keys.b).json(&batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{of_b}");
    let listed = |key: String| {
        let server = &server;
        async move {
            let (status, page) = json_of(call(server, Method::GET, "/v1/batches", &key)).await;
            assert_eq!(status, 200, "{page}");
            page["batches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let (a_id, b_id) = (id_of(&of_a), id_of(&of_b));
    assert_eq!(listed(keys.a.clone()).await, vec![a_id.clone()]);
    assert_eq!(listed(keys.b.clone()).await, vec![b_id.clone()]);
    assert_eq!(listed(keys.admin.clone()).await, vec![b_id, a_id.clone()]);
    let (status, body) = json_of(call(
        &server,
        Method::GET,
        &format!("/v1/batches/{a_id}"),
        &keys.b,
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_job_may_depend_only_on_its_own_tenants_jobs() {
    let keys = Keys::new();
    let server = kiln(&keys.config("")).await;
    let a_job = submit_as(&server, &keys.a, quick_job()).await;
    let a_id = a_job["id"].as_str().unwrap();
    let mut body = quick_job();
    body["depends_on"] = json!([a_id]);
    // Another tenant is told the job does not exist, as `GET` would tell it.
    let (status, refused) =
        json_of(call(&server, Method::POST, "/v1/jobs", &keys.b).json(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused:#}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("depends_on[0]: no job"), "{refused:#}");
    // The same tenant (another of its keys) may.
    let dependant = submit_as(&server, &keys.a2, body).await;
    let end = wait_done(&server, &keys.a2, dependant["id"].as_str().unwrap()).await;
    assert_eq!(end["status"], "completed", "{end:#}");
}
