//! Bad input gets one clear `error: ` sentence and a non-zero exit, never a panic.

use crate::seed::SEED_TABLE;
use crate::support::cluster::Cluster;
use crate::support::{Env, Pipeline, secs};

/// A password none of the servers accepts; it must never be printed.
const WRONG: &str = "not-the-password-7731";
/// A local port nothing listens on.
const CLOSED: &str = "127.0.0.1:1";

/// A source database with the seed table, ready for `run`.
async fn seeded(tag: &str) -> (Env, Pipeline) {
    let env = Env::new(tag).await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    (env, pipeline)
}

/// `wasmcdc run` fails within 60 s with one error line naming every phrase.
async fn run_fails(pipeline: &Pipeline, phrases: &[&str]) -> String {
    let line = pipeline.expect_error(&["run"], phrases, secs(60)).await;
    assert!(!line.contains(WRONG), "the error shows a password: {line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_postgres_password() {
    let (env, p) = seeded("badpgpw").await;
    let url = format!("postgres://postgres:{WRONG}@127.0.0.1:5432/{}", env.pg_db);
    run_fails(&p.pg_url(&url), &["PostgreSQL", "rejected the credentials"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mariadb_password() {
    let (_env, p) = seeded("badmypw").await;
    let db = p.mariadb_url.rsplit('/').next().unwrap_or_default().to_owned();
    let url = format!("mysql://mariadb:{WRONG}@127.0.0.1:3306/{db}");
    run_fails(&p.mariadb_url(&url), &["MariaDB", "rejected the credentials"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_rabbitmq_password() {
    let (_env, p) = seeded("badmqpw").await;
    run_fails(
        &p.amqp_url(&format!("amqp://guest:{WRONG}@127.0.0.1:5672/%2f")),
        &["RabbitMQ"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down() {
    let (env, p) = seeded("pgdown").await;
    let url = format!("postgres://postgres:postgres@{CLOSED}/{}", env.pg_db);
    run_fails(&p.pg_url(&url), &["cannot reach PostgreSQL"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_down() {
    let (_env, p) = seeded("mydown").await;
    run_fails(
        &p.mariadb_url(&format!("mysql://mariadb:mariadb@{CLOSED}/requests")),
        &["cannot reach MariaDB"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_down() {
    let (_env, p) = seeded("mqdown").await;
    run_fails(&p.amqp_url(&format!("amqp://guest:guest@{CLOSED}/%2f")), &["RabbitMQ"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical() {
    let cluster = Cluster::start(&["wal_level=replica"]);
    let env = Env::on_server("wallevel", &cluster.server_url()).await;
    env.pg_exec(SEED_TABLE).await;
    run_fails(&env.pipeline(), &["wal_level"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal2json_not_loadable() {
    let cluster = Cluster::start(&["wal_level=logical", "output_plugin_libraries=pgoutput,test_decoding"]);
    let env = Env::on_server("nowal2json", &cluster.server_url()).await;
    env.pg_exec(SEED_TABLE).await;
    run_fails(&env.pipeline(), &["wal2json"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_does_not_exist() {
    let (_env, p) = seeded("notable").await;
    run_fails(&p.tables("public.nope"), &["public.nope", "does not exist"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_primary_key() {
    let (env, p) = seeded("nokey").await;
    env.pg_exec("CREATE TABLE keyless (id INTEGER NOT NULL, note TEXT)")
        .await;
    run_fails(&p.tables("public.keyless"), &["keyless", "no primary key"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_that_is_not_a_component() {
    let (_env, p) = seeded("notwasm").await;
    let path = std::env::temp_dir().join(format!("{}.wasm", p.slot));
    std::fs::write(&path, b"\0asm but not really a component").expect("a temporary file");
    let result = tokio::spawn({
        let p = p.transform(&path);
        async move { run_fails(&p, &["not a WebAssembly component"]).await }
    })
    .await;
    let _ = std::fs::remove_file(&path);
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_alone_never_starts_over_a_pipeline_with_history() {
    let (env, p) = seeded("nofresh").await;
    let mut running = env.start(&p).await;
    env.pg_exec("INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('applied', '2026-01-01', false)")
        .await;
    let expected = vec![crate::support::row(&[Some("applied")])];
    env.wait_target(&p, &mut running, "SELECT details FROM itrequests", &expected, secs(60))
        .await;
    running.stop().await;
    // The slot is lost (dropped by hand, or recreated by someone) while the target holds applied changes.
    env.pg_exec(&format!("SELECT pg_drop_replication_slot('{}')", p.slot))
        .await;
    env.pg_exec("INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('lost', '2026-01-02', false)")
        .await;

    let line = p
        .expect_error(&["capture"], &["slot", "wasmcdc slot drop"], secs(60))
        .await;
    assert!(line.contains("gone") || line.contains("missing"), "{line}");
    let slots = env
        .pg_rows(&format!(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = '{}'",
            p.slot
        ))
        .await;
    assert!(
        slots.is_empty(),
        "capture created a fresh slot for a pipeline with history: {slots:?}"
    );
}
