//! Every metric, by name, in one place: its registration and the functions the
//! stages call to record it (one line at each call site). Each function also
//! records the same figure for the status page, so the page and `/metrics` agree.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Instant;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};

use super::status::{self, Stage};
use crate::catalog::TableName;
use crate::change::{Change, Message, Op, Transaction};
use crate::queue::DeadLetter;

/// Changes read from the slot, by source table and operation.
pub const CAPTURED: &str = "wasmcdc_changes_captured_total";
/// Changes published to RabbitMQ after the transforms, by table and operation.
pub const PUBLISHED: &str = "wasmcdc_changes_published_total";
/// Changes committed to MariaDB, by table and operation.
pub const APPLIED: &str = "wasmcdc_changes_applied_total";
/// Changes sent to the dead-letter queue, by stage, table and operation.
pub const DEAD_LETTERED: &str = "wasmcdc_changes_dead_lettered_total";
/// Source transactions committed to MariaDB.
pub const TRANSACTIONS_APPLIED: &str = "wasmcdc_transactions_applied_total";
/// Bytes of WAL the slot holds that the pipeline has not confirmed.
pub const SLOT_LAG: &str = "wasmcdc_slot_lag_bytes";
/// Seconds from a transaction's commit in PostgreSQL to its commit in MariaDB.
pub const REPLICATION_LAG: &str = "wasmcdc_replication_lag_seconds";
/// Messages ready in the pipeline's queue.
pub const QUEUE_MESSAGES: &str = "wasmcdc_queue_messages";
/// Messages in the pipeline's dead-letter queue.
pub const DEAD_LETTER_QUEUE_MESSAGES: &str = "wasmcdc_dead_letter_queue_messages";
/// Seconds per call of the transform chain (on a batch of a transaction's changes), by module hash.
pub const TRANSFORM_CALL: &str = "wasmcdc_transform_call_seconds";
/// Transform calls that failed, by kind (rejected, timeout, out_of_memory, trap) and module hash.
pub const TRANSFORM_FAILURES: &str = "wasmcdc_transform_failures_total";
/// Source transactions per MariaDB transaction.
pub const GROUP_TRANSACTIONS: &str = "wasmcdc_apply_group_transactions";
/// Changes per MariaDB transaction.
pub const GROUP_CHANGES: &str = "wasmcdc_apply_group_changes";
/// Seconds per MariaDB transaction, from BEGIN to the end of COMMIT.
pub const COMMIT: &str = "wasmcdc_apply_commit_seconds";
/// Writes retried in place after a transient failure, by component.
pub const RETRIES: &str = "wasmcdc_retries_total";
/// Restarts of a stage, with new connections, after it stopped on a failure, by component.
pub const RECONNECTS: &str = "wasmcdc_reconnects_total";
/// 1 while a stage is connected and not failing for longer than the limit.
pub const STAGE_UP: &str = "wasmcdc_stage_up";
/// Rows the initial copy has written, by table.
pub const COPY_ROWS: &str = "wasmcdc_copy_rows_total";
/// Rows the initial copy found to copy, by table.
pub const COPY_ROWS_EXPECTED: &str = "wasmcdc_copy_rows_expected";
/// Rows per second the initial copy writes, by table.
pub const COPY_RATE: &str = "wasmcdc_copy_rows_per_second";
/// Seconds the initial copy of a table needs at its rate so far, by table.
pub const COPY_ETA: &str = "wasmcdc_copy_eta_seconds";

