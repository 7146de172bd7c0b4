//! The offsets table: per pipeline, the last applied commit LSN, written in
//! the same MariaDB transaction as the changes it accounts for.

use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Row};

use super::{ApplyError, db_error};
use crate::catalog::my_ident;
use crate::change::Lsn;

/// The table that records, per pipeline, the last applied commit LSN.
pub const OFFSETS_TABLE: &str = "wasmcdc_offsets";

/// Creates the offsets table, and adds the columns later versions need to one made by an earlier version.
pub(super) async fn create(pool: &MySqlPool) -> Result<(), ApplyError> {
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {} (\
           pipeline VARCHAR(63) NOT NULL PRIMARY KEY, \
           lsn BIGINT UNSIGNED NOT NULL, \
           lsn_text VARCHAR(20) NOT NULL, \
           state VARCHAR(16) NOT NULL DEFAULT 'streaming', \
           transforms VARCHAR(2048) NOT NULL DEFAULT '', \
           applier VARCHAR(255) NOT NULL DEFAULT '', \
           updated_at DATETIME(6) NOT NULL\
         ) ENGINE=InnoDB",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(create))
        .execute(pool)
        .await
        .map_err(db_error)?;
    for column in [
        "state VARCHAR(16) NOT NULL DEFAULT 'streaming' AFTER lsn_text",
        "transforms VARCHAR(2048) NOT NULL DEFAULT '' AFTER state",
        "applier VARCHAR(255) NOT NULL DEFAULT '' AFTER transforms",
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
    /// The apply process that committed last (`host:pid`); empty before the first commit.
    pub applier: String,
    /// Seconds since that commit.
    pub seconds_since_commit: i64,
}

/// `pipeline`'s row in the offsets table, if it has one.
pub async fn offsets_row(pool: &MySqlPool, pipeline: &str) -> Result<Option<OffsetsRow>, ApplyError> {
    let sql = format!(
        "SELECT lsn, state, transforms, applier, TIMESTAMPDIFF(SECOND, updated_at, UTC_TIMESTAMP(6)) \
         FROM {} WHERE pipeline = ?",
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
        applier: r.get(3),
        seconds_since_commit: r.get::<Option<i64>, _>(4).unwrap_or_default(),
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

/// Gives `pipeline` a row, at LSN 0, unless it has one.
pub(super) async fn ensure_row(pool: &MySqlPool, pipeline: &str) -> Result<(), ApplyError> {
    let insert = format!(
        "INSERT IGNORE INTO {} (pipeline, lsn, lsn_text, updated_at) VALUES (?, 0, '0/0', UTC_TIMESTAMP(6))",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(insert))
        .bind(pipeline)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
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

/// Forgets `pipeline`'s offset and anything it had staged.
pub async fn forget_offset(pool: &MySqlPool, pipeline: &str) -> Result<(), ApplyError> {
    for table in [OFFSETS_TABLE, super::staging::STAGING_TABLE] {
        let sql = format!("DELETE FROM {} WHERE pipeline = ?", my_ident(table));
        match sqlx::query(AssertSqlSafe(sql)).bind(pipeline).execute(pool).await {
            Ok(_) => {}
            // No such table: nothing to forget.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42S02") => {}
            Err(e) => return Err(db_error(e)),
        }
    }
    Ok(())
}

/// Locks `pipeline`'s row for the rest of `tx` and reads its LSN.
pub(super) async fn lock(tx: &mut sqlx::MySqlConnection, pipeline: &str) -> Result<Lsn, sqlx::Error> {
    let select = format!(
        "SELECT lsn FROM {} WHERE pipeline = ? FOR UPDATE",
        my_ident(OFFSETS_TABLE)
    );
    Ok(sqlx::query(AssertSqlSafe(select))
        .bind(pipeline)
        .fetch_optional(&mut *tx)
        .await?
        .map_or(Lsn(0), |r| Lsn(r.get::<u64, _>(0))))
}

/// Moves `pipeline`'s offset inside `tx`, naming the apply process that did it.
pub(super) async fn write(
    tx: &mut sqlx::MySqlConnection,
    pipeline: &str,
    lsn: Lsn,
    transforms: &str,
) -> Result<(), sqlx::Error> {
    let update = format!(
        "UPDATE {} SET lsn = ?, lsn_text = ?, transforms = ?, applier = ?, updated_at = UTC_TIMESTAMP(6) \
         WHERE pipeline = ?",
        my_ident(OFFSETS_TABLE)
    );
    sqlx::query(AssertSqlSafe(update))
        .bind(lsn.0)
        .bind(lsn.to_string())
        .bind(transforms)
        .bind(applier())
        .bind(pipeline)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// This process, as `status` names the active apply: `host:pid`.
pub fn applier() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
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
