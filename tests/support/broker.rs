//! Looking at the pipeline's RabbitMQ objects from outside.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use super::env::AMQP_URL;

/// Messages ready in queue `name`; fails the test if the queue does not exist.
pub async fn queue_depth(name: &str) -> u32 {
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {AMQP_URL}: {e}"));
    let channel = connection.create_channel().await.expect("a RabbitMQ channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("queue {name} does not exist: {e}"));
    let _ = connection.close(200, "done".into()).await;
    queue.message_count()
}

/// Publishes `body` as a persistent message to the pipeline exchange `exchange`, with the change routing key.
pub async fn publish_raw(exchange: &str, body: &[u8]) {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {AMQP_URL}: {e}"));
    let channel = connection.create_channel().await.expect("a RabbitMQ channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            "changes".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "RabbitMQ did not accept the message");
    let _ = connection.close(200, "done".into()).await;
}

/// Fails the test, with the run's last log lines, if `slot`'s dead-letter queue holds anything.
pub async fn assert_no_dead_letters(slot: &str, running: &super::binary::Running) {
    let dlq = format!("wasmcdc.{slot}.dlq");
    assert_eq!(
        queue_depth(&dlq).await,
        0,
        "dead letters in {dlq}\n{}",
        running.log_tail()
    );
}
