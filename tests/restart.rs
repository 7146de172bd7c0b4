//! Stopping and restarting the pipeline loses nothing and applies nothing twice.

use crate::support::{Deadline, Env, Pipeline, broker, secs};

const TABLE: &str = "CREATE TABLE events (
    id          SERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    amount      NUMERIC(12,2),
    happened_at TIMESTAMPTZ,
    active      BOOLEAN NOT NULL DEFAULT true
)";

const SOURCE_ROWS: &str = "SELECT id::text, name, amount::text, \
     to_char(happened_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     CASE WHEN active THEN '1' ELSE '0' END FROM events";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), name, CAST(amount AS CHAR), \
     DATE_FORMAT(happened_at, '%Y-%m-%d %H:%i:%s.%f'), CAST(active AS CHAR) FROM events";

/// Inserts `n` rows in one transaction.
fn insert(n: u32, label: &str) -> String {
    format!(
        "INSERT INTO events (name, amount, happened_at, active) \
         SELECT '{label} ' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE g * 0.5 END, \
                timestamptz '2025-01-01 00:00:00+00' + g * interval '61.123456 seconds', g % 4 <> 0 \
         FROM generate_series(1, {n}) g"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_applies_every_change_exactly_once() {
    let env = Env::new("restart").await;
    env.pg_exec(TABLE).await;
    let pipeline = env.pipeline().tables("public.events");

    let running = env.start(&pipeline).await;
    env.pg_exec(&insert(200, "first")).await;
    env.pg_exec("UPDATE events SET amount = coalesce(amount, 0) + 1 WHERE id % 3 = 0")
        .await;
    env.pg_exec("DELETE FROM events WHERE id % 5 = 0").await;
    env.pg_exec(&format!(
        "BEGIN; {}; UPDATE events SET name = name || ' renamed' WHERE id BETWEEN 1 AND 20; \
         DELETE FROM events WHERE id BETWEEN 21 AND 25; COMMIT;",
        insert(10, "mixed")
    ))
    .await;
    for i in 0..20 {
        env.pg_exec(&format!(
            "INSERT INTO events (name, active) VALUES ('single {i}', false)"
        ))
        .await;
    }
    // Stopped while changes may still be in flight: the drain must keep them.
    running.stop().await;

    env.pg_exec(&insert(100, "while down")).await;
    env.pg_exec("UPDATE events SET active = NOT active, happened_at = NULL WHERE id % 11 = 0")
        .await;
    env.pg_exec("DELETE FROM events WHERE id BETWEEN 100 AND 140").await;
    env.pg_exec(
        "BEGIN; UPDATE events SET amount = 999.99 WHERE name LIKE 'single%'; DELETE FROM events WHERE id = 2; COMMIT;",
    )
    .await;

    let mut running = env.start(&pipeline).await;
    env.pg_exec(&insert(5, "after restart")).await;
    let rows = env
        .wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(120))
        .await;
    assert!(rows.len() > 250, "too few rows to prove anything: {}", rows.len());

    broker::assert_no_dead_letters(&pipeline.slot, &running).await;

    // Once drained, the applied offset is exactly the slot's confirmed position.
    let deadline = Deadline::new("the applied offset to equal the slot's confirmed_flush_lsn", secs(60));
    loop {
        running.assert_alive();
        let (offset, confirmed) = offsets(&env, &pipeline).await;
        if offset.is_some() && offset == confirmed {
            break;
        }
        deadline
            .tick(&format!("offset {offset:?}, confirmed_flush_lsn {confirmed:?}"))
            .await;
    }
    running.stop().await;

    let queue = format!("wasmcdc.{}", pipeline.slot);
    if broker::queue_depth(&queue).await == 0 {
        let (offset, confirmed) = offsets(&env, &pipeline).await;
        assert_eq!(
            offset, confirmed,
            "after a clean stop with an empty queue, offset and slot disagree"
        );
    }
    pipeline.assert_verified().await;
}

/// The offsets row's LSN and the slot's `confirmed_flush_lsn`, as numbers.
async fn offsets(env: &Env, pipeline: &Pipeline) -> (Option<u64>, Option<u64>) {
    let offset = env.offsets_row(pipeline).await.map(|(lsn, _)| lsn);
    (offset, env.confirmed_flush_lsn(pipeline).await)
}
