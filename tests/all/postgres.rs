//! What only the PostgreSQL backend has: selecting it, its schema migrations, the password
//! kept out of every output, losing the database under load and getting it back, other
//! processes following a job's log, and the kill -9 walk-through of the README. Each test
//! runs its own real PostgreSQL server (see [`crate::pg`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kiln::jobs::event_names;
use kiln::store::{Change, NewEvent, PostgresOptions, Store};

use crate::pg::PgServer;
use crate::support::*;

/// Config for jobs that take a while: each offline LLM call waits 150 ms.
const SLOW_LLM: &str = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 150\n";

fn store_table(url: &str) -> String {
    format!("\n[store]\nurl = \"{url}\"\n")
}

/// The README's walk-through: `kiln serve --database-url …` (here `KILN_DATABASE_URL`),
/// submit and follow a characters job, kill -9 Kiln mid-job, start it again: the job
/// finishes and the resumed stream has every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_postgres_survives_kill_9_with_every_event_once() {
    let pg = PgServer::start();
    let url = pg.database("kiln");
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let env = [("KILN_DATABASE_URL", url.as_str())];
    let mut kiln = KilnProcess::start_with_env(data.path(), plugins.path(), SLOW_LLM, &env);
    assert!(kiln.log().contains("postgres"), "{}", kiln.log());
    let client = reqwest::Client::new();
    let id = submit_ok(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "harbour pilots", "count": 3 } }),
    )
    .await;
    let response = open_sse(&client, &kiln.url(&format!("/v1/jobs/{id}/events")), None).await;
    let mut reader = SseReader::new(response);
    // Up to the first stage's progress: its LLM calls are journaled by then.
    let mut before: Vec<SseEvent> = Vec::new();
    while before.last().is_none_or(|e| e.event != "progress") {
        match reader.next(Duration::from_secs(30)).await {
            Some(event) => before.push(event),
            None => panic!("the stream ended early: {before:?}\n{}", kiln.log()),
        }
    }
    kiln.kill9();
    let last = before.last().unwrap().id.unwrap();

    let kiln = KilnProcess::start_with_env(data.path(), plugins.path(), SLOW_LLM, &env);
    let response = open_sse(
        &client,
        &kiln.url(&format!("/v1/jobs/{id}/events")),
        Some(last),
    )
    .await;
    assert_eq!(response.status(), 200);
    let after = read_sse(response, None, Duration::from_secs(120)).await;
    let ids: Vec<u64> = before.iter().chain(&after).map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "every event once, in order: {after:?}\n{}",
        kiln.log()
    );
    assert_eq!(after.last().unwrap().event, "completed", "{after:?}");
    let job = wait_terminal(&client, &kiln.base, &id, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(
        job["attempt"], 2,
        "the interrupted attempt was retried: {job}"
    );
    assert!(
        job["usage"]["replayed_calls"].as_u64().unwrap() > 0,
        "{job}"
    );
    // The jobs are in PostgreSQL, not in a redb file.
    assert!(!data.path().join("kiln.redb").exists());
    assert_eq!(
        pg.psql(
            "kiln",
            &format!("SELECT status FROM kiln_jobs WHERE id = '{id}'")
        ),
        "2"
    );
}

