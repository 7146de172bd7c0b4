//! What the status page and `/readyz` show: each stage's state, the figures
//! recorded beside the Prometheus metrics, and a ring of recent samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How long a stage may retry in place (a lock wait, MariaDB briefly away) before it is not ready.
pub const FAILING_LIMIT: Duration = Duration::from_secs(5);
/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes.
const SAMPLES: usize = 180;
/// Dead-letter reasons kept.
const LATEST_DEAD_LETTERS: usize = 10;

/// A part of the pipeline that a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Slot → transforms → RabbitMQ.
    Capture,
    /// RabbitMQ → MariaDB.
    Apply,
}

impl Stage {
    /// The label value in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Apply => "apply",
        }
    }
}

/// What a stage is doing.
#[derive(Clone, Debug)]
enum State {
    Starting,
    Copying,
    Streaming,
    /// Failing since `since`: reconnecting (the attempt stopped), or retrying a write in place.
    Retrying {
        reason: String,
        since: Instant,
        reconnecting: bool,
    },
}

/// The process's state, shared by the stages, the sampler and the HTTP server.
pub struct Status {
    pipeline: String,
    tables: Vec<String>,
    stages: Mutex<Vec<(Stage, State, Instant)>>,
    figures: Mutex<Figures>,
    draining: std::sync::atomic::AtomicBool,
}

/// Counts by table, as the page shows them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TableFigures {
    /// Changes read from the slot.
    pub captured: u64,
    /// Changes published to RabbitMQ (after the transforms).
    pub published: u64,
    /// Changes committed to MariaDB.
    pub applied: u64,
    /// Changes sent to the dead-letter queue.
    pub dead_lettered: u64,
    /// Rows copied by the initial copy.
    pub copied: u64,
    /// Rows the initial copy found to copy.
    pub copy_total: Option<u64>,
    /// Rows per second the initial copy writes.
    pub copy_rows_per_second: Option<f64>,
    /// Seconds the initial copy still needs at that rate.
    pub copy_eta_seconds: Option<f64>,
}

/// Totals over every table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Changes read from the slot.
    pub captured: u64,
    /// Changes published.
    pub published: u64,
    /// Changes committed to MariaDB.
    pub applied: u64,
    /// Source transactions committed to MariaDB.
    pub transactions: u64,
    /// Changes dead-lettered by this process.
    pub dead_lettered: u64,
    /// Transform calls that failed.
    pub transform_failures: u64,
    /// Rows copied.
    pub copied: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Module {
    module: String,
    hash: String,
}

#[derive(Clone, Debug, Serialize)]
struct DeadLetterNote {
    at: u64,
    stage: String,
    table: String,
    reason: String,
}

#[derive(Clone, Debug, Serialize)]
struct Sample {
    t: u64,
    captured: u64,
    applied: u64,
    slot_lag_bytes: Option<i64>,
    queue_messages: Option<u32>,
    replication_lag_seconds: Option<f64>,
}

/// The figures behind the page, under one lock.
#[derive(Debug, Default)]
pub(super) struct Figures {
    chain: Vec<Module>,
    tables: BTreeMap<String, TableFigures>,
    totals: Totals,
    dead_letters: VecDeque<DeadLetterNote>,
    slot_lag_bytes: Option<i64>,
    queue_messages: Option<u32>,
    dead_letter_queue_messages: Option<u32>,
    replication_lag_seconds: Option<f64>,
    /// The largest replication lag since the last sample.
    lag_window: Option<f64>,
    samples: VecDeque<Sample>,
}

static STATUS: OnceLock<Status> = OnceLock::new();

/// The process's status, once serving has started.
pub(super) fn get() -> Option<&'static Status> {
    STATUS.get()
}

