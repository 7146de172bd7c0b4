//! The seed case: `itrequests`, the prototype's demo, and `verify`.

use crate::support::{Env, db, row, secs};

/// The seed table, exactly as the prototype created it.
pub const SEED_TABLE: &str = "CREATE TABLE itrequests (
    requestid SERIAL PRIMARY KEY,
    details   VARCHAR(60) NOT NULL,
    duedate   DATE NOT NULL,
    fulfilled BOOLEAN NOT NULL
)";

const TARGET_ROWS: &str =
    "SELECT CAST(requestid AS CHAR), details, CAST(duedate AS CHAR), CAST(fulfilled AS CHAR) FROM itrequests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_replicates_and_verify_reports_differences() {
    let env = Env::new("seed").await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    let mut running = env.start(&pipeline).await;

    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled) VALUES
             ('Reset my user password', '2025-01-10', false),
             ('Repair laptop', '2025-02-20', false),
             ('Restart main server', '2025-03-30', false)",
    )
    .await;
    env.pg_exec("UPDATE itrequests SET fulfilled = true WHERE requestid = 2")
        .await;
    env.pg_exec("DELETE FROM itrequests WHERE requestid = 1").await;

    let expected = vec![
        row(&[Some("2"), Some("Repair laptop"), Some("2025-02-20"), Some("1")]),
        row(&[Some("3"), Some("Restart main server"), Some("2025-03-30"), Some("0")]),
    ];
    env.wait_target(&pipeline, &mut running, TARGET_ROWS, &expected, secs(60))
        .await;
    pipeline.assert_verified().await;

    // A row lost in the target must be reported by its key.
    let my = env.my(&pipeline).await;
    db::my_exec(&my, "DELETE FROM itrequests WHERE requestid = 3").await;
    let (status, report) = pipeline.verify().await;
    assert!(
        !status.success(),
        "verify exited 0 although the target lacks requestid 3:\n{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("missing") && l.contains("requestid=3")),
        "verify does not name the missing key requestid=3:\n{report}"
    );

    running.stop().await;
}