/// The recorder, with histogram buckets, and every metric described.
pub(super) fn recorder() -> Result<PrometheusRecorder, BuildError> {
    let buckets = |builder: PrometheusBuilder, name: &str, values: &[f64]| {
        builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
    };
    let builder = PrometheusBuilder::new();
    let builder = buckets(
        builder,
        REPLICATION_LAG,
        &[
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        ],
    )?;
    let builder = buckets(
        builder,
        TRANSFORM_CALL,
        &[
            0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
        ],
    )?;
    let builder = buckets(
        builder,
        COMMIT,
        &[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ],
    )?;
    let sizes = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0];
    let builder = buckets(builder, GROUP_TRANSACTIONS, &sizes)?;
    let builder = buckets(builder, GROUP_CHANGES, &sizes)?;
    let recorder = builder.build_recorder();
    for (name, help) in [
        (
            CAPTURED,
            "Changes read from the replication slot, by source table and operation.",
        ),
        (
            PUBLISHED,
            "Changes published to RabbitMQ after the transforms, by table and operation.",
        ),
        (APPLIED, "Changes committed to MariaDB, by table and operation."),
        (
            DEAD_LETTERED,
            "Changes sent to the dead-letter queue, by stage, table and operation.",
        ),
        (TRANSACTIONS_APPLIED, "Source transactions committed to MariaDB."),
        (
            TRANSFORM_FAILURES,
            "Transform calls that failed, by kind and module hash.",
        ),
        (
            RETRIES,
            "Writes retried in place after a transient failure, by component.",
        ),
        (
            RECONNECTS,
            "Restarts of a stage, with new connections, after a failure, by component.",
        ),
        (COPY_ROWS, "Rows the initial copy has written, by table."),
    ] {
        describe_counter!(name, help);
    }
    for (name, unit, help) in [
        (
            SLOT_LAG,
            Unit::Bytes,
            "WAL held by the replication slot that the pipeline has not confirmed.",
        ),
        (QUEUE_MESSAGES, Unit::Count, "Messages ready in the pipeline's queue."),
        (
            DEAD_LETTER_QUEUE_MESSAGES,
            Unit::Count,
            "Messages in the pipeline's dead-letter queue.",
        ),
        (
            STAGE_UP,
            Unit::Count,
            "1 while the stage is connected and not failing for longer than 5 s.",
        ),
        (
            COPY_ROWS_EXPECTED,
            Unit::Count,
            "Rows the initial copy found to copy, by table.",
        ),
        (
            COPY_RATE,
            Unit::CountPerSecond,
            "Rows per second the initial copy writes, by table, since its copy started.",
        ),
        (
            COPY_ETA,
            Unit::Seconds,
            "Seconds the initial copy of the table still needs at its rate so far.",
        ),
    ] {
        describe_gauge!(name, unit, help);
    }
    for (name, unit, help) in [
        (
            REPLICATION_LAG,
            Unit::Seconds,
            "From a transaction's commit in PostgreSQL to its commit in MariaDB.",
        ),
        (
            TRANSFORM_CALL,
            Unit::Seconds,
            "One change through the transform chain, by module hash.",
        ),
        (
            GROUP_TRANSACTIONS,
            Unit::Count,
            "Source transactions per MariaDB transaction.",
        ),
        (GROUP_CHANGES, Unit::Count, "Changes per MariaDB transaction."),
        (
            COMMIT,
            Unit::Seconds,
            "One MariaDB transaction, from BEGIN to the end of COMMIT.",
        ),
    ] {
        describe_histogram!(name, unit, help);
    }
    Ok(recorder)
}

/// Metrics that should show from the start, at zero, in a process running `stages`.
pub(super) fn register(stages: &[Stage]) {
    for stage in stages {
        gauge!(STAGE_UP, "stage" => stage.label()).set(0.0);
        counter!(RECONNECTS, "component" => stage.label()).absolute(0);
        if *stage == Stage::Apply {
            counter!(TRANSACTIONS_APPLIED).absolute(0);
            counter!(RETRIES, "component" => "mariadb").absolute(0);
        }
    }
}

fn op_label(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
    }
}

/// Counts of changes by table and operation.
#[derive(Debug, Default)]
struct Tally(Vec<(String, Op, u64)>);

impl Tally {
    fn add(&mut self, change: &Change) {
        let same =
            |t: &str| t.strip_prefix(change.schema.as_str()).and_then(|r| r.strip_prefix('.')) == Some(&change.table);
        match self.0.iter_mut().find(|(t, o, _)| *o == change.op && same(t)) {
            Some((_, _, n)) => *n += 1,
            None => self.0.push((change.qualified_table(), change.op, 1)),
        }
    }

