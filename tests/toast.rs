//! TOASTed values and transforms: wal2json leaves a TOASTed value that an
//! update did not change out of the update. The host marks it as
//! `unchanged-toast`, or fills it in from the whole old row under REPLICA
//! IDENTITY FULL, before any transform sees the change, so a transform that
//! rewrites updates never writes a row without it. (Without a transform, see
//! `fidelity::an_unchanged_toasted_value_survives_an_update_of_another_column`.)

use crate::support::binary::guest;
use crate::support::{Deadline, Env, Pipeline, broker, db, row, secs};

const TABLE: &str =
    "CREATE TABLE docs (id integer PRIMARY KEY, keep boolean NOT NULL, n integer NOT NULL, body text NOT NULL)";

/// Rows `from..=to`, kept unless the id is a multiple of 3, each with 25 600
/// hex digits of md5 output: too random to compress, so stored out of line.
fn insert(from: u32, to: u32) -> String {
    format!(
        "INSERT INTO docs SELECT i, i % 3 <> 0, 0, \
         (SELECT string_agg(md5(i || '-' || g || random()::text), '') FROM generate_series(1, 800) g) \
         FROM generate_series({from}, {to}) i"
    )
}

const PG_KEPT: &str = "SELECT id::text, n::text, length(body)::text, md5(body) FROM docs WHERE keep";
const MY_ROWS: &str = "SELECT CAST(id AS CHAR), CAST(n AS CHAR), CAST(CHAR_LENGTH(body) AS CHAR), MD5(body) FROM docs";

/// A pipeline for `docs` through filter-rows keeping `keep = true`, streaming,
/// with rows 1 to 9 inserted, out of line, and the six kept ones replicated.
async fn filtered(tag: &str, identity_full: bool) -> (Env, Pipeline, crate::support::binary::Running) {
    let env = Env::new(tag).await;
    env.pg_exec(TABLE).await;
    if identity_full {
        env.pg_exec("ALTER TABLE docs REPLICA IDENTITY FULL").await;
    }
    let pipeline = env
        .pipeline()
        .tables("public.docs")
        .transform(&guest("filter_rows"))
        .transform_config("filter_rows.column=keep")
        .transform_config("filter_rows.op=eq")
        .transform_config("filter_rows.value=true");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&insert(1, 9)).await;
    let toast_table = env
        .pg_rows("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'docs'")
        .await;
    let toast_table = toast_table[0][0].clone().expect("docs has a TOAST table");
    let out_of_line = env
        .pg_rows(&format!(
            "SELECT count(DISTINCT chunk_id)::text, (SELECT min(length(body)) FROM docs)::text FROM {toast_table}"
        ))
        .await;
    assert_eq!(
        out_of_line,
        vec![row(&[Some("9"), Some("25600")])],
        "every body should be 25 600 characters stored out of line"
    );
    let rows = env
        .wait_replicated(&pipeline, &mut running, PG_KEPT, MY_ROWS, secs(60))
        .await;
    assert_eq!(rows.len(), 6, "filter-rows keeps rows whose keep is true: {rows:?}");
    (env, pipeline, running)
}

