//! Schema drift: a column added in PostgreSQL appears in MariaDB before the
//! first change that carries it is written.

use crate::seed::SEED_TABLE;
use crate::support::{Deadline, Env, db, secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_is_added_to_the_target() {
    let env = Env::new("drift").await;
    env.pg_exec(SEED_TABLE).await;
    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('Reset my user password', '2025-01-10', false)",
    )
    .await;
    let pipeline = env.pipeline();
    let mut running = env.start(&pipeline).await;

    env.pg_exec("ALTER TABLE itrequests ADD COLUMN priority integer").await;
    env.pg_exec("ALTER TABLE itrequests ADD COLUMN \"Owner Name\" varchar(40)")
        .await;
    env.pg_exec(
        "BEGIN; INSERT INTO itrequests (details, duedate, fulfilled, priority, \"Owner Name\") VALUES ('Repair laptop', '2025-02-20', false, 2, 'Ana');
         UPDATE itrequests SET priority = 1 WHERE requestid = 1; COMMIT",
    )
    .await;
    // The target is queried by column name only once the columns exist there.
    let my = env.my(&pipeline).await;
    let deadline = Deadline::new("the added columns in MariaDB", secs(60));
    loop {
        running.assert_alive();
        let added = db::my_u64(
            &my,
            "SELECT CAST(COUNT(*) AS UNSIGNED) FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = 'itrequests' AND column_name IN ('priority', 'Owner Name')",
        )
        .await;
        if added == Some(2) {
            break;
        }
        deadline
            .tick(&format!("added columns: {added:?}\n{}", running.log_tail()))
            .await;
    }
    let rows = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT requestid::text, details, priority::text, \"Owner Name\" FROM itrequests",
            "SELECT CAST(requestid AS CHAR), details, CAST(priority AS CHAR), `Owner Name` FROM itrequests",
            secs(60),
        )
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    pipeline.assert_verified().await;
    running.stop().await;
}