/// The flag beats the variable, which beats `[store] url`; the password of whichever is
/// used shows nowhere: not in the log, `/metrics`, `kiln doctor`, nor the error of a
/// database that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_never_shows() {
    let pg = PgServer::start();
    pg.database("kiln");
    // The tests' server trusts loopback, so any password is accepted: it is still in the
    // URL, which is what must not leak.
    let secret = "s3cr3t-Pa55word";
    let url = format!("postgres://kiln:{secret}@127.0.0.1:{}/kiln", pg.port);
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let kiln = KilnProcess::start(data.path(), plugins.path(), &store_table(&url));
    let client = reqwest::Client::new();
    let id = submit_ok(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "x", "count": 1 } }),
    )
    .await;
    wait_terminal(&client, &kiln.base, &id, Duration::from_secs(30)).await;
    let metrics = client
        .get(kiln.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["doctor", "--server", &kiln.base])
        .output()
        .unwrap();
    let doctor_out = String::from_utf8_lossy(&doctor.stdout).to_string()
        + &String::from_utf8_lossy(&doctor.stderr);
    assert!(doctor.status.success(), "{doctor_out}");
    assert!(
        doctor_out.contains(&format!(
            "storage: postgres postgres://kiln:***@127.0.0.1:{}/kiln",
            pg.port
        )),
        "doctor names the store, password masked:\n{doctor_out}"
    );
    let log = kiln.log();
    for (what, text) in [
        ("log", &log),
        ("metrics", &metrics),
        ("doctor", &doctor_out),
    ] {
        assert!(
            !text.contains(secret),
            "the password is in the {what}:\n{text}"
        );
    }
    drop(kiln);

    // A database that cannot be reached: Kiln refuses to start, naming it without the
    // password. KILN_DATABASE_URL beats the file's URL (which points at the live server).
    let dead = format!("postgres://kiln:{secret}@127.0.0.1:{}/kiln", free_port());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .arg("--plugins-dir")
        .arg(plugins.path())
        .env("KILN_DATABASE_URL", &dead)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("connecting to PostgreSQL at postgres://kiln:***@"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
    // And the flag beats the variable.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-test-server"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--database-url",
            &dead,
            "--data-dir",
        ])
        .arg(data.path())
        .arg("--plugins-dir")
        .arg(plugins.path())
        .env("KILN_DATABASE_URL", pg.url("kiln"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the flag's dead URL was used: {stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
}

/// Two Kilns starting at once on an empty database apply the schema once; a database
/// whose schema is newer than this Kiln knows is refused with a clear message, and
/// nothing is written to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let pg = PgServer::start();
    let url = pg.database("kiln");
    let data = tempfile::tempdir().unwrap();
    let open = || Store::open_postgres(PostgresOptions::new(url.clone()), data.path(), 64, 1000);
    let (a, b) = futures::join!(open(), open());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        pg.psql(
            "kiln",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM kiln_schema"
        ),
        "1,2,3,4,5,6,7,8,9"
    );
    drop((a, b));

    pg.psql("kiln", "INSERT INTO kiln_schema (version) VALUES (99)");
    let refused = match open().await {
        Ok(_) => panic!("a Kiln opened a schema newer than it knows"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        refused.contains("schema is version 99, newer than this Kiln knows (9)"),
        "{refused}"
    );
    assert_eq!(pg.psql("kiln", "SELECT count(*) FROM kiln_jobs"), "0");
}

