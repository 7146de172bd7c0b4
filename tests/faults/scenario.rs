//! One scenario: a fresh pipeline, the workload, and the checks once the fault
//! is over: the target catches up by itself, equals the source row by row,
//! holds every change once, and nothing was dead-lettered.

use std::time::{Duration, Instant};

use crate::random::Rng;
use crate::support::binary::Running;
use crate::support::db::{self, Rows};
use crate::support::env::PG_SERVER;
use crate::support::{Deadline, Env, Pipeline, broker, secs};
use crate::workload::{self, Sent, Workload};

/// Changes each scenario's workload commits.
pub const CHANGES: u64 = 52_000;
/// The workload's pace, in changes per second.
pub const RATE: u64 = 2_500;
/// How long the pipeline may take to catch up once the workload and the fault are over.
const CATCH_UP: Duration = secs(300);
/// Logging of the pipeline's processes: debug for wasmcdc, so that skipped redeliveries show.
const LOG_FILTER: &str = "info,wasmcdc=debug,lapin=warn,sqlx=warn";
/// The supervisor's log line when a pipeline process stopped and will start again.
pub const RETRYING: &str = "retrying in";
/// The apply's log line for a message at or below the recorded offset.
pub const SKIPPED: &str = "skipping a message that is already applied";

/// How the pipeline runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One `wasmcdc run` process.
    Run,
    /// Separate `wasmcdc capture` and `wasmcdc apply` processes.
    Split,
}

/// A scenario in progress. Its processes are stopped before its databases are dropped.
pub struct Scenario {
    name: &'static str,
    run: Option<Running>,
    capture: Option<Running>,
    apply: Option<Running>,
    /// Processes killed earlier, kept for their logs.
    killed: Vec<Running>,
    workload: Option<Workload>,
    started: Instant,
    /// Chooses the moments of the faults.
    pub rng: Rng,
    /// The pipeline under test.
    pub pipeline: Pipeline,
    /// The source database and the pipeline's target.
    pub env: Env,
}

impl Scenario {
    /// A new pipeline over the workload's tables, streaming, with the workload running.
    pub async fn start(name: &'static str, mode: Mode) -> Scenario {
        let started = Instant::now();
        let mut rng = Rng::for_scenario(name);
        let env = Env::new(name).await;
        env.pg_exec(workload::SCHEMA).await;
        let pipeline = env.pipeline().tables(workload::TABLES);
        let mut scenario = Scenario {
            name,
            run: None,
            capture: None,
            apply: None,
            killed: Vec::new(),
            workload: None,
            started,
            rng: Rng::new(rng.next_u64()),
            pipeline,
            env,
        };
        match mode {
            Mode::Run => {
                scenario.run = Some(scenario.pipeline.spawn_command("run", Some(LOG_FILTER)));
                scenario.wait_streaming().await;
            }
            Mode::Split => {
                scenario.spawn_capture();
                scenario.wait_streaming().await;
                scenario.spawn_apply();
            }
        }
        let url = scenario.pg_url();
        scenario.workload = Some(Workload::start(&url, CHANGES, RATE, rng.next_u64()));
        scenario
    }

    /// The source database's URL.
    pub fn pg_url(&self) -> String {
        format!("{PG_SERVER}/{}", self.env.pg_db)
    }

    /// The running workload.
    pub fn workload(&self) -> &Workload {
        self.workload.as_ref().expect("the workload was started")
    }

    /// Waits until the workload has committed `fraction` of its changes.
    pub async fn at(&self, fraction: f64) {
        self.workload().reached((CHANGES as f64 * fraction) as u64).await;
    }

    /// Sleeps `low..=high` milliseconds, chosen at random.
    pub async fn pause(&mut self, low: u64, high: u64) {
        tokio::time::sleep(Duration::from_millis(self.rng.between(low, high))).await;
    }

    /// Spawns `wasmcdc capture`.
    pub fn spawn_capture(&mut self) {
        assert!(self.capture.is_none(), "a capture is running already");
        self.capture = Some(self.pipeline.spawn_command("capture", Some(LOG_FILTER)));
    }

    /// Spawns `wasmcdc apply`.
    pub fn spawn_apply(&mut self) {
        assert!(self.apply.is_none(), "an apply is running already");
        self.apply = Some(self.pipeline.spawn_command("apply", Some(LOG_FILTER)));
    }

    /// `kill -9` of the capture.
    pub fn kill_capture(&mut self) {
        let mut capture = self.capture.take().expect("a capture is running");
        capture.assert_alive();
        capture.kill();
        self.killed.push(capture);
    }

