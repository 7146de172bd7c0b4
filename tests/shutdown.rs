//! SIGTERM stops every process within seconds, whatever it is doing: idle,
//! streaming, copying, or waiting on a server that does not answer. One-shot
//! commands give up on a silent server by themselves and say which step timed out.

use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::support::binary::{Running, assert_clean_error};
use crate::support::db;
use crate::support::proxy::Proxy;
use crate::support::{Deadline, Env, Pipeline, broker, secs};

const NOTES: &str = "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)";
const NOTES_SOURCE: &str = "SELECT id::text, body FROM notes";
const NOTES_TARGET: &str = "SELECT CAST(id AS CHAR), body FROM notes";
/// How soon a pipeline process must exit after SIGTERM.
const STOP_LIMIT: Duration = secs(10);

/// Sends SIGTERM to `process` and asserts that it exits within `limit`,
/// printing how long it took. Returns its exit status.
async fn terminate(process: &mut Running, what: &str, limit: Duration) -> ExitStatus {
    let (took, status) = process.terminate_within(limit).await;
    eprintln!(
        "shutdown: {what}: {} after SIGTERM in {:.2} s",
        status.map_or("still running (killed)".to_owned(), |s| s.to_string()),
        took.as_secs_f64()
    );
    status.unwrap_or_else(|| {
        panic!(
            "{what}: still running {:.1} s after SIGTERM (limit {limit:?})\n{}",
            took.as_secs_f64(),
            process.log_tail()
        )
    })
}

/// The same, and the exit must be clean (status 0).
async fn terminate_cleanly(process: &mut Running, what: &str) {
    let status = terminate(process, what, STOP_LIMIT).await;
    assert!(
        status.success(),
        "{what}: exited with {status} after SIGTERM; expected 0\n{}",
        process.log_tail()
    );
}

/// Small insert transactions into `notes` until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    task: JoinHandle<u64>,
}

