//! `wasmcdc slot drop`: forget a pipeline.

use super::{Error, close, step};
use crate::apply;
use crate::config::Settings;
use crate::queue::Broker;
use crate::source::{self, PgTarget};

pub(super) async fn drop_pipeline(settings: &Settings) -> Result<(), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = step("connecting to PostgreSQL", target.sql()).await?;
    if step(
        "dropping the replication slot in PostgreSQL",
        source::drop_slot(&pg, &settings.slot),
    )
    .await?
    {
        println!("dropped replication slot '{}'", settings.slot);
    } else {
        println!("no replication slot '{}'", settings.slot);
    }
    let broker = step(
        "connecting to RabbitMQ",
        Broker::connect(&settings.amqp_url, &settings.slot),
    )
    .await?;
    step(
        "deleting the pipeline's queues and exchanges in RabbitMQ",
        broker.delete(),
    )
    .await?;
    close(broker).await;
    println!("deleted the broker objects of pipeline '{}'", settings.slot);
    let pool = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
    step(
        "deleting the pipeline's offsets row in MariaDB",
        apply::forget_offset(&pool, &settings.slot),
    )
    .await?;
    println!(
        "forgot the applied offset of pipeline '{}' (target tables are kept)",
        settings.slot
    );
    Ok(())
}
