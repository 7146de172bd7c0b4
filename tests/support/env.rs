//! Per-test resources: a fresh PostgreSQL database, and per pipeline a fresh
//! MariaDB database and a unique pipeline name. All of it is removed when the
//! `Env` is dropped, even when the test fails.

use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::mysql::MySqlPool;
use tokio_postgres::Client;

use super::binary::{Pipeline, Running};
use super::db::{self, Rows};
use super::secs;
use super::wait::Deadline;

/// The PostgreSQL server the tests use, without a database.
pub const PG_SERVER: &str = "postgres://postgres:postgres@127.0.0.1:5432";
/// MariaDB's administrator (root, empty password).
pub const MARIADB_ROOT: &str = "mysql://root@127.0.0.1:3306";
/// The MariaDB user pipelines write as.
pub const MARIADB_USER: &str = "mysql://mariadb:mariadb@127.0.0.1:3306";
/// RabbitMQ.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A name no other test (in this or an earlier run) uses: lower-case letters, digits, underscores.
pub fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!(
        "e2e_{tag}_{}_{}_{}",
        std::process::id(),
        now % 1_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's databases and pipelines.
pub struct Env {
    pg_server: String,
    /// The source database's name.
    pub pg_db: String,
    /// A connection to the source database (as `postgres`, session in UTC).
    pub pg: Client,
    primary: Pipeline,
    pipelines: Mutex<Vec<Pipeline>>,
}

impl Env {
    /// Fresh resources on the shared PostgreSQL server.
    pub async fn new(tag: &str) -> Env {
        Env::on_server(tag, PG_SERVER).await
    }

    /// Fresh resources, with the source database on `pg_server` (a URL without a database).
    pub async fn on_server(tag: &str, pg_server: &str) -> Env {
        let pg_db = unique(tag);
        let admin = db::pg_connect(&format!("{pg_server}/postgres")).await;
        db::pg_exec(&admin, &format!("CREATE DATABASE {pg_db}")).await;
        let pg = db::pg_connect(&format!("{pg_server}/{pg_db}")).await;
        let primary = new_pipeline(pg_server, &pg_db, &pg_db).await;
        Env {
            pg_server: pg_server.to_owned(),
            pg_db,
            pg,
            pipelines: Mutex::new(vec![primary.clone()]),
            primary,
        }
    }

    /// The test's first pipeline (its slot and MariaDB database are named like the source database).
    pub fn pipeline(&self) -> Pipeline {
        self.primary.clone()
    }

    /// Another pipeline from the same source database into its own MariaDB database.
    pub async fn add_pipeline(&self, suffix: &str) -> Pipeline {
        let name = format!("{}_{suffix}", self.pg_db);
        let p = new_pipeline(&self.pg_server, &self.pg_db, &name).await;
        self.pipelines.lock().expect("not poisoned").push(p.clone());
        p
    }

    /// Runs SQL in the source database.
    pub async fn pg_exec(&self, sql: &str) {
        db::pg_exec(&self.pg, sql).await;
    }

    /// Rows of a source query, sorted.
    pub async fn pg_rows(&self, sql: &str) -> Rows {
        db::pg_rows(&self.pg, sql).await
    }

    /// A connection pool to `pipeline`'s MariaDB database, as the pipeline's user.
    pub async fn my(&self, pipeline: &Pipeline) -> MySqlPool {
        db::my_connect(&pipeline.mariadb_url).await
    }

    /// Spawns `wasmcdc run` and waits until its replication slot is streaming.
    ///
    /// A slot that is still being created already shows as active, but only
    /// changes committed after its consistent point (when `confirmed_flush_lsn`
    /// appears) will be decoded, so both are awaited.
    pub async fn start(&self, pipeline: &Pipeline) -> Running {
        let mut running = pipeline.spawn_run();
        self.wait_streaming(pipeline, &mut running).await;
        running
    }

    /// Waits until `pipeline`'s replication slot, held by `running` (a `run` or a
    /// `capture`), is active and past its consistent point.
    pub async fn wait_streaming(&self, pipeline: &Pipeline, running: &mut Running) {
        let deadline = Deadline::new(format!("replication slot '{}' to stream", pipeline.slot), secs(60));
        loop {
            running.assert_alive();
            let state = self
                .pg
                .query_opt(
                    "SELECT active, confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1",
                    &[&pipeline.slot],
                )
                .await
                .expect("pg_replication_slots is readable")
                .map(|r| (r.get::<_, bool>(0), r.get::<_, bool>(1)));
            if state == Some((true, true)) {
                return;
            }
            deadline
                .tick(&format!("slot (active, consistent): {state:?}\n{}", running.log_tail()))
                .await;
        }
    }

    /// The current WAL insert position of the source server, as a number.
    pub async fn current_wal_lsn(&self) -> u64 {
        let text: String = self
            .pg
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::text", &[])
            .await
            .expect("pg_current_wal_lsn() is readable")
            .get(0);
        text.parse().expect("an LSN is a whole number")
    }

    /// `pipeline`'s slot's `confirmed_flush_lsn` as a number, if the slot exists and has one.
    pub async fn confirmed_flush_lsn(&self, pipeline: &Pipeline) -> Option<u64> {
        self.pg
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&pipeline.slot],
            )
            .await
            .expect("pg_replication_slots is readable")
            .and_then(|r| r.get::<_, Option<String>>(0))
            .map(|s| s.parse().expect("an LSN is a whole number"))
    }

    /// `pipeline`'s row in the target's offsets table: its LSN and state.
    pub async fn offsets_row(&self, pipeline: &Pipeline) -> Option<(u64, String)> {
        let my = self.my(pipeline).await;
        let row = db::my_rows(
            &my,
            &format!(
                "SELECT CAST(lsn AS CHAR), state FROM wasmcdc_offsets WHERE pipeline = '{}'",
                pipeline.slot
            ),
        )
        .await;
        my.close().await;
        row.into_iter().next().map(|r| {
            let lsn = r[0]
                .as_deref()
                .unwrap_or_default()
                .parse()
                .expect("an LSN is a whole number");
            (lsn, r[1].clone().unwrap_or_default())
        })
    }

    /// Waits until `my_sql` in `pipeline`'s target returns `expected` (both sorted).
    pub async fn wait_target(
        &self,
        pipeline: &Pipeline,
        running: &mut Running,
        my_sql: &str,
        expected: &Rows,
        limit: Duration,
    ) {
        let my = self.my(pipeline).await;
        let deadline = Deadline::new(format!("MariaDB to return {expected:?} for {my_sql:?}"), limit);
        loop {
            running.assert_alive();
            let seen = db::my_rows(&my, my_sql).await;
            if &seen == expected {
                return;
            }
            deadline.tick(&seen).await;
        }
    }

    /// Waits until `my_sql` in `pipeline`'s target returns what `pg_sql` returns in the source.
    pub async fn wait_replicated(
        &self,
        pipeline: &Pipeline,
        running: &mut Running,
        pg_sql: &str,
        my_sql: &str,
        limit: Duration,
    ) -> Rows {
        let my = self.my(pipeline).await;
        let deadline = Deadline::new(
            format!("MariaDB database of pipeline '{}' to equal the source", pipeline.slot),
            limit,
        );
        loop {
            running.assert_alive();
            let source = self.pg_rows(pg_sql).await;
            let target = db::my_rows(&my, my_sql).await;
            if source == target {
                return target;
            }
            let diff = Diff::of(&source, &target);
            deadline.tick(&diff).await;
        }
    }

    /// Waits until `my_sql` in `pipeline`'s target returns what `pg_sql` returns
    /// in the source, while every one of `processes` stays alive; a target
    /// table that does not exist yet counts as not equal. Unlike
    /// `wait_replicated`, a timeout is returned, with what differed last, so
    /// that the caller can print its own figures before failing.
    pub async fn wait_equal(
        &self,
        pipeline: &Pipeline,
        processes: &mut [&mut Running],
        pg_sql: &str,
        my_sql: &str,
        limit: Duration,
    ) -> Result<Rows, String> {
        let my = self.my(pipeline).await;
        let deadline = Deadline::new("", limit);
        loop {
            for p in processes.iter_mut() {
                p.assert_alive();
            }
            let source = self.pg_rows(pg_sql).await;
            // The target table may not be created yet.
            let target = db::try_my_rows(&my, my_sql).await;
            if target.as_ref().is_ok_and(|t| *t == source) {
                my.close().await;
                return target.map_err(|e| e.to_string());
            }
            if deadline.expired() {
                my.close().await;
                return Err(match target {
                    Ok(target) => format!("{:#?}", Diff::of(&source, &target)),
                    Err(e) => format!("MariaDB refused {my_sql:?}: {e}"),
                });
            }
            deadline.tick(&"").await;
        }
    }
}

