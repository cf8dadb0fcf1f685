//! Progress reports, partial results and cancellation.
//!
//! Every call here becomes an event on the job's Server-Sent Events stream, so report at
//! the pace of real work (after an LLM round, after a chunk), not in a tight loop: the host
//! fails a job that exceeds its event rate limit.
//!
//! For jobs shaped as "N items, each through S steps", use [`Progress`]:
//!
//! ```no_run
//! use kiln_plugin::progress::Progress;
//!
//! let mut progress = Progress::new(3, 6); // 3 characters x 6 steps
//! progress.step_done("Generated names"); // 16%, "Generated names (3/3)"
//! ```

use serde::Serialize;

use crate::host as raw;

/// Reports overall progress of this attempt, 0 to 100, with a short message naming the
/// stage ("Generated backstories (3/3)"). Values above 100 count as 100, and progress never
/// goes down within an attempt (the host raises a lower value to the last one).
pub fn report(percent: u8, message: impl AsRef<str>) {
    raw::report(percent.min(100), message.as_ref());
}

/// Emits one finished item as a `partial` event `{name, data}` so clients can show it
/// before the job ends. `name` labels the item ("character-2"); `data` is serialised to
/// JSON. A value that cannot be serialised is logged at error level and not emitted.
pub fn partial(name: impl AsRef<str>, data: &impl Serialize) {
    match serde_json::to_string(data) {
        Ok(json) => raw::partial(name.as_ref(), &json),
        Err(e) => crate::log::error(format!(
            "partial {:?} not emitted: cannot serialise it: {e}",
            name.as_ref()
        )),
    }
}

/// True once a client has asked to cancel this job. Check it between long steps and stop
/// early (the host also stops a cancelled job on its own, so this is about stopping
/// cleanly and not paying for more LLM calls).
pub fn cancelled() -> bool {
    raw::cancelled()
}

/// Formats a stage message the way Kiln's bundled plugins do: `"{stage} ({done}/{total})"`,
/// e.g. `stage_message("Generated backstories", 3, 3)` is `"Generated backstories (3/3)"`.
pub fn stage_message(stage: &str, done: usize, total: usize) -> String {
    format!("{stage} ({done}/{total})")
}

/// Tracks progress over `items × steps` units of work and turns it into percent.
///
/// `percent = done * 100 / total`, capped at 100; with nothing to do (`total == 0`) it is
/// 100. [`Progress::advance`] and [`Progress::step_done`] report to the host;
/// [`Progress::add`] and [`Progress::percent`] are pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    items: u64,
    total: u64,
    done: u64,
}

impl Progress {
    /// A tracker for `items` items that each go through `steps` steps (use `steps = 1` for
    /// a flat count of units).
    pub fn new(items: usize, steps: usize) -> Self {
        let items = items as u64;
        Self {
            items,
            total: items.saturating_mul(steps as u64),
            done: 0,
        }
    }

    /// Units of work in total (`items × steps`).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Units of work done so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// The current percentage: `done * 100 / total`, capped at 100 (100 when `total` is 0).
    pub fn percent(&self) -> u8 {
        if self.total == 0 {
            return 100;
        }
        let percent = self.done.saturating_mul(100) / self.total;
        percent.min(100) as u8
    }

    /// Records `n` more units done without reporting, and returns the new percentage.
    pub fn add(&mut self, n: u64) -> u8 {
        self.done = self.done.saturating_add(n);
        self.percent()
    }

    /// Records `n` more units done and reports the new percentage with `message`.
    pub fn advance(&mut self, n: u64, message: impl AsRef<str>) {
        let percent = self.add(n);
        report(percent, message);
    }

    /// Records one step done for every item and reports it as `"{stage} (N/N)"`, e.g.
    /// `step_done("Generated backstories")` with 3 items reports "Generated backstories
    /// (3/3)".
    pub fn step_done(&mut self, stage: &str) {
        let message = self.step_message(stage);
        self.advance(self.items, message);
    }

    /// The message [`Progress::step_done`] reports for `stage`.
    pub fn step_message(&self, stage: &str) -> String {
        let items = self.items as usize;
        stage_message(stage, items, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_over_items_times_steps() {
        let mut p = Progress::new(3, 6);
        assert_eq!(p.total(), 18);
        assert_eq!(p.percent(), 0);
        assert_eq!(p.add(3), 16); // 300 / 18 = 16.67 -> 16
        assert_eq!(p.add(3), 33);
        assert_eq!(p.add(9), 83);
        assert_eq!(p.add(3), 100);
        assert_eq!(p.done(), 18);
    }

    #[test]
    fn percent_is_capped_at_100() {
        let mut p = Progress::new(2, 2);
        assert_eq!(p.add(10), 100);
        assert_eq!(p.add(u64::MAX), 100);
    }

    #[test]
    fn empty_work_is_complete() {
        assert_eq!(Progress::new(0, 6).percent(), 100);
        assert_eq!(Progress::new(5, 0).percent(), 100);
    }

    #[test]
    fn single_units_round_down() {
        let mut p = Progress::new(12, 1);
        let percents: Vec<u8> = (0..12).map(|_| p.add(1)).collect();
        assert_eq!(percents[0], 8);
        assert_eq!(percents[3], 33);
        assert_eq!(percents[11], 100);
        assert!(percents.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn stage_messages() {
        assert_eq!(
            stage_message("Generated backstories", 3, 3),
            "Generated backstories (3/3)"
        );
        assert_eq!(
            Progress::new(2, 4).step_message("Generated ideologies"),
            "Generated ideologies (2/2)"
        );
        assert_eq!(
            stage_message("Summarised chunks", 4, 12),
            "Summarised chunks (4/12)"
        );
    }
}
