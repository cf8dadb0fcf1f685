//! Contract 0.2.0 end to end, with the `toolbox` fixture (a real component built from
//! `plugins/fixtures/toolbox`): structured output, tool calls, embeddings, files in and
//! artifacts out, against the offline provider and against the fake provider in both wire
//! formats, streamed and not; every new limit obeyed and broken; and 0.1.0 components
//! served beside 0.2.0 ones.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_provider::{Behavior, FakeProvider};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Submits a `toolbox` job with `payload` and waits for its end; returns the job.
async fn run_toolbox(kiln: &InProcess, payload: Value) -> Value {
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "toolbox", "payload": payload, "max_attempts": 1}),
    )
    .await;
    let events = all_events(&kiln.client, &kiln.base, &id, WAIT).await;
    let job = wait_terminal(&kiln.client, &kiln.base, &id, WAIT).await;
    assert!(
        matches!(job["status"].as_str(), Some("completed" | "failed")),
        "{job:#}\nevents: {events:#?}"
    );
    job
}

async fn toolbox(extra: &str) -> InProcess {
    InProcess::start_cached(&["fixture:toolbox"], extra).await
}

async fn upload(kiln: &InProcess, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
    let response = kiln
        .client
        .post(kiln.url("/v1/files"))
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_0_2_0_job_answers_to_a_schema_calls_a_tool_embeds_and_writes_an_artifact() {
    let kiln = toolbox("").await;
    let job = run_toolbox(&kiln, json!({"mode": "all"})).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    let review = &job["result"]["review"];
    assert!(
        review["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{job:#}"
    );
    assert!(
        (1..=10).contains(&review["score"].as_i64().unwrap()),
        "{job:#}"
    );
    assert_eq!(
        job["result"]["tool_calls"].as_array().unwrap().len(),
        1,
        "{job:#}"
    );
    assert_eq!(job["result"]["embedded"], 2, "{job:#}");
    // 2 completions (the tool round, the answer) and 1 embedding call.
    assert_eq!(job["usage"]["llm_calls"], 3, "{job:#}");

    let artifacts = job["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{job:#}");
    assert_eq!(artifacts[0]["name"], "review.md");
    assert_eq!(artifacts[0]["content_type"], "text/markdown");
    let url = artifacts[0]["url"].as_str().unwrap();
    let response = kiln.client.get(kiln.url(url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/markdown");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let text = response.text().await.unwrap();
    assert!(text.starts_with("# "), "{text}");
    assert_eq!(text.len() as u64, artifacts[0]["size"].as_u64().unwrap());
    let (status, _) = get_json(&kiln.client, &kiln.url(&format!("{url}x"))).await;
    assert_eq!(status, 404, "an unknown artifact");
    kiln.stop().await;
}

#[tokio::test]
async fn components_of_both_contract_versions_are_served_side_by_side() {
    let plugins = plugins_dir(&["fixture:toolbox"]);
    std::fs::copy(
        repo_root().join("tests/fixtures/contract-v0.1.0/noop.wasm"),
        plugins.path().join("noop.wasm"),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    let kiln = InProcess::start_in(data, plugins, "").await;
    let (status, list) = get_json(&kiln.client, &kiln.url("/v1/plugins")).await;
    assert_eq!(status, 200);
    let versions: Vec<(String, String)> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["contract_version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("noop".to_string(), "0.1.0".to_string()),
            ("toolbox".to_string(), "0.2.0".to_string())
        ]
    );
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "payload": {}}),
    )
    .await;
    let job = wait_terminal(&kiln.client, &kiln.base, &id, WAIT).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["artifacts"], json!([]), "{job:#}");
    kiln.stop().await;
}

