//! `wasmcdc apply`: consume and apply to MariaDB.

use tokio_util::sync::CancellationToken;

use super::{Error, source_tables};
use crate::apply;
use crate::config::Settings;
use crate::pipeline::Up;
use crate::queue::Broker;

pub(super) async fn run(settings: &Settings, shutdown: CancellationToken, up: &Up) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    drop(pg);
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::prepare(&pool, &defs).await?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    up.mark_up();
    let result = apply::run(
        &settings.slot,
        &broker,
        &pool,
        &target,
        &settings.apply_options(),
        shutdown,
    )
    .await;
    broker.close().await;
    Ok(result?)
}
