//! Partitioned tables and names that need quoting: changes written to leaf
//! partitions, including partitions created or attached while the pipeline
//! runs, land in the one target table; names with spaces, dots, commas,
//! quotes, backslashes, backticks and non-ASCII letters replicate end to end.

use crate::support::binary::Running;
use crate::support::{Env, secs};

const ORDERS: &str = r#"
CREATE TABLE orders (
    region varchar(10) NOT NULL,
    id     integer NOT NULL,
    item   text,
    PRIMARY KEY (region, id)
) PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE SCHEMA "Arch ive";
CREATE TABLE "Arch ive"."orders us" PARTITION OF orders FOR VALUES IN ('us');
INSERT INTO orders VALUES ('eu', 1, 'copied'), ('us', 1, 'copied');
"#;

const SOURCE: &str = "SELECT region, id::text, item FROM orders";
const TARGET: &str = "SELECT region, CAST(id AS CHAR), item FROM orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_stream_into_their_table_including_ones_created_later() {
    let env = Env::new("partitions").await;
    env.pg_exec(ORDERS).await;
    let pipeline = env.pipeline().tables("public.orders");
    let mut running = env.start(&pipeline).await;

    // Changes to the partitions that existed at start-up, including a row moving between them.
    env.pg_exec(
        "INSERT INTO orders VALUES ('eu', 2, 'streamed'), ('us', 2, 'streamed');
         UPDATE orders SET item = 'updated' WHERE region = 'eu' AND id = 1;
         DELETE FROM orders WHERE region = 'us' AND id = 1;
         UPDATE orders SET region = 'us', id = 3 WHERE region = 'eu' AND id = 2;",
    )
    .await;
    // A partition created while running, written in the same transaction.
    env.pg_exec(
        "BEGIN;
         CREATE TABLE orders_apac PARTITION OF orders FOR VALUES IN ('apac');
         INSERT INTO orders VALUES ('apac', 1, 'new partition');
         COMMIT;",
    )
    .await;
    // A sub-partitioned branch created while running, each statement its own transaction.
    env.pg_exec("CREATE TABLE orders_af PARTITION OF orders FOR VALUES IN ('af', 'me') PARTITION BY LIST (region)")
        .await;
    env.pg_exec("CREATE TABLE orders_me PARTITION OF orders_af FOR VALUES IN ('me')")
        .await;
    env.pg_exec(
        "INSERT INTO orders VALUES ('me', 1, 'two levels down');
         UPDATE orders SET item = 'moved' WHERE region = 'apac';",
    )
    .await;
    // Renaming a partition is not attaching it. wal2json prints the name a change
    // was written under, so the capture must have read the changes made under the
    // old name first.
    env.wait_replicated(&pipeline, &mut running, SOURCE, TARGET, secs(60))
        .await;
    env.pg_exec("ALTER TABLE orders_apac RENAME TO orders_asia").await;
    env.pg_exec("INSERT INTO orders VALUES ('apac', 2, 'renamed partition')")
        .await;
    // An unrelated table in the same schema is not replicated.
    env.pg_exec("CREATE TABLE unrelated (id int PRIMARY KEY); INSERT INTO unrelated VALUES (1);")
        .await;

    env.wait_replicated(&pipeline, &mut running, SOURCE, TARGET, secs(60))
        .await;
    let rows = env.pg_rows(SOURCE).await;
    assert_eq!(rows.len(), 6, "the source holds the rows this test wrote: {rows:?}");
    let my = env.my(&pipeline).await;
    let tables = crate::support::db::my_rows(
        &my,
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() \
         AND table_name NOT IN ('wasmcdc_offsets', 'wasmcdc_staged')",
    )
    .await;
    assert_eq!(
        tables,
        vec![vec![Some("orders".to_owned())]],
        "only the partitioned table lands"
    );
    pipeline.assert_verified().await;

    // TRUNCATE of one partition cannot be told apart in the one target table: it is
    // dead-lettered under the partition's name, and replay refuses it. TRUNCATE of
    // the table empties it.
    env.pg_exec("TRUNCATE orders_eu").await;
    env.pg_exec("INSERT INTO orders VALUES ('us', 9, 'after the truncate')")
        .await;
    let letters = pipeline.wait_dead_letters(&mut running, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (letters[0].stage.as_str(), letters[0].table.as_str()),
        ("partition", "public.orders_eu"),
        "{letters:?}"
    );
    assert!(letters[0].reason.contains("TRUNCATE of partition"), "{letters:?}");
    let replay = pipeline.output(&["dlq", "replay"], secs(60)).await;
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(
        !replay.status.success() && said.contains("kept") && said.contains("TRUNCATE of one partition"),
        "dlq replay must keep a partition's TRUNCATE: {said}"
    );
    env.pg_exec("TRUNCATE orders").await;
    env.pg_exec("INSERT INTO orders VALUES ('apac', 9, 'after the whole truncate')")
        .await;
    env.wait_replicated(&pipeline, &mut running, SOURCE, TARGET, secs(60))
        .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_table_or_a_partition_out_of_reach_stops_until_copied_afresh() {
    let env = Env::new("partattach").await;
    env.pg_exec(ORDERS).await;
    let pipeline = env.pipeline().tables("public.orders");
    let mut running = env.start(&pipeline).await;
    env.pg_exec("INSERT INTO orders VALUES ('eu', 3, 'before')").await;
    env.wait_replicated(&pipeline, &mut running, SOURCE, TARGET, secs(60))
        .await;

    // Rows written before ATTACH were never changes of `orders`. Found by the tree
    // check even though nothing writes to the partition afterwards.
    env.pg_exec("CREATE TABLE orders_old (LIKE orders INCLUDING ALL)").await;
    env.pg_exec("INSERT INTO orders_old VALUES ('old', 1, 'held before attach')")
        .await;
    env.pg_exec("ALTER TABLE orders ATTACH PARTITION orders_old FOR VALUES IN ('old')")
        .await;
    env.pg_exec("ALTER TABLE orders_old OWNER TO CURRENT_USER").await;
    let phrases = ["public.orders_old", "ATTACH PARTITION", "slot drop"];
    expect_refusal(&mut running, &phrases).await;
    // A restart refuses it again: the slot was never confirmed past the attach.
    pipeline.expect_error(&["run"], &phrases, secs(60)).await;

    // Copied afresh, the table is whole again, the held row included.
    let dropped = pipeline.output(&["slot", "drop"], secs(60)).await;
    assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    let mut running = env.start(&pipeline).await;
    env.wait_replicated(&pipeline, &mut running, SOURCE, TARGET, secs(60))
        .await;

    // A partition in a schema that held none at start-up: wal2json drops its
    // changes, so the tree check stops the pipeline, and a restart does too.
    env.pg_exec(
        r#"CREATE SCHEMA elsewhere;
           CREATE TABLE elsewhere.orders_x PARTITION OF orders FOR VALUES IN ('x');
           INSERT INTO orders VALUES ('x', 1, 'outside');"#,
    )
    .await;
    let phrases = ["elsewhere.orders_x", "held none of its partitions", "slot drop"];
    expect_refusal(&mut running, &phrases).await;
    pipeline.expect_error(&["run"], &phrases, secs(60)).await;
}