/// Stopping PostgreSQL under load: submits answer `503 storage_unavailable` in the error
/// shape, nothing answered 202 is lost, running jobs keep running, and once PostgreSQL is
/// back Kiln serves again without a restart: every job ends, each log gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_postgres_under_load_refuses_then_recovers_without_a_restart() {
    let pg = Arc::new(PgServer::start());
    let url = pg.database("kiln");
    let extra = format!("{SLOW_LLM}{}", store_table(&url));
    let kiln = InProcess::start(&["characters"], &extra).await;
    let base = kiln.base.clone();
    let client = kiln.client.clone();
    let body = json!({ "type": "characters", "payload": { "theme": "storm", "count": 2 } });

    // Submitters that keep going through the outage, recording every answer.
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        let (accepted, refused, other, stop) = (
            accepted.clone(),
            refused.clone(),
            other.clone(),
            stop.clone(),
        );
        submitters.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, answer) = submit(&client, &base, body.clone()).await;
                match status {
                    202 => accepted.lock().unwrap().push(id_of(&answer)),
                    503 if answer["error"]["kind"] == "storage_unavailable" => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => other.lock().unwrap().push(format!("{status} {answer}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_outage = accepted.lock().unwrap().len();
    assert!(before_outage > 0, "nothing was accepted before the outage");

    pg.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused.load(Ordering::SeqCst) < 5 {
        assert!(
            Instant::now() < deadline,
            "submits were not refused with 503 while the database was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads are refused the same way.
    let (status, answer) = get_json(&client, &kiln.url("/v1/jobs?limit=5")).await;
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (503, Some("storage_unavailable")),
        "{answer}"
    );
    let during = accepted.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        accepted.lock().unwrap().len(),
        during,
        "a submit was accepted with the database down"
    );

    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() <= during {
        assert!(
            Instant::now() < deadline,
            "Kiln did not accept submits again after PostgreSQL came back; PostgreSQL's log:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    while submitters.join_next().await.is_some() {}
    assert!(
        other.lock().unwrap().is_empty(),
        "unexpected answers: {:?}",
        other.lock().unwrap()
    );

    // Every accepted job exists and ends; its log is gap-free and ends once.
    let ids = accepted.lock().unwrap().clone();
    for id in &ids {
        let job = wait_terminal(&client, &base, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "completed", "{job}");
        let events = all_events(&client, &base, id, Duration::from_secs(10)).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{id}: {events:?}"
        );
        let endings = events.iter().filter(|e| e.event == "completed").count();
        assert_eq!(endings, 1, "{id}: {events:?}");
    }
    let listed = pg.psql("kiln", "SELECT count(*) FROM kiln_jobs");
    assert_eq!(
        listed,
        ids.len().to_string(),
        "only accepted jobs are stored"
    );
}

/// Events committed by another process on the same database reach this process's live
/// subscribers, woken by `NOTIFY` and read from the table: the base of the next step, a
/// cluster of Kiln nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_follows_a_jobs_log_through_notify() {
    let pg = PgServer::start();
    let url = pg.database("kiln");
    // Two nodes: each has its own data directory, and so its own node id.
    let (writer_data, follower_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = || PostgresOptions::new(url.clone());
    let writer = Store::open_postgres(options(), writer_data.path(), 64, 1000);
    let writer = Arc::new(writer.await.unwrap());
    let follower = Store::open_postgres(options(), follower_data.path(), 64, 1000);
    let follower = follower.await.unwrap();
    let job = kiln::store::JobRecord {
        status: kiln::store::JobStatus::Running,
        ..kiln::store::JobRecord::queued(uuid::Uuid::now_v7(), "characters", 0)
    };
    let event = |n: u64| NewEvent::new(event_names::PROGRESS, json!({ "progress": n }));
    writer
        .insert(job.clone(), "{}".into(), event(0))
        .await
        .unwrap();
    let mut live = follower.bus.subscribe_job(job.id);
    for n in 1..=5 {
        writer
            .update(job.id, move |_| Ok(Change::events(vec![event(n)])))
            .await
            .unwrap();
    }
    let mut seen: Vec<(u64, Value)> = Vec::new();
    while seen.last().map(|(seq, _)| *seq) != Some(6) {
        let next = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .unwrap_or_else(|_| panic!("no event from the other process; got {seen:?}"))
            .unwrap();
        seen.push((next.seq, next.data["progress"].clone()));
    }
    // Wake-ups may cover several events each; every event is delivered once, in order.
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last().unwrap().1, json!(5));
}

/// Uploads `bytes` to `base` and returns the file's id.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> String {
    let response = client
        .post(format!("{base}/v1/files"))
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The bytes at `url`, which must answer 200.
async fn download(client: &reqwest::Client, url: &str, log: &dyn Fn() -> String) -> Vec<u8> {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        200,
        "{url}: {}\n{}",
        String::from_utf8_lossy(&bytes),
        log()
    );
    bytes
}

/// A cluster needs no shared disk: node A stores an upload and a job's artifact, and node
/// B, with a data dir of its own that has never seen them, serves both from the database
/// and runs a job that reads the upload in its sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_artifacts_are_in_the_database_so_another_node_serves_them() {
    let pg = PgServer::start();
    let url = pg.database("kiln");
    let plugins = plugins_dir(&["documents"]);
    let client = reqwest::Client::new();
    let pdf = std::fs::read(repo_root().join("examples/files/harbour-report.pdf")).unwrap();
    // More than one chunk (1 MiB each), ending inside one.
    let big: Vec<u8> = (0..(2 << 20) + 12_345)
        .map(|i: u32| (i * 7 % 251) as u8)
        .collect();
    let documents =
        |file: &str| json!({"type": "documents", "payload": {"file": file}, "max_attempts": 1});

    let data_a = tempfile::tempdir().unwrap();
    let a = KilnProcess::start(data_a.path(), plugins.path(), &store_table(&url));
    let pdf_id = upload(&client, &a.base, "application/pdf", pdf.clone()).await;
    let big_id = upload(&client, &a.base, "application/octet-stream", big.clone()).await;
    let job_id = submit_ok(&client, &a.base, documents(&pdf_id)).await;
    let job = wait_terminal(&client, &a.base, &job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job:#}\n{}", a.log());
    let artifact_url = job["artifacts"][0]["url"].as_str().unwrap().to_string();
    let summary = download(&client, &a.url(&artifact_url), &|| a.log()).await;
    assert!(
        summary.starts_with(b"# Summary"),
        "{}",
        String::from_utf8_lossy(&summary)
    );
    drop(a);
    assert_eq!(
        pg.psql(
            "kiln",
            &format!("SELECT count(*) FROM kiln_file_chunks WHERE file_id = '{big_id}'")
        ),
        "3",
        "2 MiB and a bit are three chunks"
    );

    let data_b = tempfile::tempdir().unwrap();
    let b = KilnProcess::start(data_b.path(), plugins.path(), &store_table(&url));
    let log = || b.log();
    assert_eq!(
        download(
            &client,
            &b.url(&format!("/v1/files/{pdf_id}/content")),
            &log
        )
        .await,
        pdf
    );
    assert_eq!(
        download(
            &client,
            &b.url(&format!("/v1/files/{big_id}/content")),
            &log
        )
        .await,
        big
    );
    assert_eq!(
        download(&client, &b.url(&artifact_url), &log).await,
        summary
    );
    let again = submit_ok(&client, &b.base, documents(&pdf_id)).await;
    let job = wait_terminal(&client, &b.base, &again, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job:#}\n{}", b.log());
    assert_eq!(
        job["result"],
        wait_terminal(&client, &b.base, &job_id, Duration::ZERO).await["result"]
    );
    // B read the upload from its own copy, pulled from the database for the sandbox.
    assert_eq!(
        std::fs::read(data_b.path().join("files").join(&pdf_id)).unwrap(),
        pdf
    );

    // A cut-short copy (a disk that filled up, a hand edit) is never used as the file: B
    // serves the database's bytes, and pulls a whole copy again for its next job.
    drop(b);
    std::fs::write(data_b.path().join("files").join(&pdf_id), &pdf[..100]).unwrap();
    let b = KilnProcess::start(data_b.path(), plugins.path(), &store_table(&url));
    let log = || b.log();
    assert_eq!(
        download(
            &client,
            &b.url(&format!("/v1/files/{pdf_id}/content")),
            &log
        )
        .await,
        pdf
    );
    let third = submit_ok(&client, &b.base, documents(&pdf_id)).await;
    let job = wait_terminal(&client, &b.base, &third, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job:#}\n{}", b.log());
    assert_eq!(
        std::fs::read(data_b.path().join("files").join(&pdf_id)).unwrap(),
        pdf
    );
}

/// A database and data dir written by the Kiln before file bytes moved into PostgreSQL
/// (`tests/fixtures/store-postgres-v1`, made by commit `5425d6e`): the schema migrates, the
/// node that has the old bytes serves them and moves them into the database, and then a
/// node with an empty data dir serves them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_postgres_database_migrates_and_its_files_move_into_it() {
    let fixture = repo_root().join("tests/fixtures/store-postgres-v1");
    let ids: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("ids.json")).unwrap()).unwrap();
    let (file, documents, characters) = (
        ids["file"].as_str().unwrap(),
        ids["documents"].as_str().unwrap(),
        ids["characters"].as_str().unwrap(),
    );
    let pg = PgServer::start();
    let url = pg.database("kiln");
    pg.restore("kiln", &fixture.join("kiln.sql"));
    assert_eq!(pg.psql("kiln", "SELECT max(version) FROM kiln_schema"), "1");
    // The fixture's upload expired a day after it was made: give it a day from now, as
    // if it had just been made, so the test does not depend on the fixture's age. (Its
    // finished jobs are kept by `job_ttl_secs` below for the same reason.)
    let expires = unix_ms() + 24 * 3600 * 1000;
    pg.psql(
        "kiln",
        &format!(
            "UPDATE kiln_files SET expires_ms = {expires}, \
             record = jsonb_set(record::jsonb, '{{expires_at_ms}}', '{expires}')::text"
        ),
    );
    let newest = "9";
    let data = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("data"), data.path());
    let plugins = plugins_dir(&["characters", "documents"]);
    let client = reqwest::Client::new();
    let pdf = std::fs::read(repo_root().join("examples/files/harbour-report.pdf")).unwrap();

    let config = format!("job_ttl_secs = 3153600000\n{}", store_table(&url));
    let old = KilnProcess::start(data.path(), plugins.path(), &config);
    let log = || old.log();
    assert_eq!(
        pg.psql("kiln", "SELECT max(version) FROM kiln_schema"),
        newest
    );
    let job = wait_terminal(&client, &old.base, characters, Duration::ZERO).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    let job = wait_terminal(&client, &old.base, documents, Duration::ZERO).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    let artifact_url = job["artifacts"][0]["url"].as_str().unwrap().to_string();
    let summary = std::fs::read(
        fixture
            .join("data/artifacts")
            .join(documents)
            .join("done/summary.md"),
    )
    .unwrap();
    assert_eq!(
        download(
            &client,
            &old.url(&format!("/v1/files/{file}/content")),
            &log
        )
        .await,
        pdf
    );
    assert_eq!(
        download(&client, &old.url(&artifact_url), &log).await,
        summary
    );
    // The old bytes move into the database in the background.
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = || {
        pg.psql(
            "kiln",
            "SELECT (SELECT count(*) FROM kiln_file_chunks) > 0 \
                AND (SELECT count(*) FROM kiln_artifact_chunks) > 0",
        ) == "t"
    };
    while !moved() {
        assert!(
            Instant::now() < deadline,
            "the old bytes did not move into the database\n{}",
            old.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(old);

    let fresh = tempfile::tempdir().unwrap();
    let other = KilnProcess::start(fresh.path(), plugins.path(), &config);
    let log = || other.log();
    assert_eq!(
        download(
            &client,
            &other.url(&format!("/v1/files/{file}/content")),
            &log
        )
        .await,
        pdf
    );
    assert_eq!(
        download(&client, &other.url(&artifact_url), &log).await,
        summary
    );
}

/// Each node's sweep drops its copies of uploads that expired, keeps the others, and keeps
/// the bytes of an upload being stored right now (in place before its record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_copies_of_expired_uploads_are_removed_and_the_rest_kept() {
    use sha2::Digest as _;
    let pg = PgServer::start();
    let url = pg.database("kiln");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |dir: std::path::PathBuf| {
        let url = url.clone();
        async move {
            Store::open_postgres(PostgresOptions::new(url), &dir, 64, 1000)
                .await
                .unwrap()
        }
    };
    let (a, b) = (
        open(dir_a.path().into()).await,
        open(dir_b.path().into()).await,
    );
    let upload = async |bytes: &[u8], expires_at_ms: u64| {
        let id = uuid::Uuid::now_v7();
        let (part, mut file) = a.blobs.upload_part(id).unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        a.blobs.finish_upload(id, &part, file).unwrap();
        let record = kiln::store::FileRecord {
            id,
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            content_type: "text/plain".into(),
            tenant: None,
            created_at_ms: kiln::store::now_ms(),
            expires_at_ms,
        };
        a.insert_file(&record).await.unwrap();
        record
    };
    let now = kiln::store::now_ms();
    let short = upload(b"short-lived", now + 1500).await;
    let long = upload(b"long-lived", now + 3_600_000).await;
    let short_copy = b.local_file(&short).await.unwrap();
    let long_copy = b.local_file(&long).await.unwrap();
    assert!(
        short_copy.starts_with(dir_b.path()),
        "{}",
        short_copy.display()
    );
    // Bytes with no record yet: an upload to node B in progress.
    let in_progress = dir_b
        .path()
        .join("files")
        .join(uuid::Uuid::now_v7().to_string());
    std::fs::write(&in_progress, b"arriving").unwrap();

    b.tidy_local_bytes().await;
    assert!(short_copy.exists() && long_copy.exists() && in_progress.exists());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    b.tidy_local_bytes().await;
    assert!(!short_copy.exists(), "the expired upload's copy is removed");
    assert!(long_copy.exists(), "a live upload's copy is kept");
    assert!(in_progress.exists(), "an upload being stored is kept");
}

