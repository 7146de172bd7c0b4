//! The apply: consumes change messages and writes them to MariaDB.
//!
//! Consecutive source transactions are grouped into one MariaDB transaction
//! that also moves the pipeline's row in the offsets table; deliveries are
//! acknowledged only after that transaction commits. What to apply, skip,
//! stage or refuse is decided by the [`assembler`]: transactions at or below
//! the offset are skipped one by one, a message past a gap is never applied,
//! and large transactions are staged chunk by chunk ([`staging`]). The result
//! is at-least-once delivery with an exactly-once effect.
//!
//! Nothing assumes that RabbitMQ hands messages over in the order they were
//! published: a quorum queue redelivers the messages of a consumer that went
//! away in an order of its own. A message that arrives before the one it
//! follows is held, unacknowledged, and applied in its turn ([`Held`]); the
//! [`acks`] ledger keeps every acknowledgement from covering it meanwhile.
//!
//! Errors are classified: a lock wait, a deadlock, a killed query or a lost
//! connection is retried in place with backoff and never dead-lettered; only an
//! error caused by the data sends its source transaction to the dead-letter queue.

pub mod acks;
pub mod assembler;
pub mod offsets;
mod sql;
pub mod staging;

use std::time::{Duration, Instant};

use futures::StreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};
use tokio_util::sync::CancellationToken;

use self::acks::{Ack, Ledger};
use self::assembler::{Assembler, Step};
pub use self::sql::KnownColumns;
use self::sql::{add_new_columns, apply_changes, statement_bytes};
use crate::catalog::{KeyTooWide, TableDef, my_ident};
use crate::change::{Change, Lsn, MESSAGE_FORMAT, Message, OLDEST_MESSAGE_FORMAT, Target, Transaction, TxContext};
use crate::queue::{Broker, DeadLetter, QueueError};
use crate::source::PgTarget;

pub use self::offsets::{
    CopyProgress, OFFSETS_TABLE, OffsetsRow, Progress, applied_offset, begin_copy, forget_offset, offsets_row,
    progress, record_copy, set_offset,
};

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
    /// A shutdown came while a write was being retried; nothing was acknowledged.
    #[error("stopped while waiting for MariaDB")]
    Stopped,
    /// A statement failed for a reason that retrying the data will not fix.
    #[error("MariaDB error: {0}")]
    Database(String),
    /// The queue lost transactions that the slot will not send again; never retried.
    #[error("{0}")]
    Gap(String),
    /// The broker failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A source table's primary key cannot be a MariaDB key.
    #[error(transparent)]
    KeyTooWide(#[from] KeyTooWide),
    /// A target table would find rows by text compared more loosely than in PostgreSQL.
    #[error("{0}")]
    LooseCollation(String),
    /// A transform routes changes to a table that cannot be created; never retried.
    #[error("{0}")]
    NoTarget(String),
}

/// Tuning for the apply loop.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Unacknowledged messages RabbitMQ may hand over at once; with the capture's
    /// message size, this bounds the memory the apply holds.
    pub prefetch: u16,
    /// Commit once a group holds this many changes.
    pub group_changes: usize,
    /// Commit once a group's messages hold this many bytes.
    pub group_bytes: usize,
    /// Commit once no message has arrived for this long.
    pub linger: Duration,
    /// While the stream has a gap, how long the queue must stay quiet before the slot is consulted.
    pub gap_quiet: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            prefetch: 256,
            group_changes: 5_000,
            group_bytes: 32 * 1024 * 1024,
            linger: Duration::from_millis(20),
            gap_quiet: Duration::from_secs(2),
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

/// Creates the offsets and staging tables and any missing target table.
pub async fn prepare(pool: &MySqlPool, defs: &[TableDef]) -> Result<(), ApplyError> {
    offsets::create(pool).await?;
    staging::create(pool).await?;
    for def in defs {
        let sql = crate::catalog::create_table_sql(def)?;
        sqlx::query(AssertSqlSafe(sql)).execute(pool).await.map_err(db_error)?;
        let columns: Vec<TargetColumn> = sqlx::query_as(
            "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), CAST(collation_name AS CHAR), is_nullable = 'YES' \
             FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ? AND collation_name IS NOT NULL",
        )
        .bind(def.name.target())
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
        if let Some(why) = loose_collation(def, &columns) {
            return Err(ApplyError::LooseCollation(why));
        }
    }
    Ok(())
}

/// A text column of a target table: name, type, collation, nullable.
type TargetColumn = (String, String, String, bool);

