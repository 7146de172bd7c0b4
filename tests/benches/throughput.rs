//! End-to-end throughput and latency against the real servers, with the
//! target's own write speed as the baseline from the same run.
//!
//! `cargo build --release -p wasmcdc && cargo bench -p wasmcdc-tests --bench throughput`
//!
//! The last figures put the identity transform beside no transform on one
//! bulk insert (`BULK` rows in one statement), drained from the slot by two
//! pipelines alike in everything else, alternately, `BULK_ROUNDS` times each.

#[allow(dead_code, unused_imports)]
#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::binary::guest;
use support::{Env, Pipeline, db};

const ROWS: usize = 200_000;
const ROWS_PER_TX: usize = 100;
const LATENCY_SAMPLES: usize = 30;
const BULK: usize = 200_000;
const BULK_ROUNDS: usize = 3;

const TABLE: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, item varchar(60) NOT NULL, \
                     amount numeric(10,2) NOT NULL, placed timestamptz NOT NULL, note text)";

async fn target_count(my: &sqlx::MySqlPool, table: &str) -> u64 {
    db::my_u64(my, &format!("SELECT CAST(COUNT(*) AS UNSIGNED) FROM {table}"))
        .await
        .unwrap_or(0)
}

/// Commits one `BULK`-row insert into `table` while `pipeline` is down, then
/// times how long `pipeline` takes from its start to the last row in MariaDB.
async fn bulk_drain(env: &Env, pipeline: &Pipeline, table: &str, round: usize) -> Duration {
    let my = env.my(pipeline).await;
    let first = round * BULK;
    env.pg_exec(&format!(
        "INSERT INTO {table} SELECT g, g % 977, 'item ' || g, (g % 1000) + 0.25, now(), NULL \
         FROM generate_series({first}, {}) g",
        first + BULK - 1
    ))
    .await;
    let started = Instant::now();
    let mut running = env.start(pipeline).await;
    while target_count(&my, table).await < ((round + 1) * BULK) as u64 {
        running.assert_alive();
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the bulk insert was not drained within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    running.stop().await;
    took
}

/// The identity transform beside no transform, end to end: the best drain of each.
async fn bulk_comparison(env: &Env) {
    let plain = env.add_pipeline("plain").await.tables("public.bulk_plain");
    let identity = env
        .add_pipeline("ident")
        .await
        .tables("public.bulk_ident")
        .transform(&guest("identity"));
    for (pipeline, table) in [(&plain, "bulk_plain"), (&identity, "bulk_ident")] {
        env.pg_exec(&TABLE.replace("CREATE TABLE orders", &format!("CREATE TABLE {table}")))
            .await;
        // The first start copies the empty table and creates the slot.
        env.start(pipeline).await.stop().await;
    }
    let (mut none, mut with_identity) = (Duration::MAX, Duration::MAX);
    for round in 0..BULK_ROUNDS {
        none = none.min(bulk_drain(env, &plain, "bulk_plain", round).await);
        with_identity = with_identity.min(bulk_drain(env, &identity, "bulk_ident", round).await);
    }
    println!(
        "bulk insert of {BULK} rows, start to applied, best of {BULK_ROUNDS}: no transform {:.2} s, identity {:.2} s; identity costs {:+.1}%",
        none.as_secs_f64(),
        with_identity.as_secs_f64(),
        (with_identity.as_secs_f64() / none.as_secs_f64() - 1.0) * 100.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = Env::new("bench").await;
    env.pg_exec(TABLE).await;
    let pipeline = env.pipeline().tables("public.orders");
    let my = env.my(&pipeline).await;

    // Baseline: what MariaDB takes from one writer, multi-row INSERTs of 500 in transactions of 5 000.
    db::my_exec(
        &my,
        &TABLE
            .replace("CREATE TABLE orders", "CREATE TABLE baseline")
            .replace("timestamptz", "datetime(6)")
            .replace("note text", "note longtext"),
    )
    .await;
    let started = Instant::now();
    for tx in 0..ROWS / 5_000 {
        let mut t = my.begin().await.expect("begin");
        for chunk in 0..10 {
            let row = "(?, ?, ?, ?, '2026-11-26 10:00:00', NULL)";
            let sql = format!("INSERT INTO baseline VALUES {}", vec![row; 500].join(","));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for i in 0..500 {
                let id = (tx * 5_000 + chunk * 500 + i) as i64;
                query = query
                    .bind(id)
                    .bind(id % 977)
                    .bind(format!("item {id}"))
                    .bind(format!("{}.25", id % 1000));
            }
            query.execute(&mut *t).await.expect("baseline insert");
        }
        t.commit().await.expect("commit");
    }
    let baseline = ROWS as f64 / started.elapsed().as_secs_f64();

    let mut running = env.start(&pipeline).await;
    // Throughput: the source commits ROWS rows in transactions of ROWS_PER_TX as fast as it can.
    let started = Instant::now();
    for tx in 0..ROWS / ROWS_PER_TX {
        let first = tx * ROWS_PER_TX;
        env.pg_exec(&format!(
            "INSERT INTO orders SELECT g, g % 977, 'item ' || g, (g % 1000) + 0.25, now(), NULL \
             FROM generate_series({first}, {}) g",
            first + ROWS_PER_TX - 1
        ))
        .await;
    }
    let source_done = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while target_count(&my, "orders").await < ROWS as u64 {
        running.assert_alive();
        assert!(
            Instant::now() < deadline,
            "the pipeline did not catch up within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = started.elapsed();
    let pipeline_rate = ROWS as f64 / caught_up.as_secs_f64();

    // Latency: one-row transactions, commit to visible in MariaDB, while otherwise idle.
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let id = ROWS + i;
        let t0 = Instant::now();
        env.pg_exec(&format!(
            "INSERT INTO orders VALUES ({id}, 1, 'latency', 1, now(), NULL)"
        ))
        .await;
        while target_count(&my, &format!("orders WHERE id = {id}")).await == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(t0.elapsed());
    }
    samples.sort();
    running.stop().await;

    // Catch-up: the same volume committed while the pipeline is down, then drained from the slot.
    let base = ROWS + LATENCY_SAMPLES;
    for tx in 0..ROWS / ROWS_PER_TX {
        let first = base + tx * ROWS_PER_TX;
        env.pg_exec(&format!(
            "INSERT INTO orders SELECT g, g % 977, 'item ' || g, (g % 1000) + 0.25, now(), NULL \
             FROM generate_series({first}, {}) g",
            first + ROWS_PER_TX - 1
        ))
        .await;
    }
    let started = Instant::now();
    let mut running = env.start(&pipeline).await;
    let total = (2 * ROWS + LATENCY_SAMPLES) as u64;
    while target_count(&my, "orders").await < total {
        running.assert_alive();
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the backlog was not drained within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = started.elapsed();
    running.stop().await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("rows: {ROWS} in source transactions of {ROWS_PER_TX} rows; no transform");
    println!(
        "source commit rate:          {:>9.0} rows/s ({:.1} s)",
        ROWS as f64 / source_done.as_secs_f64(),
        source_done.as_secs_f64()
    );
    println!(
        "pipeline, commit to applied: {pipeline_rate:>9.0} rows/s ({:.1} s until the last row was in MariaDB)",
        caught_up.as_secs_f64()
    );
    println!("baseline, direct to MariaDB: {baseline:>9.0} rows/s (bound multi-row INSERTs of 500, one writer)");
    println!("pipeline / baseline:         {:>9.2}", pipeline_rate / baseline);
    println!(
        "lag after the source's last commit: {:.2} s",
        (caught_up - source_done).as_secs_f64()
    );
    println!(
        "backlog drain (pipeline's own ceiling): {:>9.0} rows/s ({ROWS} rows, {:.1} s from start); / baseline {:.2}",
        ROWS as f64 / drained.as_secs_f64(),
        drained.as_secs_f64(),
        ROWS as f64 / drained.as_secs_f64() / baseline
    );
    println!(
        "latency, one-row transaction commit to visible: median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({LATENCY_SAMPLES} samples)",
        ms(samples[LATENCY_SAMPLES / 2]),
        ms(samples[LATENCY_SAMPLES * 9 / 10]),
        ms(samples[LATENCY_SAMPLES - 1])
    );
    bulk_comparison(&env).await;
}