/// Sets up the status of a process running `stages`; false if it was set up already.
pub(super) fn init(pipeline: &str, tables: Vec<String>, stages: &[Stage]) -> bool {
    let now = Instant::now();
    STATUS
        .set(Status {
            pipeline: pipeline.to_owned(),
            tables,
            stages: Mutex::new(stages.iter().map(|s| (*s, State::Starting, now)).collect()),
            figures: Mutex::new(Figures::default()),
            draining: false.into(),
        })
        .is_ok()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Status {
    /// Moves every stage of the process to `state`; returns the stages.
    fn set_all(&self, state: &State) -> Vec<Stage> {
        let mut stages = lock(&self.stages);
        let now = Instant::now();
        for (_, s, at) in stages.iter_mut() {
            *s = state.clone();
            *at = now;
        }
        stages.iter().map(|(stage, _, _)| *stage).collect()
    }

    /// Every stage came up.
    pub(super) fn up(&self) -> Vec<Stage> {
        self.set_all(&State::Streaming)
    }

    /// The initial copy is running.
    pub(super) fn copying(&self) -> Vec<Stage> {
        if lock(&self.stages).iter().all(|(_, s, _)| matches!(s, State::Copying)) {
            return Vec::new();
        }
        self.set_all(&State::Copying)
    }

    /// The attempt stopped with `reason`, and the process reconnects after a delay.
    pub(super) fn reconnecting(&self, reason: String) -> Vec<Stage> {
        let mut stages = lock(&self.stages);
        let now = Instant::now();
        for (_, state, at) in stages.iter_mut() {
            let since = match state {
                State::Retrying { since, .. } => *since,
                _ => now,
            };
            *state = State::Retrying {
                reason: reason.clone(),
                since,
                reconnecting: true,
            };
            *at = now;
        }
        stages.iter().map(|(stage, _, _)| *stage).collect()
    }

    /// `stage` retries a write in place after `reason`.
    pub(super) fn retrying(&self, stage: Stage, reason: String) {
        let now = Instant::now();
        for (_, state, at) in lock(&self.stages).iter_mut().filter(|(s, _, _)| *s == stage) {
            let since = match state {
                State::Retrying { since, .. } => *since,
                _ => {
                    *at = now;
                    now
                }
            };
            *state = State::Retrying {
                reason: reason.clone(),
                since,
                reconnecting: false,
            };
        }
    }

    /// `stage`'s retried write succeeded.
    pub(super) fn recovered(&self, stage: Stage) {
        for (_, state, at) in lock(&self.stages).iter_mut().filter(|(s, _, _)| *s == stage) {
            if matches!(state, State::Retrying { .. }) {
                *state = State::Streaming;
                *at = Instant::now();
            }
        }
    }

    /// The process is stopping.
    pub(super) fn drain(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this process runs `stage`.
    pub(super) fn has(&self, stage: Stage) -> bool {
        lock(&self.stages).iter().any(|(s, _, _)| *s == stage)
    }

    /// Whether a stage counts as up in `wasmcdc_stage_up`.
    pub(super) fn stage_up(&self, stage: Stage) -> bool {
        lock(&self.stages)
            .iter()
            .filter(|(s, _, _)| *s == stage)
            .all(|(_, state, _)| stage_ready(state).is_ok())
    }

    /// `Ok` when ready; otherwise why not, one line per stage.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            why.push("draining after SIGTERM or SIGINT".to_owned());
        }
        for (stage, state, _) in lock(&self.stages).iter() {
            if let Err(e) = stage_ready(state) {
                why.push(format!("{}: {e}", stage.label()));
            }
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Figures) -> T) -> T {
        f(&mut lock(&self.figures))
    }

    /// Records a sample; called every [`SAMPLE_EVERY`].
    pub(super) fn sample(&self) {
        self.with(|f| {
            let sample = Sample {
                t: unix_now(),
                captured: f.totals.captured,
                applied: f.totals.applied,
                slot_lag_bytes: f.slot_lag_bytes,
                queue_messages: f.queue_messages,
                replication_lag_seconds: f.lag_window.take(),
            };
            if f.samples.len() == SAMPLES {
                f.samples.pop_front();
            }
            f.samples.push_back(sample);
        });
    }

    /// Everything the status page shows, as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let ready = self.readiness();
        let stages: Vec<serde_json::Value> = lock(&self.stages)
            .iter()
            .map(|(stage, state, at)| {
                let (name, reason, since) = match state {
                    State::Starting => ("starting", None, *at),
                    State::Copying => ("copying", None, *at),
                    State::Streaming => ("streaming", None, *at),
                    State::Retrying {
                        reason,
                        since,
                        reconnecting,
                    } => (
                        if *reconnecting { "reconnecting" } else { "retrying" },
                        Some(reason.clone()),
                        *since,
                    ),
                };
                serde_json::json!({
                    "stage": stage,
                    "state": name,
                    "reason": reason,
                    "for_seconds": since.elapsed().as_secs(),
                })
            })
            .collect();
        self.with(|f| {
            let per_table: Vec<serde_json::Value> = f
                .tables
                .iter()
                .map(|(name, t)| {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["table"] = name.clone().into();
                    v
                })
                .collect();
            serde_json::json!({
                "pipeline": self.pipeline,
                "tables": self.tables,
                "ready": ready.is_ok(),
                "not_ready": ready.err().unwrap_or_default(),
                "stages": stages,
                "chain": f.chain,
                "totals": f.totals,
                "per_table": per_table,
                "dead_letters": {
                    "queue_messages": f.dead_letter_queue_messages,
                    "latest": f.dead_letters,
                },
                "slot_lag_bytes": f.slot_lag_bytes,
                "queue_messages": f.queue_messages,
                "replication_lag_seconds": f.replication_lag_seconds,
                "sample_seconds": SAMPLE_EVERY.as_secs(),
                "samples": f.samples,
            })
        })
    }
}

