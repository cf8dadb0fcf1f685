//! The storage contract: the same tests against both backends, a redb file in a temp dir
//! and a database of a real PostgreSQL server (see [`crate::pg`]). Each test is written
//! once, over [`Backend`], and instantiated for both by `both_backends!`.
//!
//! Also here: an old data dir, written by the Kiln before the storage contract existed,
//! still opens and serves its jobs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use kiln::jobs::event_names;
use kiln::store::{
    Change, FileRecord, Inserted, JobRecord, JobStatus, ListQuery, NewEvent, PostgresOptions,
    Store, StoreError, now_ms,
};

use crate::pg::PgServer;
use crate::support::*;

/// Which backend a contract test runs on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Redb,
    Postgres,
}

/// A store under test and what it needs to be reopened.
struct Harness {
    backend: Backend,
    data: tempfile::TempDir,
    _pg: Option<PgServer>,
    url: Option<String>,
}

impl Harness {
    fn new(backend: Backend) -> Self {
        let data = tempfile::tempdir().unwrap();
        let (pg, url) = match backend {
            Backend::Redb => (None, None),
            Backend::Postgres => {
                let pg = PgServer::start();
                let url = pg.database("kiln");
                (Some(pg), Some(url))
            }
        };
        Self {
            backend,
            data,
            _pg: pg,
            url,
        }
    }

    /// Opens the store (again), keeping `retention` feed positions.
    async fn open_with(&self, retention: u64) -> Arc<Store> {
        let store = match self.backend {
            Backend::Redb => {
                Store::open(&self.data.path().join("kiln.redb"), 1024, retention).unwrap()
            }
            Backend::Postgres => Store::open_postgres(
                PostgresOptions::new(self.url.clone().unwrap()),
                self.data.path(),
                1024,
                retention,
            )
            .await
            .unwrap(),
        };
        Arc::new(store)
    }

    async fn open(&self) -> Arc<Store> {
        self.open_with(1_000_000).await
    }

    /// With PostgreSQL, a second node's store: the same database, another data dir.
    async fn open_elsewhere(&self, data_dir: &std::path::Path) -> Option<Arc<Store>> {
        let url = self.url.clone()?;
        let store = Store::open_postgres(PostgresOptions::new(url), data_dir, 1024, 1_000_000)
            .await
            .unwrap();
        Some(Arc::new(store))
    }
}

/// Closes a store and waits until its writer has finished (the redb file is free again).
async fn close(store: Arc<Store>) {
    store.flush().await.unwrap();
    let store = Arc::into_inner(store).expect("the only reference to the store");
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .unwrap();
}

fn job(job_type: &str, tenant: Option<&str>, key: Option<&str>) -> JobRecord {
    JobRecord {
        idempotency_key: key.map(|k| kiln::store::idempotency_slot(tenant, k)),
        tenant: tenant.map(str::to_string),
        ..JobRecord::queued(Uuid::now_v7(), job_type, now_ms())
    }
}

fn queued_event() -> NewEvent {
    NewEvent::new(
        event_names::STATUS,
        json!({ "status": "queued", "attempt": 1 }),
    )
}