    /// Stops the apply with SIGTERM; it must drain and exit 0.
    pub async fn stop_apply(&mut self) {
        self.apply.take().expect("an apply is running").stop().await;
    }

    /// `kill -9` of the apply.
    pub fn kill_apply(&mut self) {
        let mut apply = self.apply.take().expect("an apply is running");
        apply.assert_alive();
        apply.kill();
        self.killed.push(apply);
    }

    /// Lines containing `needle` in the logs of every process of the scenario, killed ones included.
    pub fn log_lines(&self, needle: &str) -> usize {
        [&self.run, &self.capture, &self.apply]
            .into_iter()
            .flatten()
            .chain(&self.killed)
            .map(|p| p.log().lines().filter(|l| l.contains(needle)).count())
            .sum()
    }

    /// Waits until the logs hold at least `count` lines containing `needle`: evidence that the fault was noticed.
    pub async fn wait_log(&mut self, needle: &str, count: usize, what: &str) {
        let deadline = Deadline::new(format!("{count} log lines containing {needle:?} ({what})"), secs(60));
        loop {
            self.assert_alive();
            let seen = self.log_lines(needle);
            if seen >= count {
                return;
            }
            deadline.tick(&format!("{seen} such lines\n{}", self.log_tails())).await;
        }
    }

    /// Polls the `run` process's `/readyz` until it answers `want`; returns its body.
    pub async fn wait_ready(&mut self, want: u16, limit: Duration) -> String {
        let run = self.run.as_mut().expect("a scenario in Mode::Run");
        let url = run.metrics_url().await;
        crate::support::http::wait_ready(&url, run, want, limit).await
    }

    /// Fails the test if a pipeline process has exited.
    pub fn assert_alive(&mut self) {
        for p in [&mut self.run, &mut self.capture, &mut self.apply]
            .into_iter()
            .flatten()
        {
            p.assert_alive();
        }
    }

