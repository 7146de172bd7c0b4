//! The apply: consumes change messages and writes them to MariaDB.
//!
//! Consecutive source transactions are grouped into one MariaDB transaction
//! that also moves the pipeline's row in the offsets table; deliveries are
//! acknowledged only after that transaction commits. A message at or below
//! the recorded offset is skipped, so redeliveries have no effect: at-least-once
//! delivery with an exactly-once effect.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use sqlx::mysql::{MySqlArguments, MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, MySql, MySqlConnection, Row};
use tokio_util::sync::CancellationToken;

use crate::catalog::{TableDef, my_ident, target_table};
use crate::change::{Change, Column, Lsn, MESSAGE_FORMAT, Message, Op, Transaction, TxContext, Value};
use crate::queue::{Broker, DeadLetter, QueueError};

/// The table that records, per pipeline, the last applied commit LSN.
pub const OFFSETS_TABLE: &str = "wasmcdc_offsets";

/// Why the apply stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `--mariadb-url` does not parse.
    #[error("--mariadb-url '{0}' is not a valid MariaDB URL; use mysql://USER:PASSWORD@HOST:PORT/DATABASE")]
    BadUrl(String),
    /// MariaDB cannot be reached.
    #[error(
        "cannot reach MariaDB at {url}: {reason}; check that the server is running and that --mariadb-url is right"
    )]
    Unreachable {
        /// URL with the password masked.
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// MariaDB refused the credentials.
    #[error(
        "MariaDB rejected the credentials in {url} ({reason}); fix the user or password in --mariadb-url, or grant the user access to the database"
    )]
    BadCredentials {
        /// URL with the password masked.
        url: String,
        /// The server's message.
        reason: String,
    },
    /// A statement failed for a reason that retrying the data will not fix.
    #[error("MariaDB error: {0}")]
    Database(String),
    /// The broker failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Tuning for the apply loop.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Unacknowledged messages RabbitMQ may hand over at once.
    pub prefetch: u16,
    /// Commit once a group holds this many changes.
    pub group_changes: usize,
    /// Commit once no message has arrived for this long.
    pub linger: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            prefetch: 512,
            group_changes: 5_000,
            linger: Duration::from_millis(20),
        }
    }
}

/// Connects to MariaDB.
pub async fn connect(url: &str) -> Result<MySqlPool, ApplyError> {
    let masked = crate::config::mask_url(url);
    let options: MySqlConnectOptions = url.parse().map_err(|_| ApplyError::BadUrl(masked.clone()))?;
    // utf8mb4 end to end, and UTC so that DATETIME values are the UTC instants captured.
    let options = options.charset("utf8mb4").timezone(Some("+00:00".into()));
    // One direct connection first: the pool would keep retrying a server that is down until its timeout.
    let first = tokio::time::timeout(Duration::from_secs(10), MySqlConnection::connect_with(&options))
        .await
        .map_err(|_| ApplyError::Unreachable {
            url: masked.clone(),
            reason: "no answer within 10 s".into(),
        })?
        .map_err(|e| connect_error(&masked, e))?;
    drop(first);
    Ok(MySqlPoolOptions::new()
        .max_connections(4)
        // A connection that cannot be had within 3 s means MariaDB is down: fail, so the
        // supervisor says so at warn and retries with backoff, instead of waiting silently.
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(options))
}

fn connect_error(url: &str, e: sqlx::Error) -> ApplyError {
    match &e {
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("28000") | Some("42000")) => {
            ApplyError::BadCredentials {
                url: url.to_owned(),
                reason: db.message().to_owned(),
            }
        }
        _ => ApplyError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        },
    }
}