async fn insert(store: &Store, record: JobRecord) -> JobRecord {
    match store
        .insert(record, r#"{"n":1}"#.into(), queued_event())
        .await
        .unwrap()
    {
        Inserted::Created(job) => job,
        Inserted::Existing(job) => panic!("expected a new job, got the existing {}", job.id),
    }
}

fn progress(n: u64) -> NewEvent {
    NewEvent::new(
        event_names::PROGRESS,
        json!({ "progress": n, "message": format!("step {n}") }),
    )
}

async fn start(store: &Store, id: Uuid) -> JobRecord {
    store
        .update(id, |job| {
            job.status = JobStatus::Running;
            job.started_at_ms = Some(now_ms());
            Ok(Change::events(vec![NewEvent::new(
                event_names::STATUS,
                json!({ "status": "running" }),
            )]))
        })
        .await
        .unwrap()
}

async fn complete(store: &Store, id: Uuid, result: Value) -> JobRecord {
    store
        .update(id, move |job| {
            job.status = JobStatus::Completed;
            job.finished_at_ms = Some(now_ms());
            Ok(Change {
                events: vec![NewEvent::new(
                    event_names::COMPLETED,
                    json!({ "result": result }),
                )],
                result: Some(result.to_string()),
                clear_result: false,
            })
        })
        .await
        .unwrap()
}

/// The seq numbers of a job's whole log.
async fn seqs(store: &Store, job: &JobRecord) -> Vec<u64> {
    store
        .events_after(job, 0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

async fn lifecycle(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let queued = insert(&store, job("characters", None, None)).await;
    assert_eq!((queued.status, queued.last_seq), (JobStatus::Queued, 1));
    assert_eq!(
        store.payload(queued.id).await.unwrap().as_deref(),
        Some(r#"{"n":1}"#)
    );
    assert_eq!(store.result(queued.id).await.unwrap(), None);
    let running = start(&store, queued.id).await;
    assert_eq!((running.status, running.last_seq), (JobStatus::Running, 2));
    // A refused change saves nothing and says why.
    let refused = store
        .update(queued.id, |job| {
            job.progress = 99;
            Err(StoreError::Conflict("not now".into()))
        })
        .await;
    assert_eq!(refused.unwrap_err(), StoreError::Conflict("not now".into()));
    assert_eq!(store.get(queued.id).await.unwrap().unwrap().progress, 0);
    let done = complete(&store, queued.id, json!({ "name": "Ada", "n": 1 })).await;
    assert_eq!((done.status, done.last_seq), (JobStatus::Completed, 3));
    assert_eq!(
        store.result(queued.id).await.unwrap().as_deref(),
        Some(r#"{"name":"Ada","n":1}"#),
        "the result keeps its key order"
    );
    let events = store.events_after(&done, 0, 100).await.unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["status", "status", "completed"],
        "events: {events:?}"
    );
    assert_eq!(events[2].data["result"]["name"], "Ada");
    // Unknown jobs.
    assert_eq!(store.get(Uuid::now_v7()).await.unwrap(), None);
    let missing = store
        .update(Uuid::now_v7(), |_| Ok(Change::default()))
        .await;
    assert_eq!(missing.unwrap_err(), StoreError::NotFound);
    // Everything survives a reopen.
    close(store).await;
    let store = harness.open().await;
    let reread = store.get(queued.id).await.unwrap().unwrap();
    assert_eq!(reread, done);
    assert_eq!(seqs(&store, &reread).await, [1, 2, 3]);
    assert_eq!(
        store.ids_with_status(JobStatus::Completed).await.unwrap(),
        [queued.id]
    );
    assert_eq!(store.job_count().await.unwrap(), 1);
}

async fn event_log_replays_from_every_position(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let job = insert(&store, job("characters", None, None)).await;
    start(&store, job.id).await;
    for n in 0..40 {
        store
            .update(job.id, move |_| Ok(Change::events(vec![progress(n)])))
            .await
            .unwrap();
    }
    let job = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(job.last_seq, 42);
    for after in 0..=43u64 {
        let events = store.events_after(&job, after, 1000).await.unwrap();
        let got: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (after + 1..=42).collect();
        assert_eq!(got, want, "after {after}");
        // And in pages of 5.
        let page = store.events_after(&job, after, 5).await.unwrap();
        let want: Vec<u64> = (after + 1..=42).take(5).collect();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    }
    let third = &store.events_after(&job, 2, 1).await.unwrap()[0];
    assert_eq!(third.data, json!({ "progress": 0, "message": "step 0" }));
    assert_eq!(third.job_type, "characters");
}

/// Many writers on one job at once, awaited and detached: every event gets the next seq,
/// none is lost or doubled.
async fn concurrent_appends_are_gap_free(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let job = insert(&store, job("characters", None, None)).await;
    start(&store, job.id).await;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..16u64 {
        let store = store.clone();
        tasks.spawn(async move {
            for n in 0..25u64 {
                let marker = writer * 1000 + n;
                if n % 2 == 0 {
                    store.update_detached(job.id, move |_| {
                        Ok(Change::events(vec![progress(marker)]))
                    });
                } else {
                    store
                        .update(job.id, move |_| Ok(Change::events(vec![progress(marker)])))
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    store.flush().await.unwrap();
    let job = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(job.last_seq, 2 + 16 * 25);
    let events = store.events_after(&job, 0, 100_000).await.unwrap();
    let got: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(got, (1..=job.last_seq).collect::<Vec<_>>());
    let mut markers: Vec<u64> = events[2..]
        .iter()
        .map(|e| e.data["progress"].as_u64().unwrap())
        .collect();
    markers.sort_unstable();
    let mut want: Vec<u64> = (0..16u64)
        .flat_map(|w| (0..25u64).map(move |n| w * 1000 + n))
        .collect();
    want.sort_unstable();
    assert_eq!(markers, want, "every write once");
}

async fn idempotency_keys_return_the_first_job(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let first = insert(&store, job("characters", Some("acme"), Some("key-1"))).await;
    // Same key, same tenant: the first job, nothing stored.
    let again = store
        .insert(
            job("characters", Some("acme"), Some("key-1")),
            "{}".into(),
            queued_event(),
        )
        .await
        .unwrap();
    assert!(
        matches!(&again, Inserted::Existing(j) if j.id == first.id),
        "{again:?}"
    );
    // Same key, another tenant: its own job.
    let other = insert(&store, job("characters", Some("globex"), Some("key-1"))).await;
    assert_ne!(other.id, first.id);
    // Two inserts with one key in one batch: one job.
    let (a, b) = futures::join!(
        store.insert(
            job("characters", None, Some("twin")),
            "{}".into(),
            queued_event()
        ),
        store.insert(
            job("characters", None, Some("twin")),
            "{}".into(),
            queued_event()
        ),
    );
    let ids: Vec<Uuid> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .map(|i| match i {
            Inserted::Created(j) | Inserted::Existing(j) => j.id,
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(store.job_count().await.unwrap(), 3);
    // Deleting the job frees its key.
    store.delete(vec![first.id]).await.unwrap();
    let fresh = insert(&store, job("characters", Some("acme"), Some("key-1"))).await;
    assert_ne!(fresh.id, first.id);
}

async fn listing_pages_and_filters(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let mut all = Vec::new();
    for i in 0..23 {
        let job_type = if i % 3 == 0 { "factions" } else { "characters" };
        let tenant = (i % 2 == 0).then_some("acme");
        let record = insert(&store, job(job_type, tenant, None)).await;
        if i % 4 == 0 {
            start(&store, record.id).await;
        }
        all.push(store.get(record.id).await.unwrap().unwrap());
    }
    let newest_first = |pred: &dyn Fn(&JobRecord) -> bool| -> Vec<Uuid> {
        all.iter().rev().filter(|j| pred(j)).map(|j| j.id).collect()
    };
    let cases: Vec<(ListQuery, Vec<Uuid>)> = vec![
        (ListQuery::default(), newest_first(&|_| true)),
        (
            ListQuery {
                status: Some(JobStatus::Running),
                ..Default::default()
            },
            newest_first(&|j| j.status == JobStatus::Running),
        ),
        (
            ListQuery {
                job_type: Some("factions".into()),
                ..Default::default()
            },
            newest_first(&|j| j.job_type == "factions"),
        ),
        (
            ListQuery {
                tenant: Some("acme".into()),
                status: Some(JobStatus::Queued),
                ..Default::default()
            },
            newest_first(&|j| j.tenant.as_deref() == Some("acme") && j.status == JobStatus::Queued),
        ),
        (
            ListQuery {
                job_type: Some("factions".into()),
                status: Some(JobStatus::Running),
                ..Default::default()
            },
            newest_first(&|j| j.job_type == "factions" && j.status == JobStatus::Running),
        ),
    ];
    for (query, want) in cases {
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .list(&ListQuery {
                    limit: 4,
                    before,
                    ..query.clone()
                })
                .await
                .unwrap();
            assert!(page.jobs.len() <= 4);
            got.extend(page.jobs.iter().map(|j| j.id));
            match page.next {
                Some(next) => {
                    assert_eq!(Some(&next), got.last());
                    before = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(got, want, "listing {query:?}");
    }
    let counts = store.count_by_type_and_status().await.unwrap();
    let count = |t: &str, s: JobStatus| {
        counts
            .iter()
            .find(|(job_type, status, _)| job_type == t && *status == s)
            .map_or(0, |(_, _, n)| *n)
    };
    for job_type in ["characters", "factions"] {
        for status in [JobStatus::Queued, JobStatus::Running] {
            let want = all
                .iter()
                .filter(|j| j.job_type == job_type && j.status == status)
                .count() as u64;
            assert_eq!(count(job_type, status), want, "{job_type} {status:?}");
        }
    }
}

async fn expiry_deletes_finished_jobs_with_everything_they_own(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let old = insert(&store, job("characters", None, Some("old-key"))).await;
    start(&store, old.id).await;
    store
        .journal_call(old.id, 0, br#"{"k":1}"#.to_vec(), Default::default(), None)
        .await
        .unwrap();
    complete(&store, old.id, json!(1)).await;
    let open = insert(&store, job("characters", None, None)).await;
    let cutoff = now_ms() + 1;
    assert_eq!(store.finished_before(cutoff, 10).await.unwrap(), [old.id]);
    assert_eq!(
        store.finished_before(cutoff - 60_000, 10).await.unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(store.delete(vec![old.id, Uuid::now_v7()]).await.unwrap(), 1);
    assert_eq!(store.get(old.id).await.unwrap(), None);
    assert_eq!(store.payload(old.id).await.unwrap(), None);
    assert_eq!(store.result(old.id).await.unwrap(), None);
    assert!(store.journal(old.id).await.unwrap().is_empty());
    assert!(store.events_after(&old, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        store.finished_before(cutoff, 10).await.unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(
        store.get(open.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert_eq!(store.job_count().await.unwrap(), 1);
}

async fn journal_entries_and_usage_commit_together(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let job = insert(&store, job("characters", None, None)).await;
    for index in 0..3u64 {
        let cost = kiln::llm::Usage::of_call(100, 10, 40, 2);
        let entry = format!(r#"{{"index":{index}}}"#).into_bytes();
        store
            .journal_call(job.id, index, entry, cost, None)
            .await
            .unwrap();
    }
    // Re-journaling an index replaces it.
    store
        .journal_call(
            job.id,
            1,
            br#"{"index":"one"}"#.to_vec(),
            Default::default(),
            None,
        )
        .await
        .unwrap();
    let entries = store.journal(job.id).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(entries[1].1, br#"{"index":"one"}"#);
    close(store).await;
    let store = harness.open().await;
    let usage = store.get(job.id).await.unwrap().unwrap().usage;
    assert_eq!(
        (
            usage.llm_calls,
            usage.input_tokens,
            usage.output_tokens,
            usage.cached_input_tokens,
            usage.reasoning_tokens
        ),
        (3, 300, 30, 120, 6)
    );
    assert_eq!(store.journal(job.id).await.unwrap().len(), 3);
}

async fn the_feed_keeps_commit_order_and_its_retention(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open_with(10).await;
    assert_eq!(store.feed_bounds().await.unwrap(), None);
    let a = insert(&store, job("characters", None, None)).await;
    let b = insert(&store, job("factions", Some("acme"), None)).await;
    start(&store, a.id).await;
    complete(&store, a.id, json!("done")).await;
    let feed = store.feed_after(0, 100).await.unwrap();
    let got: Vec<(u64, Uuid, u64, JobStatus)> = feed
        .iter()
        .map(|e| (e.feed_seq, e.job_id, e.seq, e.status))
        .collect();
    assert_eq!(
        got,
        [
            (1, a.id, 1, JobStatus::Queued),
            (2, b.id, 1, JobStatus::Queued),
            (3, a.id, 2, JobStatus::Running),
            (4, a.id, 3, JobStatus::Completed),
        ]
    );
    assert_eq!(feed[1].tenant.as_deref(), Some("acme"));
    assert_eq!(store.feed_bounds().await.unwrap(), Some((1, 4)));
    for n in 0..20 {
        store
            .update(b.id, move |_| Ok(Change::events(vec![progress(n)])))
            .await
            .unwrap();
    }
    // 24 events, 10 kept: positions 15..=24.
    assert_eq!(store.feed_bounds().await.unwrap(), Some((15, 24)));
    let tail = store.feed_after(14, 100).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.feed_seq).collect::<Vec<_>>(),
        (15..=24).collect::<Vec<_>>()
    );
    // Positions go on after a reopen.
    close(store).await;
    let store = harness.open_with(10).await;
    store
        .update(b.id, |_| Ok(Change::events(vec![progress(99)])))
        .await
        .unwrap();
    assert_eq!(
        store.feed_bounds().await.unwrap().map(|(_, last)| last),
        Some(25)
    );
    // A deleted job's events leave the feed.
    store.delete(vec![b.id]).await.unwrap();
    assert!(store.feed_after(0, 100).await.unwrap().is_empty());
}

/// Stores `bytes` as an upload the way `POST /v1/files` does: the bytes in place first,
/// then the record.
async fn store_upload(store: &Store, bytes: &[u8], expires_at_ms: u64) -> FileRecord {
    use sha2::Digest as _;
    let id = Uuid::now_v7();
    let (part, mut file) = store.blobs.upload_part(id).unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    store.blobs.finish_upload(id, &part, file).unwrap();
    let record = FileRecord {
        id,
        size: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        content_type: "application/octet-stream".into(),
        tenant: Some("acme".into()),
        created_at_ms: now_ms(),
        expires_at_ms,
    };
    store.insert_file(&record).await.unwrap();
    record
}

async fn collect(stream: kiln::store::ByteStream) -> Vec<u8> {
    use futures::TryStreamExt as _;
    stream
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap()
}

async fn file_records_expire(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let soon = store_upload(&store, b"abc", now_ms() - 1).await;
    let later = store_upload(&store, b"def", now_ms() + 3_600_000).await;
    assert_eq!(store.file(later.id).await.unwrap(), Some(later.clone()));
    assert_eq!(
        store.delete_expired_files(now_ms(), 10).await.unwrap(),
        [soon.id]
    );
    assert_eq!(store.file(soon.id).await.unwrap(), None);
    assert_eq!(store.file(later.id).await.unwrap(), Some(later));
    assert!(
        store
            .delete_expired_files(now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Upload and artifact bytes come back whole, from this store and (PostgreSQL) from
/// another node's store with a data dir of its own; artifacts go with their job.
async fn upload_and_artifact_bytes_come_back_whole(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    // Over two chunks of 1 MiB, ending inside the third; an empty upload; a small one.
    let big: Vec<u8> = (0..(2 << 20) + 777)
        .map(|i: u32| (i * 31 % 253) as u8)
        .collect();
    let uploads = [
        store_upload(&store, &big, now_ms() + 3_600_000).await,
        store_upload(&store, b"", now_ms() + 3_600_000).await,
        store_upload(&store, b"hello", now_ms() + 3_600_000).await,
    ];
    let contents: [&[u8]; 3] = [&big, b"", b"hello"];
    let job = insert(&store, job("documents", None, None)).await;
    let artifacts = [
        ("summary.md", big[..1_500_000].to_vec()),
        ("empty.txt", Vec::new()),
    ];
    for (name, bytes) in &artifacts {
        for piece in bytes
            .chunks(400_000)
            .chain(bytes.is_empty().then_some(&[][..]))
        {
            store.blobs.append_artifact(job.id, 1, name, piece).unwrap();
        }
    }
    let names: Vec<String> = artifacts.iter().map(|(name, _)| name.to_string()).collect();
    store.publish_artifacts(job.id, 1, &names).await.unwrap();
    let record = |name: &str, size: usize| kiln::store::ArtifactRecord {
        name: name.into(),
        size: size as u64,
        content_type: "text/markdown".into(),
    };

    let other_dir = tempfile::tempdir().unwrap();
    let other = harness.open_elsewhere(other_dir.path()).await;
    for reader in std::iter::once(&store).chain(other.as_ref()) {
        for (upload, content) in uploads.iter().zip(contents) {
            assert_eq!(
                collect(reader.file_bytes(upload).await.unwrap()).await,
                content
            );
            let local = reader.local_file(upload).await.unwrap();
            assert_eq!(std::fs::read(local).unwrap(), content);
        }
        for (name, bytes) in &artifacts {
            let stream = reader
                .artifact_bytes(job.id, &record(name, bytes.len()))
                .await
                .unwrap();
            assert_eq!(&collect(stream).await, bytes, "{name}");
        }
    }
    if let Some(other) = other {
        // The other node's copy is its own, in its own data dir.
        assert!(
            other_dir
                .path()
                .join("files")
                .join(uploads[0].id.to_string())
                .exists()
        );
        close(other).await;
    }
    store.delete(vec![job.id]).await.unwrap();
    store.blobs.remove_job(job.id);
    let gone = store
        .artifact_bytes(job.id, &record("summary.md", 1_500_000))
        .await;
    assert!(gone.is_err(), "a deleted job's artifact is gone");
}

/// The live bus gets each committed event once, in order, after its commit.
async fn committed_events_reach_live_subscribers_in_order(backend: Backend) {
    let harness = Harness::new(backend);
    let store = harness.open().await;
    let job = insert(&store, job("characters", None, None)).await;
    let mut live = store.bus.subscribe_job(job.id);
    start(&store, job.id).await;
    for n in 0..10 {
        store.update_detached(job.id, move |_| Ok(Change::events(vec![progress(n)])));
    }
    complete(&store, job.id, json!(null)).await;
    let mut got = Vec::new();
    while got.len() < 12 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        got.push(event.seq);
        // Readable from the log as soon as it is published.
        let job = store.get(job.id).await.unwrap().unwrap();
        assert!(job.last_seq >= event.seq);
    }
    assert_eq!(got, (2..=13).collect::<Vec<_>>());
}

/// A `kiln serve` on the backend is SIGKILLed while jobs run and submits arrive: every
/// submit it acknowledged is in the store when it is opened again, each job's log is
/// gap-free from 1 to its `last_seq`, and nothing half-written shows.
async fn acknowledged_changes_survive_kill_9(backend: Backend) {
    let harness = Harness::new(backend);
    let store_table = match &harness.url {
        Some(url) => format!("\n[store]\nurl = \"{url}\"\n"),
        None => String::new(),
    };
    let plugins = plugins_dir(&["characters"]);
    let config = format!("[providers.offline]\nkind = \"offline\"\nlatency_ms = 20\n{store_table}");
    let mut kiln = KilnProcess::start(harness.data.path(), plugins.path(), &config);
    let client = reqwest::Client::new();
    let body = json!({ "type": "characters", "payload": { "theme": "tides", "count": 1 } });
    let mut acknowledged = Vec::new();
    for _ in 0..30 {
        acknowledged.push(submit_ok(&client, &kiln.base, body.clone()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    kiln.kill9();
    let log = kiln.log();

    let store = harness.open().await;
    for id in &acknowledged {
        let id = Uuid::parse_str(id).unwrap();
        let job =
            store.get(id).await.unwrap().unwrap_or_else(|| {
                panic!("acknowledged job {id} is missing; the server said:\n{log}")
            });
        assert_eq!(
            seqs(&store, &job).await,
            (1..=job.last_seq).collect::<Vec<_>>(),
            "{id}"
        );
        assert!(store.payload(id).await.unwrap().is_some(), "{id}");
        if job.status == JobStatus::Completed {
            assert!(store.result(id).await.unwrap().is_some(), "{id}");
        }
    }
    assert_eq!(store.job_count().await.unwrap(), acknowledged.len() as u64);
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Redb).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

both_backends!(
    lifecycle,
    event_log_replays_from_every_position,
    concurrent_appends_are_gap_free,
    idempotency_keys_return_the_first_job,
    listing_pages_and_filters,
    expiry_deletes_finished_jobs_with_everything_they_own,
    journal_entries_and_usage_commit_together,
    the_feed_keeps_commit_order_and_its_retention,
    file_records_expire,
    upload_and_artifact_bytes_come_back_whole,
    committed_events_reach_live_subscribers_in_order,
    acknowledged_changes_survive_kill_9,
);

/// The fixture's ids (see tests/fixtures/store-redb-v1/README.md).
const OLD_CHARACTERS: &str = "01a236f7-9034-7112-867b-58b6a6429435";
const OLD_DOCUMENTS: &str = "01a236f7-91c6-7519-937a-68dc351e9acc";
const OLD_FAR_FUTURE: &str = "01a236f7-92ff-74ed-bbd6-8ed6c6ac9fa8";
const OLD_CANCELLED: &str = "01a236f7-93e3-7534-bc44-a647363d53e9";
const OLD_DUE: &str = "01a236f7-959c-71d8-b956-86a8e2918281";
const OLD_FAILED: &str = "01a236f7-b4a2-76f4-8fd5-b6858c79478a";

/// A data dir written by the Kiln before the storage contract (commit 4af40b3) opens with
/// this one: its jobs, results, events, journal, idempotency key and artifact are served,
/// and its due queued job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_redb_data_dir_opens_and_serves_its_jobs() {
    let data = tempfile::tempdir().unwrap();
    copy_dir(
        &repo_root().join("tests/fixtures/store-redb-v1"),
        data.path(),
    );
    std::fs::remove_file(data.path().join("README.md")).unwrap();
    let plugins = plugins_dir(&["characters", "documents"]);
    // Kept for ten years: the fixture's jobs are older than the default TTL.
    let kiln = InProcess::start_in(data, plugins, "job_ttl_secs = 315360000").await;
    let client = &kiln.client;

    let (status, job) = get_json(client, &kiln.url(&format!("/v1/jobs/{OLD_CHARACTERS}"))).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "completed");
    assert_eq!(job["usage"]["llm_calls"], 12);
    assert_eq!(job["result"].as_array().map(Vec::len), Some(2), "{job}");
    let events = all_events(client, &kiln.base, OLD_CHARACTERS, Duration::from_secs(10)).await;
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    assert_eq!(events.last().unwrap().event, "completed");

    // Its Idempotency-Key still names it.
    let response = client
        .post(kiln.url("/v1/jobs"))
        .header("Idempotency-Key", "fixture-key-1")
        .json(&json!({ "type": "characters", "payload": { "theme": "lighthouse keepers", "count": 2 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["id"], OLD_CHARACTERS);

    let (_, documents) = get_json(client, &kiln.url(&format!("/v1/jobs/{OLD_DOCUMENTS}"))).await;
    assert_eq!(documents["status"], "completed", "{documents}");
    let artifact = client
        .get(kiln.url(&format!("/v1/jobs/{OLD_DOCUMENTS}/artifacts/summary.md")))
        .send()
        .await
        .unwrap();
    assert_eq!(artifact.status(), 200);
    assert_eq!(artifact.bytes().await.unwrap().len(), 284);

    let (_, failed) = get_json(client, &kiln.url(&format!("/v1/jobs/{OLD_FAILED}"))).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["kind"], "invalid_input");
    let (_, cancelled) = get_json(client, &kiln.url(&format!("/v1/jobs/{OLD_CANCELLED}"))).await;
    assert_eq!(cancelled["status"], "cancelled");
    let (_, future) = get_json(client, &kiln.url(&format!("/v1/jobs/{OLD_FAR_FUTURE}"))).await;
    assert_eq!(future["status"], "queued");

    // The job that was due runs now, its log going on after the old events.
    let due = wait_terminal(client, &kiln.base, OLD_DUE, Duration::from_secs(60)).await;
    assert_eq!(due["status"], "completed", "{due}");
    let events = all_events(client, &kiln.base, OLD_DUE, Duration::from_secs(10)).await;
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        events[0].data["run_at"], "2026-12-02T13:35:45.000Z",
        "{events:?}"
    );
    assert_eq!(events[1].data["status"], "running", "{events:?}");

    // Listing sees every old job; new jobs are listed before them.
    let (_, page) = get_json(client, &kiln.url("/v1/jobs?limit=100")).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 6, "{page}");
    let id = submit_ok(
        client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "new" } }),
    )
    .await;
    let (_, page) = get_json(client, &kiln.url("/v1/jobs?limit=1")).await;
    assert_eq!(page["jobs"][0]["id"], id.as_str());
}