/// Why a table that existed before (made by hand or by an older version) would
/// merge rows PostgreSQL keeps apart, and the statement that fixes it: the
/// columns that find rows (the key, or every column without one) must compare
/// text exactly, including trailing spaces, as PostgreSQL does.
fn loose_collation(def: &TableDef, columns: &[TargetColumn]) -> Option<String> {
    let mut loose = Vec::new();
    let mut fixes = Vec::new();
    for name in def.row_key() {
        let Some(source) = def.columns.iter().find(|c| c.name == name) else {
            continue;
        };
        let Some(want) = crate::catalog::exact_collation(&source.pg_type) else {
            continue;
        };
        // Outside a key, JSON is MariaDB's JSON type, which always has utf8mb4_bin;
        // rows are found by it only in a table without a key, by whole documents.
        if !def.primary_key.contains(&name) && crate::catalog::mariadb_type(&source.pg_type) == "JSON" {
            continue;
        }
        let Some((_, column_type, collation, nullable)) = columns.iter().find(|c| c.0 == name) else {
            continue;
        };
        if collation != want {
            loose.push(format!("{name} ({collation})"));
            fixes.push(format!(
                "MODIFY {} {column_type} CHARACTER SET utf8mb4 COLLATE {want} {}",
                my_ident(&name),
                if *nullable { "NULL" } else { "NOT NULL" }
            ));
        }
    }
    (!loose.is_empty()).then(|| {
        format!(
            "MariaDB table {} finds rows by text that its collation compares more loosely than PostgreSQL does \
             (for example 'a' and 'a ' as equal), so distinct source rows would collide: {}; fix it with: ALTER TABLE {} {}",
            my_ident(&def.name.target()),
            loose.join(", "),
            my_ident(&def.name.target()),
            fixes.join(", ")
        )
    })
}

