//! `wasmcdc capture`: read the slot, transform, publish.

use sqlx::MySqlPool;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{Error, live_chain, load_chain, offsets, source_tables, step};
use crate::apply;
use crate::config::Settings;
use crate::pipeline::{self, Facts, Offsets, Plan, Start, Up};
use crate::queue::Broker;
use crate::queue::capture;
use crate::source;

pub(super) async fn run(settings: &Settings, shutdown: CancellationToken, up: &Up) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    let chain = load_chain(settings)?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    // The capture creates the slot, and with it a fresh start, only for a pipeline that never ran.
    let plan = match plan(settings, &pg, &broker).await {
        Ok(Plan::CreateSlot) => start_new(settings, &target, &pg, &defs).await,
        other => other.map(|_| ()),
    };
    drop(pg);
    if let Err(e) = plan {
        broker.close().await;
        return Err(e);
    }
    up.mark_up();
    let result = capture::run(
        &settings.slot,
        &target,
        &defs,
        live_chain(settings, chain)?,
        &broker,
        &settings.capture_options(),
        shutdown,
    )
    .await;
    broker.close().await;
    Ok(result?)
}

/// Resume or create the slot; an error when the slot is missing and the pipeline has history.
async fn plan(settings: &Settings, pg: &Client, broker: &Broker) -> Result<Plan, Error> {
    let slot = step(
        "reading the replication slot from PostgreSQL",
        source::slot_state(pg, &settings.slot),
    )
    .await?;
    let mut facts = Facts {
        slot: slot.map(|s| s.confirmed_flush),
        offsets: Offsets::Unknown,
        queued: 0,
        dead_letters: 0,
    };
    if facts.slot.is_none() {
        facts.offsets = target_offsets(settings).await;
        // Declared already: a queue that did not exist is empty now.
        let (queued, dead_letters) = step("reading the queue depths from RabbitMQ", broker.depths()).await?;
        (facts.queued, facts.dead_letters) = (queued.into(), dead_letters.into());
    }
    let plan = pipeline::decide(Start::Capture, &settings.slot, &facts);
    match plan {
        Plan::Refuse(refusal) => Err(refusal.into()),
        Plan::CreateSlot => {
            tracing::info!(pipeline = %settings.slot, "a new pipeline: creating its replication slot");
            Ok(plan)
        }
        _ => Ok(plan),
    }
}

/// Creates a new pipeline's slot and records its starting point as the target's offset,
/// so that the apply knows where the stream begins (the stream's first message names it).
/// The target gets no initial copy this way: `wasmcdc run` makes one.
async fn start_new(
    settings: &Settings,
    target: &source::PgTarget,
    pg: &Client,
    defs: &[crate::catalog::TableDef],
) -> Result<(), Error> {
    let slot = source::ensure_slot(target, pg, &settings.slot).await?;
    let recorded = async {
        let pool = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
        step("creating the target tables in MariaDB", apply::prepare(&pool, defs)).await?;
        step(
            "recording the pipeline's start in MariaDB",
            apply::set_offset(&pool, &settings.slot, slot.confirmed_flush),
        )
        .await?;
        Ok::<_, Error>(())
    };
    if let Err(e) = recorded.await {
        // Without its start recorded the new slot would look like one that ran ahead of the target.
        source::drop_slot(pg, &settings.slot).await?;
        return Err(e);
    }
    tracing::info!(pipeline = %settings.slot, from = %slot.confirmed_flush, "a new pipeline starts streaming from its slot's consistent point");
    Ok(())
}

/// Whether the offsets table exists: on a target where no pipeline ever ran, it does not.
async fn offsets_table_exists(pool: &MySqlPool) -> Result<bool, Error> {
    sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(apply::OFFSETS_TABLE)
    .fetch_one(pool)
    .await
    .map(|n| n > 0)
    .map_err(|e| Error::Other(format!("cannot read MariaDB's list of tables: {e}")))
}

/// The offsets row, or `Unknown` when MariaDB cannot be read.
async fn target_offsets(settings: &Settings) -> Offsets {
    let read = async {
        let pool = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
        if !step("looking for the offsets table in MariaDB", offsets_table_exists(&pool)).await? {
            return Ok(None);
        }
        step(
            "reading the offsets row from MariaDB",
            apply::progress(&pool, &settings.slot),
        )
        .await
    };
    match read.await {
        Ok(progress) => offsets(progress),
        Err(e) => {
            tracing::warn!(pipeline = %settings.slot, "cannot read the target's offsets: {e}");
            Offsets::Unknown
        }
    }
}
