//! RabbitMQ refusing a publish (a nack) while later publishes are accepted
//! loses nothing: the capture resumes from the slot and sends the refused
//! transaction again, and the transactions accepted after it must not carry
//! the apply's offset past it.
//!
//! The pipeline's queue is capped at 2 ready messages with reject-publish, so
//! it refuses publishes only while the apply is behind by its whole prefetch.
//! To get refusals followed by acceptances, the apply's link to RabbitMQ is
//! frozen until the queue is full and then thawed, while the capture learns of
//! every confirm 2 s late: it keeps publishing for 2 s after the first
//! refusal, and the apply drains the queue within that time.

use std::time::{Duration, Instant};

use crate::support::broker::{self, QueueCap};
use crate::support::db;
use crate::support::env::AMQP_URL;
use crate::support::proxy::Proxy;
use crate::support::{Deadline, Env, secs};

const TABLE: &str = "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text NOT NULL)";
const SOURCE_ROWS: &str = "SELECT id::text, balance::text, note FROM accounts";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), CAST(balance AS CHAR), note FROM accounts";
/// Rows present before the queue is capped.
const SEEDED: u64 = 200;
/// How long the load runs, and its pace in transactions per second.
const LOAD: Duration = secs(30);
const RATE: u64 = 300;
/// How late the capture hears RabbitMQ's confirms.
const CONFIRM_DELAY: Duration = secs(2);
/// The capture's log line for a refused publish.
const NACK: &str = "(nack)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_then_accepted_publishes_lose_nothing() {
    let env = Env::new("refused").await;
    env.pg_exec(TABLE).await;
    let pipeline = env.pipeline().tables("public.accounts");
    let broker_address = AMQP_URL
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the AMQP URL names host:port");
    let capture_link = Proxy::start(broker_address).await;
    let apply_link = Proxy::start(broker_address).await;
    let through = |proxy: &Proxy| pipeline.amqp_url(&AMQP_URL.replace(broker_address, &proxy.address()));

    let mut capture = through(&capture_link).spawn_command("capture", None);
    env.wait_streaming(&pipeline, &mut capture).await;
    let mut apply = through(&apply_link).spawn_command("apply", None);
    env.pg_exec(&format!(
        "INSERT INTO accounts SELECT g, 0, 'seed ' || g FROM generate_series(1, {SEEDED}) g"
    ))
    .await;
    env.wait_equal(
        &pipeline,
        &mut [&mut capture, &mut apply],
        SOURCE_ROWS,
        TARGET_ROWS,
        secs(60),
    )
    .await
    .unwrap_or_else(|diff| panic!("the seed rows did not arrive\n{diff}\n{}", apply.log_tail()));

    let queue = format!("wasmcdc.{}", pipeline.slot);
    let cap = QueueCap::set(&format!("{}-cap", pipeline.slot), &queue, 2).await;
    let started = Instant::now();
    let load = tokio::spawn(load(pipeline.pg_url.clone()));
    capture_link.set_answer_delay(CONFIRM_DELAY);
    apply_link.set_black_hole(true);
    let deadline = Deadline::new(format!("{queue} to fill up to its cap"), secs(60));
    loop {
        capture.assert_alive();
        let ready = broker::queue_depth(&queue).await;
        if ready >= 2 {
            break;
        }
        deadline.tick(&format!("{ready} messages ready")).await;
    }
    apply_link.set_black_hole(false);
    eprintln!(
        "refused_then_accepted_publishes_lose_nothing: queue full {:.1} s into the load; the apply drains it again",
        started.elapsed().as_secs_f64()
    );
    let deadline = Deadline::new("the capture to log a refused publish", secs(60));
    while !capture.log().contains(NACK) {
        capture.assert_alive();
        deadline.tick(&capture.log_tail()).await;
    }
    capture_link.set_answer_delay(Duration::ZERO);
    let transactions = load.await.expect("the load finished");
    cap.clear().await;
    eprintln!(
        "refused_then_accepted_publishes_lose_nothing: {transactions} transactions in {:.1} s; {} refused publishes \
         logged",
        started.elapsed().as_secs_f64(),
        capture.log().matches(NACK).count()
    );

    let caught_up = Instant::now();
    let result = env
        .wait_equal(
            &pipeline,
            &mut [&mut capture, &mut apply],
            SOURCE_ROWS,
            TARGET_ROWS,
            secs(180),
        )
        .await;
    let nacks = capture.log().matches(NACK).count();
    let source = env
        .pg_rows("SELECT count(*)::text, sum(balance)::text FROM accounts")
        .await;
    let my = env.my(&pipeline).await;
    let target = db::my_rows(
        &my,
        "SELECT CAST(COUNT(*) AS CHAR), CAST(SUM(balance) AS CHAR) FROM accounts",
    )
    .await;
    my.close().await;
    eprintln!(
        "refused_then_accepted_publishes_lose_nothing: (rows, balance total) source {source:?}, target {target:?}; \
         {nacks} refused publishes logged; waited {:.1} s after lifting the cap",
        caught_up.elapsed().as_secs_f64()
    );
    if let Err(diff) = result {
        panic!(
            "the target did not equal the source within 180 s of lifting the cap: (rows, balance total) source \
             {source:?}, target {target:?}\n{diff}\n{}\n{}",
            capture.log_tail(),
            apply.log_tail()
        );
    }
    assert!(nacks >= 1, "no publish was refused, so nothing was tested");
    pipeline.assert_verified().await;
    broker::assert_no_dead_letters(&pipeline.slot, &apply).await;
    capture.stop().await;
    apply.stop().await;
}

/// Small transactions for `LOAD`: each inserts a new account and credits an
/// existing one. Returns how many committed.
async fn load(pg_url: String) -> u64 {
    let pg = db::pg_connect(&pg_url).await;
    let started = Instant::now();
    let mut done: u64 = 0;
    let mut state: u64 = 0x0ac0;
    while started.elapsed() < LOAD {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = SEEDED + done + 1;
        let credited = state % (id - 1) + 1;
        db::pg_exec(
            &pg,
            &format!(
                "BEGIN; INSERT INTO accounts VALUES ({id}, 0, 'opened by tx {done}'); \
                 UPDATE accounts SET balance = balance + 1, note = 'credited by tx {done}' WHERE id = {credited}; \
                 COMMIT;"
            ),
        )
        .await;
        done += 1;
        let due = Duration::from_secs_f64(done as f64 / RATE as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    done
}