/// Writes copied rows in one MariaDB transaction. If MariaDB refuses the batch,
/// it writes them one by one and dead-letters each row it still refuses.
/// `known` carries the target tables' columns from batch to batch.
pub async fn write_rows(
    pool: &MySqlPool,
    known: &mut KnownColumns,
    broker: &Broker,
    pipeline: &str,
    transforms: &[String],
    targets: &[Target],
    context: &TxContext,
    rows: &[Change],
) -> Result<(), ApplyError> {
    let max_bytes = statement_bytes(pool).await;
    // A transform may route copied rows to a table that does not exist yet, or add columns.
    add_new_columns(pool, known, targets, rows.iter())
        .await
        .map_err(|e| ApplyError::from(Refused::Data(e)))?;
    let write = async |rows: &[Change]| -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        apply_changes(&mut tx, rows, max_bytes).await?;
        tx.commit().await
    };
    match write(rows).await {
        Ok(()) => return Ok(()),
        Err(e) if !is_transient(&e) => {
            tracing::warn!(error = %e, "MariaDB refused a batch of copied rows; writing them one by one")
        }
        Err(e) => return Err(db_error(e)),
    }
    for row in rows {
        match write(std::slice::from_ref(row)).await {
            Ok(()) => {}
            Err(e) if !is_transient(&e) => {
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

fn db_error(e: sqlx::Error) -> ApplyError {
    ApplyError::Database(e.to_string())
}

/// MariaDB errors that say nothing about the data: waiting and trying again will succeed.
const TRANSIENT_CODES: &[u16] = &[
    1021, // disk full
    1037, 1038, 1041, // out of memory
    1040, // too many connections
    1053, // server shutdown in progress
    1114, // table full
    1180, 1181, // commit or rollback failed in the engine
    1197, // binlog cache too small for the transaction
    1206, // lock table full
    1615, // prepared statement needs re-preparing
    1969, // statement timeout
    1152, // aborted connection
    1158, 1159, 1160, 1161, // network read or write failed or timed out
    1205, // lock wait timeout
    1213, // deadlock
    1290, 1836, // read-only server
    1317, // query interrupted (KILL QUERY)
    1927, // connection killed
    4031, // disconnected for inactivity
];

/// Whether a failure is passing (retry it, never dead-letter it) rather than caused by the data.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|my| TRANSIENT_CODES.contains(&my.number())),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// How long the apply may sit idle before it checks that MariaDB still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long that check waits for an answer.
const PING_LIMIT: Duration = Duration::from_secs(10);

/// Backoff for retrying a transient failure in place.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LONGEST: Duration = Duration::from_secs(30);

/// Why a write was not done: the data (dead-letter it), or a shutdown while retrying.
enum Refused {
    Data(sqlx::Error),
    Stopped,
}

impl From<Refused> for ApplyError {
    /// A write that was not done where the data cannot be at fault (staging, offsets, columns): it stops the apply.
    fn from(r: Refused) -> Self {
        match r {
            Refused::Stopped => ApplyError::Stopped,
            Refused::Data(sqlx::Error::Configuration(e)) if e.is::<sql::NoTarget>() => {
                ApplyError::NoTarget(e.to_string())
            }
            Refused::Data(e) => db_error(e),
        }
    }
}

/// Runs `write` until it succeeds, fails because of the data, or `shutdown` fires,
/// retrying transient failures with backoff. The deliveries stay unacknowledged meanwhile.
async fn retrying<T>(
    what: &str,
    shutdown: &CancellationToken,
    mut write: impl AsyncFnMut() -> Result<T, sqlx::Error>,
) -> Result<T, Refused> {
    let mut delay = RETRY_FIRST;
    let mut since: Option<Instant> = None;
    loop {
        match write().await {
            Ok(v) => {
                if let Some(since) = since {
                    crate::observe::mariadb_recovered();
                    tracing::info!(
                        "MariaDB answers again after {} s; {what} succeeded",
                        since.elapsed().as_secs()
                    );
                }
                return Ok(v);
            }
            Err(e) if is_transient(&e) => {
                let since = *since.get_or_insert_with(Instant::now);
                crate::observe::mariadb_retrying(what, &e);
                tracing::warn!(
                    "MariaDB is unavailable while {what} ({e}); retrying in {} s (failing for {} s)",
                    delay.as_secs(),
                    since.elapsed().as_secs()
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Refused::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_LONGEST);
            }
            Err(e) => return Err(Refused::Data(e)),
        }
    }
}

/// Source transactions from one message, applied together with the rest of the group.
struct Unit {
    transactions: Vec<Transaction>,
    /// The offset moves here; `None` for a re-driven dead letter, which leaves it alone.
    to: Option<Lsn>,
    transforms: Vec<String>,
}

/// Messages applied in one MariaDB transaction.
#[derive(Default)]
struct Group {
    units: Vec<Unit>,
    /// The offset the group starts from.
    from: Lsn,
    changes: usize,
    bytes: usize,
    messages: usize,
    /// The deliveries the group settles; acknowledged once it commits.
    tags: Vec<u64>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

/// One apply session: a consumer, its group, and what it knows of the target.
struct Apply<'a> {
    pipeline: &'a str,
    broker: &'a Broker,
    pool: &'a MySqlPool,
    source: &'a PgTarget,
    opts: &'a ApplyOptions,
    shutdown: &'a CancellationToken,
    known: KnownColumns,
    /// The tables the transform chain declared, as the latest messages carry them.
    declared: Vec<Target>,
    statement_bytes: usize,
    assembler: Assembler,
    group: Group,
    ledger: Ledger,
    held: Vec<Held>,
}

/// A delivery that arrived before the message it follows (RabbitMQ redelivers
/// in an order of its own), or a chunk before the chunk it follows. It stays
/// unacknowledged, so RabbitMQ still holds it if the apply stops, and is
/// applied once the stream reaches it.
struct Held {
    tag: u64,
    body: Vec<u8>,
    /// The message without its transactions: what decides when its turn comes.
    header: Message,
}

/// Consumes the pipeline's queue and applies it until `shutdown` fires, then
/// commits what it holds, acknowledges it, and returns.
///
/// The queue has a single active consumer: an apply started beside another
/// waits here, as a standby, until RabbitMQ hands it the queue.
pub async fn run(
    pipeline: &str,
    broker: &Broker,
    pool: &MySqlPool,
    source: &PgTarget,
    opts: &ApplyOptions,
    shutdown: CancellationToken,
) -> Result<(), ApplyError> {
    offsets::ensure_row(pool, pipeline).await?;
    let offset = applied_offset(pool, pipeline).await?.unwrap_or_default();
    let staged = staging::restore(pool, pipeline, offset).await?;
    let mut consumer = broker.consume(opts.prefetch).await?;
    let mut apply = Apply {
        pipeline,
        broker,
        pool,
        source,
        opts,
        shutdown: &shutdown,
        known: KnownColumns::default(),
        declared: Vec::new(),
        statement_bytes: statement_bytes(pool).await,
        assembler: Assembler::new(offset, staged),
        group: Group::default(),
        ledger: Ledger::default(),
        held: Vec::new(),
    };
    // While the stream has a gap: when the queue first went quiet with the slot past it.
    let mut gap_suspected: Option<Instant> = None;

    let outcome: Result<(), ApplyError> = async {
        loop {
            let holding = !apply.group.is_empty();
            let waiting = apply.assembler.waiting() || !apply.held.is_empty();
            let delivery = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                next = consumer.next() => next,
                // Quiet for a moment: commit what we have.
                _ = tokio::time::sleep(opts.linger), if holding => {
                    apply.commit().await?;
                    continue;
                }
                _ = tokio::time::sleep(opts.gap_quiet), if waiting && !holding => {
                    gap_suspected = apply.check_gap(gap_suspected).await?;
                    continue;
                }
                // Idle: a MariaDB that went away shows in readiness now, not at the next write.
                _ = tokio::time::sleep(PING_EVERY), if !holding => {
                    apply.ping().await?;
                    continue;
                }
            };
            gap_suspected = None;
            let delivery = match delivery {
                None => {
                    return Err(QueueError::NotConfirmed(
                        "the consumer was cancelled by the broker (was the queue deleted?)".into(),
                    )
                    .into());
                }
                Some(Err(e)) => {
                    return Err(QueueError::Broker {
                        doing: "consuming",
                        source: e,
                    }
                    .into());
                }
                Some(Ok(d)) => d,
            };
            apply.ledger.received(delivery.delivery_tag);
            apply.on_delivery(delivery.delivery_tag, delivery.data).await?;
            apply.release_held().await?;
        }
    }
    .await;
    match outcome {
        // Drain: what is whole gets committed and acknowledged; a large transaction
        // stays staged and its remaining chunks are delivered next time.
        Ok(()) => match apply.commit().await {
            Err(ApplyError::Stopped) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        },
        Err(ApplyError::Stopped) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Keeps the declarations a message carries: a later message's declaration
/// of a table replaces an earlier one, since it comes from a newer chain.
fn learn_targets(declared: &mut Vec<Target>, targets: &[Target]) {
    for target in targets {
        match declared
            .iter_mut()
            .find(|t| (&t.schema, &t.table) == (&target.schema, &target.table))
        {
            Some(known) if known != target => known.clone_from(target),
            Some(_) => {}
            None => declared.push(target.clone()),
        }
    }
}

fn decode_message(body: &[u8], pipeline: &str) -> Result<Message, String> {
    let message: Message =
        serde_json::from_slice(body).map_err(|e| format!("the message body is not a wasmcdc change message: {e}"))?;
    if !(OLDEST_MESSAGE_FORMAT..=MESSAGE_FORMAT).contains(&message.format) {
        return Err(format!(
            "{NEWER_FORMAT} {}, but this wasmcdc reads versions {OLDEST_MESSAGE_FORMAT} to {MESSAGE_FORMAT}; upgrade wasmcdc",
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

impl Apply<'_> {
    async fn on_delivery(&mut self, tag: u64, body: Vec<u8>) -> Result<(), ApplyError> {
        let message = match decode_message(&body, self.pipeline) {
            Ok(m) => m,
            // A message of ours this version cannot read: dead-lettering it would leave a
            // gap in the stream, so the apply stops and it stays in the queue.
            Err(reason) if reason.starts_with(NEWER_FORMAT) => return Err(ApplyError::Gap(reason)),
            Err(reason) => {
                tracing::error!(%reason, "dead-lettering a message that cannot be applied");
                let why = DeadLetter {
                    stage: "decode",
                    reason,
                    lsn: String::new(),
                    table: String::new(),
                };
                self.broker.dead_letter(&body, &why).await?;
                return self.settle(tag).await;
            }
        };
        learn_targets(&mut self.declared, &message.targets);
        if message.chunk.is_some() {
            // Columns added in PostgreSQL, before the final chunk applies every staged one.
            self.add_columns(message.transactions.iter().flat_map(|t| &t.changes))
                .await?;
        }
        if self.assembler.needs_resync(&message) {
            // What this apply holds goes in first, so the target's offset is current.
            self.commit().await?;
            let offset = applied_offset(self.pool, self.pipeline).await?.unwrap_or_default();
            let staged = staging::restore(self.pool, self.pipeline, offset).await?;
            self.assembler.resync(offset, staged);
            // Still ahead of the stream: held for its turn while the window has room
            // for the message it waits for, as RabbitMQ sends no more than the window.
            if self.assembler.needs_resync(&message) && self.ledger.open() < usize::from(self.opts.prefetch) {
                tracing::debug!(
                    prev_lsn = ?message.prev_lsn, lsn = %message.last_lsn, reached = %self.assembler.reached(),
                    "holding a message that arrived before the one it follows"
                );
                self.held.push(Held {
                    tag,
                    body,
                    header: message.header(),
                });
                return Ok(());
            }
        }
        let transforms = message.transforms.clone();
        let (chunk, prev_lsn) = (message.chunk, message.prev_lsn.unwrap_or_default());
        let first_lsn = message.first_lsn;
        let before = self.assembler.reached();
        match self.assembler.on_message(message) {
            Step::Skip => {
                tracing::debug!(lsn = %first_lsn, "skipping a message that is already applied");
                self.settle(tag).await
            }
            Step::Apply {
                transactions,
                to,
                discard_staged,
            } => {
                self.add(tag, before, body.len(), transactions, Some(to), transforms)
                    .await?;
                if discard_staged {
                    self.commit().await?;
                    tracing::warn!(lsn = %to, "a transaction staged in chunks arrived whole; discarding the chunks");
                    let (pool, pipeline) = (self.pool, self.pipeline);
                    retrying("discarding staged chunks", self.shutdown, async || {
                        let mut conn = pool.acquire().await?;
                        staging::delete_applied(&mut conn, pipeline, to).await
                    })
                    .await
                    .map_err(ApplyError::from)?;
                }
                Ok(())
            }
            Step::Replay { transactions } => self.add(tag, before, body.len(), transactions, None, transforms).await,
            Step::Gap { reached, prev_lsn } => {
                tracing::warn!(
                    %reached, %prev_lsn,
                    "a message starts at {prev_lsn} but the target holds only {reached}, and the prefetch window is full of messages held for their turn, so it is not applied"
                );
                self.settle_past_gap(tag).await
            }
            Step::MissingChunk {
                commit_lsn,
                expected,
                got,
            } => {
                tracing::warn!(
                    lsn = %commit_lsn, ?expected, got,
                    "chunk {got} of the transaction committed at {commit_lsn} arrived without the chunks before it, and the prefetch window is full of messages held for their turn, so nothing of it is applied"
                );
                self.settle_past_gap(tag).await
            }
            Step::Stage {
                commit_lsn,
                index,
                restart,
            } => {
                self.commit().await?;
                if restart {
                    tracing::info!(lsn = %commit_lsn, "a large transaction is being sent again; staging it from its first chunk");
                }
                let chunk = chunk.unwrap_or(crate::change::Chunk {
                    index,
                    last: false,
                    session: 0,
                });
                let (pool, pipeline) = (self.pool, self.pipeline);
                retrying("staging a chunk of a large transaction", self.shutdown, async || {
                    staging::stage(pool, pipeline, commit_lsn, prev_lsn, chunk, &body).await
                })
                .await
                .map_err(ApplyError::from)?;
                if index % 100 == 0 {
                    tracing::info!(lsn = %commit_lsn, chunk = index, "staging a large transaction");
                }
                self.ack(tag).await
            }
            Step::Finish {
                commit_lsn,
                index,
                prev_lsn,
            } => {
                self.commit().await?;
                self.finish(commit_lsn, index, prev_lsn, &body, &transforms).await?;
                self.ack(tag).await
            }
        }
    }

    /// Adds one message's transactions to the group, committing when it is full.
    async fn add(
        &mut self,
        tag: u64,
        before: Lsn,
        bytes: usize,
        transactions: Vec<Transaction>,
        to: Option<Lsn>,
        transforms: Vec<String>,
    ) -> Result<(), ApplyError> {
        if self.group.is_empty() {
            self.group.from = before;
        }
        self.group.changes += transactions.iter().map(|t| t.changes.len()).sum::<usize>();
        self.group.bytes += bytes;
        self.group.messages += 1;
        self.group.tags.push(tag);
        self.group.units.push(Unit {
            transactions,
            to,
            transforms,
        });
        // Commit before the group holds half of the prefetch window that held messages
        // leave: RabbitMQ sends no more than the window, and a group waiting for more
        // would wait for ever.
        let window = usize::from(self.opts.prefetch).saturating_sub(self.held.len());
        let full = self.group.changes >= self.opts.group_changes
            || self.group.bytes >= self.opts.group_bytes
            || self.group.messages >= (window / 2).max(1);
        if full {
            self.commit().await?;
        }
        Ok(())
    }

    /// Settles a delivery that needs no write: at once when nothing is pending before it,
    /// otherwise with the group, so that it joins the group's cumulative acknowledgement.
    async fn settle(&mut self, tag: u64) -> Result<(), ApplyError> {
        if self.group.is_empty() {
            self.ack(tag).await
        } else {
            self.group.tags.push(tag);
            Ok(())
        }
    }

    async fn ack(&mut self, tag: u64) -> Result<(), ApplyError> {
        self.acknowledge(vec![tag]).await
    }

    /// Acknowledges `tags`, whose effect is durable, without touching a held delivery.
    async fn acknowledge(&mut self, tags: Vec<u64>) -> Result<(), ApplyError> {
        for ack in self.ledger.done(tags) {
            match ack {
                Ack::Through(tag) => self.broker.ack_through(tag).await?,
                Ack::One(tag) => self.broker.ack_one(tag).await?,
            }
        }
        Ok(())
    }

    /// Checks that MariaDB answers, retrying with backoff (and so reporting) until it
    /// does. A shutdown abandons the check at once: it writes nothing.
    async fn ping(&self) -> Result<(), ApplyError> {
        let pool = self.pool;
        let check = retrying(
            "checking that MariaDB answers",
            self.shutdown,
            async || match tokio::time::timeout(PING_LIMIT, sqlx::query("SELECT 1").execute(pool)).await {
                Ok(done) => done.map(drop),
                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", PING_LIMIT.as_secs()),
                ))),
            },
        );
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(ApplyError::Stopped),
            checked = check => checked.map_err(ApplyError::from),
        }
    }

    /// Applies the held messages whose turn has come, in the order the assembler picks.
    async fn release_held(&mut self) -> Result<(), ApplyError> {
        while let Some(i) = self.assembler.next_held(self.held.iter().map(|h| &h.header)) {
            let held = self.held.remove(i);
            self.on_delivery(held.tag, held.body).await?;
        }
        Ok(())
    }

    /// A message past a gap, with no room left to hold it: it may be acknowledged
    /// unapplied only if the capture will send it again, which it does when the slot
    /// is not confirmed past what the target holds. Otherwise it may be the only copy,
    /// so the apply stops and leaves it in the queue.
    async fn settle_past_gap(&mut self, tag: u64) -> Result<(), ApplyError> {
        let reached = self.assembler.reached();
        match slot_position(self.source, self.pipeline).await {
            Ok(Some(confirmed)) if confirmed <= reached => {
                tracing::info!(
                    %confirmed, %reached,
                    "the replication slot is confirmed only up to {confirmed}, so the capture sends the message again; it is acknowledged unapplied"
                );
                self.settle(tag).await
            }
            slot => Err(ApplyError::Gap(format!(
                "messages of pipeline '{}' arrive out of order by more than the prefetch window ({} messages) can hold while waiting for the one that follows {reached}, and the replication slot is {}, so they may be the only copies; nothing was acknowledged, so nothing is lost: raise `prefetch` to at least that of any other apply of this pipeline, and start the apply again",
                self.pipeline,
                self.opts.prefetch,
                match slot {
                    Ok(Some(c)) => format!("confirmed up to {c}"),
                    Ok(None) => "gone".to_owned(),
                    Err(e) => format!("unreadable ({e})"),
                }
            ))),
        }
    }

    /// Adds to their targets the columns PostgreSQL gained, before `changes`
    /// apply; retried like any write.
    async fn add_columns<'c>(&mut self, changes: impl Iterator<Item = &'c Change> + Clone) -> Result<(), ApplyError> {
        let (pool, known, declared) = (self.pool, &mut self.known, &self.declared);
        retrying("adding new columns", self.shutdown, async || {
            add_new_columns(pool, known, declared, changes.clone()).await
        })
        .await
        .map_err(ApplyError::from)
    }

    /// Applies the group in one MariaDB transaction, then acknowledges it. A group
    /// that MariaDB refuses is retried one source transaction at a time, and each
    /// transaction it still refuses goes to the dead-letter queue.
    async fn commit(&mut self) -> Result<(), ApplyError> {
        if self.group.is_empty() {
            let tags = std::mem::take(&mut self.group.tags);
            return self.acknowledge(tags).await;
        }
        let group = std::mem::take(&mut self.group);
        let (pool, pipeline, max_bytes) = (self.pool, self.pipeline, self.statement_bytes);
        self.add_columns(
            group
                .units
                .iter()
                .flat_map(|u| &u.transactions)
                .flat_map(|t| &t.changes),
        )
        .await?;
        match retrying("applying a group of transactions", self.shutdown, async || {
            apply_units(pool, pipeline, group.from, &group.units, max_bytes).await
        })
        .await
        {
            Ok(()) => {}
            Err(Refused::Stopped) => return Err(ApplyError::Stopped),
            Err(Refused::Data(e)) => {
                if let Some(gap) = gap_error(&e) {
                    return Err(gap);
                }
                tracing::warn!(error = %e, "a group failed; applying its transactions one by one");
                let mut from = group.from;
                for unit in &group.units {
                    self.one_by_one(from, unit).await?;
                    from = unit.to.unwrap_or(from);
                }
            }
        }
        self.acknowledge(group.tags).await
    }

    /// Applies a unit's transactions each in a MariaDB transaction of its own, dead-lettering those MariaDB refuses.
    async fn one_by_one(&mut self, from: Lsn, unit: &Unit) -> Result<(), ApplyError> {
        let (pool, pipeline, max_bytes) = (self.pool, self.pipeline, self.statement_bytes);
        let count = unit.transactions.len();
        let mut from = from;
        // A unit without transactions (a heartbeat) still moves the offset.
        let singles: Vec<(Option<&Transaction>, Option<Lsn>)> = if count == 0 {
            vec![(None, unit.to)]
        } else {
            unit.transactions
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    // The last transaction also carries the unit's final position (which may cover empty transactions after it).
                    let to = unit.to.map(|to| if i + 1 == count { to } else { t.context.commit_lsn });
                    (Some(t), to)
                })
                .collect()
        };
        for (tx, to) in singles {
            let single = Unit {
                transactions: tx.cloned().into_iter().collect(),
                to,
                transforms: unit.transforms.clone(),
            };
            let applied = retrying("applying a transaction", self.shutdown, async || {
                apply_units(pool, pipeline, from, std::slice::from_ref(&single), max_bytes).await
            })
            .await;
            match applied {
                Ok(()) => {}
                Err(Refused::Stopped) => return Err(ApplyError::Stopped),
                Err(Refused::Data(e)) => {
                    if let Some(gap) = gap_error(&e) {
                        return Err(gap);
                    }
                    let Some(tx) = tx else { return Err(db_error(e)) };
                    // Only the data may be dead-lettered: if the offset cannot move either,
                    // the fault is the target's, and the transaction waits for it to be fixed.
                    let skip = Unit {
                        transactions: Vec::new(),
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
                    let mut message = Message::new(pipeline, &unit.transforms, vec![tx.clone()], tx.context.commit_lsn);
                    message.replay = unit.to.is_none();
                    self.broker.dead_letter_message(&message, &why).await?;
                    retrying(
                        "moving the offset past a dead-lettered transaction",
                        self.shutdown,
                        async || apply_units(pool, pipeline, from, std::slice::from_ref(&skip), max_bytes).await,
                    )
                    .await
                    .map_err(ApplyError::from)?;
                }
            }
            from = to.unwrap_or(from);
        }
        Ok(())
    }

    /// Applies a staged large transaction and its final chunk in one MariaDB transaction.
    async fn finish(
        &mut self,
        commit_lsn: Lsn,
        index: u32,
        prev_lsn: Lsn,
        last: &[u8],
        transforms: &[String],
    ) -> Result<(), ApplyError> {
        let (pool, pipeline, max_bytes) = (self.pool, self.pipeline, self.statement_bytes);
        let started = Instant::now();
        let final_chunk = decode_message(last, pipeline).map_err(ApplyError::Database)?;
        // Columns added in PostgreSQL: the final chunk's changes are checked; earlier chunks
        // carried the same columns unless the table changed inside the transaction.
        learn_targets(&mut self.declared, &final_chunk.targets);
        self.add_columns(final_chunk.transactions.iter().flat_map(|t| &t.changes))
            .await?;
        let applied = retrying("applying a large transaction", self.shutdown, async || {
            apply_staged(
                pool,
                pipeline,
                commit_lsn,
                index,
                prev_lsn,
                &final_chunk,
                transforms,
                max_bytes,
            )
            .await
        })
        .await;
        match applied {
            Ok(changes) => {
                tracing::info!(lsn = %commit_lsn, chunks = index + 1, changes, seconds = started.elapsed().as_secs_f64(), "applied a large transaction");
                Ok(())
            }
            Err(Refused::Stopped) => Err(ApplyError::Stopped),
            Err(Refused::Data(e)) => {
                if let Some(gap) = gap_error(&e) {
                    return Err(gap);
                }
                self.dead_letter_staged(commit_lsn, index, last, transforms, &e).await
            }
        }
    }

    /// Moves every chunk of a large transaction that MariaDB refused to the dead-letter queue, and the offset past it.
    async fn dead_letter_staged(
        &mut self,
        commit_lsn: Lsn,
        index: u32,
        last: &[u8],
        transforms: &[String],
        e: &sqlx::Error,
    ) -> Result<(), ApplyError> {
        let (pool, pipeline) = (self.pool, self.pipeline);
        tracing::error!(lsn = %commit_lsn, chunks = index + 1, error = %e, "MariaDB refused a large transaction; its chunks go to the dead-letter queue");
        let why = DeadLetter {
            stage: "apply",
            reason: format!("MariaDB refused the transaction ({} chunks): {e}", index + 1),
            lsn: commit_lsn.to_string(),
            table: String::new(),
        };
        let mut conn = pool.acquire().await.map_err(db_error)?;
        for k in 0..index {
            if let Some(body) = staging::chunk(&mut conn, pipeline, commit_lsn, k)
                .await
                .map_err(db_error)?
            {
                self.broker.dead_letter(&body, &why).await?;
            }
        }
        self.broker.dead_letter(last, &why).await?;
        let skip = Unit {
            transactions: Vec::new(),
            to: Some(commit_lsn),
            transforms: transforms.to_vec(),
        };
        let max_bytes = self.statement_bytes;
        retrying(
            "moving the offset past a dead-lettered transaction",
            self.shutdown,
            async || {
                let mut conn = pool.acquire().await?;
                staging::delete_transaction(&mut conn, pipeline, commit_lsn).await?;
                apply_units(pool, pipeline, Lsn(0), std::slice::from_ref(&skip), max_bytes).await
            },
        )
        .await
        .map_err(ApplyError::from)
    }

    /// The stream has a gap and the queue is quiet: if the slot has moved past the
    /// gap, the missing transactions will not be sent again, so the apply stops
    /// rather than wait for ever. Returns when the suspicion started.
    async fn check_gap(&mut self, suspected: Option<Instant>) -> Result<Option<Instant>, ApplyError> {
        let reached = self.assembler.reached();
        let confirmed = match slot_position(self.source, self.pipeline).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the slot's position to judge a gap in the queue; trying again");
                return Ok(suspected);
            }
        };
        let lost = confirmed.is_none_or(|c| c > reached);
        if !lost {
            tracing::info!(%reached, "waiting for the capture to send the missing transactions again");
            // The re-send includes the messages held for their turn: holding them longer
            // would only keep them from RabbitMQ's consumer timeout.
            let held: Vec<u64> = self.held.drain(..).map(|h| h.tag).collect();
            if !held.is_empty() {
                tracing::info!(messages = held.len(), "letting go of messages the capture sends again");
                self.acknowledge(held).await?;
                self.assembler.await_resend();
            }
            return Ok(None);
        }
        // Twice quiet, with the slot past the gap both times: a re-send would have arrived.
        match suspected {
            None => Ok(Some(Instant::now())),
            Some(_) => Err(ApplyError::Gap(format!(
                "the queue of pipeline '{}' is missing transactions after {reached}, and the replication slot is {}, so they will not be sent again: they left the queue without being applied (for example dead-lettered by RabbitMQ after its delivery limit, or purged); see `wasmcdc dlq list`, then run `wasmcdc slot drop` and start again (the initial copy re-copies the tables)",
                self.pipeline,
                confirmed.map_or_else(|| "gone".to_owned(), |c| format!("confirmed up to {c}"))
            ))),
        }
    }
}