#[tokio::test]
async fn uploads_are_stored_described_and_read_by_the_job_in_chunks() {
    let kiln = toolbox("").await;
    // 2.5 MiB: three host reads of at most 1 MiB.
    let bytes: Vec<u8> = (0..2_621_440u32).map(|i| b"kiln"[i as usize % 4]).collect();
    let (status, file) = upload(&kiln, "text/plain", bytes.clone()).await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["size"], bytes.len());
    let sha = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    assert_eq!(file["sha256"], hex::encode(sha));
    assert_eq!(file["content_type"], "text/plain");
    let id = file["id"].as_str().unwrap();

    let (status, meta) = get_json(&kiln.client, &kiln.url(&format!("/v1/files/{id}"))).await;
    assert_eq!((status, &meta["size"]), (200, &file["size"]), "{meta}");
    let content = kiln
        .client
        .get(kiln.url(&format!("/v1/files/{id}/content")))
        .send()
        .await
        .unwrap();
    assert_eq!(content.headers()["content-type"], "text/plain");
    assert_eq!(content.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let job = run_toolbox(&kiln, json!({"mode": "file", "file": id})).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["result"]["size"], bytes.len(), "{job:#}");
    assert_eq!(job["result"]["stat_size"], bytes.len(), "{job:#}");
    assert_eq!(job["result"]["reads"], 3, "{job:#}");
    assert_eq!(job["result"]["head"], "kilnkilnkilnkiln", "{job:#}");
    assert_eq!(job["result"]["sha256"], hex::encode(sha), "{job:#}");

    // multipart/form-data, as a browser form or `curl -F` sends it.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"<h1>Hi</h1>".to_vec())
            .file_name("page.html")
            .mime_str("text/html")
            .unwrap(),
    );
    let response = kiln
        .client
        .post(kiln.url("/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let file: Value = response.json().await.unwrap();
    assert_eq!(
        (file["size"].as_u64(), file["content_type"].as_str()),
        (Some(11), Some("text/html"))
    );
    kiln.stop().await;
}

#[tokio::test]
async fn an_upload_at_the_size_limit_is_stored_and_one_byte_more_is_413() {
    let kiln = toolbox("max_file_bytes = 1000").await;
    let (status, file) = upload(&kiln, "application/octet-stream", vec![7; 1000]).await;
    assert_eq!(status, 201, "{file}");
    let (status, error) = upload(&kiln, "application/octet-stream", vec![7; 1001]).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["kind"], "file_too_large", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_file_bytes")
    );
    // Nothing of the refused upload is left in the data dir.
    let left: Vec<_> = std::fs::read_dir(kiln.data.path().join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    kiln.stop().await;
}

#[tokio::test]
async fn bad_uploads_and_unknown_files_are_refused_before_a_job_exists() {
    let kiln = toolbox("").await;
    let response = kiln
        .client
        .post(kiln.url("/v1/files"))
        .body("no content type")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    for id in ["0190a0a0-0000-7000-8000-000000000000", "not-a-uuid"] {
        let (status, error) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "toolbox", "payload": {"mode": "file", "file": id}}),
        )
        .await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["kind"], "unknown_file", "{error}");
        let (status, _) = get_json(&kiln.client, &kiln.url(&format!("/v1/files/{id}"))).await;
        assert_eq!(status, 404);
    }
    let (_, jobs) = get_json(&kiln.client, &kiln.url("/v1/jobs")).await;
    assert_eq!(jobs["jobs"], json!([]), "no job was stored: {jobs}");
    kiln.stop().await;
}

#[tokio::test]
async fn artifacts_up_to_the_limit_are_kept_and_past_it_fail_the_job() {
    let kiln = toolbox("[limits]\nartifact_limit = 1000").await;
    let job = run_toolbox(
        &kiln,
        json!({"mode": "artifact", "size": 1000, "chunks": 4}),
    )
    .await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["artifacts"][0]["size"], 1000, "{job:#}");
    let job = run_toolbox(
        &kiln,
        json!({"mode": "artifact", "size": 1001, "chunks": 4}),
    )
    .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["kind"], "artifact_limit", "{job:#}");
    assert_eq!(job["artifacts"], json!([]), "{job:#}");
    // A bad name is the plugin's error, not a crash.
    let job = run_toolbox(
        &kiln,
        json!({"mode": "artifact", "size": 3, "name": "../x"}),
    )
    .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["kind"], "permanent", "{job:#}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("artifact name"),
        "{job:#}"
    );
    kiln.stop().await;
}