/// Creates the offsets table and any missing target table.
pub async fn prepare(pool: &MySqlPool, defs: &[TableDef]) -> Result<(), ApplyError> {
    let create_offsets = format!(
        "CREATE TABLE IF NOT EXISTS {} (\
           pipeline VARCHAR(63) NOT NULL PRIMARY KEY, \
           lsn BIGINT UNSIGNED NOT NULL, \
           lsn_text VARCHAR(20) NOT NULL, \
           state VARCHAR(16) NOT NULL DEFAULT 'streaming', \
           transforms VARCHAR(2048) NOT NULL DEFAULT '', \
           updated_at DATETIME(6) NOT NULL\
         ) ENGINE=InnoDB",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(create_offsets))
        .execute(pool)
        .await
        .map_err(db_error)?;
    // Offsets tables made by earlier versions lack the later columns.
    for column in [
        "state VARCHAR(16) NOT NULL DEFAULT 'streaming' AFTER lsn_text",
        "transforms VARCHAR(2048) NOT NULL DEFAULT '' AFTER state",
    ] {
        let alter = format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {column}",
            my_ident(OFFSETS_TABLE)
        );
        sqlx::query(AssertSqlSafe(alter))
            .execute(pool)
            .await
            .map_err(db_error)?;
    }
    for def in defs {
        let sql = crate::catalog::create_table_sql(def);
        sqlx::query(AssertSqlSafe(sql)).execute(pool).await.map_err(db_error)?;
    }
    Ok(())
}

/// Where a pipeline's target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The initial copy started and has not finished.
    Copying,
    /// Consistent with the source up to this commit LSN.
    Applied(Lsn),
}

/// A pipeline's row in the offsets table.
#[derive(Clone, Debug)]
pub struct OffsetsRow {
    /// Where the target stands.
    pub progress: Progress,
    /// Transform module hashes (comma-separated) of the last applied message.
    pub transforms: String,
}

/// `pipeline`'s row in the offsets table, if it has one.
pub async fn offsets_row(pool: &MySqlPool, pipeline: &str) -> Result<Option<OffsetsRow>, ApplyError> {
    let sql = format!(
        "SELECT lsn, state, transforms FROM {} WHERE pipeline = ?",
        my_ident(OFFSETS_TABLE)
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .fetch_optional(pool)
        .await
        .map_err(db_error)?;
    Ok(row.map(|r| OffsetsRow {
        progress: match r.get::<String, _>(1).as_str() {
            "copying" => Progress::Copying,
            _ => Progress::Applied(Lsn(r.get::<u64, _>(0))),
        },
        transforms: r.get(2),
    }))
}

/// Where `pipeline`'s target stands, if it has a row in the offsets table.
pub async fn progress(pool: &MySqlPool, pipeline: &str) -> Result<Option<Progress>, ApplyError> {
    Ok(offsets_row(pool, pipeline).await?.map(|r| r.progress))
}

/// The last applied commit LSN of `pipeline`, if it has applied anything.
pub async fn applied_offset(pool: &MySqlPool, pipeline: &str) -> Result<Option<Lsn>, ApplyError> {
    Ok(match progress(pool, pipeline).await? {
        Some(Progress::Applied(lsn)) => Some(lsn),
        _ => None,
    })
}

/// Marks the start of the initial copy and empties the target tables, so a copy
/// interrupted by a crash is recognised and redone from the start.
pub async fn begin_copy(pool: &MySqlPool, pipeline: &str, targets: &[String]) -> Result<(), ApplyError> {
    set_progress(pool, pipeline, Lsn(0), "copying").await?;
    for table in targets {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", my_ident(table))))
            .execute(pool)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

/// Writes copied rows in one MariaDB transaction. If MariaDB refuses the batch,
/// it writes them one by one and dead-letters each row it still refuses.
pub async fn write_rows(
    pool: &MySqlPool,
    broker: &Broker,
    pipeline: &str,
    transforms: &[String],
    context: &TxContext,
    rows: &[Change],
) -> Result<(), ApplyError> {
    async fn write(pool: &MySqlPool, rows: &[Change]) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        apply_changes(&mut tx, rows).await?;
        tx.commit().await
    }
    match write(pool, rows).await {
        Ok(()) => return Ok(()),
        Err(e) if is_data_error(&e) => {
            tracing::warn!(error = %e, "MariaDB refused a batch of copied rows; writing them one by one")
        }
        Err(e) => return Err(db_error(e)),
    }
    for row in rows {
        match write(pool, std::slice::from_ref(row)).await {
            Ok(()) => {}
            Err(e) if is_data_error(&e) => {
                let table = row.qualified_table();
                tracing::error!(%table, error = %e, "MariaDB refused a copied row; it goes to the dead-letter queue");
                let transaction = Transaction {
                    context: context.clone(),
                    changes: vec![row.clone()],
                };
                let why = DeadLetter {
                    stage: "apply",
                    reason: format!("MariaDB refused the copied row: {e}"),
                    lsn: context.commit_lsn.to_string(),
                    table,
                };
                let message = Message::new(pipeline, transforms, vec![transaction], context.commit_lsn);
                broker.dead_letter_message(&message, &why).await?;
            }
            Err(e) => return Err(db_error(e)),
        }
    }
    Ok(())
}

/// Forgets `pipeline`'s offset.
pub async fn forget_offset(pool: &MySqlPool, pipeline: &str) -> Result<(), ApplyError> {
    let sql = format!("DELETE FROM {} WHERE pipeline = ?", my_ident(OFFSETS_TABLE));
    match sqlx::query(AssertSqlSafe(sql)).bind(pipeline).execute(pool).await {
        Ok(_) => Ok(()),
        // No offsets table: nothing to forget.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42S02") => Ok(()),
        Err(e) => Err(db_error(e)),
    }
}

fn db_error(e: sqlx::Error) -> ApplyError {
    ApplyError::Database(e.to_string())
}

/// Whether a failure is about the data (dead-letter it) rather than the connection (stop and retry).
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Database(_) | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) | sqlx::Error::Protocol(_)
    )
}