/// `GET /v1/nodes` on any node lists every node sharing the database: alive while its
/// heartbeat is recent, `stopped` after a clean shutdown, `unresponsive` once a node
/// killed with -9 has missed its heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_the_cluster_and_tells_stopped_from_dead() {
    let pg = PgServer::start();
    let url = pg.database("kiln");
    let plugins = plugins_dir(&["characters"]);
    let client = reqwest::Client::new();
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut a = KilnProcess::start(dir_a.path(), plugins.path(), &store_table(&url));
    let mut b = KilnProcess::start(dir_b.path(), plugins.path(), &store_table(&url));
    let nodes = async |kiln: &KilnProcess| -> Vec<Value> {
        let (status, body) = get_json(&client, &kiln.url("/v1/nodes")).await;
        assert_eq!(status, 200, "{body}\n{}", kiln.log());
        body["nodes"].as_array().unwrap().clone()
    };
    let address = |kiln: &KilnProcess| kiln.base.trim_start_matches("http://").to_string();
    // A node writes its first heartbeat once its plugins are loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listed = nodes(&a).await;
    while listed.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        listed = nodes(&a).await;
    }
    assert_eq!(listed.len(), 2, "{listed:#?}");
    for node in &listed {
        assert_eq!(node["status"], "alive", "{listed:#?}");
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{listed:#?}");
    }
    let this: Vec<&Value> = listed.iter().filter(|n| n["this_node"] == true).collect();
    assert_eq!(this.len(), 1, "{listed:#?}");
    assert_eq!(this[0]["address"], address(&a), "{listed:#?}");
    let on_b = nodes(&b).await;
    assert_eq!(on_b.len(), 2, "{on_b:#?}");
    let b_itself = on_b.iter().find(|n| n["this_node"] == true).unwrap();
    assert_eq!(b_itself["address"], address(&b));
    let (a_id, b_id) = (this[0]["id"].clone(), b_itself["id"].clone());
    assert_ne!(a_id, b_id);

    assert!(b.terminate(Duration::from_secs(10)), "{}", b.log());
    a.kill9();
    let c = KilnProcess::start(dir_c.path(), plugins.path(), &store_table(&url));
    while nodes(&c).await.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status_of = |nodes: &[Value], id: &Value| {
        nodes
            .iter()
            .find(|n| n["id"] == *id)
            .map(|n| n["status"].clone())
    };
    let listed = nodes(&c).await;
    assert_eq!(listed.len(), 3, "{listed:#?}");
    assert_eq!(
        status_of(&listed, &b_id),
        Some(json!("stopped")),
        "{listed:#?}"
    );
    // A's last heartbeat is at most 2 s old when it is killed; 10 s later it is unresponsive.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = nodes(&c).await;
        match status_of(&listed, &a_id) {
            Some(status) if status == "unresponsive" => break,
            Some(status) if status == "alive" && Instant::now() < deadline => {}
            other => panic!("node A is {other:?}: {listed:#?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