/// `UPDATE docs SET n = n + 1` leaves every body out of its updates; the kept rows
/// must keep theirs, whole, with the new n.
async fn update_every_row_keeps_every_body(
    env: &Env,
    pipeline: &Pipeline,
    running: &mut crate::support::binary::Running,
) {
    env.pg_exec("UPDATE docs SET n = n + 1").await;
    let rows = env.wait_replicated(pipeline, running, PG_KEPT, MY_ROWS, secs(60)).await;
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(r[1].as_deref(), Some("1"), "n was not updated: {r:?}");
        assert_eq!(r[2].as_deref(), Some("25600"), "the body was lost or cut: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_rows_keeps_unchanged_toasted_text_under_the_default_identity() {
    let (env, pipeline, mut running) = filtered("toastdef", false).await;
    update_every_row_keeps_every_body(&env, &pipeline, &mut running).await;

    // A row that starts to match without its body: the update passes as it is, finds
    // no row in the target, and no row without its body is written; the reason says
    // how to have whole rows sent.
    env.pg_exec("UPDATE docs SET keep = true WHERE id = 3").await;
    let letters = pipeline.wait_dead_letters(&mut running, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!((letter.stage.as_str(), letter.table.as_str()), ("apply", "public.docs"));
    assert!(
        letter.reason.contains("found no row with key id=")
            && letter.reason.contains("body")
            && letter.reason.contains("REPLICA IDENTITY FULL"),
        "the reason names the left-out column and the fix: {}",
        letter.reason
    );
    // The pipeline goes on, and row 3 is absent rather than present without its body.
    env.pg_exec("UPDATE docs SET n = n + 10 WHERE id = 1").await;
    let my = env.my(&pipeline).await;
    let deadline = Deadline::new("row 1 updated in the target", secs(60));
    loop {
        running.assert_alive();
        let n = db::my_u64(&my, "SELECT CAST(n AS UNSIGNED) FROM docs WHERE id = 1").await;
        if n == Some(11) {
            break;
        }
        deadline.tick(&n).await;
    }
    let kept_before = "SELECT id::text, n::text, length(body)::text, md5(body) FROM docs WHERE keep AND id <> 3";
    let target = db::my_rows(&my, MY_ROWS).await;
    assert_eq!(
        target,
        env.pg_rows(kept_before).await,
        "row 3 must not reach the target"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_rows_keeps_unchanged_toasted_text_under_a_full_identity() {
    let (env, pipeline, mut running) = filtered("toastfull", true).await;
    update_every_row_keeps_every_body(&env, &pipeline, &mut running).await;

    // The whole old row fills the body in: a row that starts to match arrives whole.
    env.pg_exec("UPDATE docs SET keep = true WHERE id IN (3, 6)").await;
    let rows = env
        .wait_replicated(&pipeline, &mut running, PG_KEPT, MY_ROWS, secs(60))
        .await;
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r[2].as_deref() == Some("25600")), "{rows:?}");
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    running.stop().await;
}

/// A message as the capture publishes it, re-driven (`replay`), so that it is
/// applied whatever the pipeline's offset: one transaction per change.
fn replay_message(pipeline: &Pipeline, changes: &[serde_json::Value]) -> Vec<u8> {
    let transactions: Vec<_> = changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            serde_json::json!({
                "xid": 9000 + i, "commit_lsn": format!("0/{:X}", i + 1),
                "commit_time": "2026-01-01 00:00:00+00", "changes": [change],
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "format": 2, "pipeline": pipeline.slot, "first_lsn": "0/1", "last_lsn": "0/1",
        "xids": [], "transforms": [], "replay": true, "transactions": transactions,
    }))
    .expect("json")
}

/// An insert of row `id` whose body is an unchanged TOAST value, as a transform
/// that turns updates into inserts would emit it.
fn insert_keeping_body(id: i64, n: i64) -> serde_json::Value {
    serde_json::json!({
        "op": "insert", "schema": "public", "table": "docs", "key": [],
        "columns": [
            {"name": "id", "type": "integer", "value": {"type": "int", "value": id}},
            {"name": "keep", "type": "boolean", "value": {"type": "bool", "value": true}},
            {"name": "n", "type": "integer", "value": {"type": "int", "value": n}},
            {"name": "body", "type": "text", "value": {"type": "unchanged-toast"}},
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_keeping_an_unchanged_value_rewrites_its_row_or_is_dead_lettered() {
    let env = Env::new("toastins").await;
    env.pg_exec(TABLE).await;
    let pipeline = env.pipeline().tables("public.docs");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&insert(1, 2)).await;
    let all = "SELECT id::text, n::text, length(body)::text, md5(body) FROM docs";
    let source = env
        .wait_replicated(&pipeline, &mut running, all, MY_ROWS, secs(60))
        .await;

    // Row 1 exists in the target: it takes n and keeps its body. Row 7 does not:
    // its body is known nowhere, so it is dead-lettered, not written without it.
    let message = replay_message(&pipeline, &[insert_keeping_body(1, 5), insert_keeping_body(7, 1)]);
    broker::publish_raw(&format!("wasmcdc.{}", pipeline.slot), &message).await;
    let letters = pipeline.wait_dead_letters(&mut running, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("does not carry the value of body")
            && letters[0].reason.contains("holds no row with key id=")
            && letters[0].reason.contains("REPLICA IDENTITY FULL"),
        "{}",
        letters[0].reason
    );
    let my = env.my(&pipeline).await;
    let deadline = Deadline::new("row 1 rewritten with n = 5", secs(60));
    let expected: Vec<_> = source
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r[0].as_deref() == Some("1") {
                r[1] = Some("5".into());
            }
            r
        })
        .collect();
    loop {
        running.assert_alive();
        let target = db::my_rows(&my, MY_ROWS).await;
        if target == expected {
            break;
        }
        deadline.tick(&target).await;
    }
    running.stop().await;
}
