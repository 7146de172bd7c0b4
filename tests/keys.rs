//! Composite primary keys, identifiers that need quoting, and updates that move a row's key.

use crate::support::{Env, db, secs};

const TABLE: &str = r#"CREATE TABLE "OrderLines" (
    "Order"     INTEGER NOT NULL,
    "Line`No"   INTEGER NOT NULL,
    "Item Name" TEXT NOT NULL,
    "Qty"       NUMERIC(10,2),
    note        TEXT,
    PRIMARY KEY ("Order", "Line`No")
)"#;

const SOURCE_ROWS: &str = r#"SELECT "Order"::text, "Line`No"::text, "Item Name", "Qty"::text, note FROM "OrderLines""#;
const TARGET_ROWS: &str =
    "SELECT CAST(`Order` AS CHAR), CAST(`Line``No` AS CHAR), `Item Name`, CAST(`Qty` AS CHAR), note FROM `OrderLines`";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_and_quoted_identifiers() {
    let env = Env::new("keys").await;
    env.pg_exec(TABLE).await;
    let pipeline = env.pipeline().tables("public.OrderLines");
    let mut running = env.start(&pipeline).await;

    env.pg_exec(
        r#"INSERT INTO "OrderLines" VALUES
             (1, 1, 'Widget', 2, NULL),
             (1, 2, 'Gadget', 1, 'fragile'),
             (2, 1, 'Sprocket `tick` "quote"', 5, $$'); DROP TABLE "OrderLines"; --$$),
             (2, 2, 'Ünïcode ☃', NULL, 'to be deleted'),
             (3, 1, 'Spare', 7, NULL)"#,
    )
    .await;
    env.pg_exec(r#"UPDATE "OrderLines" SET "Qty" = 10.5, note = NULL WHERE "Order" = 1 AND "Line`No" = 2"#)
        .await;
    // Key changes: the old key must disappear from the target and the new one appear.
    env.pg_exec(r#"UPDATE "OrderLines" SET "Line`No" = 3 WHERE "Order" = 2 AND "Line`No" = 1"#)
        .await;
    env.pg_exec(
        r#"UPDATE "OrderLines" SET "Order" = 5, "Item Name" = 'Widget v2' WHERE "Order" = 1 AND "Line`No" = 1"#,
    )
    .await;
    env.pg_exec(r#"DELETE FROM "OrderLines" WHERE "Order" = 2 AND "Line`No" = 2"#)
        .await;
    // Several changes, including a key change and a re-use of a freed key, in one transaction.
    env.pg_exec(
        r#"BEGIN;
           UPDATE "OrderLines" SET "Order" = 4 WHERE "Order" = 3 AND "Line`No" = 1;
           INSERT INTO "OrderLines" VALUES (3, 1, 'Replacement', 1, 'reused key');
           DELETE FROM "OrderLines" WHERE "Order" = 4;
           COMMIT;"#,
    )
    .await;

    // wal2json leaves an unchanged TOASTed value out of an UPDATE: the target must keep it.
    env.pg_exec(
        r#"INSERT INTO "OrderLines" SELECT 6, 1, 'Big', 1, string_agg(md5(g::text), '') FROM generate_series(1, 1000) g"#,
    )
    .await;
    env.pg_exec(r#"UPDATE "OrderLines" SET "Qty" = 2 WHERE "Order" = 6"#)
        .await;

    let rows = env
        .wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    let keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
        .collect();
    let want = [("1", "2"), ("2", "3"), ("3", "1"), ("5", "1"), ("6", "1")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(keys, want, "unexpected keys in the target: {rows:?}");

    // The target table keeps the source's letter case.
    let my = env.my(&pipeline).await;
    let tables = db::my_rows(
        &my,
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name NOT IN ('wasmcdc_offsets', 'wasmcdc_staged')",
    )
    .await;
    assert_eq!(tables, vec![vec![Some("OrderLines".to_owned())]]);

    pipeline.assert_verified().await;
    running.stop().await;
}
