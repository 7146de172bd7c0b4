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

/// A connection to RabbitMQ, and a channel on it in confirm mode.
pub async fn confirming_channel() -> (Connection, lapin::Channel) {
    use lapin::options::ConfirmSelectOptions;
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {AMQP_URL}: {e}"));
    let channel = connection.create_channel().await.expect("a RabbitMQ channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    (connection, channel)
}

/// Publishes `body` as a persistent message to the pipeline exchange `exchange`, with the change routing key.
pub async fn publish_raw(exchange: &str, body: &[u8]) {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    let (connection, channel) = confirming_channel().await;
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

/// A RabbitMQ policy capping one queue at a number of messages, with publishes
/// beyond it refused (nacked). Dropping the guard removes the policy, also when
/// the test fails half-way, so no other pipeline ever sees it.
pub struct QueueCap {
    policy: Option<String>,
}

impl QueueCap {
    /// Sets policy `policy` (a name no other test uses) on exactly the queue `queue`.
    pub async fn set(policy: &str, queue: &str, max_length: u32) -> QueueCap {
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        let definition = format!(r#"{{"max-length":{max_length},"overflow":"reject-publish"}}"#);
        // Owned from here on: a failed set_policy still gets a clear_policy.
        let cap = QueueCap {
            policy: Some(policy.to_owned()),
        };
        rabbitmqctl(&[
            "-q",
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "100",
            policy,
            &pattern,
            &definition,
        ])
        .await;
        cap
    }

    /// Removes the policy now.
    pub async fn clear(mut self) {
        if let Some(policy) = self.policy.take() {
            rabbitmqctl(&["-q", "clear_policy", &policy]).await;
        }
    }
}

impl Drop for QueueCap {
    fn drop(&mut self) {
        let Some(policy) = self.policy.take() else { return };
        match std::process::Command::new("rabbitmqctl")
            .args(["-q", "clear_policy", &policy])
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cannot remove RabbitMQ policy {policy} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cannot run rabbitmqctl to remove policy {policy}: {e}"),
        }
    }
}

/// Runs `rabbitmqctl` (on this machine, read-only or per-test objects only) and returns its output.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("rabbitmqctl");
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(super::secs(120), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run rabbitmqctl: {e}"),
        Err(_) => panic!("rabbitmqctl {args:?} did not finish within 120 s"),
    };
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
