//! Schedules: a job type and payload submitted at each tick of a cron expression, defined
//! in the config (`[schedules.NAME]`) or at run time (`POST /v1/schedules`).
//!
//! **Exactly one job per tick**, across restarts and nodes: a tick's job is submitted with
//! an idempotency key made of the schedule's name and the tick, so submitting it again (a
//! node died before recording the tick, two nodes both believed they led, or the config
//! redefined the schedule in between) answers with the same job. Then the tick is recorded on the schedule, compare-and-set on
//! its definition, so a schedule deleted or redefined meanwhile is never written back.
//! Only the leader ticks (with redb, the one node).
//!
//! **Missed ticks**: those that came due while no node was ticking (before this node's loop
//! began, or became leader). With `catch_up = "once"` they get one job, the latest's; with
//! `"skip"` none. Ticks that come due while the loop runs are never missed, however late
//! the loop finds them.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::Value;
use uuid::Uuid;

use super::{JobService, ServiceError, SubmitRequest, bad_request};
use crate::store::{CatchUp, ScheduleRecord, now_ms};

/// The longest the loop sleeps before reading the schedules again (a schedule made on
/// another node, or a tick due sooner).
const POLL: Duration = Duration::from_secs(1);

/// Most on-time ticks submitted per schedule and pass (the rest go in the next passes).
const MAX_TICKS_PER_PASS: usize = 1_000;

/// Longest schedule name.
const MAX_NAME: usize = 64;

/// A schedule as a client or the config defines it.
#[derive(Clone, Debug)]
pub struct ScheduleSpec {
    pub name: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub job_type: String,
    pub payload: Value,
    pub catch_up: CatchUp,
    pub tenant: Option<String>,
}

/// A cron expression read in its time zone.
pub struct Ticks {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Ticks {
    /// Parses `cron` (five fields, or six with seconds first) in `timezone` (UTC if none);
    /// the error says what is wrong.
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Self, String> {
        let zone = match timezone {
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                format!("unknown time zone {name:?} (an IANA name, e.g. Europe/Paris)")
            })?,
            None => chrono_tz::UTC,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(cron)
            .map_err(|error| format!("invalid cron expression {cron:?}: {error}"))?;
        Ok(Self { cron, zone })
    }

    /// The first tick after `after_ms`, ms (`None`: there is none, e.g. 30 February).
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        // Ticks fall on whole seconds: none lies between the second of `after_ms` and it.
        let next = self
            .cron
            .find_next_occurrence(&self.second_of(after_ms)?, false);
        u64::try_from(next.ok()?.with_timezone(&Utc).timestamp_millis()).ok()
    }

    /// The last tick at or before `ms`.
    fn last_at_or_before(&self, ms: u64) -> Option<u64> {
        let last = self
            .cron
            .find_previous_occurrence(&self.second_of(ms)?, true);
        u64::try_from(last.ok()?.with_timezone(&Utc).timestamp_millis()).ok()
    }

    /// The whole second `ms` falls in, in the schedule's time zone.
    fn second_of(&self, ms: u64) -> Option<DateTime<chrono_tz::Tz>> {
        let second = utc(ms - ms % 1000)?;
        Some(self.zone.from_utc_datetime(&second.naive_utc()))
    }

    /// What to do now for a schedule whose ticks up to `after_ms` are handled: the ticks
    /// to submit (see the module's doc: the latest of those missed before `started_ms`
    /// for `CatchUp::Once`, then every tick since, oldest first), and the tick to record
    /// as handled once they are (`None`: no tick is due).
    fn due(
        &self,
        after_ms: u64,
        now_ms: u64,
        started_ms: u64,
        catch_up: CatchUp,
    ) -> (Vec<u64>, Option<u64>) {
        let Some(latest) = self.last_at_or_before(now_ms).filter(|&t| t > after_ms) else {
            return (Vec::new(), None);
        };
        let mut submit = Vec::new();
        let missed = self
            .last_at_or_before(started_ms.saturating_sub(1))
            .filter(|&t| t > after_ms);
        if let (CatchUp::Once, Some(tick)) = (catch_up, missed) {
            submit.push(tick);
        }
        let mut from = after_ms.max(started_ms.saturating_sub(1));
        while let Some(tick) = self.next_after(from).filter(|&t| t <= now_ms) {
            submit.push(tick);
            from = tick;
            if submit.len() >= MAX_TICKS_PER_PASS {
                // The rest in the next pass: record only as far as this one went.
                return (submit, Some(tick));
            }
        }
        (submit, Some(latest))
    }
}

