//! `wasmcdc slot drop`: forget a pipeline.

use super::Error;
use crate::apply;
use crate::config::Settings;
use crate::queue::Broker;
use crate::source::{self, PgTarget};

pub(super) async fn drop_pipeline(settings: &Settings) -> Result<(), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = target.sql().await?;
    if source::drop_slot(&pg, &settings.slot).await? {
        println!("dropped replication slot '{}'", settings.slot);
    } else {
        println!("no replication slot '{}'", settings.slot);
    }
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.delete().await?;
    broker.close().await;
    println!("deleted the broker objects of pipeline '{}'", settings.slot);
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::forget_offset(&pool, &settings.slot).await?;
    println!(
        "forgot the applied offset of pipeline '{}' (target tables are kept)",
        settings.slot
    );
    Ok(())
}