/// The slot's `confirmed_flush_lsn`, or `None` when the slot does not exist.
async fn slot_position(source: &PgTarget, pipeline: &str) -> Result<Option<Lsn>, crate::source::SourceError> {
    let pg = tokio::time::timeout(Duration::from_secs(10), source.sql())
        .await
        .map_err(|_| crate::source::SourceError::Query("no answer within 10 s".into()))??;
    Ok(crate::source::slot_state(&pg, pipeline)
        .await?
        .map(|s| s.confirmed_flush))
}

/// The marker of an offsets row that moved under the apply, as an error.
const OFFSET_MOVED_BACK: &str = "the offsets row moved back";
/// The marker of a staged chunk that is not there.
const STAGED_CHUNK_MISSING: &str = "a staged chunk is missing";
/// The marker of a message in a format this version cannot read.
const NEWER_FORMAT: &str = "the message has format version";

/// Failures that no data causes and no retry cures: the apply stops with them.
fn gap_error(e: &sqlx::Error) -> Option<ApplyError> {
    match e {
        sqlx::Error::Protocol(m) if m.starts_with(OFFSET_MOVED_BACK) || m.starts_with(STAGED_CHUNK_MISSING) => {
            Some(ApplyError::Gap(m.clone()))
        }
        _ => None,
    }
}

