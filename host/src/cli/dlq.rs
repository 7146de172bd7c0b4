//! `wasmcdc dlq list` and `wasmcdc dlq replay`: the dead-letter queue.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::{Error, close, load_chain, step};
use crate::config::Settings;
use crate::progress::Progress;
use crate::queue::Broker;
use crate::transform::{TransformChain, guest_code};

/// The pipeline's broker, and how many dead letters it holds.
async fn open(settings: &Settings) -> Result<(Broker, u32), Error> {
    let broker = step(
        "connecting to RabbitMQ",
        Broker::connect(&settings.amqp_url, &settings.slot),
    )
    .await?;
    step("declaring the pipeline's queues in RabbitMQ", broker.declare()).await?;
    let (_, total) = step("reading the dead-letter count from RabbitMQ", broker.depths()).await?;
    Ok((broker, total))
}

pub(super) async fn list(settings: &Settings, limit: usize) -> Result<(), Error> {
    let (broker, total) = open(settings).await?;
    println!("{total} dead letters in {}", broker.names.dlq);
    let mut shown = 0;
    while shown < limit.min(total as usize) {
        let Some(dead) = step("reading a dead letter from RabbitMQ", broker.next_dead_letter()).await? else {
            break;
        };
        shown += 1;
        let changes = serde_json::from_slice::<crate::change::Message>(&dead.body)
            .map(|m| format!("{} changes", m.change_count()))
            .unwrap_or_else(|_| format!("{} bytes, not a change message", dead.body.len()));
        println!(
            "#{shown} stage={} lsn={} table={} ({changes})\n    {}",
            dead.stage,
            if dead.lsn.is_empty() { "-" } else { &dead.lsn },
            if dead.table.is_empty() { "-" } else { &dead.table },
            dead.reason
        );
    }
    // Closing the channel returns every message read, unsettled, to the queue.
    close(broker).await;
    Ok(())
}

pub(super) async fn replay(settings: &Settings, shutdown: &CancellationToken) -> Result<ExitCode, Error> {
    let mut chain = load_chain(settings)?;
    let (broker, total) = open(settings).await?;
    let (mut replayed, mut kept) = (0usize, 0usize);
    // Kept letters stay unsettled until the end, so each is read once.
    let mut keep = Vec::new();
    let mut progress = Progress::start("dlq replay", "letters", Some(total.into()));
    for _ in 0..total {
        // SIGTERM stops between letters: what is replayed stays replayed, the rest waits.
        if shutdown.is_cancelled() {
            break;
        }
        let Some(dead) = step("reading a dead letter from RabbitMQ", broker.next_dead_letter()).await? else {
            break;
        };
        match replayable(&dead, &settings.slot, &mut chain) {
            Ok(message) => {
                let confirm = step("publishing a replayed change to RabbitMQ", broker.publish(&message)).await?;
                step("waiting for RabbitMQ to confirm a replayed change", confirm.wait()).await?;
                step(
                    "removing a replayed dead letter from RabbitMQ",
                    broker.settle_dead_letter(dead.tag, true),
                )
                .await?;
                replayed += 1;
            }
            Err(why) => {
                progress.println(&format!(
                    "kept: stage={} lsn={} table={}: {why}",
                    dead.stage, dead.lsn, dead.table
                ));
                keep.push(dead.tag);
                kept += 1;
            }
        }
        progress.advance(1);
    }
    progress.finish();
    for tag in keep {
        step(
            "returning a kept dead letter to RabbitMQ",
            broker.settle_dead_letter(tag, false),
        )
        .await?;
    }
    close(broker).await;
    println!("replayed {replayed}, kept {kept}");
    if shutdown.is_cancelled() {
        return Err(Error::Interrupted);
    }
    Ok(if kept == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The message that re-drives a dead letter, or why it cannot be.
fn replayable(
    dead: &crate::queue::DeadMessage,
    pipeline: &str,
    chain: &mut TransformChain,
) -> Result<crate::change::Message, String> {
    let mut message: crate::change::Message = serde_json::from_slice(&dead.body)
        .map_err(|_| "it is not a change message (undecodable source output cannot be replayed)".to_owned())?;
    if message.pipeline != pipeline {
        return Err(format!("it belongs to pipeline '{}'", message.pipeline));
    }
    if let Some(chunk) = message.chunk {
        return Err(format!(
            "it is chunk {} of a large transaction; applied alone it would apply part of that transaction, so fix the cause and re-copy the affected tables instead",
            chunk.index
        ));
    }
    if dead.stage == crate::queue::capture::PARTITION_STAGE {
        return Err(
            "it is the TRUNCATE of one partition, which the target's one table cannot apply; delete those rows in MariaDB instead".to_owned(),
        );
    }
    if dead.stage == "transform" {
        for tx in &mut message.transactions {
            let mut out = Vec::new();
            for change in std::mem::take(&mut tx.changes) {
                out.extend(guest_code(|| chain.apply(change, &tx.context)).map_err(|e| format!("still refused: {e}"))?);
            }
            tx.changes = out;
        }
        message.transforms = chain.hashes().to_vec();
    }
    message.chunk = None;
    message.replay = true;
    Ok(message)
}