/// Source transactions that must be applied together: one message, or every chunk of one large transaction.
struct Unit {
    /// Commit LSN the offset moves to once this is applied.
    last_lsn: Lsn,
    pipeline: String,
    transforms: Vec<String>,
    transactions: Vec<Transaction>,
    changes: usize,
    /// A re-driven dead letter: applied regardless of the offset, which it leaves alone.
    replay: bool,
}

impl Unit {
    fn from_message(m: Message) -> Self {
        Unit {
            last_lsn: m.last_lsn,
            replay: m.replay,
            changes: m.change_count(),
            pipeline: m.pipeline,
            transforms: m.transforms,
            transactions: m.transactions,
        }
    }

    /// The message that carries `transactions` alone, for the dead-letter queue.
    fn message_for(&self, transactions: Vec<Transaction>, last_lsn: Lsn) -> Message {
        Message::new(&self.pipeline, &self.transforms, transactions, last_lsn)
    }
}

/// Chunks of one large transaction received so far.
struct Assembly {
    unit: Unit,
    next_index: u32,
}

/// Consumes the pipeline's queue and applies it until `shutdown` fires, then
/// commits what it holds, acknowledges it, and returns.
pub async fn run(
    pipeline: &str,
    broker: &Broker,
    pool: &MySqlPool,
    opts: &ApplyOptions,
    shutdown: CancellationToken,
) -> Result<(), ApplyError> {
    let insert = format!(
        "INSERT IGNORE INTO {} (pipeline, lsn, lsn_text, updated_at) VALUES (?, 0, '0/0', UTC_TIMESTAMP(6))",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(insert))
        .bind(pipeline)
        .execute(pool)
        .await
        .map_err(db_error)?;
    let mut consumer = broker.consume(opts.prefetch).await?;
    let mut known = KnownColumns::default();
    let mut group: Vec<Unit> = Vec::new();
    let mut group_changes = 0usize;
    let mut last_tag: Option<u64> = None;
    let mut assembly: Option<Assembly> = None;

    loop {
        let waiting = !group.is_empty() && assembly.is_none();
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            next = consumer.next() => Some(next),
            _ = tokio::time::sleep(opts.linger), if waiting => None,
        };
        let delivery = match next {
            // Quiet for a moment: commit what we have.
            None => {
                commit(pipeline, broker, pool, &mut known, &mut group, &mut last_tag).await?;
                group_changes = 0;
                continue;
            }
            Some(None) => {
                return Err(ApplyError::Queue(QueueError::NotConfirmed(
                    "the consumer was cancelled by the broker (was the queue deleted?)".into(),
                )));
            }
            Some(Some(Err(e))) => {
                return Err(QueueError::Broker {
                    doing: "consuming",
                    source: e,
                }
                .into());
            }
            Some(Some(Ok(d))) => d,
        };
        let tag = delivery.delivery_tag;
        // Deliveries inside an incomplete large transaction are not safe to acknowledge yet.
        let mut settled = |assembly: &Option<Assembly>| {
            if assembly.is_none() {
                last_tag = Some(tag);
            }
        };
        let message = match decode_message(&delivery.data, pipeline) {
            Ok(m) => m,
            Err(reason) => {
                tracing::error!(%reason, "dead-lettering a message that cannot be applied");
                let why = DeadLetter {
                    stage: "decode",
                    reason,
                    lsn: String::new(),
                    table: String::new(),
                };
                broker.dead_letter(&delivery.data, &why).await?;
                settled(&assembly);
                continue;
            }
        };
        match message.chunk {
            None => {
                group_changes += message.change_count();
                group.push(Unit::from_message(message));
            }
            Some(chunk) => {
                // A chunk 0 restarts assembly: the capture republished the transaction after a restart.
                if chunk.index == 0 {
                    if assembly.is_some() {
                        tracing::warn!(lsn = %message.last_lsn, "discarding an incomplete large transaction that is being resent");
                    }
                    assembly = Some(Assembly {
                        unit: Unit::from_message(Message { chunk: None, ..message }),
                        next_index: 1,
                    });
                } else {
                    match assembly.as_mut() {
                        Some(a) if a.next_index == chunk.index && a.unit.last_lsn == message.last_lsn => {
                            a.next_index += 1;
                            a.unit.changes += message.change_count();
                            if let (Some(tx), Some(more)) =
                                (a.unit.transactions.last_mut(), message.transactions.into_iter().next())
                            {
                                tx.changes.extend(more.changes);
                            }
                        }
                        // The tail of a transaction whose head was discarded or already applied.
                        _ => {
                            settled(&assembly);
                            continue;
                        }
                    }
                }
                if chunk.last
                    && let Some(a) = assembly.take()
                {
                    group_changes += a.unit.changes;
                    group.push(a.unit);
                }
            }
        }
        settled(&assembly);
        if group_changes >= opts.group_changes && assembly.is_none() {
            commit(pipeline, broker, pool, &mut known, &mut group, &mut last_tag).await?;
            group_changes = 0;
        }
    }
    // Drain: whatever is whole gets committed and acknowledged; an incomplete
    // large transaction stays unacknowledged and is redelivered next time.
    if let Some(a) = &assembly {
        tracing::info!(lsn = %a.unit.last_lsn, "leaving an incomplete large transaction for redelivery");
    }
    commit(pipeline, broker, pool, &mut known, &mut group, &mut last_tag).await?;
    Ok(())
}