#[tokio::test]
async fn tool_rounds_up_to_the_limit_run_and_a_loop_past_it_fails_the_job() {
    let kiln = toolbox("[limits]\nmax_tool_rounds = 3").await;
    let job = run_toolbox(&kiln, json!({"mode": "tools"})).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["result"]["calls"][0]["tool"], "add", "{job:#}");
    let job = run_toolbox(&kiln, json!({"mode": "tool_forever"})).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["kind"], "llm_limit", "{job:#}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_tool_rounds") && message.contains('3'),
        "{message}"
    );
    assert_eq!(
        job["usage"]["llm_calls"], 4,
        "three rounds, then the fourth answer: {job:#}"
    );
    kiln.stop().await;
}

#[tokio::test]
async fn offline_embeddings_are_unit_vectors() {
    let kiln = toolbox("").await;
    let job = run_toolbox(&kiln, json!({"mode": "embed", "texts": ["a", "b"]})).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(
        job["result"]["vectors"],
        json!([{"len": 256, "norm": 1.0}, {"len": 256, "norm": 1.0}])
    );
    kiln.stop().await;
}

/// TOML for the fake provider in `format` (`openai` or `anthropic`).
fn fake_config(fake: &FakeProvider, kind: &str, extra: &str) -> String {
    let base = &fake.base_url;
    format!(
        "{extra}\n[providers.fake]\nkind = \"{kind}\"\nbase_url = \"{base}\"\n\
         [models]\ndefault = \"fake/test-model\"\nembedding = \"fake/test-embed\"\n"
    )
}

const VALID: &str = r#"{"title": "A singing light", "score": 7}"#;