    fn of<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Tally {
        let mut tally = Tally::default();
        for change in changes {
            tally.add(change);
        }
        tally
    }

    /// Adds the counts to `metric` (labelled with `stage` too, when given) and to the page's figures.
    fn record(
        self,
        metric: &'static str,
        stage: Option<&'static str>,
        figure: fn(&mut status::TableFigures) -> &mut u64,
    ) {
        let Some(status) = status::get() else { return };
        status.with(|f| {
            for (table, op, n) in self.0 {
                match stage {
                    Some(stage) => counter!(metric, "stage" => stage, "table" => table.clone(), "op" => op_label(op)),
                    None => counter!(metric, "table" => table.clone(), "op" => op_label(op)),
                }
                .increment(n);
                *figure(f.table(&table)) += n;
            }
        });
    }
}

/// A change read from the slot, before the transforms.
pub fn captured(change: &Change) {
    let Some(s) = status::get() else { return };
    Tally::of([change]).record(CAPTURED, None, |t| &mut t.captured);
    s.with(|f| f.totals().captured += 1);
}

/// A message about to be published to RabbitMQ.
pub fn published(message: &Message) {
    let Some(s) = status::get() else { return };
    let tally = Tally::of(message.transactions.iter().flat_map(|t| &t.changes));
    let n: u64 = tally.0.iter().map(|(_, _, n)| n).sum();
    tally.record(PUBLISHED, None, |t| &mut t.published);
    s.with(|f| f.totals().published += n);
}

/// One call of the transform module whose file hashes to `module` on a batch of a
/// transaction's changes, begun at `started`; `failures` say why it refused the changes
/// it refused.
pub fn transform_called<'a, E: Display + 'a>(module: &str, started: Instant, failures: impl Iterator<Item = &'a E>) {
    let Some(s) = status::get() else { return };
    let module = module.to_owned();
    histogram!(TRANSFORM_CALL, "module" => module.clone()).record(started.elapsed().as_secs_f64());
    for failure in failures {
        counter!(TRANSFORM_FAILURES, "kind" => failure_kind(&failure.to_string()), "module" => module.clone())
            .increment(1);
        s.with(|f| f.totals().transform_failures += 1);
    }
}

/// The kind of a transform failure, from its message: the transform module's errors say which it was.
fn failure_kind(message: &str) -> &'static str {
    if message.contains("rejected") {
        "rejected"
    } else if message.contains("took more than") || message.contains("ran for more than") {
        "timeout"
    } else if message.contains("of memory") {
        "out_of_memory"
    } else {
        "trap"
    }
}

/// A dead letter RabbitMQ confirmed: `body` is a change message, or raw output that could not be read.
pub fn dead_lettered(why: &DeadLetter, body: &[u8]) {
    let Some(s) = status::get() else { return };
    let tally = match serde_json::from_slice::<Message>(body) {
        Ok(message) => Tally::of(message.transactions.iter().flat_map(|t| &t.changes)),
        Err(_) => Tally::default(),
    };
    let n: u64 = tally.0.iter().map(|(_, _, n)| n).sum();
    if n == 0 {
        counter!(DEAD_LETTERED, "stage" => why.stage, "table" => why.table.clone(), "op" => "unknown").increment(1);
    }
    tally.record(DEAD_LETTERED, Some(why.stage), |t| &mut t.dead_lettered);
    s.with(|f| {
        f.totals().dead_lettered += n.max(1);
        if n == 0 && !why.table.is_empty() {
            f.table(&why.table).dead_lettered += 1;
        }
        f.dead_letter(why.stage, &why.table, &why.reason);
    });
}

/// What one MariaDB transaction applies; recorded once it commits.
#[derive(Debug)]
pub struct Applied {
    started: Instant,
    tally: Tally,
    transactions: u64,
    changes: u64,
    /// The commit LSN of the last source transaction added: chunks of one count once.
    last: Option<crate::change::Lsn>,
    /// Source commit times, as Unix seconds.
    commit_times: Vec<f64>,
}

