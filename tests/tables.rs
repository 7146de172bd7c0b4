//! Many tables: `--tables` patterns, and schemas other than public.

use crate::support::{Env, secs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_select_tables_and_other_schemas_get_prefixed_names() {
    let env = Env::new("tables").await;
    env.pg_exec(
        "CREATE TABLE orders (id int PRIMARY KEY, item text);
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         CREATE SCHEMA sales;
         CREATE TABLE sales.invoices (id int PRIMARY KEY, total numeric(10,2));
         CREATE TABLE sales.notes_unreplicated_elsewhere (id int PRIMARY KEY);
         INSERT INTO orders VALUES (1, 'laptop');",
    )
    .await;
    let pipeline = env.pipeline().tables("public.*,sales.inv*");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(
        "INSERT INTO orders VALUES (2, 'screen');
         INSERT INTO customers VALUES (1, 'Ana');
         INSERT INTO sales.invoices VALUES (7, 99.50);
         INSERT INTO sales.notes_unreplicated_elsewhere VALUES (1);",
    )
    .await;
    let orders = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT id::text, item FROM orders",
            "SELECT CAST(id AS CHAR), item FROM orders",
            secs(60),
        )
        .await;
    assert_eq!(orders.len(), 2, "the copied row and the streamed one: {orders:?}");
    env.wait_replicated(
        &pipeline,
        &mut running,
        "SELECT id::text, name FROM customers",
        "SELECT CAST(id AS CHAR), name FROM customers",
        secs(60),
    )
    .await;
    env.wait_replicated(
        &pipeline,
        &mut running,
        "SELECT id::text, total::text FROM sales.invoices",
        "SELECT CAST(id AS CHAR), CAST(total AS CHAR) FROM sales_invoices",
        secs(60),
    )
    .await;
    let my = env.my(&pipeline).await;
    let unselected = crate::support::db::my_rows(
        &my,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE '%notes%'",
    )
    .await;
    assert!(
        unselected.is_empty(),
        "a table the patterns do not match is not replicated: {unselected:?}"
    );
    pipeline.assert_verified().await;
    running.stop().await;

    let none = env.pipeline().tables("nothing_here.*");
    none.expect_error(&["run"], &["does not exist"], secs(60)).await;
}
