//! `GET /v1/events`, the feed of every job's events: durable, monotonic ids; resuming after
//! `Last-Event-ID` (or `?last_event_id=`) through cut connections and restarts with no gap
//! and no duplicate; `410 events_expired` beyond the retention window. And the rules for
//! `Last-Event-ID` values on every stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Submits `count` hostile jobs that each report `events` progress events `pace_ms` apart.
async fn submit_event_jobs(
    kiln: &InProcess,
    count: usize,
    events: u64,
    pace_ms: u64,
) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let body = json!({"type": "hostile",
                          "payload": {"mode": "events", "n": events, "pace_ms": pace_ms}});
        ids.push(submit_ok(&kiln.client, &kiln.base, body).await);
    }
    ids
}

/// Opens `/v1/events` after `after` (as the header).
async fn open_feed(kiln: &InProcess, after: Option<u64>) -> reqwest::Response {
    open_sse(&kiln.client, &kiln.url("/v1/events"), after).await
}

/// What a feed client collected: every event's feed id, and per job the sequence numbers
/// of its events in the order they came.
#[derive(Default)]
struct Collected {
    ids: Vec<u64>,
    per_job: BTreeMap<String, Vec<u64>>,
    ended: BTreeSet<String>,
}

impl Collected {
    fn take(&mut self, event: &SseEvent) {
        self.ids.push(event.id.expect("every feed event has an id"));
        let job = event.data["job_id"].as_str().unwrap().to_string();
        let seq = event.data["seq"].as_u64().unwrap();
        if matches!(event.event.as_str(), "completed" | "failed" | "cancelled") {
            self.ended.insert(job.clone());
        }
        self.per_job.entry(job).or_default().push(seq);
    }

    fn last_id(&self) -> Option<u64> {
        self.ids.last().copied()
    }

    /// Reads `stream` for up to `max` events (or until every job in `jobs` ended).
    async fn read(&mut self, stream: &mut SseReader, max: usize, jobs: &[String]) {
        for _ in 0..max {
            if jobs.iter().all(|id| self.ended.contains(id)) {
                return;
            }
            match stream.next(LONG).await {
                Some(event) => self.take(&event),
                None => return,
            }
        }
    }

    /// Checks that every job's events came exactly once, in order, from its first to its
    /// last, and that feed ids only grew.
    async fn assert_complete(&self, kiln: &InProcess, jobs: &[String]) {
        assert!(
            self.ids.windows(2).all(|w| w[0] < w[1]),
            "feed ids must only grow: {:?}",
            self.ids
        );
        for id in jobs {
            let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
            let full = all_events(&kiln.client, &kiln.base, id, LONG).await;
            let expected: Vec<u64> = full.iter().filter_map(|e| e.id).collect();
            let got = self.per_job.get(id).cloned().unwrap_or_default();
            assert_eq!(
                got, expected,
                "job {id} ({}): the feed must carry each of its events once, in order",
                job["status"]
            );
        }
    }
}

#[tokio::test]
async fn the_feed_resumes_through_cut_connections_without_gap_or_duplicate() {
    let kiln = InProcess::start(&["fixture:hostile"], "").await;
    let jobs = submit_event_jobs(&kiln, 12, 30, 5).await;
    let mut collected = Collected::default();
    // Subscribed after the jobs started, so start from the beginning of the feed (0).
    let mut cuts = 0;
    let mut after = Some(0);
    while !jobs.iter().all(|id| collected.ended.contains(id)) {
        let response = open_feed(&kiln, after).await;
        assert_eq!(response.status(), 200, "resume after {after:?}");
        let mut stream = SseReader::new(response);
        // Read a few events, then drop the connection as a flaky network would.
        collected.read(&mut stream, 37, &jobs).await;
        drop(stream);
        cuts += 1;
        after = collected.last_id();
        assert!(cuts < 200, "the jobs never ended: {:?}", collected.ended);
    }
    assert!(
        cuts >= 7,
        "the test must cut the stream several times ({cuts})"
    );
    collected.assert_complete(&kiln, &jobs).await;
}

