//! The offsets table: per pipeline, the last applied commit LSN, written in
//! the same MariaDB transaction as the changes it accounts for.

use serde::{Deserialize, Serialize};
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
           copy_progress VARCHAR(1024) NOT NULL DEFAULT '', \
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
        "copy_progress VARCHAR(1024) NOT NULL DEFAULT '' AFTER applier",
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
    /// How far the initial copy has come, while it runs.
    pub copy: Option<CopyProgress>,
}

/// The initial copy's progress, as the copying process last recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// The table being copied.
    pub table: String,
    /// Its rows copied so far.
    pub copied: u64,
    /// Its rows in all, as counted in the snapshot.
    pub total: Option<u64>,
    /// Rows per second since its copy started.
    pub rows_per_second: f64,
    /// Seconds left for it at that rate.
    pub eta_seconds: Option<f64>,
    /// Tables copied before it.
    pub tables_done: usize,
    /// Tables to copy in all.
    pub tables: usize,
}

impl CopyProgress {
    /// The progress of copying `table`, the one after `tables_done` of `tables`.
    pub fn new(table: &str, rate: &crate::progress::Rate, tables_done: usize, tables: usize) -> Self {
        CopyProgress {
            table: table.to_owned(),
            copied: rate.done,
            total: rate.total,
            rows_per_second: rate.per_second,
            eta_seconds: rate.eta_seconds,
            tables_done,
            tables,
        }
    }

    /// `public.orders (table 1 of 2): 120000 of 500000 rows (24%), 40000 rows/s, about 10 s left`.
    pub fn describe(&self) -> String {
        let rate = crate::progress::Rate {
            done: self.copied,
            total: self.total,
            per_second: self.rows_per_second,
            eta_seconds: self.eta_seconds,
        };
        format!(
            "{} (table {} of {}): {}",
            self.table,
            self.tables_done + 1,
            self.tables,
            rate.describe("rows")
        )
    }
}

/// Records how far the initial copy of `pipeline` has come, for `wasmcdc status`.
pub async fn record_copy(pool: &MySqlPool, pipeline: &str, copy: &CopyProgress) -> Result<(), ApplyError> {
    let sql = format!(
        "UPDATE {} SET copy_progress = ? WHERE pipeline = ?",
        my_ident(OFFSETS_TABLE)
    );
    let json = serde_json::to_string(copy).map_err(|e| ApplyError::Database(e.to_string()))?;
    sqlx::query(AssertSqlSafe(sql))
        .bind(json)
        .bind(pipeline)
        .execute(pool)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// `pipeline`'s row in the offsets table, if it has one.
pub async fn offsets_row(pool: &MySqlPool, pipeline: &str) -> Result<Option<OffsetsRow>, ApplyError> {
    let select = |copy: &str| {
        format!(
            "SELECT lsn, state, transforms, applier, TIMESTAMPDIFF(SECOND, updated_at, UTC_TIMESTAMP(6)), {copy} \
             FROM {} WHERE pipeline = ?",
            my_ident(OFFSETS_TABLE)
        )
    };
    let read = async |sql: String| {
        sqlx::query(AssertSqlSafe(sql))
            .bind(pipeline)
            .fetch_optional(pool)
            .await
    };
    let row = match read(select("copy_progress")).await {
        // A table of an earlier version, which only `run` or `apply` brings up to date:
        // `status` reads it as it is.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42S22") => read(select("''")).await,
        other => other,
    }
    .map_err(db_error)?;
    Ok(row.map(|r| OffsetsRow {
        progress: match r.get::<String, _>(1).as_str() {
            "copying" => Progress::Copying,
            _ => Progress::Applied(Lsn(r.get::<u64, _>(0))),
        },
        transforms: r.get(2),
        applier: r.get(3),
        seconds_since_commit: r.get::<Option<i64>, _>(4).unwrap_or_default(),
        // Written by this version's copy; anything else reads as no progress.
        copy: serde_json::from_str(&r.get::<String, _>(5)).ok(),
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
         copy_progress = '', updated_at = VALUES(updated_at)",
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
