//! The initial copy: rows that existed before the pipeline started arrive, the
//! seam between the copy and the stream loses and doubles nothing, and a copy
//! interrupted by a crash is redone.

use std::time::{Duration, Instant};

use crate::support::binary::Running;
use crate::support::{Deadline, Env, Pipeline, broker, db, secs};

const TABLE: &str = "CREATE TABLE seam (
    id      BIGINT PRIMARY KEY,
    label   TEXT NOT NULL,
    amount  NUMERIC(12,2),
    touched INTEGER NOT NULL DEFAULT 0,
    at      TIMESTAMPTZ
)";

const SOURCE_ROWS: &str = "SELECT id::text, label, amount::text, touched::text, \
     to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM seam";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), label, CAST(amount AS CHAR), CAST(touched AS CHAR), \
     DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s.%f') FROM seam";

/// A cheap summary of the table to wait on before comparing every row.
const SOURCE_SUMMARY: &str =
    "SELECT count(*)::text, coalesce(sum(id), 0)::text, coalesce(sum(touched), 0)::text FROM seam";
const TARGET_SUMMARY: &str = "SELECT CAST(COUNT(*) AS CHAR), CAST(COALESCE(SUM(id), 0) AS CHAR), \
     CAST(COALESCE(SUM(touched), 0) AS CHAR) FROM seam";

/// The log line the copy writes after each batch.
const PROGRESS: &str = "initial copy";

fn fill(rows: u32) -> String {
    format!(
        "INSERT INTO seam SELECT g, 'row ' || g, CASE WHEN g % 9 = 0 THEN NULL ELSE g * 0.25 END, 0, \
                timestamptz '2025-01-01 00:00:00+00' + g * interval '1.000001 seconds' \
         FROM generate_series(1, {rows}) g"
    )
}

/// Waits until the run's log has an initial copy progress line.
async fn first_progress_line(running: &mut Running) {
    let deadline = Deadline::new("the first initial copy progress line in the log", secs(60));
    while !running.log().contains(PROGRESS) {
        running.assert_alive();
        deadline.tick(&running.log_tail()).await;
    }
}

