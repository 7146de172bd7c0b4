//! `wasmcdc run`: capture and apply in one process.

use tokio_util::sync::CancellationToken;

use super::{Error, live_chain, load_chain, offsets, source_tables};
use crate::apply;
use crate::config::Settings;
use crate::pipeline::Up;
use crate::pipeline::{self, Facts, Plan, Start};
use crate::queue::Broker;
use crate::queue::capture;
use crate::source;
use crate::source::snapshot;

pub(super) async fn run(settings: &Settings, shutdown: CancellationToken, up: &Up) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    let chain = load_chain(settings)?;
    // Watch from the start, so a module replaced during the initial copy is not missed.
    let mut transforms = live_chain(settings, chain)?;
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::prepare(&pool, &defs).await?;
    let publisher = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    publisher.declare().await?;
    let consumer = Broker::connect(&settings.amqp_url, &settings.slot).await?;

    // Fail closed when the slot cannot deliver what the target is missing.
    let (ready, dead_letters) = publisher.depths().await?;
    // Another apply (a standby that took over) may hold the backlog unacknowledged, which
    // RabbitMQ does not count as ready: then the queue is not known to be empty.
    let queued = if publisher.consumers().await? > 0 {
        ready.max(1)
    } else {
        ready
    };
    let facts = Facts {
        slot: source::slot_state(&pg, &settings.slot)
            .await?
            .map(|s| s.confirmed_flush),
        offsets: offsets(apply::progress(&pool, &settings.slot).await?),
        queued: queued.into(),
        dead_letters: dead_letters.into(),
    };
    let copy = match pipeline::decide(Start::Run, &settings.slot, &facts) {
        Plan::Refuse(refusal) => return Err(refusal.into()),
        Plan::RedoCopy => {
            tracing::warn!(pipeline = %settings.slot, "the initial copy was interrupted; starting it again with a new slot");
            source::drop_slot(&pg, &settings.slot).await?;
            true
        }
        Plan::Copy => true,
        Plan::Resume | Plan::CreateSlot => false,
    };
    if copy {
        let copied = snapshot::initial_copy(
            &settings.slot,
            &target,
            &defs,
            &mut transforms.chain,
            &pool,
            &publisher,
            &shutdown,
        )
        .await?;
        if copied.is_none() {
            return Ok(());
        }
    }
    drop(pg);
    up.mark_up();

    // Either half failing stops the other; both drain on shutdown.
    let stop = shutdown.child_token();
    let capture_opts = settings.capture_options();
    let apply_opts = settings.apply_options();
    let capture = async {
        let r = capture::run(
            &settings.slot,
            &target,
            &defs,
            transforms,
            &publisher,
            &capture_opts,
            stop.clone(),
        )
        .await;
        stop.cancel();
        r
    };
    let apply = async {
        let r = apply::run(&settings.slot, &consumer, &pool, &target, &apply_opts, stop.clone()).await;
        stop.cancel();
        r
    };
    let (captured, applied) = tokio::join!(capture, apply);
    publisher.close().await;
    consumer.close().await;
    captured?;
    applied?;
    Ok(())
}