fn decode_message(body: &[u8], pipeline: &str) -> Result<Message, String> {
    let message: Message =
        serde_json::from_slice(body).map_err(|e| format!("the message body is not a wasmcdc change message: {e}"))?;
    if message.format != MESSAGE_FORMAT {
        return Err(format!(
            "the message has format version {}, but this wasmcdc reads version {MESSAGE_FORMAT}; upgrade wasmcdc",
            message.format
        ));
    }
    if message.pipeline != pipeline {
        return Err(format!(
            "the message belongs to pipeline '{}', not '{pipeline}'",
            message.pipeline
        ));
    }
    Ok(message)
}

/// Applies the group in one MariaDB transaction, then acknowledges through `last_tag`.
/// A group that MariaDB refuses is retried one source transaction at a time,
/// and each transaction it still refuses goes to the dead-letter queue.
async fn commit(
    pipeline: &str,
    broker: &Broker,
    pool: &MySqlPool,
    known: &mut KnownColumns,
    group: &mut Vec<Unit>,
    last_tag: &mut Option<u64>,
) -> Result<(), ApplyError> {
    if !group.is_empty() {
        let units = std::mem::take(group);
        add_new_columns(pool, known, &units).await?;
        match apply_units(pool, pipeline, &units).await {
            Ok(()) => {}
            Err(e) if is_data_error(&e) => {
                tracing::warn!(error = %e, "a group failed; applying its transactions one by one");
                for unit in units {
                    apply_one_by_one(pool, broker, pipeline, unit).await?;
                }
            }
            Err(e) => return Err(db_error(e)),
        }
    }
    if let Some(tag) = last_tag.take() {
        broker.ack_through(tag).await?;
    }
    Ok(())
}