/// Waits for a `run` to exit non-zero with one error line holding every phrase.
async fn expect_refusal(running: &mut Running, phrases: &[&str]) {
    let status = running.wait_exit(secs(60)).await;
    let log = running.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the pipeline should stop with an error ({status:?}):\n{log}"
    );
    crate::support::binary::assert_clean_error(&log, phrases);
}

/// A name with a space, a dot, a comma, a quote, a backslash, a backtick and
/// non-ASCII letters, in a schema with a dot in its name.
const ODD: &str = r#"
CREATE SCHEMA "Sales.EU";
CREATE TABLE "Sales.EU"."Q1.2026, ""Prélim"" \ `x`" (
    "Order Id" integer PRIMARY KEY,
    "Note, ""quoted""" text
);
CREATE TABLE "Order Items" (id integer PRIMARY KEY, n integer);
INSERT INTO "Sales.EU"."Q1.2026, ""Prélim"" \ `x`" VALUES (1, 'copied');
INSERT INTO "Order Items" VALUES (1, 1);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_names_replicate_end_to_end() {
    let env = Env::new("oddnames").await;
    env.pg_exec(ODD).await;
    let pipeline = env
        .pipeline()
        .tables(r#""Sales.EU"."Q1.2026, ""Prélim"" \ `x`", public."Order Items""#);
    let mut running = env.start(&pipeline).await;
    env.pg_exec(
        r#"INSERT INTO "Sales.EU"."Q1.2026, ""Prélim"" \ `x`" VALUES (2, 'streamed'), (3, NULL);
           UPDATE "Sales.EU"."Q1.2026, ""Prélim"" \ `x`" SET "Note, ""quoted""" = 'updated' WHERE "Order Id" = 1;
           DELETE FROM "Sales.EU"."Q1.2026, ""Prélim"" \ `x`" WHERE "Order Id" = 3;
           INSERT INTO "Order Items" VALUES (2, 2);
           UPDATE "Order Items" SET n = n + 10;"#,
    )
    .await;
    env.wait_replicated(
        &pipeline,
        &mut running,
        r#"SELECT "Order Id"::text, "Note, ""quoted""" FROM "Sales.EU"."Q1.2026, ""Prélim"" \ `x`""#,
        "SELECT CAST(`Order Id` AS CHAR), `Note, \"quoted\"` FROM `Sales.EU_Q1.2026, \"Prélim\" \\ ``x```",
        secs(60),
    )
    .await;
    env.wait_replicated(
        &pipeline,
        &mut running,
        r#"SELECT id::text, n::text FROM "Order Items""#,
        "SELECT CAST(id AS CHAR), CAST(n AS CHAR) FROM `Order Items`",
        secs(60),
    )
    .await;
    pipeline.assert_verified().await;
    running.stop().await;
}