fn stage_ready(state: &State) -> Result<(), String> {
    match state {
        State::Starting => Err("starting: not connected yet".into()),
        State::Copying | State::Streaming => Ok(()),
        State::Retrying {
            reason,
            reconnecting: true,
            ..
        } => Err(format!("reconnecting after: {reason}")),
        State::Retrying { reason, since, .. } if since.elapsed() >= FAILING_LIMIT => {
            Err(format!("failing for {} s: {reason}", since.elapsed().as_secs()))
        }
        State::Retrying { .. } => Ok(()),
    }
}

impl Figures {
    /// The figures of `table`.
    pub(super) fn table(&mut self, table: &str) -> &mut TableFigures {
        if !self.tables.contains_key(table) {
            self.tables.insert(table.to_owned(), TableFigures::default());
        }
        self.tables.get_mut(table).expect("inserted above")
    }

    pub(super) fn totals(&mut self) -> &mut Totals {
        &mut self.totals
    }

    pub(super) fn set_chain(&mut self, modules: Vec<(String, String)>) {
        self.chain = modules
            .into_iter()
            .map(|(module, hash)| Module { module, hash })
            .collect();
    }

    pub(super) fn swap_hashes(&mut self, hashes: &[String]) {
        for (m, h) in self.chain.iter_mut().zip(hashes) {
            m.hash = h.clone();
        }
    }

    pub(super) fn dead_letter(&mut self, stage: &str, table: &str, reason: &str) {
        if self.dead_letters.len() == LATEST_DEAD_LETTERS {
            self.dead_letters.pop_front();
        }
        self.dead_letters.push_back(DeadLetterNote {
            at: unix_now(),
            stage: stage.to_owned(),
            table: table.to_owned(),
            reason: reason.to_owned(),
        });
    }

    pub(super) fn replication_lag(&mut self, seconds: f64) {
        self.replication_lag_seconds = Some(seconds);
        self.lag_window = Some(self.lag_window.map_or(seconds, |m| m.max(seconds)));
    }

    pub(super) fn servers(&mut self, slot_lag: Option<i64>, depths: Option<(u32, u32)>) {
        self.slot_lag_bytes = slot_lag;
        self.queue_messages = depths.map(|d| d.0);
        self.dead_letter_queue_messages = depths.map(|d| d.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_retried_in_place_is_ready_until_the_limit() {
        let retrying = |secs: u64| State::Retrying {
            reason: "lock wait".into(),
            since: Instant::now() - Duration::from_secs(secs),
            reconnecting: false,
        };
        assert!(stage_ready(&retrying(1)).is_ok());
        let why = stage_ready(&retrying(FAILING_LIMIT.as_secs() + 1)).expect_err("failing too long");
        assert!(why.contains("lock wait"), "{why}");
        let reconnecting = State::Retrying {
            reason: "RabbitMQ closed the connection".into(),
            since: Instant::now(),
            reconnecting: true,
        };
        assert!(stage_ready(&reconnecting).is_err());
        assert!(stage_ready(&State::Starting).is_err());
        assert!(stage_ready(&State::Copying).is_ok());
    }
}