/// Waits until the target's summary equals the source's, then compares every row.
async fn wait_equal(env: &Env, pipeline: &Pipeline, running: &mut Running, limit: Duration) -> db::Rows {
    let my = env.my(pipeline).await;
    let deadline = Deadline::new("the target's row count and sums to equal the source's", limit);
    loop {
        running.assert_alive();
        let source = env.pg_rows(SOURCE_SUMMARY).await;
        let target = db::my_rows(&my, TARGET_SUMMARY).await;
        if source == target {
            break;
        }
        deadline
            .tick(&format!("source {source:?}, target {target:?}\n{}", running.log_tail()))
            .await;
    }
    my.close().await;
    env.wait_replicated(pipeline, running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_are_copied_and_the_seam_loses_and_doubles_nothing() {
    const ROWS: u32 = 200_000;
    let env = Env::new("seam").await;
    env.pg_exec(TABLE).await;
    env.pg_exec(&fill(ROWS)).await;
    let pipeline = env.pipeline().tables("public.seam");

    let mut running = pipeline.spawn_run();
    // Live changes from another connection while the copy runs: new keys, updates and
    // deletes of existing rows spread over the whole table, and changes to rows
    // inserted live. Each iteration is one transaction.
    let started = Instant::now();
    let mut during_copy = 0;
    let mut i: u32 = 0;
    while started.elapsed() < secs(5) || i < 10 {
        running.assert_alive();
        let log = running.log();
        let copying = log.contains(PROGRESS) && !log.contains(" copied ") && !log.contains("capture streaming");
        let base = ROWS + 1 + i * 100;
        let spot = (i * 7919) % (ROWS - 100) + 1;
        env.pg_exec(&format!(
            "BEGIN;
             INSERT INTO seam SELECT {base} + g, 'live {i} ' || g, g, 0, now() FROM generate_series(0, 49) g;
             UPDATE seam SET touched = touched + 1, label = label || ' u{i}' WHERE id BETWEEN {spot} AND {spot} + 39;
             UPDATE seam SET amount = NULL, at = NULL WHERE id = {ROWS} - {i};
             DELETE FROM seam WHERE id <= {ROWS} AND id % 1000 = {del};
             COMMIT;",
            del = (i * 13) % 1000
        ))
        .await;
        if i > 0 {
            let prev = ROWS + 1 + (i - 1) * 100;
            env.pg_exec(&format!(
                "UPDATE seam SET touched = touched + 10 WHERE id = {prev} + 1; DELETE FROM seam WHERE id = {prev} + 2"
            ))
            .await;
        }
        if copying {
            during_copy += 1;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{i} live transactions, {during_copy} of them while the copy was running");
    assert!(
        during_copy > 0,
        "no live change was made while the initial copy ran, so the seam was not exercised; copy more rows\n{}",
        running.log_tail()
    );

    let rows = wait_equal(&env, &pipeline, &mut running, secs(300)).await;
    assert!(
        rows.len() > (ROWS as usize) / 2,
        "too few rows to prove anything: {}",
        rows.len()
    );
    pipeline.assert_verified().await;

    let progress = running.log().lines().filter(|l| l.contains(PROGRESS)).count();
    assert!(
        progress >= 2,
        "the run logged {progress} initial copy progress lines\n{}",
        running.log_tail()
    );
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    let (_, state) = env
        .offsets_row(&pipeline)
        .await
        .expect("the pipeline has an offsets row");
    assert_eq!(state, "streaming", "the offsets row's state after the copy");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_interrupted_by_a_crash_is_redone() {
    const ROWS: u32 = 300_000;
    let env = Env::new("recopy").await;
    env.pg_exec(TABLE).await;
    env.pg_exec(&fill(ROWS)).await;
    let pipeline = env.pipeline().tables("public.seam");

    let mut running = pipeline.spawn_run();
    first_progress_line(&mut running).await;
    running.kill();
    let log = running.log();
    assert!(
        !log.contains(" copied ") && !log.contains("capture streaming"),
        "the copy finished before the crash, so nothing was interrupted; copy more rows\n{}",
        running.log_tail()
    );
    let (_, state) = env
        .offsets_row(&pipeline)
        .await
        .expect("the pipeline has an offsets row");
    assert_eq!(state, "copying", "the offsets row's state after a crash in the copy");
    let my = env.my(&pipeline).await;
    let partial = db::my_u64(&my, "SELECT CAST(COUNT(*) AS UNSIGNED) FROM seam")
        .await
        .unwrap_or_default();
    eprintln!("{partial} of {ROWS} rows were copied before the crash");

    // Changes while it is down, then a restart that must redo the copy.
    env.pg_exec("DELETE FROM seam WHERE id % 10000 = 1; UPDATE seam SET touched = 7 WHERE id % 5000 = 2")
        .await;
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&format!(
        "INSERT INTO seam SELECT g, 'after restart ' || g, g, 0, now() FROM generate_series({}, {}) g",
        ROWS + 1,
        ROWS + 500
    ))
    .await;
    env.pg_exec(&format!(
        "UPDATE seam SET touched = touched + 1 WHERE id BETWEEN {} AND {}",
        ROWS - 10,
        ROWS + 10
    ))
    .await;

    let rows = wait_equal(&env, &pipeline, &mut running, secs(300)).await;
    let source_count = env.pg_rows("SELECT count(*)::text FROM seam").await;
    assert_eq!(rows.len().to_string(), source_count[0][0].clone().unwrap_or_default());
    let distinct = db::my_u64(&my, "SELECT CAST(COUNT(DISTINCT id) AS UNSIGNED) FROM seam").await;
    assert_eq!(distinct, Some(rows.len() as u64), "the target holds duplicate keys");
    pipeline.assert_verified().await;

    assert!(
        running.log().contains("interrupted"),
        "the restart did not say that it redoes an interrupted copy\n{}",
        running.log_tail()
    );
    let (_, state) = env
        .offsets_row(&pipeline)
        .await
        .expect("the pipeline has an offsets row");
    assert_eq!(state, "streaming", "the offsets row's state after the redone copy");
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    my.close().await;
    running.stop().await;
}
