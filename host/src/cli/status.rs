//! `wasmcdc status`: where the pipeline stands.

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
    Ok(())
}