#[tokio::test]
async fn structured_output_is_sent_natively_checked_and_asked_again_once_in_both_formats() {
    for kind in ["openai", "anthropic"] {
        // Streamed (the toolbox streams its schema call): a wrong answer, then a valid one.
        let fake = FakeProvider::with(Behavior {
            chunk_delay_ms: 0,
            texts_by_call: vec![r#"{"title": ""}"#.into(), VALID.into()],
            usage: (20, 5),
            ..Behavior::default()
        })
        .await;
        let kiln = toolbox(&fake_config(&fake, kind, "")).await;
        let job = run_toolbox(&kiln, json!({"mode": "schema"})).await;
        assert_eq!(job["status"], "completed", "{kind}: {job:#}");
        assert_eq!(
            job["result"]["answer"],
            serde_json::from_str::<Value>(VALID).unwrap()
        );
        let seen = fake.seen();
        assert_eq!(seen.len(), 2, "{kind}: asked once more");
        let native = match kind {
            "openai" => &seen[0].body["response_format"],
            _ => &seen[0].body["output_config"]["format"],
        };
        assert_eq!(native["type"], "json_schema", "{kind}: {:#}", seen[0].body);
        // The second request quotes why the first answer was refused.
        let retry = seen[1].body.to_string();
        assert!(
            retry.contains("does not match the schema"),
            "{kind}: {retry}"
        );
        // Both tries were paid for and are counted.
        assert_eq!(job["usage"]["input_tokens"], 40, "{kind}: {job:#}");
        kiln.stop().await;

        // Two wrong answers: the call is rejected with the validation error.
        let fake = FakeProvider::with(Behavior {
            chunk_delay_ms: 0,
            texts_by_call: vec!["not json".into(), r#"{"title": "x", "score": 99}"#.into()],
            ..Behavior::default()
        })
        .await;
        let kiln = toolbox(&fake_config(&fake, kind, "")).await;
        let job = run_toolbox(&kiln, json!({"mode": "schema"})).await;
        assert_eq!(job["status"], "failed", "{kind}: {job:#}");
        assert_eq!(job["error"]["kind"], "permanent", "{kind}: {job:#}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("rejected") && message.contains("/score"),
            "{kind}: {message}"
        );
        assert_eq!(fake.calls(), 2, "{kind}");
        kiln.stop().await;
    }
}

#[tokio::test]
async fn tool_calls_round_trip_in_both_formats_streamed_and_not() {
    for kind in ["openai", "anthropic"] {
        for streamed in [false, true] {
            let fake = FakeProvider::with(Behavior {
                chunk_delay_ms: 0,
                tool_calls: vec![("call_1".into(), "add".into(), r#"{"a": 2, "b": 3}"#.into())],
                deltas: vec!["The sum is 5.".into()],
                usage_details: Some((6, 2)),
                ..Behavior::default()
            })
            .await;
            let kiln = toolbox(&fake_config(&fake, kind, "")).await;
            let mode = if streamed { "all" } else { "tools" };
            let job = run_toolbox(&kiln, json!({"mode": mode})).await;
            let seen = fake.seen();
            let completions: Vec<_> = seen
                .iter()
                .filter(|s| !s.path.ends_with("embeddings"))
                .collect();
            if streamed {
                // `all` asks for a schema too: the fake's text is no review, so the job
                // fails on it after the tool round; what matters here is the round.
                assert_eq!(job["error"]["kind"], "permanent", "{kind}: {job:#}");
            } else {
                assert_eq!(job["status"], "completed", "{kind}: {job:#}");
                assert_eq!(job["result"]["calls"][0]["sum"], 5, "{kind}: {job:#}");
                assert!(
                    job["result"]["text"]
                        .as_str()
                        .unwrap()
                        .contains("The sum is 5.")
                );
                assert_eq!(job["usage"]["cached_input_tokens"], 12, "{kind}: {job:#}");
                if kind == "openai" {
                    assert_eq!(job["usage"]["reasoning_tokens"], 4, "{job:#}");
                }
            }
            let first = &completions[0].body;
            let declared = match kind {
                "openai" => first["tools"][0]["function"]["name"].clone(),
                _ => first["tools"][0]["name"].clone(),
            };
            assert_eq!(declared, "add", "{kind}: {first:#}");
            // The second request carries the call and its result in the format's shape.
            let second = completions[1].body.to_string();
            assert!(
                second.contains("call_1") && second.contains("\\\"sum\\\":5"),
                "{kind}: {second}"
            );
            kiln.stop().await;
        }
    }
}

#[tokio::test]
async fn embeddings_use_the_openai_endpoint_and_anthropic_says_it_has_none() {
    let fake = FakeProvider::with(Behavior {
        usage: (9, 0),
        ..Behavior::default()
    })
    .await;
    let kiln = toolbox(&fake_config(&fake, "openai", "")).await;
    let job = run_toolbox(&kiln, json!({"mode": "embed", "texts": ["ab", "cde"]})).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["result"]["vectors"][1]["len"], 3, "{job:#}");
    assert_eq!(job["usage"]["input_tokens"], 9, "{job:#}");
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v1/embeddings");
    assert_eq!(seen[0].body["model"], "test-embed");
    assert_eq!(seen[0].body["input"], json!(["ab", "cde"]));
    kiln.stop().await;

    let kiln = toolbox(&fake_config(&fake, "anthropic", "")).await;
    let job = run_toolbox(&kiln, json!({"mode": "embed", "texts": ["ab"]})).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no embeddings endpoint"),
        "{job:#}"
    );
    kiln.stop().await;
}

#[tokio::test]
async fn kill_9_in_a_tool_loop_pays_for_no_finished_call_twice() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 400,
        tool_calls: vec![("call_1".into(), "add".into(), r#"{"a": 2, "b": 3}"#.into())],
        deltas: vec!["5".into()],
        ..Behavior::default()
    })
    .await;
    let config = fake_config(&fake, "openai", "");
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["fixture:toolbox"]);
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    let client = reqwest::Client::new();
    let id = submit_ok(
        &client,
        &kiln.base,
        json!({"type": "toolbox", "payload": {"mode": "tools"}}),
    )
    .await;
    // The tool round is answered (and journaled); the answer after it is in flight.
    let deadline = std::time::Instant::now() + LONG;
    while !(fake.answered() >= 1 && fake.calls() >= 2) {
        assert!(std::time::Instant::now() < deadline, "{}", kiln.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kiln.kill9();
    // Let requests the dead server already wrote land in the fake before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    let job = wait_terminal(&client, &kiln.base, &id, LONG).await;
    assert_eq!(job["status"], "completed", "{job:#}\n{}", kiln.log());
    assert_eq!(job["result"]["calls"][0]["sum"], 5, "{job:#}");
    let first_rounds = fake
        .seen()
        .iter()
        .filter(|s| !s.body.to_string().contains("tool_call_id"))
        .count();
    assert_eq!(first_rounds, 1, "the finished tool round was asked once");
    assert_eq!(job["usage"]["replayed_calls"], 1, "{job:#}");
    assert_eq!(job["usage"]["llm_calls"], 2, "each call paid once: {job:#}");
}

/// A DOCX whose `word/document.xml` inflates to 200 MiB (it is about 200 KB), made with
/// Python's zipfile (C zlib: a second, where a debug-built Rust deflate takes much longer).
fn zip_bomb_docx(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("bomb.docx");
    let script = "import sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n\
        \x20   with z.open('word/document.xml', 'w', force_zip64=True) as f:\n\
        \x20       block = b'<w:t>' + b'a' * (1 << 20) + b'</w:t>'\n\
        \x20       for _ in range(200): f.write(block)\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    std::fs::read(path).unwrap()
}

/// A PDF whose page tree is its own child.
const LOOPING_PDF: &[u8] = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n\
    2 0 obj\n<< /Type /Pages /Kids [2 0 R] /Count 1 >>\nendobj\n\
    trailer\n<< /Root 1 0 R /Size 3 >>\n%%EOF\n";

#[tokio::test]
async fn documents_summarise_uploads_and_hostile_files_fail_only_their_own_job() {
    let kiln = InProcess::start_cached(&["documents"], "").await;
    let documents =
        |file: &str| json!({"type": "documents", "payload": {"file": file}, "max_attempts": 1});
    let run = async |body: Value| {
        let id = submit_ok(&kiln.client, &kiln.base, body).await;
        wait_terminal(&kiln.client, &kiln.base, &id, WAIT).await
    };

    let html = "<html><body><h1>Harbour report</h1><p>The harbour flooded twice this year.</p>\
                <p>The sea wall needs repair.</p></body></html>";
    let (status, file) = upload(&kiln, "text/html", html.into()).await;
    assert_eq!(status, 201, "{file}");
    let job = run(documents(file["id"].as_str().unwrap())).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert!(job["result"]["summary"].is_string(), "{job:#}");
    let url = job["artifacts"][0]["url"]
        .as_str()
        .expect("summary.md")
        .to_string();
    let markdown = kiln
        .client
        .get(kiln.url(&url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(markdown.starts_with("# Summary"), "{markdown}");

    // The PDF the README's curl example uploads.
    let pdf = std::fs::read(repo_root().join("examples/files/harbour-report.pdf")).unwrap();
    let (status, file) = upload(&kiln, "application/pdf", pdf).await;
    assert_eq!(status, 201, "{file}");
    let job = run(documents(file["id"].as_str().unwrap())).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["artifacts"][0]["name"], "summary.md", "{job:#}");

    let dir = tempfile::tempdir().unwrap();
    let docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
    let hostile: [(&str, &str, Vec<u8>, &str); 3] = [
        ("zip bomb", docx, zip_bomb_docx(dir.path()), "too large"),
        (
            "looping PDF",
            "application/pdf",
            LOOPING_PDF.to_vec(),
            "invalid document",
        ),
        (
            "60 MiB text",
            "text/plain",
            vec![b'x'; 60 * 1024 * 1024],
            "at most 16 MiB",
        ),
    ];
    for (what, content_type, bytes, says) in hostile {
        let (status, file) = upload(&kiln, content_type, bytes).await;
        assert_eq!(status, 201, "{what}: {file}");
        let job = run(documents(file["id"].as_str().unwrap())).await;
        assert_eq!(job["status"], "failed", "{what}: {job:#}");
        assert_eq!(job["error"]["kind"], "invalid_input", "{what}: {job:#}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(job["usage"]["llm_calls"], 0, "{what}: nothing was paid for");
    }
    // The server is unharmed: a text job right after completes.
    let job = run(json!({"type": "documents", "payload": {"text": "A calm day at sea."}})).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    kiln.stop().await;
}