#[tokio::test]
async fn the_feed_resumes_by_query_and_across_a_restart() {
    let kiln = InProcess::start(&["fixture:hostile"], "").await;
    let first = submit_event_jobs(&kiln, 3, 5, 0).await;
    for id in &first {
        wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
    }
    let mut collected = Collected::default();
    let response = kiln
        .client
        .get(kiln.url("/v1/events?last_event_id=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    collected.read(&mut stream, 1000, &first).await;
    drop(stream);
    let before_restart = collected.last_id().expect("events before the restart");

    let (data, plugins) = kiln.stop().await;
    let kiln = InProcess::start_in(data, plugins, "").await;
    let second = submit_event_jobs(&kiln, 3, 5, 0).await;
    for id in &second {
        wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
    }
    let response = kiln
        .client
        .get(kiln.url(&format!("/v1/events?last_event_id={before_restart}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    collected.read(&mut stream, 1000, &second).await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert!(
        collected
            .ids
            .iter()
            .skip_while(|id| **id <= before_restart)
            .count()
            > 0,
        "ids after the restart continue the feed: {:?}",
        collected.ids
    );
    collected.assert_complete(&kiln, &all).await;
}

#[tokio::test]
async fn a_position_older_than_the_retention_window_is_410_and_a_recent_one_resumes() {
    let kiln = InProcess::start(&["fixture:hostile"], "events_feed_retention = 10").await;
    let jobs = submit_event_jobs(&kiln, 3, 10, 0).await;
    for id in &jobs {
        wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
    }
    // The feed holds every event of every job: the newest position is their count.
    let mut newest = 0;
    for id in &jobs {
        newest += all_events(&kiln.client, &kiln.base, id, LONG).await.len() as u64;
    }
    assert!(newest > 20, "{newest}");
    let (status, body) = get_json(&kiln.client, &kiln.url("/v1/events?last_event_id=2")).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["kind"], "events_expired", "{body}");

    // The newest ten are still there: resuming five before the end gets those five.
    let response = open_feed(&kiln, Some(newest - 5)).await;
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    let mut ids = Vec::new();
    while let Some(event) = stream.next(Duration::from_millis(500)).await {
        ids.push(event.id.unwrap());
    }
    assert_eq!(ids, ((newest - 4)..=newest).collect::<Vec<_>>());

    // The edge of the window: the oldest kept is newest - 9, so a client at newest - 10
    // misses nothing and one at newest - 11 has lost an event.
    assert_eq!(open_feed(&kiln, Some(newest - 10)).await.status(), 200);
    assert_eq!(open_feed(&kiln, Some(newest - 11)).await.status(), 410);
    let beyond = format!("/v1/events?last_event_id={}", newest + 1);
    let (status, body) = get_json(&kiln.client, &kiln.url(&beyond)).await;
    assert_eq!(status, 400, "an id beyond the newest event: {body}");
    assert_eq!(body["error"]["kind"], "invalid_last_event_id");
}

#[tokio::test]
async fn the_feed_keeps_every_event_within_its_default_window() {
    let kiln = InProcess::start(&["fixture:hostile"], "").await;
    let jobs = submit_event_jobs(&kiln, 2, 3, 0).await;
    for id in &jobs {
        wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
    }
    // Nothing trimmed: resuming from the very start replays everything.
    let mut collected = Collected::default();
    let mut stream = SseReader::new(open_feed(&kiln, Some(0)).await);
    collected.read(&mut stream, 1000, &jobs).await;
    assert_eq!(
        collected.ids,
        (1..=collected.ids.len() as u64).collect::<Vec<_>>()
    );
    collected.assert_complete(&kiln, &jobs).await;
}

/// A finished hostile job with 5 progress events (8 events in all).
async fn finished_job(kiln: &InProcess) -> String {
    let id = submit_event_jobs(kiln, 1, 5, 0).await.remove(0);
    let job = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(job["status"], "completed", "{job}");
    id
}

/// `GET path` with an optional `Last-Event-ID`; the status, the body and the first event
/// id when it is a stream.
async fn stream_with(
    kiln: &InProcess,
    path: &str,
    header: Option<&str>,
) -> (u16, Value, Option<u64>) {
    let mut request = kiln.client.get(kiln.url(path));
    if let Some(value) = header {
        request = request.header("last-event-id", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status != 200 {
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return (status, body, None);
    }
    let mut stream = SseReader::new(response);
    let first = stream.next(Duration::from_secs(5)).await.and_then(|e| e.id);
    (status, Value::Null, first)
}

#[tokio::test]
async fn last_event_id_is_a_plain_decimal_and_the_header_wins() {
    let kiln = InProcess::start(&["fixture:hostile"], "").await;
    let id = finished_job(&kiln).await;
    let job_path = format!("/v1/jobs/{id}/events");
    for path in [job_path.as_str(), "/v1/events"] {
        let with_query = |q: &str| format!("{path}?last_event_id={q}");
        // Plain decimals, from the header or the query.
        assert_eq!(
            stream_with(&kiln, path, Some("3")).await.2,
            Some(4),
            "{path}"
        );
        assert_eq!(
            stream_with(&kiln, &with_query("3"), None).await.2,
            Some(4),
            "{path}"
        );
        // Both valid: the header wins.
        assert_eq!(
            stream_with(&kiln, &with_query("1"), Some("3")).await.2,
            Some(4),
            "{path}"
        );
        // An invalid value in either is a 400, whichever is valid.
        for (query, header) in [
            ("x", Some("3")),
            ("3", Some("x")),
            ("%2B5", None),
            ("%205%20", None),
        ] {
            let (status, body, _) = stream_with(&kiln, &with_query(query), header).await;
            assert_eq!(
                status, 400,
                "{path} query {query:?} header {header:?}: {body}"
            );
            assert_eq!(body["error"]["kind"], "invalid_last_event_id", "{body}");
        }
        for header in ["+5", "5x", "-1", "1.0", "0x5", "99999999999999999999999"] {
            let (status, body, _) = stream_with(&kiln, path, Some(header)).await;
            assert_eq!(status, 400, "{path} header {header:?}: {body}");
        }
    }
}

#[tokio::test]
async fn a_huge_malformed_last_event_id_is_quoted_short() {
    let kiln = InProcess::start(&["fixture:hostile"], "").await;
    let id = finished_job(&kiln).await;
    let huge = format!("abc{}", "9".repeat(100 * 1024));
    for path in [format!("/v1/jobs/{id}/events"), "/v1/events".to_string()] {
        let (status, body, _) = stream_with(&kiln, &path, Some(&huge)).await;
        assert_eq!(status, 400, "{path}");
        let text = body.to_string();
        assert!(
            text.len() < 1024,
            "{path}: the answer is {} bytes",
            text.len()
        );
        assert!(
            text.contains("abc999"),
            "{path}: the prefix is quoted: {text}"
        );
    }
}

#[tokio::test]
async fn a_feed_client_with_no_position_gets_the_events_from_then_on_even_when_trimmed() {
    let kiln = InProcess::start(&["fixture:hostile"], "events_feed_retention = 5").await;
    let before = finished_job(&kiln).await; // 8 events: the feed is trimmed to 5
    let newest = all_events(&kiln.client, &kiln.base, &before, LONG)
        .await
        .len() as u64;
    // With a position that old: gone. With none: a stream from now on, not a 410.
    assert_eq!(open_feed(&kiln, Some(0)).await.status(), 410);
    let response = open_feed(&kiln, None).await;
    assert_eq!(response.status(), 200, "no Last-Event-ID on a trimmed feed");
    let mut stream = SseReader::new(response);
    let after = finished_job(&kiln).await;
    let mut collected = Collected::default();
    collected
        .read(&mut stream, 1000, std::slice::from_ref(&after))
        .await;
    assert_eq!(
        collected.ids,
        ((newest + 1)..=(newest + 8)).collect::<Vec<_>>(),
        "the stream replayed old events or missed new ones"
    );
    assert!(
        !collected.per_job.contains_key(&before),
        "{:?}",
        collected.per_job
    );
}