/// Moves the offset past `skip` in a transaction that is rolled back: proves the offsets row is writable.
async fn check_offset_writable(pool: &MySqlPool, pipeline: &str, skip: &Unit) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Some(to) = skip.to {
        offsets::write(&mut tx, pipeline, to, &skip.transforms.join(",")).await?;
    }
    tx.rollback().await
}

/// Checks, under the offsets row's lock, that the target holds what `from` says.
fn check_from(pipeline: &str, from: Lsn, offset: Lsn) -> Result<(), sqlx::Error> {
    if offset < from {
        return Err(sqlx::Error::Protocol(format!(
            "{OFFSET_MOVED_BACK} for pipeline '{pipeline}': the apply had reached {from}, but the offsets table says {offset}; another process changed it, so the apply stops instead of leaving a gap; run `wasmcdc verify`"
        )));
    }
    Ok(())
}

/// One MariaDB transaction: every transaction above the recorded offset, and the new offset.
async fn apply_units(
    pool: &MySqlPool,
    pipeline: &str,
    from: Lsn,
    units: &[Unit],
    max_bytes: usize,
) -> Result<(), sqlx::Error> {
    let mut applied = crate::observe::Applied::begin();
    let mut tx = pool.begin().await?;
    let mut offset = offsets::lock(&mut tx, pipeline).await?;
    check_from(pipeline, from, offset)?;
    let start = offset;
    let mut transforms = None;
    for unit in units {
        for transaction in &unit.transactions {
            // Per transaction: a message re-sent after a restart may hold some that are applied.
            if unit.to.is_some() && transaction.context.commit_lsn <= offset {
                continue;
            }
            apply_changes(&mut tx, &transaction.changes, max_bytes).await?;
            applied.add(transaction);
        }
        if let Some(to) = unit.to.filter(|to| *to > offset) {
            offset = to;
            transforms = Some(unit.transforms.join(","));
        }
    }
    if let Some(transforms) = transforms.filter(|_| offset != start) {
        offsets::write(&mut tx, pipeline, offset, &transforms).await?;
    }
    tx.commit().await?;
    applied.committed();
    Ok(())
}