/// What differs between two row sets, for failure messages.
#[derive(Debug)]
#[allow(dead_code)]
struct Diff {
    source_rows: usize,
    target_rows: usize,
    only_in_source: Rows,
    only_in_target: Rows,
}

impl Diff {
    fn of(source: &Rows, target: &Rows) -> Diff {
        let first = |a: &Rows, b: &Rows| a.iter().filter(|r| !b.contains(r)).take(10).cloned().collect();
        Diff {
            source_rows: source.len(),
            target_rows: target.len(),
            only_in_source: first(source, target),
            only_in_target: first(target, source),
        }
    }
}

async fn new_pipeline(pg_server: &str, pg_db: &str, name: &str) -> Pipeline {
    let root = db::my_connect(MARIADB_ROOT).await;
    db::my_exec(&root, &format!("CREATE DATABASE `{name}`")).await;
    for host in ["%", "localhost", "127.0.0.1"] {
        db::my_exec(&root, &format!("GRANT ALL ON `{name}`.* TO 'mariadb'@'{host}'")).await;
    }
    root.close().await;
    Pipeline {
        pg_url: format!("{pg_server}/{pg_db}"),
        mariadb_url: format!("{MARIADB_USER}/{name}"),
        amqp_url: AMQP_URL.to_owned(),
        slot: name.to_owned(),
        tables: "public.itrequests".to_owned(),
        transforms: Vec::new(),
        transform_config: Vec::new(),
        settings: Vec::new(),
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let pipelines = std::mem::take(&mut *self.pipelines.lock().unwrap_or_else(|e| e.into_inner()));
        let pg_server = self.pg_server.clone();
        let pg_db = self.pg_db.clone();
        // Cleanup is async and this may run inside the test's runtime: use a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                eprintln!("cleanup: cannot start a runtime; {pg_db} is left behind");
                return;
            };
            rt.block_on(cleanup(&pg_server, &pg_db, &pipelines));
        });
        let _ = cleanup.join();
    }
}

