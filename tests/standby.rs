//! A second `wasmcdc apply` on a pipeline is a hot standby: while the first
//! apply lives it applies nothing (the queue is single-active-consumer), and
//! when the first one stops it takes over without losing or repeating a change.

use std::time::{Duration, Instant};

use crate::support::binary::Running;
use crate::support::db;
use crate::support::{Env, Pipeline, broker, secs};

const COUNTERS: u64 = 2_000;
/// Single-row transactions per second of the load.
const RATE: u64 = 400;
const SOURCE_ROWS: &str = "SELECT id::text, n::text FROM counters";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), CAST(n AS CHAR) FROM counters";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_apply_is_a_standby() {
    let env = Env::new("standby").await;
    env.pg_exec("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await;
    env.pg_exec(&format!(
        "INSERT INTO counters SELECT g, 0 FROM generate_series(1, {COUNTERS}) g"
    ))
    .await;
    let pipeline = env.pipeline().tables("public.counters");
    let mut run = env.start(&pipeline).await;

    // 15 s of single-row increments; the second apply starts 5 s in.
    let load = tokio::spawn(increments(pipeline.pg_url.clone(), secs(15), 0x5eed_0001));
    tokio::time::sleep(secs(5)).await;
    run.assert_alive();
    let mut standby = pipeline.spawn_command("apply", None);
    let increments_done = load.await.expect("the load finished");
    eprintln!("second_apply_is_a_standby: {increments_done} increments while two applies ran");

    let consumers = queue_consumers(&pipeline).await;
    eprintln!("second_apply_is_a_standby: consumers of the queue (active flag, activity): {consumers:?}");
    catch_up(&env, &pipeline, &mut [&mut run, &mut standby], "the first load").await;
    assert_sums_equal(&env, &pipeline, "the first load").await;
    pipeline.assert_verified().await;
    broker::assert_no_dead_letters(&pipeline.slot, &run).await;
    let active = pipeline.status().await;
    eprintln!("second_apply_is_a_standby: status with both applies: {active}");
    assert_active_apply(&active, &run, "wasmcdc run");
    assert_eq!(
        consumers.iter().filter(|(active, _)| active == "true").count(),
        1,
        "exactly one consumer of the queue should be active, the other a standby: {consumers:?}"
    );

    // Failover: the run's apply goes away, a capture alone feeds the queue, and
    // the standby must apply what follows.
    run.stop().await;
    let mut capture = pipeline.spawn_command("capture", None);
    env.wait_streaming(&pipeline, &mut capture).await;
    let increments_done = tokio::spawn(increments(pipeline.pg_url.clone(), secs(5), 0x5eed_0002))
        .await
        .expect("the load finished");
    eprintln!("second_apply_is_a_standby: {increments_done} increments after the failover");
    catch_up(
        &env,
        &pipeline,
        &mut [&mut capture, &mut standby],
        "the load after the failover",
    )
    .await;
    assert_sums_equal(&env, &pipeline, "the load after the failover").await;
    pipeline.assert_verified().await;
    broker::assert_no_dead_letters(&pipeline.slot, &standby).await;
    let active = pipeline.status().await;
    assert_active_apply(&active, &standby, "the standby apply");
    capture.stop().await;
    standby.stop().await;
}

/// `UPDATE counters SET n = n + 1` of one random row per transaction, at `RATE`, for `length`.
async fn increments(pg_url: String, length: Duration, seed: u64) -> u64 {
    let pg = db::pg_connect(&pg_url).await;
    let update = pg
        .prepare("UPDATE counters SET n = n + 1 WHERE id = $1")
        .await
        .expect("the update prepares");
    let mut state = seed;
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < length {
        // xorshift: the row to bump.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = (state % COUNTERS + 1) as i32;
        let n = pg.execute(&update, &[&id]).await.expect("the update commits");
        assert_eq!(n, 1, "counter {id} exists");
        done += 1;
        let due = Duration::from_secs_f64(done as f64 / RATE as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    done
}

/// Waits until the target's counters equal the source's, printing both totals if they never do.
async fn catch_up(env: &Env, pipeline: &Pipeline, processes: &mut [&mut Running], after: &str) {
    let started = Instant::now();
    match env
        .wait_equal(pipeline, processes, SOURCE_ROWS, TARGET_ROWS, secs(120))
        .await
    {
        Ok(rows) => eprintln!(
            "second_apply_is_a_standby: target equals source ({} rows) {:.1} s after {after}",
            rows.len(),
            started.elapsed().as_secs_f64()
        ),
        Err(diff) => {
            let (source, target) = sums(env, pipeline).await;
            let logs: Vec<String> = processes.iter().map(|p| p.log_tail()).collect();
            panic!(
                "after {after}, the target did not equal the source within 120 s: counter total source {source}, \
                 target {target}\n{diff}\n{}",
                logs.join("\n")
            );
        }
    }
}

async fn assert_sums_equal(env: &Env, pipeline: &Pipeline, after: &str) {
    let (source, target) = sums(env, pipeline).await;
    eprintln!("second_apply_is_a_standby: counter total after {after}: source {source}, target {target}");
    assert_eq!(source, target, "counter totals differ after {after}");
}

/// `sum(n)` in the source and in the target.
async fn sums(env: &Env, pipeline: &Pipeline) -> (String, String) {
    let source = env.pg_rows("SELECT sum(n)::text FROM counters").await;
    let my = env.my(pipeline).await;
    let target = db::my_rows(&my, "SELECT CAST(SUM(n) AS CHAR) FROM counters").await;
    my.close().await;
    let cell = |rows: Vec<Vec<Option<String>>>| rows.into_iter().next().and_then(|r| r.into_iter().next().flatten());
    (
        cell(source).unwrap_or_else(|| "none".into()),
        cell(target).unwrap_or_else(|| "none".into()),
    )
}

/// The `active apply: <host>:<pid> (...)` line of `wasmcdc status` names `process`.
fn assert_active_apply(status: &str, process: &Running, what: &str) {
    let line = status
        .lines()
        .find(|l| l.starts_with("active apply: "))
        .unwrap_or_else(|| panic!("wasmcdc status has no 'active apply: ' line:\n{status}"));
    assert!(
        line.contains(&format!(":{} ", process.id())),
        "the active apply should be {what} (pid {}): {line}",
        process.id()
    );
}

/// Each consumer of the pipeline's queue: whether RabbitMQ has it active, and its activity status.
async fn queue_consumers(pipeline: &Pipeline) -> Vec<(String, String)> {
    let queue = format!("wasmcdc.{}", pipeline.slot);
    let out = broker::rabbitmqctl(&[
        "-q",
        "list_consumers",
        "queue_name",
        "active",
        "activity_status",
        "--no-table-headers",
    ])
    .await;
    out.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('\t').map(str::trim).collect();
            (cells.len() >= 3 && cells[0] == queue).then(|| (cells[1].to_owned(), cells[2].to_owned()))
        })
        .collect()
}
