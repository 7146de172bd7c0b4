//! RabbitMQ restarting, and RabbitMQ refusing publishes.

use crate::scenario::{Mode, RETRYING, Scenario};
use crate::servers::Rabbit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted() {
    let mut s = Scenario::start("rabbitmq_restart", Mode::Run).await;
    let rabbit = Rabbit::guard().await;
    let at = s.rng.between(25, 45);
    s.at(at as f64 / 100.0).await;
    eprintln!("rabbitmq_restart: stop_app at {} changes sent", s.workload().sent());
    rabbit.stop_app().await;
    s.pause(3_000, 6_000).await;
    rabbit.start_app().await;
    eprintln!(
        "rabbitmq_restart: start_app done at {} changes sent",
        s.workload().sent()
    );
    s.assert_alive();
    drop(rabbit);
    s.wait_log(RETRYING, 1, "the pipeline noticed that RabbitMQ stopped")
        .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_publishes() {
    let mut s = Scenario::start("broker_refuses", Mode::Split).await;
    let mut rabbit = Rabbit::guard().await;

    // A memory alarm: RabbitMQ stops reading from publishing connections, so
    // publishes and their confirms hang until the alarm clears.
    let at = s.rng.between(15, 30);
    s.at(at as f64 / 100.0).await;
    eprintln!("broker_refuses: memory alarm at {} changes sent", s.workload().sent());
    rabbit.raise_memory_alarm().await;
    let mut blocked = 0;
    for _ in 0..4 {
        blocked += rabbit
            .connection_states()
            .await
            .iter()
            .filter(|s| *s == "blocked")
            .count();
        s.pause(800, 1_200).await;
    }
    rabbit.clear_memory_alarm().await;
    eprintln!(
        "broker_refuses: memory alarm cleared at {} changes sent",
        s.workload().sent()
    );
    assert!(
        blocked > 0,
        "no RabbitMQ connection was blocked by the memory alarm, so no publish was held up"
    );
    s.assert_alive();

    // A full queue with reject-publish: publishes are nacked. The apply keeps
    // the queue empty, so it is stopped first and the queue capped at a few
    // messages; the capture sees nacks and retries with backoff until the cap
    // is lifted and the apply drains the queue again.
    let at = s.rng.between(50, 70);
    s.at(at as f64 / 100.0).await;
    let queue = format!("wasmcdc.{}", s.pipeline.slot);
    let policy = format!("{}-reject", s.pipeline.slot);
    s.stop_apply().await;
    eprintln!(
        "broker_refuses: capping {queue} at 10 messages at {} changes sent",
        s.workload().sent()
    );
    rabbit.cap_queue(&policy, &queue, 10).await;
    s.wait_log("(nack)", 1, "the capped queue nacked a publish").await;
    s.pause(3_000, 5_000).await;
    rabbit.uncap_queue().await;
    s.spawn_apply();
    eprintln!("broker_refuses: cap removed at {} changes sent", s.workload().sent());
    s.assert_alive();
    drop(rabbit);
    let nacked = s.log_lines("(nack)");
    eprintln!("broker_refuses: {blocked} blocked connection sightings, {nacked} nacked publishes logged");
    s.finish().await;
}
