//! `wasmcdc status`: its JSON object against what the servers hold, its exit codes
//! (stalled, dead letters, unreachable servers), its silence about a queue that does
//! not exist yet, and `--log-format json`.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::seed::SEED_TABLE;
use crate::support::binary::{Running, assert_clean_error};
use crate::support::proxy::Proxy;
use crate::support::{Deadline, Env, Pipeline, broker, db, secs};

const SOURCE_ROWS: &str = "SELECT requestid::text, details FROM itrequests";
const TARGET_ROWS: &str = "SELECT CAST(requestid AS CHAR), details FROM itrequests";

/// Exit codes of `wasmcdc status`, as the README documents them.
const UNREACHABLE: i32 = 3;
const STALLED: i32 = 4;
const DEAD_LETTERS: i32 = 5;

/// Runs `wasmcdc <args>` with `env` set; fails the test after `limit`.
async fn output_with_env(pipeline: &Pipeline, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = tokio::process::Command::from(pipeline.command(args));
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot start wasmcdc {args:?}: {e}")),
        Err(_) => panic!("wasmcdc {args:?} did not finish within {limit:?}"),
    }
}

/// `wasmcdc status --json <extra>`: its exit code, its JSON object and its stderr.
pub async fn status_json(pipeline: &Pipeline, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let out = pipeline.output(&args, secs(60)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json printed no JSON object ({e}):\n{stdout}\nstderr:\n{stderr}"));
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("status died of a signal: {stderr}"));
    (code, json, stderr)
}

/// Reads an LSN `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or_else(|| panic!("{text:?} is not an LSN"));
    let hi = u64::from_str_radix(hi, 16).expect("hexadecimal");
    let lo = u64::from_str_radix(lo, 16).expect("hexadecimal");
    (hi << 32) | lo
}

/// Waits until the pipeline's apply has not committed for longer than status's
/// quiet floor (15 s), as `status --json` reports it.
async fn wait_quiet(pipeline: &Pipeline) {
    let deadline = Deadline::new("17 s without an apply commit", secs(90));
    loop {
        let (_, json, _) = status_json(pipeline, &["--stall-window", "0"]).await;
        let quiet = json["active_apply"]["seconds_since_commit"].as_u64();
        if quiet.is_some_and(|s| s >= 17) {
            return;
        }
        deadline.tick(&json["active_apply"]).await;
        tokio::time::sleep(secs(2)).await;
    }
}

/// A running seed pipeline that has replicated `n` new requests.
async fn replicating(tag: &str, n: u32) -> (Env, Pipeline, Running) {
    let env = Env::new(tag).await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    let mut running = env.start(&pipeline).await;
    insert_requests(&env, n).await;
    let rows = env
        .wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    assert_eq!(rows.len(), n as usize);
    (env, pipeline, running)
}

