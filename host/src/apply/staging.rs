//! Chunks of large source transactions, staged in MariaDB until the last arrives.
//!
//! Each chunk is written to the staging table in a transaction of its own and
//! acknowledged at once, so neither the prefetch window, the consumer timeout
//! nor memory bounds the size of a source transaction. The final chunk applies
//! every staged chunk, one at a time, in the one MariaDB transaction that also
//! moves the offset and empties the staging rows: the target sees the whole
//! source transaction or none of it.

use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Row};

use super::assembler::Staged;
use super::{ApplyError, db_error};
use crate::catalog::my_ident;
use crate::change::{Chunk, Lsn};

/// The table that holds staged chunks, per pipeline.
pub const STAGING_TABLE: &str = "wasmcdc_staged";

/// Creates the staging table.
pub(super) async fn create(pool: &MySqlPool) -> Result<(), ApplyError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (\
           pipeline VARCHAR(63) NOT NULL, \
           commit_lsn BIGINT UNSIGNED NOT NULL, \
           chunk INT UNSIGNED NOT NULL, \
           prev_lsn BIGINT UNSIGNED NOT NULL, \
           session BIGINT UNSIGNED NOT NULL, \
           body LONGBLOB NOT NULL, \
           PRIMARY KEY (pipeline, commit_lsn, chunk)\
         ) ENGINE=InnoDB",
        my_ident(STAGING_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await.map_err(db_error)?;
    Ok(())
}

/// The transaction staged for `pipeline` above `offset`, if its chunks are whole from the first.
///
/// Chunks of transactions at or below the offset are applied already and are removed.
/// Anything else that does not continue from a first chunk is left for the first chunk
/// of its transaction to replace, and is not resumed.
pub(super) async fn restore(pool: &MySqlPool, pipeline: &str, offset: Lsn) -> Result<Option<Staged>, ApplyError> {
    let mut conn = pool.acquire().await.map_err(db_error)?;
    delete_applied(&mut conn, pipeline, offset).await.map_err(db_error)?;
    let sql = format!(
        "SELECT commit_lsn, prev_lsn, session, COUNT(*), MAX(chunk) FROM {} WHERE pipeline = ? \
         GROUP BY commit_lsn, prev_lsn, session ORDER BY commit_lsn DESC",
        my_ident(STAGING_TABLE)
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let staged = match rows.as_slice() {
        [r] if r.get::<i64, _>(3) == i64::from(r.get::<u32, _>(4)) + 1 => Some(Staged {
            commit_lsn: Lsn(r.get(0)),
            prev_lsn: Lsn(r.get(1)),
            session: r.get(2),
            next: r.get::<u32, _>(4) + 1,
        }),
        _ => None,
    };
    if let Some(s) = staged {
        tracing::info!(lsn = %s.commit_lsn, chunks = s.next, "resuming a large transaction staged before");
    }
    Ok(staged)
}

/// Stages one chunk; the first chunk replaces any earlier copy of its transaction.
pub(super) async fn stage(
    pool: &MySqlPool,
    pipeline: &str,
    commit_lsn: Lsn,
    prev_lsn: Lsn,
    chunk: Chunk,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if chunk.index == 0 {
        delete_transaction(&mut tx, pipeline, commit_lsn).await?;
    }
    // A retry after a COMMIT whose outcome was lost finds the row there: same chunk, same body.
    let sql = format!(
        "INSERT INTO {} (pipeline, commit_lsn, chunk, prev_lsn, session, body) VALUES (?, ?, ?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE prev_lsn = VALUES(prev_lsn), session = VALUES(session), body = VALUES(body)",
        my_ident(STAGING_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(commit_lsn.0)
        .bind(chunk.index)
        .bind(prev_lsn.0)
        .bind(chunk.session)
        .bind(body)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The body of staged chunk `index`, read inside `tx`.
pub(super) async fn chunk(
    tx: &mut sqlx::MySqlConnection,
    pipeline: &str,
    commit_lsn: Lsn,
    index: u32,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let sql = format!(
        "SELECT body FROM {} WHERE pipeline = ? AND commit_lsn = ? AND chunk = ?",
        my_ident(STAGING_TABLE)
    );
    Ok(sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(commit_lsn.0)
        .bind(index)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.get(0)))
}

/// Removes the staged chunks of the transaction committed at `commit_lsn`, inside `tx`.
///
/// Deletes are always this narrow: another apply that RabbitMQ made active while this
/// one still ran may be staging another transaction.
pub(super) async fn delete_transaction(
    tx: &mut sqlx::MySqlConnection,
    pipeline: &str,
    commit_lsn: Lsn,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "DELETE FROM {} WHERE pipeline = ? AND commit_lsn = ?",
        my_ident(STAGING_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(commit_lsn.0)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Removes the staged chunks of transactions at or below `offset`, which are applied.
pub(super) async fn delete_applied(
    tx: &mut sqlx::MySqlConnection,
    pipeline: &str,
    offset: Lsn,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "DELETE FROM {} WHERE pipeline = ? AND commit_lsn <= ?",
        my_ident(STAGING_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(offset.0)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
