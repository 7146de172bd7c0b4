//! The initial copy: rows that existed before the pipeline started.
//!
//! The slot is created with an exported snapshot, and the rows are read inside
//! that snapshot, so the copy holds exactly the transactions committed before
//! the slot's consistent point and the stream holds exactly those after it:
//! nothing is missed or doubled at the seam. The offsets row says `copying`
//! until every copied row is committed in MariaDB; only then does it move to the
//! consistent point, and only then is the slot ever confirmed past it. A copy
//! interrupted by a crash is found at the next start and redone from scratch.

use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPool;
use tokio_postgres::SimpleQueryMessage;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApplyError, CopyProgress};
use crate::catalog::{TableDef, pg_ident};
use crate::change::{Change, Column, Lsn, Op, TxContext, Value};
use crate::progress::Progress;
use crate::queue::capture::{transform_changes, with_insert_key};
use crate::queue::{Broker, QueueError};
use crate::source::replication::quote_ident;
use crate::source::wal2json::{BYTEA, value_from_text};
use crate::source::{PgTarget, SourceError};
use crate::transform::TransformChain;

/// Rows read and written per batch.
const BATCH: usize = 2_000;
/// How often the copy's progress is written to the offsets row, for `wasmcdc status`.
const RECORD_EVERY: Duration = Duration::from_secs(2);

/// Why the copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// PostgreSQL.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// MariaDB.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// RabbitMQ (dead letters).
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Creates the slot with an exported snapshot and copies every table into
/// MariaDB from it. Returns the consistent point the stream starts from, or
/// `None` when `shutdown` fired first (the copy is redone next time).
pub async fn initial_copy(
    pipeline: &str,
    target: &PgTarget,
    defs: &[TableDef],
    chain: &mut TransformChain,
    pool: &MySqlPool,
    broker: &Broker,
    shutdown: &CancellationToken,
) -> Result<Option<Lsn>, SnapshotError> {
    let targets: Vec<String> = defs.iter().map(|d| d.name.target()).collect();
    apply::begin_copy(pool, pipeline, &targets).await?;
    chain.stop_when(shutdown.clone());

    // The exported snapshot lives as long as this connection stays idle.
    let mut repl = target.replication().await?;
    let create = format!(
        "CREATE_REPLICATION_SLOT {} LOGICAL wal2json (SNAPSHOT 'export')",
        quote_ident(pipeline)
    );
    let row = repl
        .simple_query(&create)
        .await
        .map_err(|e| target.replication_error(e))?
        .into_iter()
        .next()
        .ok_or_else(|| SourceError::Replication("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let consistent: Lsn = field(1)
        .parse()
        .map_err(|e| SourceError::Replication(format!("CREATE_REPLICATION_SLOT returned a bad LSN: {e}")))?;
    let snapshot = field(2);
    tracing::info!(pipeline, %consistent, snapshot, "created replication slot; copying existing rows");

    let pg = target.sql().await?;
    let query = SourceError::from;
    pg.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
        snapshot.replace('\'', "''")
    ))
    .await
    .map_err(query)?;
    let context = TxContext {
        xid: 0,
        commit_lsn: consistent,
        commit_time: String::new(),
    };
    let mut known = apply::KnownColumns::default();
    for (done, def) in defs.iter().enumerate() {
        let started = Instant::now();
        let total: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {}", def.name.pg_quoted()), &[])
            .await
            .map_err(query)?
            .get(0);
        crate::observe::copy_started(&def.name, total);
        let mut progress = Progress::start(
            format!("initial copy of {}", def.name),
            "rows",
            u64::try_from(total).ok(),
        );
        let mut recorded: Option<Instant> = None;
        let exprs: Vec<String> = def
            .columns
            .iter()
            .map(|c| match c.type_oid {
                BYTEA => format!("encode({}, 'hex')", pg_ident(&c.name)),
                _ => format!("{}::text", pg_ident(&c.name)),
            })
            .collect();
        pg.batch_execute(&format!(
            "DECLARE wasmcdc_copy NO SCROLL CURSOR FOR SELECT {} FROM {}",
            exprs.join(", "),
            def.name.pg_quoted()
        ))
        .await
        .map_err(query)?;
        loop {
            if shutdown.is_cancelled() {
                tracing::info!(
                    pipeline,
                    "initial copy interrupted; it starts again from the beginning next time"
                );
                return Ok(None);
            }
            let messages = pg
                .simple_query(&format!("FETCH {BATCH} FROM wasmcdc_copy"))
                .await
                .map_err(query)?;
            let mut fetched_rows = Vec::with_capacity(BATCH);
            for message in messages {
                let SimpleQueryMessage::Row(r) = message else { continue };
                let mut columns = Vec::with_capacity(def.columns.len());
                for (i, c) in def.columns.iter().enumerate() {
                    let value = match r.get(i) {
                        None => Value::Null,
                        Some(text) => value_from_text(c.type_oid, &c.pg_type, text.to_owned())
                            .map_err(|e| SourceError::Query(format!("cannot read {}.{}: {e}", def.name, c.name)))?,
                    };
                    columns.push(Column {
                        name: c.name.clone(),
                        pg_type: c.pg_type.clone(),
                        value,
                    });
                }
                let change = Change {
                    op: Op::Insert,
                    schema: def.name.schema.clone(),
                    table: def.name.name.clone(),
                    columns,
                    key: Vec::new(),
                };
                fetched_rows.push(if chain.is_empty() {
                    change
                } else {
                    with_insert_key(change, &def.primary_key)
                });
            }
            // The cursor's end decides when the table is done, not what the
            // chain kept: a filter may drop a whole batch.
            let fetched = fetched_rows.len();
            if fetched == 0 {
                break;
            }
            let mut rows = Vec::with_capacity(fetched);
            if !transform_changes(pipeline, chain, broker, fetched_rows, &context, &mut rows).await? {
                tracing::info!(
                    pipeline,
                    "initial copy interrupted; it starts again from the beginning next time"
                );
                return Ok(None);
            }
            apply::write_rows(
                pool,
                &mut known,
                broker,
                pipeline,
                chain.hashes(),
                chain.targets(),
                &context,
                &rows,
            )
            .await?;
            progress.advance(fetched as u64);
            let rate = progress.rate();
            crate::observe::copied(&def.name, fetched, &rate);
            if recorded.is_none_or(|at| at.elapsed() >= RECORD_EVERY) {
                recorded = Some(Instant::now());
                let copy = CopyProgress::new(&def.name.to_string(), &rate, done, defs.len());
                apply::record_copy(pool, pipeline, &copy).await?;
            }
        }
        pg.batch_execute("CLOSE wasmcdc_copy").await.map_err(query)?;
        let rows = progress.rate().done;
        progress.finish();
        tracing::info!(table = %def.name, rows, seconds = started.elapsed().as_secs_f64(), "copied");
    }
    pg.batch_execute("COMMIT").await.map_err(query)?;
    apply::set_offset(pool, pipeline, consistent).await?;
    drop(repl);
    Ok(Some(consistent))
}
