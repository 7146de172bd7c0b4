//! A large source transaction reaches MariaDB whole or not at all.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::mysql::MySqlConnection;

use crate::support::{Deadline, Env, secs};

const ROWS: i64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_is_applied_atomically() {
    let env = Env::new("large").await;
    env.pg_exec("CREATE TABLE bulk (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, amount NUMERIC(12,2))")
        .await;
    let pipeline = env.pipeline().tables("public.bulk");
    let mut running = env.start(&pipeline).await;

    // Every count observed by another MariaDB session while the transaction is applied.
    let mut conn = MySqlConnection::connect(&pipeline.mariadb_url)
        .await
        .expect("a MariaDB session for observing");
    let poller = tokio::spawn(async move {
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        let deadline = Deadline::new(format!("{ROWS} rows in MariaDB"), secs(300));
        loop {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bulk")
                .fetch_one(&mut conn)
                .await
                .expect("COUNT(*) in MariaDB");
            *seen.entry(n).or_default() += 1;
            if n == ROWS || deadline.expired() {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    env.pg_exec(&format!(
        "INSERT INTO bulk SELECT g, 'row ' || g || repeat('x', g % 50), g * 1.25 FROM generate_series(1, {ROWS}) g"
    ))
    .await;

    while !poller.is_finished() {
        running.assert_alive();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen = poller.await.expect("the observer finished");
    eprintln!("row counts another session saw (count → times): {seen:?}");
    assert!(
        seen.keys().all(|&n| n == 0 || n == ROWS),
        "another session saw a partly applied transaction (count → times seen): {seen:?}"
    );
    assert!(
        seen.contains_key(&ROWS),
        "{ROWS} rows did not arrive within 300 s (count → times seen): {seen:?}\n{}",
        running.log_tail()
    );

    pipeline.assert_verified().await;
    running.stop().await;
}
