//! Dead letters: a change MariaDB refuses, or a message nobody can read, goes
//! to the dead-letter queue with its reason; the pipeline goes on; `dlq list`
//! shows it and `dlq replay` re-drives it once the cause is fixed.

use crate::seed::SEED_TABLE;
use crate::support::{Deadline, Env, broker, db, secs};

const SOURCE_ROWS: &str = "SELECT requestid::text, details FROM itrequests";
const TARGET_ROWS: &str = "SELECT CAST(requestid AS CHAR), details FROM itrequests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_changes_are_dead_lettered_listed_and_replayed() {
    let env = Env::new("dlq").await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    let dlq = format!("wasmcdc.{}.dlq", pipeline.slot);
    let mut running = env.start(&pipeline).await;
    let my = env.my(&pipeline).await;

    // A row already in the target with the key the source is about to use: MariaDB refuses the insert.
    db::my_exec(&my, "INSERT INTO itrequests VALUES (1, 'squatter', '2025-01-01', 0)").await;
    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('Reset my user password', '2025-01-10', false)",
    )
    .await;
    // A message that is not a change message at all.
    broker::publish_raw(&format!("wasmcdc.{}", pipeline.slot), b"{not a change").await;
    // The pipeline is not blocked: later changes arrive.
    env.pg_exec("INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('Repair laptop', '2025-02-20', false)")
        .await;
    let deadline = Deadline::new("two dead letters and row 2 in the target", secs(60));
    loop {
        running.assert_alive();
        let depth = broker::queue_depth(&dlq).await;
        let row2 = db::my_u64(
            &my,
            "SELECT CAST(COUNT(*) AS UNSIGNED) FROM itrequests WHERE requestid = 2",
        )
        .await;
        if depth == 2 && row2 == Some(1) {
            break;
        }
        deadline
            .tick(&format!(
                "dead letters {depth}, row 2 present {row2:?}\n{}",
                running.log_tail()
            ))
            .await;
    }

    let list = pipeline.output(&["dlq", "list"], secs(30)).await;
    let listing = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.status.success(),
        "dlq list failed: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(listing.contains("2 dead letters"), "{listing}");
    assert!(
        listing.contains("stage=apply")
            && listing.contains("table=public.itrequests")
            && listing.contains("Duplicate entry"),
        "the refused insert is listed with its stage, table and reason:\n{listing}"
    );
    assert!(
        listing.contains("stage=decode"),
        "the unreadable message is listed:\n{listing}"
    );
    assert_eq!(
        broker::queue_depth(&dlq).await,
        2,
        "listing leaves the dead letters in place"
    );

    // Fix the cause, then replay: the change lands; the unreadable message stays, and replay says so.
    db::my_exec(&my, "DELETE FROM itrequests WHERE requestid = 1").await;
    let replay = pipeline.output(&["dlq", "replay"], secs(60)).await;
    let said = String::from_utf8_lossy(&replay.stdout).into_owned();
    assert!(
        !replay.status.success(),
        "replay must report what it could not re-drive:\n{said}"
    );
    assert!(said.contains("replayed 1, kept 1"), "{said}");
    env.wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    pipeline.assert_verified().await;
    assert_eq!(
        broker::queue_depth(&dlq).await,
        1,
        "only the unreadable message is left"
    );
    running.stop().await;
}
