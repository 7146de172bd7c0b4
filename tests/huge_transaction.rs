//! Transactions far larger than any message or statement: millions of changes,
//! and rows of several megabytes. Each applies whole, in memory bounded by the
//! configuration rather than by the transaction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use sqlx::mysql::MySqlConnection;

use crate::support::binary::Running;
use crate::support::db;
use crate::support::{Deadline, Env, Pipeline, broker, secs};

const ROWS: i64 = 5_000_000;
/// The resident memory `run` may reach, whatever the transaction's size.
const RSS_LIMIT_MIB: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_million_change_transaction() {
    let env = Env::new("huge").await;
    env.pg_exec("CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL)")
        .await;
    let pipeline = env.pipeline().tables("public.big");
    let mut run = env.start(&pipeline).await;

    // Every count another MariaDB session sees, polled from the start.
    let mut conn = MySqlConnection::connect(&pipeline.mariadb_url)
        .await
        .expect("a MariaDB session for observing");
    let observer = tokio::spawn(async move {
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        let deadline = Deadline::new(format!("{ROWS} rows in MariaDB"), secs(900));
        loop {
            // The table may not exist yet; that is a count of nothing.
            if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM big")
                .fetch_one(&mut conn)
                .await
            {
                *seen.entry(n).or_default() += 1;
                // A partial count already decides the test.
                if n == ROWS || (n > 0 && n < ROWS) || deadline.expired() {
                    return seen;
                }
            } else if deadline.expired() {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    let started = Instant::now();
    env.pg_exec(&format!(
        "INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let committed = started.elapsed();
    eprintln!(
        "five_million_change_transaction: source transaction committed after {:.1} s",
        committed.as_secs_f64()
    );

    let mut peak_kib = 0;
    let mut last_report = Instant::now();
    while !observer.is_finished() {
        run.assert_alive();
        peak_kib = peak_kib.max(run.peak_rss_kib().unwrap_or(0));
        if peak_kib / 1024 >= RSS_LIMIT_MIB {
            let report = line(started, peak_kib, "not finished");
            eprintln!("{report}");
            panic!(
                "{report}: wasmcdc run grew past {RSS_LIMIT_MIB} MiB; memory must be bounded by configuration, \
                 not by transaction size\n{}",
                run.log_tail()
            );
        }
        if last_report.elapsed() > secs(30) {
            eprintln!("{}", line(started, peak_kib, "in progress"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seen = observer.await.expect("the observer finished");
    peak_kib = peak_kib.max(run.peak_rss_kib().unwrap_or(0));
    let report = line(started, peak_kib, "done");
    eprintln!("{report}");
    eprintln!("five_million_change_transaction: row counts another session saw (count → times): {seen:?}");
    assert!(
        seen.keys().all(|&n| n == 0 || n == ROWS),
        "another session saw a partly applied transaction (count → times seen): {seen:?}\n{}",
        run.log_tail()
    );
    assert!(
        seen.contains_key(&ROWS),
        "{ROWS} rows did not arrive within 900 s (count → times seen): {seen:?}\n{}",
        run.log_tail()
    );
    assert!(
        peak_kib / 1024 < RSS_LIMIT_MIB,
        "{report}: peak RSS over {RSS_LIMIT_MIB} MiB"
    );

    // Row by row over 5 million rows is slow; aggregates catch a wrong or missing row.
    let source = env
        .pg_rows(
            "SELECT count(*)::text, sum(id::bigint)::text, sum(v::bigint)::text, sum(id::bigint * v)::text FROM big",
        )
        .await;
    let my = env.my(&pipeline).await;
    let target = db::my_rows(
        &my,
        "SELECT CAST(COUNT(*) AS CHAR), CAST(SUM(id) AS CHAR), CAST(SUM(v) AS CHAR), CAST(SUM(id * v) AS CHAR) FROM big",
    )
    .await;
    my.close().await;
    eprintln!("five_million_change_transaction: (rows, Σid, Σv, Σid·v) source {source:?}, target {target:?}");
    assert_eq!(source, target, "the target's rows differ from the source's");
    broker::assert_no_dead_letters(&pipeline.slot, &run).await;
    run.stop().await;
}

/// `five_million_change_transaction: <elapsed> s, peak RSS <n> MiB (<state>)`.
fn line(started: Instant, peak_kib: u64, state: &str) -> String {
    format!(
        "five_million_change_transaction: {:.0} s, peak RSS {} MiB ({state})",
        started.elapsed().as_secs_f64(),
        peak_kib / 1024
    )
}

const DOCS_SOURCE: &str = "SELECT id::text, length(body)::text, md5(body) FROM docs";
const DOCS_TARGET: &str = "SELECT CAST(id AS CHAR), CAST(CHAR_LENGTH(body) AS CHAR), MD5(body) FROM docs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_several_megabytes() {
    let env = Env::new("wide").await;
    env.pg_exec("CREATE TABLE docs (id int PRIMARY KEY, body text NOT NULL)")
        .await;
    let pipeline = env.pipeline().tables("public.docs");
    let mut run = env.start(&pipeline).await;

    // 40 rows of 3.2 MB in one transaction (128 MB), then 2 000 rows of 20 KB (40 MB).
    env.pg_exec("INSERT INTO docs SELECT g, repeat(md5(g::text), 100000) FROM generate_series(1, 40) g")
        .await;
    env.pg_exec("INSERT INTO docs SELECT 1000 + g, repeat(md5(g::text), 640) FROM generate_series(1, 2000) g")
        .await;
    let started = Instant::now();
    let rows = wait_docs(&env, &pipeline, &mut run).await;
    eprintln!(
        "rows_of_several_megabytes: {} rows equal by length and md5 after {:.1} s",
        rows,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(rows, 2_040);
    broker::assert_no_dead_letters(&pipeline.slot, &run).await;
    pipeline.assert_verified().await;
    run.stop().await;
}

/// Waits until the docs match by id, length and md5; fails at once on a dead letter.
async fn wait_docs(env: &Env, pipeline: &Pipeline, run: &mut Running) -> usize {
    let dlq = format!("wasmcdc.{}.dlq", pipeline.slot);
    let my = env.my(pipeline).await;
    let deadline = Deadline::new("the documents to replicate", secs(300));
    loop {
        run.assert_alive();
        let source = env.pg_rows(DOCS_SOURCE).await;
        let target = db::my_rows(&my, DOCS_TARGET).await;
        if source == target {
            my.close().await;
            return target.len();
        }
        let dead = broker::queue_depth(&dlq).await;
        assert_eq!(
            dead,
            0,
            "dead letters in {dlq} while {} of {} documents arrived\n{}",
            target.len(),
            source.len(),
            run.log_tail()
        );
        deadline
            .tick(&format!("{} of {} documents in the target", target.len(), source.len()))
            .await;
    }
}
