//! Least privilege: the pipeline runs with the minimal roles the README gives,
//! and never prints their passwords.

use crate::seed::SEED_TABLE;
use crate::support::env::{MARIADB_ROOT, unique};
use crate::support::{Env, db, secs};

const SOURCE_ROWS: &str =
    "SELECT requestid::text, details, duedate::text, CASE WHEN fulfilled THEN '1' ELSE '0' END FROM itrequests";
const TARGET_ROWS: &str =
    "SELECT CAST(requestid AS CHAR), details, CAST(duedate AS CHAR), CAST(fulfilled AS CHAR) FROM itrequests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_with_minimal_roles() {
    let env = Env::new("priv").await;
    env.pg_exec(SEED_TABLE).await;
    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled) VALUES ('Reset my user password', '2025-01-10', false)",
    )
    .await;

    // PostgreSQL: REPLICATION, plus SELECT on the replicated table (for the initial copy).
    let role = unique("repl");
    let pg_secret = "Pg-secret-4711";
    env.pg_exec(&format!("CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{pg_secret}'"))
        .await;
    env.pg_exec(&format!("GRANT SELECT ON itrequests TO {role}")).await;

    // MariaDB: write rows, create the tables and the offsets table, nothing else.
    let base = env.pipeline();
    let database = base
        .mariadb_url
        .rsplit('/')
        .next()
        .expect("a database in the URL")
        .to_owned();
    let user = unique("w");
    let my_secret = "My-secret-0815";
    let root = db::my_connect(MARIADB_ROOT).await;
    for host in ["%", "localhost", "127.0.0.1"] {
        db::my_exec(
            &root,
            &format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY '{my_secret}'"),
        )
        .await;
        db::my_exec(
            &root,
            &format!("GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER ON `{database}`.* TO '{user}'@'{host}'"),
        )
        .await;
    }

    let pipeline = base
        .pg_url(&format!("postgres://{role}:{pg_secret}@127.0.0.1:5432/{}", env.pg_db))
        .mariadb_url(&format!("mysql://{user}:{my_secret}@127.0.0.1:3306/{database}"));
    let mut running = env.start(&pipeline).await;
    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled) VALUES
             ('Repair laptop', '2025-02-20', false), ('Restart main server', '2025-03-30', false)",
    )
    .await;
    env.pg_exec("UPDATE itrequests SET fulfilled = true WHERE requestid = 2")
        .await;
    env.pg_exec("DELETE FROM itrequests WHERE requestid = 1").await;
    let rows = env
        .wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    assert_eq!(rows.len(), 2, "rows 2 and 3 remain: {rows:?}");
    pipeline.assert_verified().await;

    let status = pipeline.output(&["status"], secs(30)).await;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        status.status.success(),
        "status failed under the minimal roles:\n{printed}"
    );
    running.stop().await;
    for secret in [pg_secret, my_secret] {
        assert!(!printed.contains(secret), "status printed a password:\n{printed}");
        assert!(
            !running_log_contains(&pipeline.slot, secret),
            "the run log holds a password"
        );
    }
    assert!(
        printed.contains("***"),
        "status shows URLs with the password masked:\n{printed}"
    );

    // The replication role can drop its own slot.
    let dropped = pipeline.output(&["slot", "drop"], secs(30)).await;
    assert!(
        dropped.status.success(),
        "slot drop failed: {}",
        String::from_utf8_lossy(&dropped.stderr)
    );
    env.pg_exec(&format!("REVOKE ALL ON itrequests FROM {role}")).await;
    env.pg_exec(&format!("DROP ROLE {role}")).await;
    for host in ["%", "localhost", "127.0.0.1"] {
        db::my_exec(&root, &format!("DROP USER '{user}'@'{host}'")).await;
    }
}

fn running_log_contains(slot: &str, needle: &str) -> bool {
    let dir = crate::support::binary::log_dir();
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(slot))
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|text| text.contains(needle)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_is_enforced_when_the_urls_ask_for_it() {
    let env = Env::new("tls").await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    // The local servers speak no TLS, so asking for it must fail loudly, never fall back to plain text.
    let mariadb = pipeline.mariadb_url(&format!("{}?ssl-mode=REQUIRED", pipeline.mariadb_url));
    mariadb.expect_error(&["status"], &["MariaDB", "TLS"], secs(60)).await;
    let amqp = pipeline.amqp_url(&pipeline.amqp_url.replacen("amqp://", "amqps://", 1));
    amqp.expect_error(&["status"], &["RabbitMQ"], secs(60)).await;
}
