//! The `identity` transform component gives the same result as no transform.

use std::path::PathBuf;

use crate::seed::SEED_TABLE;
use crate::support::{Env, binary::repo_root, db, secs};

const SOURCE_ROWS: &str =
    "SELECT requestid::text, details, duedate::text, CASE WHEN fulfilled THEN '1' ELSE '0' END FROM itrequests";
const TARGET_ROWS: &str =
    "SELECT CAST(requestid AS CHAR), details, CAST(duedate AS CHAR), CAST(fulfilled AS CHAR) FROM itrequests";

fn identity_module() -> PathBuf {
    let path = repo_root().join("transforms/target/wasm32-wasip2/release/identity.wasm");
    assert!(
        path.is_file(),
        "the identity component is missing at {}; build it with `cargo build --target wasm32-wasip2 --release` inside transforms/",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_transform_equals_no_transform() {
    let module = identity_module();
    let env = Env::new("ident").await;
    env.pg_exec(SEED_TABLE).await;
    let plain = env.pipeline();
    let transformed = env.add_pipeline("wasm").await.transform(&module);
    let mut plain_run = env.start(&plain).await;
    let mut transformed_run = env.start(&transformed).await;

    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled)
         SELECT 'request ' || g || ' ' || repeat('é', g % 5), date '2025-01-01' + g, g % 3 = 0
         FROM generate_series(1, 50) g",
    )
    .await;
    env.pg_exec(
        "UPDATE itrequests SET fulfilled = NOT fulfilled, details = details || ' (seen)' WHERE requestid % 4 = 0",
    )
    .await;
    env.pg_exec("DELETE FROM itrequests WHERE requestid % 6 = 0").await;
    env.pg_exec(
        "BEGIN;
         INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('Late request', '2026-12-31', false);
         UPDATE itrequests SET duedate = duedate + 30 WHERE requestid < 10;
         DELETE FROM itrequests WHERE requestid = 1;
         COMMIT;",
    )
    .await;

    let a = env
        .wait_replicated(&plain, &mut plain_run, SOURCE_ROWS, TARGET_ROWS, secs(90))
        .await;
    let b = env
        .wait_replicated(&transformed, &mut transformed_run, SOURCE_ROWS, TARGET_ROWS, secs(90))
        .await;
    // Re-read both targets now that both have caught up, then compare them directly.
    let a_now = db::my_rows(&env.my(&plain).await, TARGET_ROWS).await;
    let b_now = db::my_rows(&env.my(&transformed).await, TARGET_ROWS).await;
    assert_eq!(a, a_now, "the target without a transform changed after catching up");
    assert_eq!(
        b, b_now,
        "the target with the identity transform changed after catching up"
    );
    assert_eq!(
        a_now, b_now,
        "the identity transform gave a different target than no transform"
    );

    plain.assert_verified().await;
    transformed.assert_verified().await;
    plain_run.stop().await;
    transformed_run.stop().await;
}
