//! The apply does not rely on RabbitMQ handing messages over in the order they
//! were published. A quorum queue redelivers the unacknowledged messages of a
//! consumer that went away in an order of its own, after the capture has
//! confirmed the slot past all of them: a message that arrives before the one
//! it follows must wait for it, not be dropped as "past a gap".
//!
//! The capture fills the queue alone; the test then takes every message out
//! and puts them back in reverse, and only then starts the apply.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;

use crate::support::binary::Pipeline;
use crate::support::{Deadline, Env, broker, secs};

const ROWS: u32 = 40;
const SOURCE_ROWS: &str = "SELECT id::text, v FROM ordered";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), v FROM ordered";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_redelivered_in_reverse_are_applied_in_order() {
    let (env, pipeline, queue, moved) = reversed_load("reorder").await;
    applies_all(&env, &pipeline, &queue, moved).await;
}

/// With a prefetch window too small to hold the messages that arrive before
/// the one they follow, and the slot confirmed past all of them, the queue
/// holds their only copies: the apply stops, says how to fix it, and
/// acknowledges nothing. An apply with a large enough window then applies
/// every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_too_small_to_reorder_stops_the_apply_and_loses_nothing() {
    let (env, pipeline, queue, moved) = reversed_load("reorder_small").await;
    let mut small = pipeline.setting("prefetch", "3").spawn_command("apply", None);
    let status = small
        .wait_exit(secs(60))
        .await
        .unwrap_or_else(|| panic!("the apply kept running with a window of 3\n{}", small.log_tail()));
    assert!(!status.success(), "the apply exited with success\n{}", small.log_tail());
    let log = small.log();
    for phrase in [
        "out of order by more than the prefetch window (3 messages)",
        "nothing was acknowledged",
        "raise `prefetch`",
    ] {
        assert!(
            log.contains(phrase),
            "the apply did not say {phrase:?}\n{}",
            small.log_tail()
        );
    }
    let deadline = Deadline::new("every message to be back in the queue", secs(30));
    while broker::queue_depth(&queue).await != moved as u32 {
        deadline.tick(&small.log_tail()).await;
    }
    applies_all(&env, &pipeline, &queue, moved).await;
}

/// Fills a pipeline's queue with one message per transaction, each of which
/// changes the row of the one before, confirms the slot past all of them and
/// puts them back in reverse. Returns the environment, the pipeline, the
/// queue's name and how many messages it holds.
async fn reversed_load(tag: &str) -> (Env, Pipeline, String, usize) {
    let env = Env::new(tag).await;
    env.pg_exec("CREATE TABLE ordered (id int PRIMARY KEY, v text NOT NULL)")
        .await;
    let pipeline = env.pipeline().tables("public.ordered");
    let mut capture = pipeline.spawn_command("capture", None);
    env.wait_streaming(&pipeline, &mut capture).await;

    // One transaction per message: each row inserted, then updated by the next
    // transaction, so that applying any two out of order gives another result.
    for id in 1..=ROWS {
        env.pg_exec(&format!(
            "BEGIN; INSERT INTO ordered VALUES ({id}, 'new'); UPDATE ordered SET v = 'after {id}' WHERE id = {}; COMMIT;",
            id.max(2) - 1
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let queue = format!("wasmcdc.{}", pipeline.slot);
    // The capture confirms the slot past everything RabbitMQ holds: what the apply
    // drops now is never sent again.
    let lsn = env.current_wal_lsn().await;
    let deadline = Deadline::new("the slot to be confirmed past the load", secs(60));
    while env.confirmed_flush_lsn(&pipeline).await.unwrap_or(0) < lsn {
        capture.assert_alive();
        deadline.tick(&capture.log_tail()).await;
    }
    capture.stop().await;

    let moved = reverse_queue(&queue).await;
    // Transactions 40 ms apart mostly travel alone; a loaded machine may put two in one message.
    assert!(moved >= ROWS as usize / 4, "only {moved} messages were in the queue");
    eprintln!("{tag}: {moved} messages put back in reverse");
    (env, pipeline, queue, moved)
}

/// Runs an apply with the default window until the target equals the source,
/// with nothing dead-lettered and `verify` content, and stops it. Every
/// message must have been acknowledged: none comes back as ready when the
/// apply lets go.
async fn applies_all(env: &Env, pipeline: &Pipeline, queue: &str, moved: usize) {
    let mut apply = pipeline.spawn_command("apply", None);
    env.wait_equal(pipeline, &mut [&mut apply], SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await
        .unwrap_or_else(|diff| panic!("the target differs from the source\n{diff}\n{}", apply.log_tail()));
    broker::assert_no_dead_letters(&pipeline.slot, &apply).await;
    pipeline.assert_verified().await;
    apply.stop().await;
    assert_eq!(
        broker::queue_depth(queue).await,
        0,
        "messages left in {queue} of {moved}"
    );
}

/// Takes every message out of `queue` and publishes them back to it, last first.
/// The queue has a single active consumer, which rules out `basic.get`: the test
/// consumes, as the apply would, while nothing else does.
async fn reverse_queue(queue: &str) -> usize {
    let (connection, channel) = broker::confirming_channel().await;
    channel
        .basic_qos(1_000, BasicQosOptions::default())
        .await
        .expect("prefetch");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "wasmcdc-test-reorder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let mut taken = Vec::new();
    // Every ready message arrives at once; a quiet second means the queue is empty.
    while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(1), consumer.next()).await {
        taken.push(delivery.expect("a delivery"));
    }
    // No more deliveries, so the copies are not handed back to this consumer; the
    // originals stay unacknowledged, and in the queue, until the copies are safe.
    channel
        .basic_cancel("wasmcdc-test-reorder".into(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel");
    for d in taken.iter().rev() {
        let confirm = channel
            .basic_publish(
                queue.into(),
                d.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &d.data,
                d.properties.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "RabbitMQ did not take a message back");
    }
    if let Some(last) = taken.last() {
        channel
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await
            .expect("ack");
    }
    let _ = connection.close(200, "done".into()).await;
    taken.len()
}