impl Applied {
    /// A MariaDB transaction begins.
    pub fn begin() -> Self {
        Applied {
            started: Instant::now(),
            tally: Tally::default(),
            transactions: 0,
            changes: 0,
            last: None,
            commit_times: Vec::new(),
        }
    }

    /// A source transaction, or one chunk of it, written in it.
    pub fn add(&mut self, transaction: &Transaction) {
        // Transactions without changes (on tables not replicated) only move the offset.
        if status::get().is_none() || transaction.changes.is_empty() {
            return;
        }
        for change in &transaction.changes {
            self.tally.add(change);
        }
        self.changes += transaction.changes.len() as u64;
        if self.last.replace(transaction.context.commit_lsn) != Some(transaction.context.commit_lsn) {
            self.transactions += 1;
            self.commit_times.extend(unix_seconds(&transaction.context.commit_time));
        }
    }

    /// The MariaDB transaction committed.
    pub fn committed(self) {
        let Some(s) = status::get() else { return };
        if self.transactions == 0 && self.changes == 0 {
            return;
        }
        histogram!(COMMIT).record(self.started.elapsed().as_secs_f64());
        histogram!(GROUP_TRANSACTIONS).record(self.transactions as f64);
        histogram!(GROUP_CHANGES).record(self.changes as f64);
        counter!(TRANSACTIONS_APPLIED).increment(self.transactions);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let lags: Vec<f64> = self.commit_times.iter().map(|t| (now - t).max(0.0)).collect();
        for lag in &lags {
            histogram!(REPLICATION_LAG).record(*lag);
        }
        let changes = self.changes;
        let transactions = self.transactions;
        self.tally.record(APPLIED, None, |t| &mut t.applied);
        s.with(|f| {
            f.totals().applied += changes;
            f.totals().transactions += transactions;
            if let Some(last) = lags.last() {
                f.replication_lag(*last);
            }
        });
    }
}

/// The initial copy of `table` starts, with `total` rows to copy.
pub fn copy_started(table: &TableName, total: i64) {
    let Some(s) = status::get() else { return };
    for stage in s.copying() {
        gauge!(STAGE_UP, "stage" => stage.label()).set(1.0);
    }
    let table = table.to_string();
    let total = u64::try_from(total).unwrap_or_default();
    gauge!(COPY_ROWS_EXPECTED, "table" => table.clone()).set(total as f64);
    counter!(COPY_ROWS, "table" => table.clone()).absolute(0);
    s.with(|f| f.table(&table).copy_total = Some(total));
}

/// The initial copy wrote `rows` more rows of `table`, and stands at `rate`.
pub fn copied(table: &TableName, rows: usize, rate: &crate::progress::Rate) {
    let Some(s) = status::get() else { return };
    let table = table.to_string();
    counter!(COPY_ROWS, "table" => table.clone()).increment(rows as u64);
    gauge!(COPY_RATE, "table" => table.clone()).set(rate.per_second);
    gauge!(COPY_ETA, "table" => table.clone()).set(rate.eta_seconds.unwrap_or_default());
    s.with(|f| {
        let t = f.table(&table);
        t.copied += rows as u64;
        t.copy_rows_per_second = Some(rate.per_second);
        t.copy_eta_seconds = rate.eta_seconds;
        f.totals().copied += rows as u64;
    });
}

/// The stages came up: connected, checked and streaming.
pub fn up() {
    let Some(s) = status::get() else { return };
    for stage in s.up() {
        gauge!(STAGE_UP, "stage" => stage.label()).set(1.0);
    }
}

/// The stages stopped on `error` and reconnect after a delay.
pub fn reconnecting(error: &dyn Display) {
    let Some(s) = status::get() else { return };
    for stage in s.reconnecting(error.to_string()) {
        counter!(RECONNECTS, "component" => stage.label()).increment(1);
        gauge!(STAGE_UP, "stage" => stage.label()).set(0.0);
    }
}

/// The apply retries a MariaDB write in place: `doing` failed with `error`.
pub fn mariadb_retrying(doing: &str, error: &dyn Display) {
    let Some(s) = status::get() else { return };
    counter!(RETRIES, "component" => "mariadb").increment(1);
    s.retrying(Stage::Apply, format!("MariaDB is unavailable while {doing} ({error})"));
}

