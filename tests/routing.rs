//! A transform that routes and reshapes changes gets its target table: made
//! from the output's typed columns, keyed by the source table's primary key,
//! through the initial copy and the stream. A target that cannot be made stops
//! the pipeline with one sentence instead of dead-lettering every change.

use crate::support::binary::{Running, guest};
use crate::support::{Env, Pipeline, db, secs};

/// A source with a table `rt` holding one row to copy.
async fn rt_env(tag: &str) -> Env {
    let env = Env::new(tag).await;
    env.pg_exec(
        "CREATE TABLE rt (id integer PRIMARY KEY, details varchar(60), due date, n bigint);
         INSERT INTO rt VALUES (1, 'copied', '2026-01-02', 10);",
    )
    .await;
    env
}

/// Starts `pipeline` over `rt`, changes `rt` in every way, and waits until
/// `tickets` holds what `rt` does.
async fn replicate_rt_into_tickets(env: &Env, pipeline: &Pipeline) -> Running {
    let mut running = env.start(pipeline).await;
    env.pg_exec(
        "INSERT INTO rt VALUES (2, 'streamed', NULL, 20), (3, 'to delete', '2026-03-04', 30);
         UPDATE rt SET details = 'updated', n = n + 1 WHERE id = 1;
         DELETE FROM rt WHERE id = 3;",
    )
    .await;
    env.wait_replicated(
        pipeline,
        &mut running,
        "SELECT id::text, details, to_char(due, 'YYYY-MM-DD'), n::text FROM rt",
        "SELECT CAST(id AS CHAR), summary, CAST(due AS CHAR), CAST(n AS CHAR) FROM tickets",
        secs(60),
    )
    .await;
    running
}

/// Each column of the MariaDB table `tickets`: name, type and key.
async fn tickets_columns(env: &Env, pipeline: &Pipeline) -> Vec<Vec<Option<String>>> {
    let my = env.my(pipeline).await;
    db::my_rows(
        &my,
        "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), CAST(column_key AS CHAR) \
         FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'tickets'",
    )
    .await
}

fn text(r: &[&str]) -> Vec<Option<String>> {
    r.iter().map(|s| Some((*s).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_and_reshaped_change_lands_in_a_table_it_created() {
    let env = rt_env("routing").await;
    let pipeline = env
        .pipeline()
        .tables("public.rt")
        .transform(&guest("rename"))
        .transform_config("rename.table=tickets")
        .transform_config("rename.column.details=summary");
    let running = replicate_rt_into_tickets(&env, &pipeline).await;
    assert_eq!(
        tickets_columns(&env, &pipeline).await,
        vec![
            text(&["due", "date", ""]),
            text(&["id", "int(11)", "PRI"]),
            text(&["n", "bigint(20)", ""]),
            text(&["summary", "varchar(60)", ""]),
        ],
        "the created table's columns, types and key"
    );
    assert!(pipeline.dead_letters().await.is_empty(), "nothing was dead-lettered");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_cannot_be_made_stops_the_pipeline_once() {
    let env = Env::new("noroute").await;
    env.pg_exec("CREATE TABLE rt (id integer PRIMARY KEY, details text); INSERT INTO rt VALUES (1, 'copied')")
        .await;
    // MariaDB refuses table names that end with a space.
    let pipeline = env
        .pipeline()
        .tables("public.rt")
        .transform(&guest("rename"))
        .transform_config("rename.table=trailing ");
    pipeline
        .expect_error(&["run"], &["trailing ", "cannot be created", "transform"], secs(60))
        .await;
    assert!(pipeline.dead_letters().await.is_empty(), "nothing was dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_target_is_made_as_declared() {
    let env = rt_env("declared").await;
    // The declaration widens id and summary beyond what the source's types would give,
    // and leaves n out: it is added from the changes' typed columns.
    let pipeline = env
        .pipeline()
        .tables("public.rt")
        .transform(&guest("rename"))
        .transform_config("rename.schema=public")
        .transform_config("rename.table=tickets")
        .transform_config("rename.column.details=summary")
        .transform_config("rename.target.id=bigint")
        .transform_config("rename.target.summary=character varying(200)")
        .transform_config("rename.target.due=date")
        .transform_config("rename.target-key=id");
    let running = replicate_rt_into_tickets(&env, &pipeline).await;
    assert_eq!(
        tickets_columns(&env, &pipeline).await,
        vec![
            text(&["due", "date", ""]),
            text(&["id", "bigint(20)", "PRI"]),
            text(&["n", "bigint(20)", ""]),
            text(&["summary", "varchar(200)", ""]),
        ],
        "the declared columns, types and key, and the column the declaration left out"
    );
    assert!(pipeline.dead_letters().await.is_empty(), "nothing was dead-lettered");
    running.stop().await;
}
