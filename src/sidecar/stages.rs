//! Where an execution's time goes: the instant it reached each stage, from
//! the request that submitted it to the answer that carried its result, and
//! one histogram per step between consecutive stages (`/metrics`, and the
//! fields of the execution's `finished` log line).
//!
//! The marks are kept in memory only while the execution is open; the
//! final commit closes its timeline. A waiter that answers after the commit
//! adds the last step (`committed → answered`) from the instant the
//! completion carried.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::jupyter::Channel;

/// The stages, in the order an execution passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The request was parsed and checked.
    Accepted,
    /// Its row is committed (`queued`).
    Enqueued,
    /// The dispatch is committed and the request sent to the kernel.
    Dispatched,
    /// The kernel said `busy` for it.
    Started,
    /// The kernel's `execute_reply`.
    Replied,
    /// The kernel's `idle` for it: every output is in.
    Idle,
    /// The final state is committed.
    Committed,
    /// A waiting client was answered.
    Answered,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Accepted,
        Stage::Enqueued,
        Stage::Dispatched,
        Stage::Started,
        Stage::Replied,
        Stage::Idle,
        Stage::Committed,
        Stage::Answered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Accepted => "accepted",
            Stage::Enqueued => "enqueued",
            Stage::Dispatched => "dispatched",
            Stage::Started => "started",
            Stage::Replied => "replied",
            Stage::Idle => "idle",
            Stage::Committed => "committed",
            Stage::Answered => "answered",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The stage a kernel message for the running execution marks, if any.
    pub fn of_message(channel: Channel, msg_type: &str, execution_state: Option<&str>) -> Option<Stage> {
        match (channel, msg_type, execution_state) {
            (Channel::Iopub, "status", Some("busy")) => Some(Stage::Started),
            (Channel::Iopub, "status", Some("idle")) => Some(Stage::Idle),
            (Channel::Shell, "execute_reply", _) => Some(Stage::Replied),
            _ => None,
        }
    }
}

/// One execution's marks: the first instant it reached each stage.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    at: [Option<Instant>; 8],
}

impl Timeline {
    /// Records `stage` at `now`, unless it was reached before.
    pub fn mark(&mut self, stage: Stage, now: Instant) {
        self.at[stage.index()].get_or_insert(now);
    }

    pub fn at(&self, stage: Stage) -> Option<Instant> {
        self.at[stage.index()]
    }

    /// Each step between consecutive stages that were both reached, named
    /// by the stage it ends at; a stage that was not reached (an execution
    /// cancelled while queued never starts) joins its neighbours' step.
    /// Reply and idle come in either order (two sockets): a step that
    /// would go back in time counts as zero.
    pub fn steps(&self) -> Vec<(Stage, Duration)> {
        let mut out = Vec::new();
        let mut prev: Option<Instant> = None;
        for stage in Stage::ALL {
            let Some(t) = self.at(stage) else { continue };
            if let Some(p) = prev {
                out.push((stage, t.saturating_duration_since(p)));
            }
            prev = Some(prev.map_or(t, |p| p.max(t)));
        }
        out
    }

    /// Accepted to the last stage reached.
    pub fn total(&self) -> Option<Duration> {
        let first = self.at.iter().flatten().min()?;
        let last = self.at.iter().flatten().max()?;
        Some(last.saturating_duration_since(*first))
    }

    /// The steps as `stage=µs` pairs for a log line.
    pub fn describe(&self) -> String {
        self.steps()
            .iter()
            .map(|(s, d)| format!("{}={}", s.as_str(), d.as_micros()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The stage the step ends at.
    pub stage: &'static str,
}

/// Most open timelines kept: executions queued beyond it are not timed
/// (their rows are; only the breakdown is left out).
const MAX_OPEN: usize = 65_536;

/// The open timelines and the step histograms.
pub struct Stages {
    open: Mutex<HashMap<String, Timeline>>,
    steps: Family<StepLabel, Histogram>,
    totals: Histogram,
}

impl Default for Stages {
    fn default() -> Self {
        fn buckets() -> Histogram {
            // 50 µs to about 26 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_05, 2.0, 20,
            ))
        }
        Stages {
            open: Mutex::new(HashMap::new()),
            steps: Family::new_with_constructor(buckets),
            totals: buckets(),
        }
    }
}

impl Stages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Timeline>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens `id`'s timeline with what came before its row existed.
    pub fn open(&self, id: &str, timeline: Timeline) {
        let mut open = self.lock();
        if open.len() < MAX_OPEN {
            open.insert(id.to_string(), timeline);
        }
    }

    pub fn mark(&self, id: &str, stage: Stage) {
        let now = Instant::now();
        if let Some(t) = self.lock().get_mut(id) {
            t.mark(stage, now);
        }
    }

