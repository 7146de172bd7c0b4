//! MariaDB errors that say nothing about the data (a killed query, a killed
//! connection, a lock wait timeout) are retried in place, never dead-lettered.

use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};

use crate::support::env::MARIADB_ROOT;
use crate::support::{Deadline, Env, Pipeline, broker, secs};

const SOURCE_ROWS: &str = "SELECT id::text, n::text FROM counters";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), CAST(n AS CHAR) FROM counters";

/// The id of the pipeline's MariaDB session that is running an UPDATE, once it is there.
async fn waiting_update(root: &mut MySqlConnection, pipeline: &Pipeline, since: &str) -> u64 {
    let db = pipeline.mariadb_url.rsplit('/').next().unwrap_or_default().to_owned();
    let deadline = Deadline::new(format!("the apply's UPDATE to wait on the lock ({since})"), secs(60));
    loop {
        let id: Option<u64> = sqlx::query_scalar(
            "SELECT CAST(ID AS UNSIGNED) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND USER = 'mariadb' AND INFO LIKE 'UPDATE%counters%' LIMIT 1",
        )
        .bind(&db)
        .fetch_optional(&mut *root)
        .await
        .expect("PROCESSLIST is readable");
        if let Some(id) = id {
            return id;
        }
        deadline.tick(&"no such session yet").await;
    }
}

/// Restores MariaDB's lock wait timeout when dropped, also when the test fails.
struct LockWaitTimeout(u64);

impl Drop for LockWaitTimeout {
    fn drop(&mut self) {
        let seconds = self.0;
        let restore = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut root) = MySqlConnection::connect(MARIADB_ROOT).await {
                    let sql = format!("SET GLOBAL innodb_lock_wait_timeout = {seconds}");
                    let _ = root.execute(AssertSqlSafe(sql)).await;
                }
            });
        });
        let _ = restore.join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_queries_connections_and_lock_waits_are_retried_not_dead_lettered() {
    let env = Env::new("transient").await;
    env.pg_exec("CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL)")
        .await;
    env.pg_exec("INSERT INTO counters SELECT g, 0 FROM generate_series(1, 3) g")
        .await;
    let pipeline = env.pipeline().tables("public.counters");
    let mut running = env.start(&pipeline).await;
    env.wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;

    // Another MariaDB session holds the row the next change updates.
    let db = pipeline.mariadb_url.rsplit('/').next().unwrap_or_default().to_owned();
    let mut holder = MySqlConnection::connect(&format!("{MARIADB_ROOT}/{db}"))
        .await
        .expect("a MariaDB session to hold a lock");
    holder.execute("BEGIN").await.expect("BEGIN");
    holder
        .execute("SELECT * FROM counters WHERE id = 1 FOR UPDATE")
        .await
        .expect("a row lock");
    let mut root = MySqlConnection::connect(MARIADB_ROOT).await.expect("a root session");
    let timeout: u64 = sqlx::query_scalar("SELECT CAST(@@GLOBAL.innodb_lock_wait_timeout AS UNSIGNED)")
        .fetch_one(&mut root)
        .await
        .expect("innodb_lock_wait_timeout");
    let _restore = LockWaitTimeout(timeout);

    env.pg_exec("UPDATE counters SET n = n + 1 WHERE id = 1").await;
    env.pg_exec("UPDATE counters SET n = n + 10 WHERE id = 2").await;

    // KILL QUERY: error 1317 to the apply.
    let session = waiting_update(&mut root, &pipeline, "first").await;
    root.execute(AssertSqlSafe(format!("KILL QUERY {session}")))
        .await
        .expect("KILL QUERY");
    // KILL (the connection): the apply loses its connection.
    let session = waiting_update(&mut root, &pipeline, "after KILL QUERY").await;
    // New sessions wait one second for a lock: the apply's next connection times out (1205).
    root.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
        .await
        .expect("a short lock wait timeout");
    root.execute(AssertSqlSafe(format!("KILL {session}")))
        .await
        .expect("KILL");
    let deadline = Deadline::new("the apply to report a lock wait timeout", secs(60));
    while !running.log().contains("1205") {
        running.assert_alive();
        deadline.tick(&running.log_tail()).await;
    }

    holder.execute("ROLLBACK").await.expect("ROLLBACK");
    drop(_restore);
    env.wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(120))
        .await;
    let log = running.log();
    for code in ["1317", "1205"] {
        assert!(
            log.lines().any(|l| l.contains(code) && l.contains("retrying in")),
            "no retry of MariaDB error {code} was logged:\n{}",
            running.log_tail()
        );
    }
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop().await;
}