async fn apply_one_by_one(pool: &MySqlPool, broker: &Broker, pipeline: &str, unit: Unit) -> Result<(), ApplyError> {
    let count = unit.transactions.len();
    for (i, tx) in unit.transactions.iter().enumerate() {
        // The last transaction also carries the unit's final position (which may cover empty transactions after it).
        let last_lsn = if i + 1 == count {
            unit.last_lsn
        } else {
            tx.context.commit_lsn
        };
        let single = Unit {
            last_lsn,
            pipeline: unit.pipeline.clone(),
            transforms: unit.transforms.clone(),
            transactions: vec![tx.clone()],
            changes: tx.changes.len(),
            replay: unit.replay,
        };
        match apply_units(pool, pipeline, std::slice::from_ref(&single)).await {
            Ok(()) => {}
            Err(e) if is_data_error(&e) => {
                // Only the data may be dead-lettered: if the offsets row cannot move either,
                // the fault is the target's, and the transaction waits for it to be fixed.
                let skip = Unit {
                    transactions: Vec::new(),
                    changes: 0,
                    ..single
                };
                check_offset_writable(pool, pipeline, &skip).await.map_err(db_error)?;
                let table = tx.changes.first().map(Change::qualified_table).unwrap_or_default();
                tracing::error!(lsn = %tx.context.commit_lsn, xid = tx.context.xid, %table, error = %e, "MariaDB refused a transaction; it goes to the dead-letter queue");
                let why = DeadLetter {
                    stage: "apply",
                    reason: format!("MariaDB refused the transaction: {e}"),
                    lsn: tx.context.commit_lsn.to_string(),
                    table,
                };
                broker
                    .dead_letter_message(&unit.message_for(vec![tx.clone()], last_lsn), &why)
                    .await?;
                apply_units(pool, pipeline, std::slice::from_ref(&skip))
                    .await
                    .map_err(db_error)?;
            }
            Err(e) => return Err(db_error(e)),
        }
    }
    Ok(())
}

/// The columns each target table is known to have, read once per table.
type KnownColumns = HashMap<String, HashSet<String>>;

/// Adds columns that changes carry but their target table lacks (a column added
/// in PostgreSQL), before the group's transaction: in MariaDB, DDL would commit
/// that transaction half-way. Rows that existed before hold NULL in the new column.
async fn add_new_columns(pool: &MySqlPool, known: &mut KnownColumns, units: &[Unit]) -> Result<(), ApplyError> {
    let changes = units.iter().flat_map(|u| &u.transactions).flat_map(|t| &t.changes);
    for change in changes.filter(|c| matches!(c.op, Op::Insert | Op::Update)) {
        let table = target_table(&change.schema, &change.table);
        if !known.contains_key(&table) {
            let columns: HashSet<String> = sqlx::query(
                "SELECT CAST(column_name AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(&table)
            .fetch_all(pool)
            .await
            .map_err(db_error)?
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
            known.insert(table.clone(), columns);
        }
        let Some(columns) = known.get_mut(&table) else { continue };
        // A table that does not exist has no columns; the write then fails and is dead-lettered with the reason.
        if columns.is_empty() {
            continue;
        }
        for column in &change.columns {
            if columns.contains(&column.name) {
                continue;
            }
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {} NULL",
                my_ident(&table),
                my_ident(&column.name),
                crate::catalog::mariadb_type(&column.pg_type, false)
            );
            sqlx::query(AssertSqlSafe(sql)).execute(pool).await.map_err(db_error)?;
            tracing::warn!(%table, column = %column.name, pg_type = %column.pg_type, "added a column that appeared in the source; rows that existed before hold NULL in it");
            columns.insert(column.name.clone());
        }
    }
    Ok(())
}

