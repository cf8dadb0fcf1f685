//! A plugin must never harm other jobs: guests burning CPU in loops that call no import,
//! one per core, must not starve streamed jobs, their SSE streams or the API. Times are
//! compared with a baseline measured in the same test, with a generous factor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// Streamed jobs take ~1 s alone: six rounds of offline calls of 100 ms, each streamed word
/// by word (timer sleeps between the words, which a starved executor delays).
const CONFIG: &str = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 100\nwords = 12\n";

/// How much slower the streamed jobs may be next to the CPU loops. While guests ran on the
/// server's own executor they were ~25x slower here (1.4 s, then 38 s; `/healthz` took up
/// to 1.9 s); on their own threads ~1.5x, on a 2-core machine shared with other work.
const FACTOR: f64 = 3.0;

/// What one round of streamed jobs measured.
#[derive(Debug)]
struct Round {
    /// Submit to the end of the slowest job's stream.
    elapsed: Duration,
    /// Slowest `GET /healthz` answer while the jobs ran.
    slowest_healthz: Duration,
    /// Longest wait between two events of one stream.
    longest_gap: Duration,
}

/// Runs two streamed `characters` jobs, each followed over SSE from before it starts, while
/// `/healthz` is polled; every stream must end with `completed` after token events.
async fn streamed_round(client: &reqwest::Client, base: &str) -> Round {
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let probe = {
        let (client, url, done) = (client.clone(), format!("{base}/healthz"), done.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                assert_eq!(status.ok(), Some(200), "/healthz failed");
                slowest = slowest.max(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            slowest
        })
    };
    let mut streams = Vec::new();
    for theme in ["lighthouse keepers", "orbital salvage crew"] {
        let body = json!({"type": "characters", "payload": {"theme": theme, "count": 2}});
        let (status, job) = submit(client, base, body).await;
        assert_eq!(status, 202, "{job}");
        let (client, base, id) = (client.clone(), base.to_string(), id_of(&job));
        streams.push(tokio::spawn(async move {
            let url = format!("{base}/v1/jobs/{id}/events");
            let mut reader = SseReader::new(open_sse(&client, &url, None).await);
            let (mut events, mut longest_gap, mut last) = (Vec::new(), Duration::ZERO, None);
            while let Some(event) = reader.next(LONG).await {
                let now = Instant::now();
                if let Some(last) = last {
                    longest_gap = longest_gap.max(now - last);
                }
                last = Some(now);
                events.push(event);
            }
            (id, events, longest_gap)
        }));
    }
    let mut longest_gap = Duration::ZERO;
    for stream in streams {
        let (id, events, gap) = stream.await.expect("the stream task");
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names.last(), Some(&"completed"), "job {id}: {names:?}");
        assert!(
            names.contains(&"token"),
            "job {id} streamed no tokens: {names:?}"
        );
        longest_gap = longest_gap.max(gap);
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let slowest_healthz = probe.await.expect("the /healthz probe");
    Round {
        elapsed,
        slowest_healthz,
        longest_gap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_loops_on_every_core_do_not_starve_streamed_jobs_sse_or_the_api() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters", "fixture:hostile"]);
    let kiln = KilnProcess::start_cached(data.path(), plugins.path(), CONFIG);
    let client = reqwest::Client::new();

    streamed_round(&client, &kiln.base).await; // warms up the instance pool and caches
    let alone = streamed_round(&client, &kiln.base).await;

    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut loops = Vec::new();
    for _ in 0..cores {
        let body = json!({"type": "hostile", "payload": {"mode": "loop"}, "timeout_s": 300});
        let (status, job) = submit(&client, &kiln.base, body).await;
        assert_eq!(status, 202, "{job}");
        loops.push(id_of(&job));
    }
    for id in &loops {
        wait_status(&client, &kiln.base, id, "running").await;
    }
    let loaded = streamed_round(&client, &kiln.base).await;

    // The loops were spinning the whole time: cancelling them ends them now.
    for id in &loops {
        let (status, job) = post_empty(&client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["status"], "cancelled", "{job}");
    }
    eprintln!("{cores} CPU loops; streamed jobs alone: {alone:?}; next to the loops: {loaded:?}");
    let context = || {
        format!(
            "alone {alone:?}, loaded {loaded:?}; server log:\n{}",
            kiln.log()
        )
    };
    let bound = |baseline: Duration, floor: Duration| baseline.mul_f64(FACTOR).max(floor);
    assert!(
        loaded.elapsed <= bound(alone.elapsed, Duration::from_secs(1)),
        "the streamed jobs were starved: {}",
        context()
    );
    assert!(
        loaded.longest_gap <= bound(alone.longest_gap, Duration::from_millis(500)),
        "a stream stalled: {}",
        context()
    );
    assert!(
        loaded.slowest_healthz <= bound(alone.slowest_healthz, Duration::from_millis(250)),
        "/healthz stalled: {}",
        context()
    );
}

/// Polls the job until it has `status` (a hang guard, not a time bound).
async fn wait_status(client: &reqwest::Client, base: &str, id: &str, status: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let (_, job): (u16, Value) = get_json(client, &format!("{base}/v1/jobs/{id}")).await;
        if job["status"] == status {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} never {status}: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
