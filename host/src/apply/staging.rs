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
use crate::change::Lsn;

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
           body LONGBLOB NOT NULL, \
           PRIMARY KEY (pipeline, commit_lsn, chunk)\
         ) ENGINE=InnoDB",
        my_ident(STAGING_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await.map_err(db_error)?;
    Ok(())
}

/// The transaction staged for `pipeline`, if its chunks are whole from the first
/// and it is above `offset`; anything else staged is thrown away.
pub(super) async fn restore(pool: &MySqlPool, pipeline: &str, offset: Lsn) -> Result<Option<Staged>, ApplyError> {
    let sql = format!(
        "SELECT commit_lsn, prev_lsn, COUNT(*), MAX(chunk) FROM {} WHERE pipeline = ? GROUP BY commit_lsn, prev_lsn",
        my_ident(STAGING_TABLE)
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .fetch_all(pool)
        .await
        .map_err(db_error)?;
    let staged = match rows.as_slice() {
        [r] if r.get::<i64, _>(2) == i64::from(r.get::<u32, _>(3)) + 1 && r.get::<u64, _>(0) > offset.0 => {
            Some(Staged {
                commit_lsn: Lsn(r.get(0)),
                prev_lsn: Lsn(r.get(1)),
                next: r.get::<u32, _>(3) + 1,
            })
        }
        [] => None,
        _ => {
            clear(pool, pipeline).await.map_err(db_error)?;
            None
        }
    };
    if let Some(s) = staged {
        tracing::info!(lsn = %s.commit_lsn, chunks = s.next, "resuming a large transaction staged before");
    }
    Ok(staged)
}

/// Stages one chunk; the first chunk replaces whatever was staged before.
pub(super) async fn stage(
    pool: &MySqlPool,
    pipeline: &str,
    commit_lsn: Lsn,
    prev_lsn: Lsn,
    index: u32,
    body: &[u8],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if index == 0 {
        delete(&mut tx, pipeline).await?;
    }
    let sql = format!(
        "INSERT INTO {} (pipeline, commit_lsn, chunk, prev_lsn, body) VALUES (?, ?, ?, ?, ?)",
        my_ident(STAGING_TABLE)
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(pipeline)
        .bind(commit_lsn.0)
        .bind(index)
        .bind(prev_lsn.0)
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

/// Removes everything `pipeline` has staged, inside `tx`.
pub(super) async fn delete(tx: &mut sqlx::MySqlConnection, pipeline: &str) -> Result<(), sqlx::Error> {
    let sql = format!("DELETE FROM {} WHERE pipeline = ?", my_ident(STAGING_TABLE));
    sqlx::query(AssertSqlSafe(sql)).bind(pipeline).execute(&mut *tx).await?;
    Ok(())
}

/// Removes everything `pipeline` has staged.
pub(super) async fn clear(pool: &MySqlPool, pipeline: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    delete(&mut conn, pipeline).await
}