    /// The last lines of every pipeline process's log.
    pub fn log_tails(&self) -> String {
        [&self.run, &self.capture, &self.apply]
            .into_iter()
            .flatten()
            .map(Running::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Connects to the source again (after PostgreSQL restarted).
    pub async fn reconnect_source(&mut self) {
        let deadline = Deadline::new("PostgreSQL to accept connections again", secs(60));
        let url = self.pg_url();
        loop {
            let url = format!("{url}?options=-c%20TimeZone%3DUTC");
            if let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                self.env.pg = client;
                return;
            }
            deadline.tick(&"connection refused").await;
        }
    }

    /// Waits until the slot is active and past its consistent point.
    async fn wait_streaming(&mut self) {
        let deadline = Deadline::new(format!("replication slot '{}' to stream", self.pipeline.slot), secs(60));
        loop {
            self.assert_alive();
            let state = self
                .env
                .pg
                .query_opt(
                    "SELECT active, confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.pipeline.slot],
                )
                .await
                .expect("pg_replication_slots is readable")
                .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1)));
            if state == Some((true, true)) {
                return;
            }
            deadline
                .tick(&format!("slot (active, consistent): {state:?}\n{}", self.log_tails()))
                .await;
        }
    }

    /// Lets the workload finish, waits for the pipeline to catch up, checks the
    /// target, prints the scenario's line and stops the pipeline cleanly.
    pub async fn finish(mut self) {
        let sent = self.workload.take().expect("the workload was started").finish().await;
        let loaded = self.started.elapsed();
        eprintln!(
            "scenario {}: workload done after {:.0?}: {} transactions, {} changes; {} failed, {} in doubt, {} reconnects",
            self.name, loaded, sent.transactions, sent.changes, sent.failed, sent.in_doubt, sent.reconnects
        );
        self.reconnect_source_if_closed().await;
        let my = self.env.my(&self.pipeline).await;

        // Every transaction ends with its txlog row, and transactions apply whole:
        // once txlog matches, everything has arrived.
        let deadline = Deadline::new("the target's txlog to equal the source's", CATCH_UP);
        loop {
            self.assert_alive();
            let source = self.env.pg_rows(workload::SOURCE_LOGGED).await;
            let target = db::my_rows(&my, workload::TARGET_LOGGED).await;
            if source == target {
                break;
            }
            if deadline.expired() {
                let differences = self.differences(&my).await;
                let applied = count(&db::my_rows(&my, workload::TARGET_CHANGES).await);
                println!("{}", self.line(&sent, applied, differences));
                panic!(
                    "scenario {}: the target did not catch up within {CATCH_UP:?}: txlog (transactions, changes) \
                     source {source:?}, target {target:?}\n{}",
                    self.name,
                    self.log_tails()
                );
            }
            deadline.tick(&"").await;
        }
        let caught_up = self.started.elapsed();

        // Independent of `wasmcdc verify`: every table, row by row.
        let mut differences = self.differences(&my).await;
        let settle = Deadline::new("the target to equal the source row by row", secs(30));
        while differences > 0 && !settle.expired() {
            settle.tick(&differences).await;
            differences = self.differences(&my).await;
        }
        let applied = count(&db::my_rows(&my, workload::TARGET_CHANGES).await);
        let in_source = count(&self.env.pg_rows(workload::SOURCE_CHANGES).await);
        println!("{}", self.line(&sent, applied, differences));
        eprintln!(
            "scenario {}: caught up {:.0?} after the start, {:.0?} after the workload ended",
            self.name,
            caught_up,
            caught_up - loaded
        );
        eprintln!(
            "scenario {}: messages the apply skipped as already applied (redelivered or published again): {}",
            self.name,
            self.log_lines(SKIPPED)
        );
        let dlq = format!("wasmcdc.{}.dlq", self.pipeline.slot);
        let dead = broker::queue_depth(&dlq).await;
        assert_eq!(
            differences,
            0,
            "scenario {}: source and target differ by {differences} rows (details above)\n{}",
            self.name,
            self.log_tails()
        );
        assert_eq!(
            dead,
            0,
            "scenario {}: {dead} messages in {dlq}: a change was refused, for example applied twice\n{}",
            self.name,
            self.log_tails()
        );
        assert_eq!(
            in_source, sent.changes,
            "the source's rows account for other changes than the workload made"
        );
        assert_eq!(
            applied, sent.changes,
            "scenario {}: changes applied differ from changes sent",
            self.name
        );
        let (status, report) = self.pipeline.verify().await;
        assert!(
            status.success() && report.contains("equal"),
            "scenario {}: wasmcdc verify found differences ({status}):\n{report}",
            self.name
        );
        my.close().await;

        for p in [self.run.take(), self.capture.take(), self.apply.take()]
            .into_iter()
            .flatten()
        {
            p.stop().await;
        }
    }

    fn line(&self, sent: &Sent, applied: u64, differences: usize) -> String {
        format!(
            "scenario {}: changes sent {}, changes applied {applied}, differences {differences}",
            self.name, sent.changes
        )
    }

    /// The source's connection is gone after a restart of PostgreSQL.
    async fn reconnect_source_if_closed(&mut self) {
        if self.env.pg.is_closed() || self.env.pg.simple_query("SELECT 1").await.is_err() {
            self.reconnect_source().await;
        }
    }

    /// Rows in one side and not the other, over every table; prints the first of them.
    async fn differences(&self, my: &sqlx::MySqlPool) -> usize {
        let mut total = 0;
        for (table, source_sql, target_sql) in workload::COMPARED {
            let source = self.env.pg_rows(source_sql).await;
            let target = db::my_rows(my, target_sql).await;
            let (only_source, only_target) = only_in_each(&source, &target);
            if !only_source.is_empty() || !only_target.is_empty() {
                eprintln!(
                    "scenario {}: table {table}: {} rows in the source, {} in the target; only in the source \
                     ({}): {:?}; only in the target ({}): {:?}",
                    self.name,
                    source.len(),
                    target.len(),
                    only_source.len(),
                    &only_source[..only_source.len().min(5)],
                    only_target.len(),
                    &only_target[..only_target.len().min(5)],
                );
            }
            total += only_source.len() + only_target.len();
        }
        total
    }
}

/// Rows (with multiplicity) found only in `a`, and only in `b`; both are sorted.
fn only_in_each(a: &Rows, b: &Rows) -> (Rows, Rows) {
    let (mut i, mut j) = (0, 0);
    let (mut only_a, mut only_b) = (Vec::new(), Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => {
                only_a.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                only_b.push(b[j].clone());
                j += 1;
            }
        }
    }
    only_a.extend_from_slice(&a[i..]);
    only_b.extend_from_slice(&b[j..]);
    (only_a, only_b)
}

fn count(rows: &Rows) -> u64 {
    rows.first()
        .and_then(|r| r.first())
        .and_then(|c| c.as_deref())
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("a count, not {rows:?}"))
}
