//! `wasmcdc status`: where the pipeline stands.

use sqlx::mysql::MySqlDatabaseError;
use sqlx::{MySqlPool, Row};

use super::{Error, close, step, within};
use crate::apply::{self, Progress};
use crate::config::{Settings, mask_url};
use crate::queue::Broker;
use crate::source::{PgTarget, SourceError};

pub(super) async fn run(settings: &Settings) -> Result<(), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = step("connecting to PostgreSQL", target.sql()).await?;
    println!("pipeline: {}", settings.slot);
    println!("source: {}", mask_url(&settings.pg_url));
    let lag = step("reading the replication slot from PostgreSQL", async {
        pg.query_opt(
            "SELECT s.confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
                    s.active, coalesce(s.wal_status, ''), \
                    coalesce(round(extract(epoch FROM r.flush_lag)::numeric, 3)::text || ' s', 'none measured') \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&settings.slot],
        )
        .await
        .map_err(SourceError::from)
    })
    .await?;
    match lag {
        // flush_lag: how long the server has recently waited for the pipeline to confirm what it sent.
        Some(r) => println!(
            "slot: confirmed {}, lag {} bytes, time lag {}, {}, wal_status {}",
            r.get::<_, Option<String>>(0).unwrap_or_default(),
            r.get::<_, Option<i64>>(1).unwrap_or_default(),
            r.get::<_, String>(4),
            if r.get::<_, bool>(2) { "active" } else { "inactive" },
            r.get::<_, String>(3)
        ),
        None => println!("slot: none (it is created by `wasmcdc run` or `wasmcdc capture`)"),
    }
    let broker = step(
        "connecting to RabbitMQ",
        Broker::connect(&settings.amqp_url, &settings.slot),
    )
    .await?;
    // An error here means the queue does not exist.
    match within("reading the queue depth from RabbitMQ", broker.depths()).await? {
        Ok((ready, dead)) => {
            println!("queue: {ready} messages ready");
            println!("dead letters: {dead}");
        }
        Err(_) => println!("queue: none (it is created by `wasmcdc run`)"),
    }
    close(broker).await;
    let pool = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
    match within(
        "reading the offsets row from MariaDB",
        apply::offsets_row(&pool, &settings.slot),
    )
    .await?
    {
        Ok(Some(row)) => {
            match row.progress {
                Progress::Copying => println!("applied: the initial copy is in progress"),
                Progress::Applied(lsn) => println!("applied: up to {lsn}"),
            }
            if row.transforms.is_empty() {
                println!("transforms in use: none (changes pass through unchanged)");
            } else {
                println!("transforms in use (SHA-256, chain order): {}", row.transforms);
            }
        }
        _ => println!("applied: nothing yet"),
    }
    let active = step(
        "reading the active apply from MariaDB",
        active_apply(&pool, &settings.slot),
    )
    .await?;
    match active {
        Some((applier, ago)) => println!("active apply: {applier} (last commit {ago} s ago)"),
        None => println!("active apply: none recorded"),
    }
    Ok(())
}

/// The apply that last committed for `pipeline` (`host:pid`) and how many seconds ago.
///
/// The queue is single-active-consumer, so only one apply commits, and it records itself in the
/// offsets row. Offsets tables made before that column existed have nothing to show.
async fn active_apply(pool: &MySqlPool, pipeline: &str) -> Result<Option<(String, i64)>, Error> {
    let read = sqlx::query(
        "SELECT applier, TIMESTAMPDIFF(SECOND, updated_at, UTC_TIMESTAMP(6)) FROM `wasmcdc_offsets` WHERE pipeline = ?",
    )
    .bind(pipeline)
    .fetch_optional(pool)
    .await;
    let row = match read {
        Ok(row) => row,
        // 1054: no applier column yet; 1146: no offsets table yet.
        Err(sqlx::Error::Database(db))
            if db
                .try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|e| matches!(e.number(), 1054 | 1146)) =>
        {
            None
        }
        Err(e) => return Err(Error::Other(format!("cannot read the active apply from MariaDB: {e}"))),
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let applier: Option<String> = row
        .try_get(0)
        .map_err(|e| Error::Other(format!("cannot read the active apply from MariaDB: {e}")))?;
    let ago: Option<i64> = row
        .try_get(1)
        .map_err(|e| Error::Other(format!("cannot read the active apply from MariaDB: {e}")))?;
    Ok(applier
        .filter(|a| !a.is_empty())
        .map(|a| (a, ago.unwrap_or_default().max(0))))
}