impl Load {
    fn start(pg_url: &str, label: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let url = pg_url.to_owned();
        let (stopping, counting) = (stop.clone(), committed.clone());
        let task = tokio::spawn(async move {
            let pg = db::pg_connect(&url).await;
            let insert = pg
                .prepare("INSERT INTO notes (body) SELECT $1 || g FROM generate_series(1, 5) g")
                .await
                .expect("the insert prepares");
            let mut n = 0;
            while !stopping.load(Ordering::Relaxed) {
                pg.execute(&insert, &[&format!("{label} {n}.")])
                    .await
                    .expect("the insert commits");
                n += 1;
                counting.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        Load { stop, committed, task }
    }

    /// Waits until `n` more transactions have committed, proving the load runs.
    async fn at_least(&self, n: u64) {
        let target = self.committed.load(Ordering::Relaxed) + n;
        let deadline = Deadline::new(format!("{n} load transactions"), secs(60));
        while self.committed.load(Ordering::Relaxed) < target {
            deadline.tick(&self.committed.load(Ordering::Relaxed)).await;
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(secs(30), self.task)
            .await
            .expect("the load stops")
            .expect("the load did not fail")
    }
}

/// Waits until the target holds at least `n` notes (so changes are flowing through the pipeline).
async fn target_has_notes(env: &Env, pipeline: &Pipeline, n: u64, running: &mut Running) {
    let my = env.my(pipeline).await;
    let deadline = Deadline::new(format!("{n} notes in the target"), secs(60));
    loop {
        running.assert_alive();
        let seen = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM notes")
            .fetch_one(&my)
            .await
            .unwrap_or(0);
        if seen as u64 >= n {
            break;
        }
        deadline.tick(&format!("{seen} notes\n{}", running.log_tail())).await;
    }
    my.close().await;
}

/// Starts `run` again and checks that the target ends equal to the source.
async fn restart_and_compare(env: &Env, pipeline: &Pipeline) {
    let mut run = env.start(pipeline).await;
    let rows = env
        .wait_replicated(pipeline, &mut run, NOTES_SOURCE, NOTES_TARGET, secs(180))
        .await;
    eprintln!(
        "shutdown: after a restart the target equals the source: {} notes",
        rows.len()
    );
    broker::assert_no_dead_letters(&pipeline.slot, &run).await;
    pipeline.assert_verified().await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_run_when_idle_and_when_streaming() {
    let env = Env::new("stop_run").await;
    env.pg_exec(NOTES).await;
    let pipeline = env.pipeline().tables("public.notes");

    let mut run = env.start(&pipeline).await;
    env.pg_exec("INSERT INTO notes (body) SELECT 'before ' || g FROM generate_series(1, 100) g")
        .await;
    env.wait_replicated(&pipeline, &mut run, NOTES_SOURCE, NOTES_TARGET, secs(60))
        .await;
    tokio::time::sleep(secs(3)).await;
    terminate_cleanly(&mut run, "run, idle").await;

    let mut run = env.start(&pipeline).await;
    let load = Load::start(&pipeline.pg_url, "streaming");
    load.at_least(200).await;
    target_has_notes(&env, &pipeline, 600, &mut run).await;
    terminate_cleanly(&mut run, "run, streaming under load").await;
    let committed = load.finish().await;
    eprintln!("shutdown: {committed} load transactions committed");

    restart_and_compare(&env, &pipeline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_run_during_initial_copy() {
    const ROWS: u64 = 1_500_000;
    let env = Env::new("stop_copy").await;
    env.pg_exec("CREATE TABLE preload (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL)")
        .await;
    env.pg_exec(&format!(
        "INSERT INTO preload SELECT g, g % 977, 'row ' || g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let pipeline = env.pipeline().tables("public.preload");

    let mut run = pipeline.spawn_run();
    // The slot appears when the copy begins; give the copy two seconds to get going.
    let deadline = Deadline::new("the initial copy to start", secs(60));
    loop {
        run.assert_alive();
        let slot = env
            .pg
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&pipeline.slot],
            )
            .await
            .expect("pg_replication_slots is readable");
        if slot.is_some() {
            break;
        }
        deadline.tick(&run.log_tail()).await;
    }
    tokio::time::sleep(secs(2)).await;
    let my = env.my(&pipeline).await;
    let copied = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM preload")
        .fetch_one(&my)
        .await
        .unwrap_or(0);
    eprintln!("shutdown: {copied} of {ROWS} rows copied when SIGTERM is sent");
    assert!(
        (copied as u64) < ROWS,
        "the initial copy finished before SIGTERM; pre-load more rows"
    );
    let status = terminate(&mut run, "run, during the initial copy", STOP_LIMIT).await;
    assert!(
        status.code().is_some(),
        "run died of a signal ({status}) instead of handling SIGTERM\n{}",
        run.log_tail()
    );

    // Started again, the copy completes and the target equals the source.
    let mut run = pipeline.spawn_run();
    let aggregates_source = "SELECT count(*)::text, sum(id::bigint * v)::text, sum(length(note))::text FROM preload";
    let aggregates_target = "SELECT CAST(COUNT(*) AS CHAR), CAST(SUM(id * v) AS CHAR), \
                             CAST(SUM(CHAR_LENGTH(note)) AS CHAR) FROM preload";
    let rows = env
        .wait_replicated(&pipeline, &mut run, aggregates_source, aggregates_target, secs(600))
        .await;
    eprintln!("shutdown: after a restart the copy is complete: (rows, Σid·v, Σlength) {rows:?}");
    my.close().await;
    broker::assert_no_dead_letters(&pipeline.slot, &run).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_capture_and_apply_while_streaming() {
    let env = Env::new("stop_split").await;
    env.pg_exec(NOTES).await;
    let pipeline = env.pipeline().tables("public.notes");
    let mut capture = pipeline.spawn_command("capture", None);
    env.wait_streaming(&pipeline, &mut capture).await;
    let mut apply = pipeline.spawn_command("apply", None);

    let load = Load::start(&pipeline.pg_url, "split");
    load.at_least(200).await;
    target_has_notes(&env, &pipeline, 600, &mut apply).await;
    capture.assert_alive();
    terminate_cleanly(&mut apply, "apply, streaming under load").await;
    terminate_cleanly(&mut capture, "capture, streaming under load").await;
    let committed = load.finish().await;
    eprintln!("shutdown: {committed} load transactions committed");

    let mut capture = pipeline.spawn_command("capture", None);
    env.wait_streaming(&pipeline, &mut capture).await;
    let mut apply = pipeline.spawn_command("apply", None);
    let rows = env
        .wait_equal(
            &pipeline,
            &mut [&mut capture, &mut apply],
            NOTES_SOURCE,
            NOTES_TARGET,
            secs(180),
        )
        .await
        .unwrap_or_else(|diff| {
            panic!(
                "the target did not catch up after the restart\n{diff}\n{}",
                apply.log_tail()
            )
        });
    eprintln!(
        "shutdown: after a restart the target equals the source: {} notes",
        rows.len()
    );
    broker::assert_no_dead_letters(&pipeline.slot, &apply).await;
    pipeline.assert_verified().await;
    capture.stop().await;
    apply.stop().await;
}

/// A one-shot command whose RabbitMQ never answers: on its own it must give
/// up within 30 s naming the step that timed out, and SIGTERM must end it sooner.
async fn one_shot_on_a_silent_broker(tag: &str, command: &[&str]) {
    let env = Env::new(tag).await;
    env.pg_exec(NOTES).await;
    let hole = Proxy::black_hole().await;
    let pipeline = env
        .pipeline()
        .tables("public.notes")
        .amqp_url(&format!("amqp://guest:guest@{}/%2f", hole.address()));

    let started = Instant::now();
    let out = pipeline.output(command, secs(30)).await;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "shutdown: wasmcdc {command:?} against a silent broker: {} after {:.1} s: {}",
        out.status,
        took.as_secs_f64(),
        stderr.trim()
    );

    // Both halves run before anything is asserted, so that a failure reports both.
    let mut process = pipeline.spawn_args(command, None);
    tokio::time::sleep(secs(2)).await;
    process.assert_alive();
    let (stopped_after, stopped) = process.terminate_within(secs(5)).await;
    eprintln!(
        "shutdown: wasmcdc {command:?} waiting on a silent broker: {} {:.2} s after SIGTERM",
        stopped.map_or("still running (killed)".to_owned(), |s| s.to_string()),
        stopped_after.as_secs_f64()
    );

    assert!(
        !out.status.success(),
        "wasmcdc {command:?} succeeded against a broker that never answers"
    );
    let error = assert_clean_error(&stderr, &["timed out"]);
    assert!(
        error.to_lowercase().contains("rabbitmq"),
        "the error should name the step, talking to RabbitMQ: {error}"
    );
    assert!(
        stopped.is_some(),
        "wasmcdc {command:?} waiting on a silent broker was still running 5 s after SIGTERM\n{}",
        process.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gives_up_on_a_silent_broker() {
    one_shot_on_a_silent_broker("stop_status", &["status"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_gives_up_on_a_silent_broker() {
    one_shot_on_a_silent_broker("stop_dlq", &["dlq", "list"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_run_waiting_on_a_silent_mariadb() {
    let env = Env::new("stop_silent_my").await;
    env.pg_exec(NOTES).await;
    let pipeline = env.pipeline().tables("public.notes");
    let proxy = Proxy::start("127.0.0.1:3306").await;
    let proxied = pipeline.mariadb_url(&pipeline.mariadb_url.replace("127.0.0.1:3306", &proxy.address()));
    assert_ne!(
        proxied.mariadb_url, pipeline.mariadb_url,
        "the MariaDB URL goes through the proxy"
    );

    let mut run = env.start(&proxied).await;
    env.pg_exec("INSERT INTO notes (body) SELECT 'before ' || g FROM generate_series(1, 100) g")
        .await;
    // Read directly, not through the proxy.
    env.wait_replicated(&pipeline, &mut run, NOTES_SOURCE, NOTES_TARGET, secs(60))
        .await;

    proxy.set_black_hole(true);
    env.pg_exec("INSERT INTO notes (body) SELECT 'during ' || g FROM generate_series(1, 100) g")
        .await;
    // The apply is now stuck in a MariaDB call that gets no answer.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    run.assert_alive();
    terminate(&mut run, "run, waiting on a silent MariaDB", secs(15)).await;
    drop(proxy);

    restart_and_compare(&env, &pipeline).await;
}