    /// Marks the final commit, closes the timeline and observes its steps;
    /// the timeline, for the log line.
    pub fn committed(&self, id: &str) -> Option<Timeline> {
        let now = Instant::now();
        let mut t = self.lock().remove(id)?;
        t.mark(Stage::Committed, now);
        for (stage, d) in t.steps() {
            self.observe(stage, d);
        }
        if let Some(total) = t.total() {
            self.totals.observe(total.as_secs_f64());
        }
        Some(t)
    }

    /// A waiter answered, `since` the commit.
    pub fn answered(&self, since: Instant) {
        self.observe(Stage::Answered, since.elapsed());
    }

    fn observe(&self, stage: Stage, d: Duration) {
        self.steps
            .get_or_create(&StepLabel {
                stage: stage.as_str(),
            })
            .observe(d.as_secs_f64());
    }

    /// Timelines still open (executions queued or running).
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// For `/metrics`: the per-step histograms and the accepted → committed total.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "notebook_execution_step_seconds",
            "Time from the previous stage of an execution to this one (accepted, enqueued, dispatched, started, replied, idle, committed, answered)",
            self.steps.clone(),
        );
        registry.register(
            "notebook_execution_seconds",
            "Time from an execution's acceptance to its final commit",
            self.totals.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steps_are_named_by_the_stage_they_end_at() {
        let t0 = Instant::now();
        let mut t = Timeline::default();
        t.mark(Stage::Accepted, t0);
        t.mark(Stage::Enqueued, t0 + ms(1));
        t.mark(Stage::Dispatched, t0 + ms(3));
        t.mark(Stage::Started, t0 + ms(4));
        t.mark(Stage::Replied, t0 + ms(8));
        t.mark(Stage::Idle, t0 + ms(9));
        t.mark(Stage::Committed, t0 + ms(10));
        assert_eq!(
            t.steps(),
            vec![
                (Stage::Enqueued, ms(1)),
                (Stage::Dispatched, ms(2)),
                (Stage::Started, ms(1)),
                (Stage::Replied, ms(4)),
                (Stage::Idle, ms(1)),
                (Stage::Committed, ms(1)),
            ]
        );
        assert_eq!(t.total(), Some(ms(10)));
        assert_eq!(
            t.describe(),
            "enqueued=1000 dispatched=2000 started=1000 replied=4000 idle=1000 committed=1000"
        );
    }

    #[test]
    fn a_stage_not_reached_joins_its_neighbours_and_an_idle_before_the_reply_counts_zero() {
        let t0 = Instant::now();
        let mut t = Timeline::default();
        t.mark(Stage::Accepted, t0);
        t.mark(Stage::Enqueued, t0 + ms(1));
        t.mark(Stage::Idle, t0 + ms(5));
        t.mark(Stage::Replied, t0 + ms(6));
        t.mark(Stage::Committed, t0 + ms(7));
        // Idle came first: replied → idle is zero, and idle → committed
        // runs from the later of the two.
        assert_eq!(
            t.steps(),
            vec![
                (Stage::Enqueued, ms(1)),
                (Stage::Replied, ms(5)),
                (Stage::Idle, Duration::ZERO),
                (Stage::Committed, ms(1)),
            ]
        );
    }

    #[test]
    fn the_first_mark_of_a_stage_stands() {
        let t0 = Instant::now();
        let mut t = Timeline::default();
        t.mark(Stage::Started, t0);
        t.mark(Stage::Started, t0 + ms(5));
        assert_eq!(t.at(Stage::Started), Some(t0));
    }

    #[test]
    fn messages_mark_started_replied_and_idle() {
        assert_eq!(
            Stage::of_message(Channel::Iopub, "status", Some("busy")),
            Some(Stage::Started)
        );
        assert_eq!(
            Stage::of_message(Channel::Iopub, "status", Some("idle")),
            Some(Stage::Idle)
        );
        assert_eq!(
            Stage::of_message(Channel::Shell, "execute_reply", None),
            Some(Stage::Replied)
        );
        assert_eq!(Stage::of_message(Channel::Iopub, "stream", None), None);
    }

    #[test]
    fn the_commit_closes_the_timeline_and_an_unopened_one_is_not_timed() {
        let s = Stages::default();
        let mut t = Timeline::default();
        t.mark(Stage::Accepted, Instant::now());
        s.open("a", t);
        s.mark("a", Stage::Enqueued);
        s.mark("b", Stage::Enqueued);
        assert_eq!(s.open_count(), 1);
        let closed = s.committed("a").expect("a was open");
        assert!(closed.at(Stage::Committed).is_some());
        assert_eq!(s.open_count(), 0);
        assert!(s.committed("b").is_none());
    }
}