/// `n` new requests, in one transaction.
async fn insert_requests(env: &Env, n: u32) {
    env.pg_exec(&format!(
        "INSERT INTO itrequests (details, duedate, fulfilled) \
         SELECT 'request ' || g, DATE '2025-01-01' + g, false FROM generate_series(1, {n}) g"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_what_the_servers_hold_and_fails_on_dead_letters() {
    let (env, pipeline, mut running) = replicating("status_json", 3).await;

    let (applied_before, state) = env.offsets_row(&pipeline).await.expect("an offsets row");
    assert_ne!(state, "copying");
    let (code, json, stderr) = status_json(&pipeline, &[]).await;
    let (applied_after, _) = env.offsets_row(&pipeline).await.expect("an offsets row");
    let confirmed_after = env.confirmed_flush_lsn(&pipeline).await.expect("a confirmed slot");
    eprintln!("status --json: {json}");
    assert_eq!(code, 0, "a running pipeline is not stalled:\n{json}\n{stderr}");
    assert_eq!(json["pipeline"], pipeline.slot.as_str());
    assert!(json["source"].as_str().is_some_and(|s| s.contains(":***@")), "{json}");

    let slot = &json["slot"];
    assert_eq!(slot["active"], true, "{json}");
    let confirmed = lsn(slot["confirmed_lsn"].as_str().expect("confirmed_lsn"));
    assert!(confirmed > 0 && confirmed <= confirmed_after, "{json}");
    assert!(slot["lag_bytes"].is_u64(), "{json}");
    assert!(slot["wal_status"].is_string(), "{json}");
    assert!(slot.get("time_lag_seconds").is_some(), "{json}");

    let applied = &json["applied"];
    assert_eq!(applied["state"], "applied", "{json}");
    let at = lsn(applied["lsn"].as_str().expect("applied.lsn"));
    assert!(
        applied_before <= at && at <= applied_after,
        "status's applied LSN {at} lies between the offsets row before ({applied_before}) and after ({applied_after})"
    );
    assert_eq!(json["queue"]["consumers"], 1, "the run's apply consumes: {json}");
    assert!(json["queue"]["ready"].is_u64(), "{json}");
    assert_eq!(json["dead_letters"], 0, "{json}");
    assert_eq!(json["transforms"], serde_json::json!([]), "{json}");
    let applier = json["active_apply"]["applier"].as_str().expect("an active apply");
    assert!(applier.contains(':'), "host:pid, not {applier:?}");
    assert!(json["active_apply"]["seconds_since_commit"].is_u64(), "{json}");
    assert_eq!(json["stall"]["checked"], true, "{json}");
    assert_eq!(json["stall"]["window_seconds"], 5.0, "the default window: {json}");
    assert_eq!(json["stall"]["stalled"], false, "{json}");
    assert_eq!(json["stall"]["reason"], Value::Null, "{json}");

    // A message nobody can read is dead-lettered, and the pipeline goes on.
    let dlq = format!("wasmcdc.{}.dlq", pipeline.slot);
    broker::publish_raw(&format!("wasmcdc.{}", pipeline.slot), b"{not a change").await;
    let deadline = Deadline::new("one dead letter", secs(60));
    while broker::queue_depth(&dlq).await < 1 {
        running.assert_alive();
        deadline.tick(&running.log_tail()).await;
    }

    let (code, json, _) = status_json(&pipeline, &["--stall-window", "0"]).await;
    assert_eq!(
        code, 0,
        "dead letters alone do not fail status without the flag: {json}"
    );
    assert_eq!(json["dead_letters"], 1, "{json}");
    assert_eq!(
        json["stall"]["checked"], false,
        "--stall-window 0 does not judge: {json}"
    );

    let (code, json, stderr) = status_json(&pipeline, &["--stall-window", "0", "--fail-on-dead-letters"]).await;
    assert_eq!(code, DEAD_LETTERS, "{json}\n{stderr}");
    assert_eq!(json["dead_letters"], 1, "{json}");
    let error = assert_clean_error(&stderr, &["1 dead letter waits", "dlq"]);
    eprintln!("status --fail-on-dead-letters: {error}");

    let table = pipeline
        .output(&["status", "--stall-window", "0", "--fail-on-dead-letters"], secs(60))
        .await;
    let printed = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(DEAD_LETTERS), "{printed}");
    assert!(printed.contains("dead letters: 1"), "{printed}");
    assert!(printed.contains("applied: up to "), "{printed}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_4_while_the_pipeline_is_stalled() {
    let (env, pipeline, running) = replicating("status_stall", 1).await;
    running.stop().await;

    // Nothing runs: the slot holds WAL that no capture takes.
    insert_requests(&env, 1).await;
    wait_quiet(&pipeline).await;
    let (code, json, stderr) = status_json(&pipeline, &["--stall-window", "2s"]).await;
    eprintln!("status with nothing running: {json}\n{stderr}");
    assert_eq!(code, STALLED, "{json}\n{stderr}");
    assert_eq!(json["stall"]["stalled"], true, "{json}");
    assert_eq!(json["slot"]["active"], false, "{json}");
    let reason = json["stall"]["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("capture") && reason.contains("bytes of WAL"),
        "{reason}"
    );
    assert_clean_error(&stderr, &["stalled", "capture"]);

    // Only the capture runs: it publishes, and the messages wait in the queue.
    let mut capture = pipeline.spawn_command("capture", None);
    env.wait_streaming(&pipeline, &mut capture).await;
    insert_requests(&env, 1).await;
    let deadline = Deadline::new("messages in the queue", secs(60));
    let queue = format!("wasmcdc.{}", pipeline.slot);
    while broker::queue_depth(&queue).await < 2 {
        capture.assert_alive();
        deadline.tick(&capture.log_tail()).await;
    }
    wait_quiet(&pipeline).await;
    let table = pipeline.output(&["status", "--stall-window", "2s"], secs(60)).await;
    let stderr = String::from_utf8_lossy(&table.stderr);
    eprintln!(
        "status with only the capture running:\n{}{stderr}",
        String::from_utf8_lossy(&table.stdout)
    );
    assert_eq!(table.status.code(), Some(STALLED), "{stderr}");
    assert_clean_error(&stderr, &["stalled", "wait in the queue", "apply"]);
    let (code, json, _) = status_json(&pipeline, &["--stall-window", "2s"]).await;
    assert_eq!(code, STALLED, "{json}");
    assert!(json["queue"]["ready"].as_u64().is_some_and(|n| n >= 2), "{json}");
    capture.stop().await;

    // Running again, the pipeline catches up and moves.
    let mut running = env.start(&pipeline).await;
    env.wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    let (code, json, stderr) = status_json(&pipeline, &["--stall-window", "2s"]).await;
    assert_eq!(code, 0, "caught up, it is not stalled: {json}\n{stderr}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_an_offsets_table_of_an_earlier_version() {
    let env = Env::new("status_old").await;
    let pipeline = env.pipeline();
    // The offsets table as a version before copy progress made it; only `run` and
    // `apply` add the new column, and `status` must read the table as it is.
    let my = env.my(&pipeline).await;
    db::my_exec(
        &my,
        "CREATE TABLE wasmcdc_offsets (pipeline VARCHAR(63) NOT NULL PRIMARY KEY, lsn BIGINT UNSIGNED NOT NULL, \
         lsn_text VARCHAR(20) NOT NULL, state VARCHAR(16) NOT NULL DEFAULT 'streaming', \
         transforms VARCHAR(2048) NOT NULL DEFAULT '', applier VARCHAR(255) NOT NULL DEFAULT '', \
         updated_at DATETIME(6) NOT NULL)",
    )
    .await;
    db::my_exec(
        &my,
        &format!(
            "INSERT INTO wasmcdc_offsets (pipeline, lsn, lsn_text, updated_at) VALUES ('{}', 4096, '0/1000', UTC_TIMESTAMP(6))",
            pipeline.slot
        ),
    )
    .await;
    my.close().await;
    let (code, json, stderr) = status_json(&pipeline, &["--stall-window", "0"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["applied"]["state"], "applied", "{json}");
    assert_eq!(json["applied"]["lsn"], "0/1000", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_new_pipeline_logs_nothing_about_its_missing_queue() {
    let env = Env::new("status_new").await;
    let pipeline = env.pipeline();
    // RUST_LOG=info lets the AMQP client's error lines through, were there any.
    let out = output_with_env(&pipeline, &["status"], &[("RUST_LOG", "info")], secs(60)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("queue: none"), "{stdout}");
    assert!(stdout.contains("slot: none"), "{stdout}");
    assert!(
        !stderr.contains("NOT_FOUND") && !stderr.contains("ERROR"),
        "a missing queue is expected, not an error:\n{stderr}"
    );

    let (code, json, stderr) = status_json(&pipeline, &["--stall-window", "0"]).await;
    assert_eq!(code, 0, "{stderr}");
    for absent in ["slot", "queue", "dead_letters", "applied", "active_apply"] {
        assert_eq!(json[absent], Value::Null, "{absent}: {json}");
    }
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_a_line() {
    let env = Env::new("status_logs").await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    let mut running = pipeline.spawn_args(&["run", "--log-format", "json"], None);
    env.wait_streaming(&pipeline, &mut running).await;
    insert_requests(&env, 1).await;
    env.wait_replicated(&pipeline, &mut running, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    let log = running.log();
    running.stop().await;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "run logged nothing");
    for line in &lines {
        let event: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}\n{log}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(event.get(field).is_some(), "no {field} in {line}");
        }
    }

    // The environment variable works as the flag does, at every level.
    let out = output_with_env(
        &pipeline,
        &["status", "--stall-window", "0"],
        &[("WASMCDC_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
        secs(60),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "status logged nothing at debug");
    for line in lines {
        assert!(
            serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()),
            "a log line is not a JSON object: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gives_up_on_unreachable_servers() {
    let env = Env::new("status_down").await;
    let pipeline = env.pipeline();

    // A port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = closed.local_addr().expect("an address").port();
    drop(closed);
    let refused = pipeline.pg_url(&format!("postgres://postgres:postgres@127.0.0.1:{port}/requests"));
    let started = Instant::now();
    let out = refused.output(&["status", "--json"], secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "status, nothing listening: {:?} after {:.1} s: {stderr}",
        out.status,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(UNREACHABLE), "{stderr}");
    assert_clean_error(&stderr, &["PostgreSQL"]);
    assert!(out.stdout.is_empty(), "no JSON without the servers' answers");

    // A MariaDB that accepts connections and never answers.
    let hole = Proxy::black_hole().await;
    let silent = pipeline.mariadb_url(&format!("mysql://mariadb:mariadb@{}/requests", hole.address()));
    let started = Instant::now();
    let out = silent.output(&["status", "--stall-window", "0"], secs(40)).await;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "status, silent MariaDB: {:?} after {:.1} s: {stderr}",
        out.status,
        took.as_secs_f64()
    );
    assert_eq!(out.status.code(), Some(UNREACHABLE), "{stderr}");
    let error = assert_clean_error(&stderr, &["MariaDB"]);
    assert!(error.contains("timed out") || error.contains("no answer"), "{error}");
    assert!(took < secs(25), "one step's limit, not more: {took:?}");

    // SIGTERM stops it while it waits.
    let mut waiting = silent.spawn_args(&["status"], None);
    tokio::time::sleep(secs(2)).await;
    waiting.assert_alive();
    let (after, stopped) = waiting.terminate_within(secs(5)).await;
    eprintln!(
        "status, silent MariaDB, SIGTERM: {stopped:?} after {:.2} s",
        after.as_secs_f64()
    );
    assert!(
        stopped.is_some_and(|s| !s.success()),
        "status still ran 5 s after SIGTERM"
    );
}