/// One MariaDB transaction: staged chunks `0..index` and the final chunk, the offset, and an empty staging table.
#[allow(clippy::too_many_arguments)]
async fn apply_staged(
    pool: &MySqlPool,
    pipeline: &str,
    commit_lsn: Lsn,
    index: u32,
    prev_lsn: Lsn,
    final_chunk: &Message,
    transforms: &[String],
    max_bytes: usize,
) -> Result<usize, sqlx::Error> {
    let mut applied = crate::observe::Applied::begin();
    let mut tx = pool.begin().await?;
    let offset = offsets::lock(&mut tx, pipeline).await?;
    if offset >= commit_lsn {
        staging::delete_applied(&mut tx, pipeline, offset).await?;
        tx.commit().await?;
        return Ok(0);
    }
    check_from(pipeline, prev_lsn, offset)?;
    let mut changes = 0;
    for k in 0..index {
        let body = staging::chunk(&mut tx, pipeline, commit_lsn, k).await?.ok_or_else(|| {
            sqlx::Error::Protocol(format!(
                "{STAGED_CHUNK_MISSING}: chunk {k} of the transaction committed at {commit_lsn} is not in {}; another process removed it, so the apply stops rather than apply part of the transaction; restart it, and the capture's re-send or `wasmcdc verify` tells what is missing",
                staging::STAGING_TABLE
            ))
        })?;
        // One chunk in memory at a time.
        let chunk = decode_message(&body, pipeline).map_err(sqlx::Error::Protocol)?;
        for t in &chunk.transactions {
            apply_changes(&mut tx, &t.changes, max_bytes).await?;
            applied.add(t);
            changes += t.changes.len();
        }
    }
    for t in &final_chunk.transactions {
        apply_changes(&mut tx, &t.changes, max_bytes).await?;
        applied.add(t);
        changes += t.changes.len();
    }
    staging::delete_applied(&mut tx, pipeline, commit_lsn).await?;
    offsets::write(&mut tx, pipeline, commit_lsn, &transforms.join(",")).await?;
    tx.commit().await?;
    applied.committed();
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ColumnDef, TableName};

    fn def(columns: &[(&str, &str)], key: &[&str]) -> TableDef {
        TableDef::plain(
            TableName::parse("public.codes").expect("valid"),
            columns
                .iter()
                .map(|(name, pg_type)| ColumnDef::named(name, pg_type))
                .collect(),
            key.iter().map(|k| (*k).to_string()).collect(),
        )
    }

    fn column(name: &str, column_type: &str, collation: &str, nullable: bool) -> TargetColumn {
        (name.into(), column_type.into(), collation.into(), nullable)
    }

    #[test]
    fn padded_key_text_is_refused_with_its_fix() {
        let keyed = def(
            &[("code", "text"), ("fixed", "character(2)"), ("label", "text")],
            &["code", "fixed"],
        );
        let exact = [
            column("code", "varchar(766)", "utf8mb4_nopad_bin", false),
            column("fixed", "char(2)", "utf8mb4_bin", false),
            column("label", "longtext", "utf8mb4_bin", true),
        ];
        assert_eq!(loose_collation(&keyed, &exact), None, "a non-key column may pad");
        let old = [
            column("code", "varchar(766)", "utf8mb4_bin", false),
            column("fixed", "char(2)", "utf8mb4_general_ci", false),
        ];
        let why = loose_collation(&keyed, &old).expect("refused");
        assert!(why.contains("code (utf8mb4_bin), fixed (utf8mb4_general_ci)"), "{why}");
        assert!(
            why.ends_with(
                "fix it with: ALTER TABLE `codes` MODIFY `code` varchar(766) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL, \
                 MODIFY `fixed` char(2) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"
            ),
            "{why}"
        );
        // Without a primary key, every column finds rows.
        let keyless = def(&[("a", "integer"), ("b", "character varying(5)")], &[]);
        let why = loose_collation(&keyless, &[column("b", "varchar(5)", "utf8mb4_bin", true)]).expect("refused");
        assert!(
            why.contains("MODIFY `b` varchar(5) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL"),
            "{why}"
        );
    }
}