fn utc(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// The idempotency key of a tick's job.
fn tick_key(schedule: &ScheduleRecord, tick_ms: u64) -> String {
    format!("schedule:{}:{tick_ms}", schedule.name)
}

impl JobService {
    /// Checks a schedule's definition: its name, cron, time zone, type and payload.
    pub fn check_schedule(&self, spec: &ScheduleSpec) -> Result<(), ServiceError> {
        let name_ok = !spec.name.is_empty()
            && spec.name.len() <= MAX_NAME
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(bad_request(
                "invalid_request",
                format!(
                    "a schedule's name is 1 to {MAX_NAME} letters, digits, '-' or '_'; not {:?}",
                    spec.name
                ),
            ));
        }
        Ticks::parse(&spec.cron, spec.timezone.as_deref())
            .map_err(|message| bad_request("invalid_request", message))?;
        self.check_job_definition(&spec.job_type, &spec.payload)
            .map(drop)
    }

    /// Creates a schedule (`POST /v1/schedules`); refused when the name is taken or
    /// `max_schedules` are defined.
    pub async fn create_schedule(
        &self,
        spec: ScheduleSpec,
    ) -> Result<ScheduleRecord, ServiceError> {
        self.check_schedule(&spec)?;
        let store = &self.inner.store;
        let existing = store.schedules().await?;
        let max = self.inner.settings.max_schedules;
        if existing.len() >= max {
            return Err(bad_request(
                "invalid_request",
                format!("{max} schedules are defined already (max_schedules)"),
            ));
        }
        let record = new_record(spec, false, None);
        if !store.put_schedule(&record, None).await? {
            return Err(ServiceError::Conflict(format!(
                "a schedule named '{}' exists already",
                record.name
            )));
        }
        self.inner.schedules_changed.notify_one();
        Ok(record)
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, ServiceError> {
        Ok(self.inner.store.schedules().await?)
    }

    /// Deletes a schedule made through the API (one from the config file is removed there).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), ServiceError> {
        let schedules = self.inner.store.schedules().await?;
        match schedules.iter().find(|s| s.name == name) {
            None => Err(ServiceError::ScheduleNotFound(name.to_string())),
            Some(s) if s.from_config => Err(ServiceError::Conflict(format!(
                "schedule '{name}' is defined in the config file; remove it there"
            ))),
            Some(_) => {
                self.inner.store.delete_schedule(name).await?;
                Ok(())
            }
        }
    }

    /// Brings the stored schedules in line with the config's: new ones are created,
    /// changed ones redefined (keeping the latest tick handled, so a change never causes a
    /// burst of catch-up jobs), removed ones deleted. Schedules made through the API are
    /// left alone unless the config defines one of the same name, which replaces it.
    pub(super) async fn sync_config_schedules(&self) -> Result<(), ServiceError> {
        let store = &self.inner.store;
        let stored = store.schedules().await?;
        let specs = &self.inner.settings.schedules;
        for spec in specs {
            if let Err(error) = self.check_schedule(spec) {
                // Kept, so its ticks say why they submit nothing (`last_error`).
                tracing::error!(schedule = %spec.name, %error, "a configured schedule is invalid");
            }
            let current = stored.iter().find(|s| s.name == spec.name);
            if let Some(current) = current
                && current.from_config
                && defines(current, spec)
            {
                continue;
            }
            if current.is_some_and(|s| !s.from_config) {
                tracing::warn!(schedule = %spec.name, "the config's schedule replaces the one made through the API");
            }
            let last_tick = current.and_then(|s| s.last_tick_ms);
            let record = new_record(spec.clone(), true, last_tick);
            store.put_schedule(&record, current.map(|s| s.id)).await?;
        }
        for gone in stored
            .iter()
            .filter(|s| s.from_config && !specs.iter().any(|spec| spec.name == s.name))
        {
            store.delete_schedule(&gone.name).await?;
        }
        Ok(())
    }

    /// Ticks every schedule while this node leads, until the service stops.
    pub(super) async fn schedule_loop(self) {
        // When this node began ticking: ticks before it were missed.
        let mut started_ms: Option<u64> = None;
        loop {
            let mut wait = POLL;
            if self.is_leader() {
                let started = *started_ms.get_or_insert_with(now_ms);
                match self.inner.store.schedules().await {
                    Ok(schedules) => {
                        for schedule in schedules {
                            if let Some(next) = self.tick(schedule, started).await {
                                let until = Duration::from_millis(next.saturating_sub(now_ms()));
                                wait = wait.min(until);
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not read the schedules"),
                }
            } else {
                started_ms = None;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.inner.schedules_changed.notified() => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// Submits the jobs of `schedule`'s due ticks and records the latest; returns when its
    /// next tick is due.
    async fn tick(&self, mut schedule: ScheduleRecord, started_ms: u64) -> Option<u64> {
        let ticks = Ticks::parse(&schedule.cron, schedule.timezone.as_deref()).ok()?;
        let now = now_ms();
        let after = schedule.last_tick_ms.unwrap_or(schedule.created_at_ms);
        let (submit, latest) = ticks.due(after, now, started_ms, schedule.catch_up);
        let Some(latest) = latest else {
            return ticks.next_after(after);
        };
        let expected = schedule.id;
        for tick in submit {
            match self.submit_tick(&schedule, tick).await {
                Ok(job) => {
                    schedule.last_job = Some(job);
                    schedule.last_error = None;
                }
                Err(ServiceError::BadRequest { message, .. }) => {
                    tracing::warn!(schedule = %schedule.name, %message, "a scheduled job was refused");
                    schedule.last_error = Some(message);
                }
                Err(error) => {
                    // Not saved (a full queue, the database away): the tick is tried again.
                    tracing::warn!(schedule = %schedule.name, %error, "could not submit a scheduled job");
                    return Some(now + 1000);
                }
            }
        }
        schedule.last_tick_ms = Some(latest);
        match self
            .inner
            .store
            .put_schedule(&schedule, Some(expected))
            .await
        {
            Ok(true) | Ok(false) => {}
            Err(error) => {
                tracing::warn!(schedule = %schedule.name, %error, "could not record a tick")
            }
        }
        ticks.next_after(latest)
    }

    /// Submits the job of one tick (or finds the one submitted before).
    async fn submit_tick(
        &self,
        schedule: &ScheduleRecord,
        tick_ms: u64,
    ) -> Result<Uuid, ServiceError> {
        let (job, _) = self
            .submit(SubmitRequest {
                job_type: schedule.job_type.clone(),
                payload: schedule.payload.clone(),
                idempotency_key: Some(tick_key(schedule, tick_ms)),
                tenant: schedule.tenant.clone(),
                schedule: Some((schedule.name.clone(), tick_ms)),
                ..SubmitRequest::default()
            })
            .await?;
        Ok(job.id)
    }
}

/// Whether `record` is the definition `spec` gives.
fn defines(record: &ScheduleRecord, spec: &ScheduleSpec) -> bool {
    record.cron == spec.cron
        && record.timezone == spec.timezone
        && record.job_type == spec.job_type
        && record.payload == spec.payload
        && record.catch_up == spec.catch_up
        && record.tenant == spec.tenant
}

/// A new definition of a schedule, its ticks counted from now (or after `last_tick_ms`).
fn new_record(spec: ScheduleSpec, from_config: bool, last_tick_ms: Option<u64>) -> ScheduleRecord {
    ScheduleRecord {
        name: spec.name,
        id: Uuid::now_v7(),
        cron: spec.cron,
        timezone: spec.timezone,
        job_type: spec.job_type,
        payload: spec.payload,
        catch_up: spec.catch_up,
        tenant: spec.tenant,
        from_config,
        created_at_ms: now_ms(),
        last_tick_ms,
        last_job: None,
        last_error: None,
    }
}

/// When a schedule's next tick is due, ms (in the past while one is due and not yet
/// handled); `None` if its cron has no next tick.
pub fn next_run_ms(schedule: &ScheduleRecord) -> Option<u64> {
    let ticks = Ticks::parse(&schedule.cron, schedule.timezone.as_deref()).ok()?;
    ticks.next_after(schedule.last_tick_ms.unwrap_or(schedule.created_at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-29T00:30:00Z, the night Europe/Paris moves from UTC+1 to UTC+2 at 01:00 UTC.
    const NIGHT: u64 = 1_774_744_200_000;

    #[test]
    fn ticks_follow_the_cron_in_its_time_zone() {
        let utc = Ticks::parse("0 3 * * *", None).unwrap();
        // 03:00 UTC that day.
        assert_eq!(utc.next_after(NIGHT), Some(NIGHT + 150 * 60_000));
        let paris = Ticks::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        // 03:00 in Paris is 01:00 UTC once summer time has begun.
        assert_eq!(paris.next_after(NIGHT), Some(NIGHT + 30 * 60_000));
        let every_two_seconds = Ticks::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(
            every_two_seconds.due(NIGHT, NIGHT + 7_000, NIGHT, CatchUp::Skip),
            (
                vec![NIGHT + 2_000, NIGHT + 4_000, NIGHT + 6_000],
                Some(NIGHT + 6_000)
            )
        );
    }

    #[test]
    fn bad_crons_and_zones_are_explained() {
        let error = Ticks::parse("61 * * * *", None).err().unwrap();
        assert!(
            error.contains("invalid cron expression \"61 * * * *\""),
            "{error}"
        );
        let error = Ticks::parse("* * * * *", Some("Mars/Olympus"))
            .err()
            .unwrap();
        assert!(
            error.contains("unknown time zone \"Mars/Olympus\""),
            "{error}"
        );
    }

    #[test]
    fn missed_ticks_get_one_job_or_none_and_on_time_ticks_one_each() {
        // Every 10 s; handled up to NIGHT; now is 40 s later.
        let ticks = Ticks::parse("*/10 * * * * *", None).unwrap();
        let (now, s) = (NIGHT + 40_000, |n: u64| NIGHT + n * 1000);
        // Ticking since 35 s: 10, 20 and 30 were missed.
        assert_eq!(
            ticks.due(NIGHT, now, s(35), CatchUp::Once),
            (vec![s(30), s(40)], Some(s(40)))
        );
        assert_eq!(
            ticks.due(NIGHT, now, s(35), CatchUp::Skip),
            (vec![s(40)], Some(s(40)))
        );
        // Ticking all along: none was missed.
        assert_eq!(
            ticks.due(NIGHT, now, s(5), CatchUp::Skip),
            (vec![s(10), s(20), s(30), s(40)], Some(s(40)))
        );
        // Ticking only from after the last one: all were missed.
        assert_eq!(
            ticks.due(NIGHT, now, s(50), CatchUp::Once),
            (vec![s(40)], Some(s(40)))
        );
        assert_eq!(
            ticks.due(NIGHT, now, s(50), CatchUp::Skip),
            (vec![], Some(s(40)))
        );
        // A year down catches up with one job, without walking the year's ticks.
        let year = 365 * 86_400 * 1000;
        let back = NIGHT + year + 1;
        let (once, latest) = ticks.due(NIGHT, back, back, CatchUp::Once);
        assert_eq!((once, latest), (vec![NIGHT + year], Some(NIGHT + year)));
        // Nothing due yet.
        assert_eq!(ticks.due(NIGHT, s(5), NIGHT, CatchUp::Once), (vec![], None));
    }
}