/// Moves the offset past `skip` in a transaction that is rolled back: proves the offsets row is writable.
async fn check_offset_writable(pool: &MySqlPool, pipeline: &str, skip: &Unit) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    write_offset(&mut tx, pipeline, skip.last_lsn, &skip.transforms.join(",")).await?;
    tx.rollback().await
}

async fn write_offset(
    tx: &mut sqlx::MySqlConnection,
    pipeline: &str,
    lsn: Lsn,
    transforms: &str,
) -> Result<(), sqlx::Error> {
    let update = format!(
        "UPDATE {} SET lsn = ?, lsn_text = ?, transforms = ?, updated_at = UTC_TIMESTAMP(6) WHERE pipeline = ?",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(update))
        .bind(lsn.0)
        .bind(lsn.to_string())
        .bind(transforms)
        .bind(pipeline)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// One MariaDB transaction: every unit above the recorded offset, and the new offset.
async fn apply_units(pool: &MySqlPool, pipeline: &str, units: &[Unit]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let select = format!(
        "SELECT lsn FROM {} WHERE pipeline = ? FOR UPDATE",
        my_ident(OFFSETS_TABLE)
    );
    let mut offset = sqlx::query(AssertSqlSafe(select))
        .bind(pipeline)
        .fetch_optional(&mut *tx)
        .await?
        .map_or(Lsn(0), |r| Lsn(r.get::<u64, _>(0)));
    let start = offset;
    let mut transforms = None;
    for unit in units {
        if unit.last_lsn <= offset && !unit.replay {
            tracing::debug!(lsn = %unit.last_lsn, "skipping a message that is already applied");
            continue;
        }
        for transaction in &unit.transactions {
            apply_changes(&mut tx, &transaction.changes).await?;
        }
        if !unit.replay {
            offset = unit.last_lsn;
            transforms = Some(unit.transforms.join(","));
        }
    }
    if let Some(transforms) = transforms.filter(|_| offset != start) {
        write_offset(&mut tx, pipeline, offset, &transforms).await?;
    }
    tx.commit().await
}

/// Most rows one multi-row INSERT carries; MariaDB also caps a statement at 65 535 parameters.
const INSERT_ROWS: usize = 500;

/// Applies changes in order; runs of inserts into the same table and columns
/// become multi-row INSERTs, which MariaDB executes far faster than single rows.
async fn apply_changes(tx: &mut sqlx::MySqlConnection, changes: &[Change]) -> Result<(), sqlx::Error> {
    let same_shape = |a: &Change, b: &Change| {
        b.op == Op::Insert
            && a.table == b.table
            && a.schema == b.schema
            && a.columns.len() == b.columns.len()
            && a.columns.iter().zip(&b.columns).all(|(x, y)| x.name == y.name)
    };
    let mut i = 0;
    while i < changes.len() {
        let first = &changes[i];
        if first.op != Op::Insert {
            apply_change(tx, first).await?;
            i += 1;
            continue;
        }
        let most = INSERT_ROWS.min(65_535 / first.columns.len().max(1));
        let mut end = i + 1;
        while end < changes.len() && end - i < most && same_shape(first, &changes[end]) {
            end += 1;
        }
        insert_rows(tx, &changes[i..end]).await?;
        i = end;
    }
    Ok(())
}

/// One INSERT for rows of the same table and columns.
async fn insert_rows(tx: &mut sqlx::MySqlConnection, rows: &[Change]) -> Result<(), sqlx::Error> {
    let Some(first) = rows.first() else { return Ok(()) };
    let row = format!("({})", vec!["?"; first.columns.len()].join(", "));
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        my_ident(&target_table(&first.schema, &first.table)),
        first
            .columns
            .iter()
            .map(|c| my_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", "),
        vec![row; rows.len()].join(", ")
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for column in rows.iter().flat_map(|r| &r.columns) {
        query = bind(query, column)?;
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

async fn apply_change(tx: &mut sqlx::MySqlConnection, change: &Change) -> Result<(), sqlx::Error> {
    let table = my_ident(&target_table(&change.schema, &change.table));
    let present: Vec<_> = change
        .columns
        .iter()
        .filter(|c| c.value != Value::UnchangedToast)
        .collect();
    // Null-safe equality: a FULL identity may hold NULLs. LIMIT 1: without a primary key,
    // identical rows are interchangeable, and the source changed exactly one of them.
    let key_clause = || {
        change
            .key
            .iter()
            .map(|k| format!("{} <=> ?", my_ident(&k.name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let (sql, values): (String, Vec<&Column>) = match change.op {
        Op::Insert => return insert_rows(tx, std::slice::from_ref(change)).await,
        Op::Update => (
            format!(
                "UPDATE {table} SET {} WHERE {} LIMIT 1",
                present
                    .iter()
                    .map(|c| format!("{} = ?", my_ident(&c.name)))
                    .collect::<Vec<_>>()
                    .join(", "),
                key_clause()
            ),
            present.iter().copied().chain(change.key.iter()).collect(),
        ),
        Op::Delete => (
            format!("DELETE FROM {table} WHERE {} LIMIT 1", key_clause()),
            change.key.iter().collect(),
        ),
        // TRUNCATE would commit the surrounding transaction in MariaDB.
        Op::Truncate => (format!("DELETE FROM {table}"), Vec::new()),
    };
    if matches!(change.op, Op::Update | Op::Delete) && change.key.is_empty() {
        return Err(sqlx::Error::Protocol(format!(
            "{:?} on {} carries no key to find the row by",
            change.op,
            change.qualified_table()
        )));
    }
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for v in values {
        query = bind(query, v)?;
    }
    let done = query.execute(&mut *tx).await?;
    if change.op == Op::Update && done.rows_affected() == 0 {
        return Err(sqlx::Error::Protocol(format!(
            "update on {} found no row with key {}",
            change.qualified_table(),
            describe_key(change)
        )));
    }
    Ok(())
}

fn describe_key(change: &Change) -> String {
    change
        .key
        .iter()
        .map(|k| format!("{}={}", k.name, serde_json::to_string(&k.value).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(", ")
}

type MyQuery<'q> = Query<'q, MySql, MySqlArguments>;

/// Binds one value as a parameter; values are never pasted into SQL.
fn bind<'q>(query: MyQuery<'q>, column: &'q Column) -> Result<MyQuery<'q>, sqlx::Error> {
    Ok(match &column.value {
        Value::Null => query.bind(None::<String>),
        Value::Bool(b) => query.bind(*b),
        Value::Int(i) => query.bind(*i),
        // A real is a single-precision float: as a double, its largest values overflow MariaDB's FLOAT.
        Value::Float(f) if column.pg_type == "real" => query.bind(*f as f32),
        Value::Float(f) => query.bind(*f),
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) | Value::Date(s) | Value::Time(s) | Value::Timestamp(s) => {
            query.bind(s.as_str())
        }
        // Captured in UTC; DATETIME has no zone, so the offset is dropped.
        Value::Timestamptz(s) => query.bind(s.strip_suffix("+00").unwrap_or(s).to_owned()),
        Value::Bytes(b) => query.bind(b.as_slice()),
        Value::UnchangedToast => {
            return Err(sqlx::Error::Protocol("an unchanged TOAST value cannot be bound".into()));
        }
    })
}

/// Records `lsn` as `pipeline`'s applied position: the target is consistent with the source up to it.
pub async fn set_offset(pool: &MySqlPool, pipeline: &str, lsn: Lsn) -> Result<(), ApplyError> {
    set_progress(pool, pipeline, lsn, "streaming").await
}

async fn set_progress(pool: &MySqlPool, pipeline: &str, lsn: Lsn, state: &str) -> Result<(), ApplyError> {
    let sql = format!(
        "INSERT INTO {} (pipeline, lsn, lsn_text, state, updated_at) VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE lsn = VALUES(lsn), lsn_text = VALUES(lsn_text), state = VALUES(state), \
         updated_at = VALUES(updated_at)",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(lsn.0)
        .bind(lsn.to_string())
        .bind(state)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}