/// `wasmcdc slot drop` for each pipeline, then the databases. Problems are reported, never raised.
async fn cleanup(pg_server: &str, pg_db: &str, pipelines: &[Pipeline]) {
    for p in pipelines {
        if !slot_drop(p) {
            eprintln!(
                "cleanup: `wasmcdc slot drop --slot {}` failed; dropping the slot directly",
                p.slot
            );
        }
    }
    cleanup_pg(pg_server, pg_db).await;
    if let Ok(root) = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(MARIADB_ROOT)
        .await
    {
        for p in pipelines {
            let name = p.mariadb_url.rsplit('/').next().unwrap_or_default();
            let sql = format!("DROP DATABASE IF EXISTS `{name}`");
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&root).await {
                eprintln!("cleanup: cannot drop MariaDB database {name}: {e}");
            }
        }
        root.close().await;
    }
}

/// Runs `wasmcdc slot drop`, retrying while the slot is still held by a stopping process.
fn slot_drop(p: &Pipeline) -> bool {
    for _ in 0..5 {
        let Ok(mut child) = p
            .command(&["slot", "drop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        else {
            return false;
        };
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if start.elapsed() < secs(30) => std::thread::sleep(Duration::from_millis(100)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        if status.is_some_and(|s| s.success()) {
            return true;
        }
        std::thread::sleep(secs(1));
    }
    false
}

/// Drops any slot left in the source database, then the database itself.
async fn cleanup_pg(pg_server: &str, pg_db: &str) {
    let url = format!("{pg_server}/postgres");
    let Ok((admin, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
        eprintln!("cleanup: cannot connect to {url}; database {pg_db} is left behind");
        return;
    };
    tokio::spawn(connection);
    let start = Instant::now();
    loop {
        let dropped = admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active",
                &[&pg_db],
            )
            .await
            .and(
                admin
                    .execute(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
                        &[&pg_db],
                    )
                    .await,
            );
        if dropped.is_ok() || start.elapsed() > secs(15) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {pg_db} WITH (FORCE)"))
        .await
    {
        eprintln!("cleanup: cannot drop PostgreSQL database {pg_db}: {e}");
    }
}
