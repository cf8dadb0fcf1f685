//! Follows the writers of other Kiln processes sharing the database: their `NOTIFY`
//! wake-ups name `job_id:seq`, and the events themselves are read from `kiln_events` and
//! published to this process's subscribers of those jobs. Events this process wrote are
//! already published by its own writer, after their commit.
//!
//! A batch's events come the same way (`batch_id:seq`, read from the batch's log).
//!
//! Lines `!job_id:status` tell of status changes (and cancel requests): they go to the
//! job service, which starts queued jobs, fills freed slots and stops attempts cancelled
//! on another node.
//!
//! Followers of the feed of every job (`GET /v1/events`) get the newest feed event on each
//! wake-up of another node's events: feed positions are the cluster's, so a follower that
//! sees it skip ahead reads the events in between from `kiln_feed`.
//!
//! The wake-up is only a hint: a subscriber that sees a gap re-reads the log, so a
//! notification lost while the listener reconnects delays an event, never loses it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::super::StoreError;
use super::super::bus::Bus;
use super::super::model::JobStatus;
use super::{NOTIFY_CHANNEL, PgConnector, PgStore, classify};

/// Events read per wake-up and job.
const READ_LIMIT: usize = 512;

/// Listens until aborted, reconnecting after a lost connection. `listening` is told once
/// the first `LISTEN` has taken effect.
pub(super) async fn run(
    connector: PgConnector,
    pool: Pool,
    bus: Arc<Bus>,
    node: Uuid,
    listening: oneshot::Sender<()>,
) {
    let reader = PgStore {
        pool,
        tasks: Vec::new(),
    };
    let mut published: HashMap<Uuid, u64> = HashMap::new();
    let mut listening = Some(listening);
    loop {
        let result = listen(
            &connector,
            &reader,
            &bus,
            node,
            &mut published,
            &mut listening,
        );
        if let Err(error) = result.await {
            tracing::debug!(%error, "the PostgreSQL listener reconnects");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen(
    connector: &PgConnector,
    reader: &PgStore,
    bus: &Bus,
    node: Uuid,
    published: &mut HashMap<Uuid, u64>,
    listening: &mut Option<oneshot::Sender<()>>,
) -> Result<(), StoreError> {
    let (client, mut connection) = connector.config.connect(NoTls).await.map_err(classify)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(notice) = message
                && tx.send(notice.payload().to_string()).is_err()
            {
                break;
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await
        .map_err(classify)?;
    if let Some(listening) = listening.take() {
        let _ = listening.send(());
    }
    let own = node.to_string();
    while let Some(payload) = rx.recv().await {
        let mut lines = payload.lines();
        if lines.next().is_none_or(|from| from == own) {
            continue;
        }
        let mut events_elsewhere = false;
        for line in lines {
            if let Some(change) = line.strip_prefix('!') {
                if let Some((id, status)) = change.split_once(':')
                    && let (Ok(id), Some(status)) = (
                        id.parse::<Uuid>(),
                        status.parse::<u8>().ok().and_then(JobStatus::from_code),
                    )
                {
                    bus.publish_remote_change(id, status);
                }
                continue;
            }
            let Some((id, seq)) = line.split_once(':') else {
                continue;
            };
            let (Ok(id), Ok(seq)) = (id.parse::<Uuid>(), seq.parse::<u64>()) else {
                continue;
            };
            events_elsewhere = true;
            if !bus.has_job_subscribers(id) {
                published.remove(&id);
                continue;
            }
            let after = published.get(&id).copied().unwrap_or(seq.saturating_sub(1));
            let events = match reader.get(id).await? {
                Some(job) => reader.events_after(&job, after, READ_LIMIT).await?,
                // Not a job: a batch's log.
                None => match reader.batch(id).await? {
                    Some(batch) => {
                        let log = reader.log_after(id, after, READ_LIMIT).await?;
                        log.into_iter()
                            .map(|(seq, stored)| super::super::batch_event(&batch, seq, stored))
                            .collect()
                    }
                    None => continue,
                },
            };
            for event in events {
                published.insert(id, event.seq);
                bus.publish_job(Arc::new(event));
            }
        }
        if events_elsewhere
            && bus.has_feed_subscribers()
            && let Some((_, newest)) = reader.feed_bounds().await?
        {
            for event in reader.feed_after(newest.saturating_sub(1), 1).await? {
                bus.publish_feed(Arc::new(event));
            }
        }
    }
    driver.abort();
    Err(StoreError::Unavailable(
        "the listener's connection ended".into(),
    ))
}
