//! WAL hygiene: writes to tables the pipeline does not replicate never hold
//! back its slot, whether they go on or stop.

use std::time::{Duration, Instant};

use crate::support::binary::Running;
use crate::support::{Deadline, Env, Pipeline, broker, db, row, secs};

/// Waits until the slot's `confirmed_flush_lsn` reaches `lsn`; returns how long that took.
async fn wait_confirmed(env: &Env, pipeline: &Pipeline, running: &mut Running, lsn: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    let deadline = Deadline::new(format!("confirmed_flush_lsn to reach {lsn}"), limit);
    loop {
        running.assert_alive();
        let confirmed = env.confirmed_flush_lsn(pipeline).await;
        if confirmed.is_some_and(|c| c >= lsn) {
            return start.elapsed();
        }
        deadline
            .tick(&format!("confirmed_flush_lsn {confirmed:?}\n{}", running.log_tail()))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_writes_never_hold_back_the_slot() {
    let env = Env::new("hygiene").await;
    env.pg_exec(
        "CREATE TABLE watched (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         CREATE TABLE unrelated (id SERIAL PRIMARY KEY, payload TEXT NOT NULL)",
    )
    .await;
    let pipeline = env.pipeline().tables("public.watched");
    let mut running = env.start(&pipeline).await;
    env.pg_exec("INSERT INTO watched VALUES (1, 'one'), (2, 'two')").await;
    let watched = vec![row(&[Some("1"), Some("one")]), row(&[Some("2"), Some("two")])];
    let watched_sql = "SELECT CAST(id AS CHAR), v FROM watched";
    env.wait_target(&pipeline, &mut running, watched_sql, &watched, secs(60))
        .await;

    // Busy: many transactions on the unrelated table only, for 15 s.
    env.pg_exec("INSERT INTO unrelated (payload) SELECT repeat(md5(g::text), 8) FROM generate_series(1, 200) g")
        .await;
    let after_first = env.current_wal_lsn().await;
    let busy = Instant::now();
    let mut passed_after = None;
    let mut transactions = 0u32;
    while busy.elapsed() < secs(15) || (passed_after.is_none() && busy.elapsed() < secs(30)) {
        running.assert_alive();
        let n = transactions % 50;
        env.pg_exec(&format!(
            "BEGIN;
             INSERT INTO unrelated (payload) SELECT repeat(md5(random()::text), 8) FROM generate_series(1, 20);
             UPDATE unrelated SET payload = md5(payload) WHERE id % 50 = {n};
             DELETE FROM unrelated WHERE id % 97 = {n};
             COMMIT;"
        ))
        .await;
        transactions += 1;
        if passed_after.is_none()
            && env
                .confirmed_flush_lsn(&pipeline)
                .await
                .is_some_and(|c| c >= after_first)
        {
            passed_after = Some(busy.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy_end = env.current_wal_lsn().await;
    eprintln!(
        "{transactions} unrelated transactions, {} bytes of WAL; the slot passed the first of them after {passed_after:?}",
        busy_end - after_first
    );
    let confirmed = env.confirmed_flush_lsn(&pipeline).await;
    let Some(passed_after) = passed_after else {
        panic!(
            "while only an unrelated table changed, confirmed_flush_lsn stayed below {after_first} for 30 s (it is {confirmed:?})\n{}",
            running.log_tail()
        );
    };
    assert!(
        passed_after <= secs(30),
        "the slot took {passed_after:?} to pass unrelated writes"
    );

    // Idle: one more unrelated write, then nothing at all.
    env.pg_exec("INSERT INTO unrelated (payload) VALUES ('last')").await;
    let idle_from = env.current_wal_lsn().await;
    let took = wait_confirmed(&env, &pipeline, &mut running, idle_from, secs(30)).await;
    eprintln!("while idle, the slot passed the last unrelated write after {took:?}");

    // The offsets row follows the slot: once drained they are the same LSN.
    let deadline = Deadline::new("the applied offset to equal the slot's confirmed_flush_lsn", secs(30));
    loop {
        running.assert_alive();
        let offset = env.offsets_row(&pipeline).await.map(|(lsn, _)| lsn);
        let confirmed = env.confirmed_flush_lsn(&pipeline).await;
        if offset.is_some_and(|o| o >= idle_from) && offset == confirmed {
            break;
        }
        deadline
            .tick(&format!(
                "offset {offset:?}, confirmed_flush_lsn {confirmed:?}, idle from {idle_from}"
            ))
            .await;
    }

    // The watched table was left alone, and nothing of the other one reached MariaDB.
    let my = env.my(&pipeline).await;
    assert_eq!(db::my_rows(&my, watched_sql).await, watched);
    let tables = db::my_rows(
        &my,
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1",
    )
    .await;
    assert_eq!(
        tables,
        vec![
            row(&[Some("wasmcdc_offsets")]),
            row(&[Some("wasmcdc_staged")]),
            row(&[Some("watched")])
        ]
    );
    my.close().await;
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;

    running.stop().await;
    let queue = format!("wasmcdc.{}", pipeline.slot);
    if broker::queue_depth(&queue).await == 0 {
        let offset = env.offsets_row(&pipeline).await.map(|(lsn, _)| lsn);
        let confirmed = env.confirmed_flush_lsn(&pipeline).await;
        assert_eq!(
            offset, confirmed,
            "after a clean stop with an empty queue, offset and slot disagree"
        );
    }
}
