//! `wasmcdc capture`: read the slot, transform, publish.

use tokio_util::sync::CancellationToken;

use super::{Error, live_chain, load_chain, source_tables};
use crate::catalog::TableName;
use crate::config::Settings;
use crate::pipeline::Up;
use crate::queue::Broker;
use crate::queue::capture::{self, CaptureOptions};

pub(super) async fn run(settings: &Settings, shutdown: CancellationToken, up: &Up) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    let tables: Vec<TableName> = defs.iter().map(|d| d.name.clone()).collect();
    drop(pg);
    let chain = load_chain(settings)?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    up.mark_up();
    let result = capture::run(
        &settings.slot,
        &target,
        &tables,
        live_chain(settings, chain)?,
        &broker,
        &CaptureOptions::default(),
        shutdown,
    )
    .await;
    broker.close().await;
    Ok(result?)
}