/// The apply's retried MariaDB write succeeded.
pub fn mariadb_recovered() {
    let Some(s) = status::get() else { return };
    s.recovered(Stage::Apply);
    gauge!(STAGE_UP, "stage" => Stage::Apply.label()).set(1.0);
}

/// The transform chain was loaded from `paths`.
pub fn chain_loaded(paths: &[PathBuf], hashes: &[String]) {
    let Some(s) = status::get() else { return };
    let modules = paths
        .iter()
        .zip(hashes)
        .map(|(p, h)| (p.display().to_string(), h.clone()))
        .collect();
    s.with(|f| f.set_chain(modules));
}

/// A new version of the chain was swapped in.
pub fn chain_swapped(hashes: &[String]) {
    if let Some(s) = status::get() {
        s.with(|f| f.swap_hashes(hashes));
    }
}

/// Sets the gauges read from the servers; `None` where a server could not be read.
pub(super) fn servers(slot_lag: Option<i64>, depths: Option<(u32, u32)>) {
    let Some(s) = status::get() else { return };
    if let Some(lag) = slot_lag {
        gauge!(SLOT_LAG).set(lag as f64);
    }
    if let Some((ready, dead)) = depths {
        gauge!(QUEUE_MESSAGES).set(f64::from(ready));
        gauge!(DEAD_LETTER_QUEUE_MESSAGES).set(f64::from(dead));
    }
    s.with(|f| f.servers(slot_lag, depths));
    // A stage retrying in place turns not-up once it has failed for longer than the limit.
    for stage in [Stage::Capture, Stage::Apply] {
        if s.has(stage) {
            gauge!(STAGE_UP, "stage" => stage.label()).set(if s.stage_up(stage) { 1.0 } else { 0.0 });
        }
    }
}

/// A PostgreSQL timestamp as wal2json prints it (`2026-11-26 14:59:09.236558+00`), in Unix seconds.
fn unix_seconds(text: &str) -> Option<f64> {
    let (date, rest) = text.trim().split_once(' ')?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let zone_at = rest.rfind(['+', '-'])?;
    let (time, zone) = rest.split_at(zone_at);
    let mut hms = time.splitn(3, ':');
    let (h, mi): (i64, i64) = (hms.next()?.parse().ok()?, hms.next()?.parse().ok()?);
    let s: f64 = hms.next()?.parse().ok()?;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let mut zone_parts = zone[1..].splitn(2, ':');
    let zh: i64 = zone_parts.next()?.parse().ok()?;
    let zm: i64 = zone_parts.next().map_or(Some(0), |z| z.parse().ok())?;
    // Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let offset = sign * (zh * 3600 + zm * 60);
    Some((days * 86_400 + h * 3600 + mi * 60 - offset) as f64 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_postgres_commit_times() {
        assert_eq!(unix_seconds("1970-01-01 00:00:00+00"), Some(0.0));
        assert_eq!(unix_seconds("2026-11-26 14:59:09.25+00"), Some(1_795_705_149.25));
        assert_eq!(unix_seconds("2024-02-29 01:00:00+01"), Some(1_709_164_800.0));
        assert_eq!(unix_seconds("2024-02-29 00:00:00-05:30"), Some(1_709_184_600.0));
        assert_eq!(unix_seconds(""), None);
        assert_eq!(unix_seconds("not a time"), None);
    }

    #[test]
    fn transform_failures_have_kinds() {
        assert_eq!(failure_kind("transform 'm' rejected the change: no"), "rejected");
        assert_eq!(
            failure_kind(
                "transform 'm' failed: it took more than 100 ms, waiting in a host call; the change was not transformed"
            ),
            "timeout"
        );
        assert_eq!(
            failure_kind("transform 'm' failed: it needed more than its 64 MiB of memory"),
            "out_of_memory"
        );
        assert_eq!(
            failure_kind("transform 'm' failed: it ran for more than 100 ms"),
            "timeout"
        );
        assert_eq!(failure_kind("transform 'm' failed: wasm trap: unreachable"), "trap");
    }
}
