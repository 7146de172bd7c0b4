//! Hostile transform modules never stop replication: a change that makes the
//! module spin, hog memory, overflow its stack, trap, flood its output or
//! refuse is dead-lettered with the reason, and the next change goes through.
//! The module gets no files, environment or network, and one that waits in a
//! host call (a sleep) is abandoned at the same deadline as one that computes.

use crate::support::binary::{DeadLetter, guest, terminate};
use crate::support::{Env, Pipeline, db, row, secs};

/// Each probe behaviour (the source table's name selects it) and what the dead letter's reason says,
/// as alternatives: one of them must appear.
/// The last two write to the guest's stderr as they fail (a panic message, an
/// allocation failure), which goes to the host's log.
const HOSTILE: &[(&str, &[&str])] = &[
    ("spin", &["ran for more than 100 ms"]),
    ("recurse", &["overflowed its 512 KiB stack"]),
    // A million changes: the guest's memory, the host's output cap or the deadline stops it,
    // whichever comes first on a busy machine.
    (
        "flood",
        &[
            "needed more than its 64 MiB of memory",
            "changes for one change",
            "ran for more than 100 ms",
        ],
    ),
    ("wide", &["returned 10001 changes"]),
    ("reject", &["rejected the change: rejected on request"]),
    ("panic", &["trapped"]),
    ("hog", &["needed more than its 64 MiB of memory"]),
    // Waits in a host call (a clock subscription and a poll), which no epoch interrupts.
    ("sleep", &["took more than 100 ms, waiting in a host call"]),
];

/// What the probe reports when every way out of the sandbox is closed.
const ALL_DENIED: &str = "file=denied env=none dir=denied net=denied";

fn tables() -> Vec<&'static str> {
    let mut names = vec!["orders", "escape"];
    names.extend(HOSTILE.iter().map(|(t, _)| *t));
    names
}

async fn create_tables(env: &Env) {
    for table in tables() {
        let extra = if table == "escape" {
            "outcome TEXT"
        } else {
            "note TEXT NOT NULL"
        };
        env.pg_exec(&format!("CREATE TABLE {table} (id INT PRIMARY KEY, {extra})"))
            .await;
    }
}

fn probe_pipeline(env: &Env) -> Pipeline {
    let list: Vec<String> = tables().iter().map(|t| format!("public.{t}")).collect();
    env.pipeline().tables(&list.join(",")).transform(&guest("probe"))
}

const ORDERS: &str = "SELECT CAST(id AS CHAR), note FROM orders";

fn orders_row(id: u32, note: &str) -> Vec<Option<String>> {
    row(&[Some(&id.to_string()), Some(note)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_modules_never_stop_replication() {
    let env = Env::new("sandbox").await;
    create_tables(&env).await;
    let pipeline = probe_pipeline(&env);
    let mut running = env.start(&pipeline).await;

    let mut expected = Vec::new();
    for (n, (table, _)) in (1u32..).zip(HOSTILE) {
        env.pg_exec(&format!("INSERT INTO {table} (id, note) VALUES ({n}, 'hostile')"))
            .await;
        let note = format!("after {table}");
        env.pg_exec(&format!("INSERT INTO orders (id, note) VALUES ({n}, '{note}')"))
            .await;
        expected.push(orders_row(n, &note));
        env.wait_target(&pipeline, &mut running, ORDERS, &expected, secs(60))
            .await;
        running.assert_alive();
    }

    // A hostile change inside a transaction: only that change is dead-lettered.
    env.pg_exec(
        "BEGIN;
         INSERT INTO orders (id, note) VALUES (100, 'before spin, same transaction');
         INSERT INTO spin (id, note) VALUES (100, 'hostile');
         INSERT INTO orders (id, note) VALUES (101, 'after spin, same transaction');
         COMMIT;",
    )
    .await;
    expected.push(orders_row(100, "before spin, same transaction"));
    expected.push(orders_row(101, "after spin, same transaction"));
    expected.sort();
    env.wait_target(&pipeline, &mut running, ORDERS, &expected, secs(60))
        .await;

    let letters = pipeline.dead_letters().await;
    for (table, reasons) in HOSTILE {
        let qualified = format!("public.{table}");
        let mine: Vec<&DeadLetter> = letters.iter().filter(|l| l.table == qualified).collect();
        let want = if *table == "spin" { 2 } else { 1 };
        assert_eq!(
            mine.len(),
            want,
            "expected {want} dead letter(s) for {qualified}; the queue holds {letters:#?}\n{}",
            running.log_tail()
        );
        for letter in mine {
            assert_eq!(letter.stage, "transform", "{letter:?}");
            assert!(
                reasons.iter().any(|r| letter.reason.contains(r)),
                "the dead letter for {qualified} does not say {reasons:?}: {letter:?}"
            );
        }
    }
    assert_eq!(
        letters.len(),
        HOSTILE.len() + 1,
        "unexpected dead letters: {letters:#?}"
    );

    // Nothing of a refused change reached the target.
    let my = env.my(&pipeline).await;
    for (table, _) in HOSTILE {
        let count = db::my_u64(&my, &format!("SELECT CAST(COUNT(*) AS UNSIGNED) FROM `{table}`")).await;
        assert_eq!(count, Some(0), "table {table} received a change its module failed on");
    }
    my.close().await;

    running.assert_alive();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_cannot_reach_files_environment_or_network() {
    let env = Env::new("escape").await;
    create_tables(&env).await;
    let pipeline = probe_pipeline(&env);
    let mut running = env.start(&pipeline).await;

    env.pg_exec("INSERT INTO escape (id) VALUES (1)").await;
    env.pg_exec("INSERT INTO orders (id, note) VALUES (1, 'after escape')")
        .await;
    env.wait_target(
        &pipeline,
        &mut running,
        ORDERS,
        &vec![orders_row(1, "after escape")],
        secs(60),
    )
    .await;
    // Whatever the module got is in the row: a file's text, variables, entries, a connection.
    env.wait_target(
        &pipeline,
        &mut running,
        "SELECT CAST(id AS CHAR), outcome FROM escape",
        &vec![row(&[Some("1"), Some(ALL_DENIED)])],
        secs(30),
    )
    .await;
    let letters = pipeline.dead_letters().await;
    assert!(
        letters.is_empty(),
        "trying to escape is not a failure of the module: {letters:#?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_test_reports_a_runaway_module_in_one_line() {
    let env = Env::new("trial").await;
    let probe = guest("probe");
    let probe = probe.to_str().expect("a UTF-8 path");
    let pipeline = env.pipeline();
    let line = r#"{"op":"insert","schema":"public","table":"spin","columns":[],"key":[]}"#;
    let out = pipeline
        .output_with_input(
            &["transform", "test", "--module", probe],
            &format!("{line}\n"),
            secs(30),
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "wasmcdc transform test succeeded on a spinning module; stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    crate::support::binary::assert_clean_error(&stderr, &["line 1", "ran for more than 100 ms"]);
    assert!(
        out.stdout.is_empty(),
        "a change that was not transformed was printed: {:?}",
        out.stdout
    );

    // A module that writes to its stderr as it fails is reported the same way. Its
    // panic message is the guest's own output, logged; the host itself must not panic.
    let line = r#"{"op":"insert","schema":"public","table":"panic","columns":[],"key":[]}"#;
    let out = pipeline
        .output_with_input(
            &["transform", "test", "--module", probe],
            &format!("{line}\n"),
            secs(30),
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "wasmcdc transform test succeeded on a panicking module"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "wasmcdc transform test on a panicking module should exit 1 with an error line; stderr:\n{stderr}"
    );
    // The guest's own panic message is logged as its stderr; any other panic text is the host's.
    let host_lines = stderr.lines().filter(|l| !l.contains("stream=\"stderr\""));
    for l in host_lines {
        assert!(
            !l.contains("panicked") && !l.contains("stack backtrace"),
            "wasmcdc itself panicked:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("panicking on request"),
        "the guest's stderr reaches the log:\n{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line; stderr:\n{stderr}");
    assert!(
        errors[0].contains("line 1") && errors[0].contains("trapped"),
        "{}",
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_output_goes_to_the_log_and_the_change_goes_on() {
    let env = Env::new("print").await;
    env.pg_exec("CREATE TABLE print (id INT PRIMARY KEY, note TEXT NOT NULL)")
        .await;
    let pipeline = env.pipeline().tables("public.print").transform(&guest("probe"));
    let mut running = env.start(&pipeline).await;

    env.pg_exec("INSERT INTO print (id, note) VALUES (1, 'printed')").await;
    env.wait_target(
        &pipeline,
        &mut running,
        "SELECT CAST(id AS CHAR), note FROM print",
        &vec![row(&[Some("1"), Some("printed")])],
        secs(60),
    )
    .await;
    let log = running.log();
    for line in ["stdout from probe", "stderr from probe"] {
        assert!(
            log.contains(line),
            "the guest's {line:?} is not in the log\n{}",
            running.log_tail()
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_guest_never_stops_sigterm() {
    let env = Env::new("sleepy").await;
    env.pg_exec("CREATE TABLE sleep (id INT PRIMARY KEY, note TEXT NOT NULL); CREATE TABLE orders (id INT PRIMARY KEY, note TEXT NOT NULL)")
        .await;
    let pipeline = env
        .pipeline()
        .tables("public.sleep,public.orders")
        .transform(&guest("probe"));
    let mut running = env.start(&pipeline).await;
    // Two hundred sleeping changes hold the capture for about 20 s, 100 ms each.
    env.pg_exec(
        "INSERT INTO sleep SELECT g, 'sleeps' FROM generate_series(1, 200) g; INSERT INTO orders VALUES (1, 'after')",
    )
    .await;
    tokio::time::sleep(secs(2)).await;
    let (took, status) = running.terminate_within(secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "run did not stop cleanly within 10 s of SIGTERM while its guest slept ({took:?}, {status:?})\n{}",
        running.log_tail()
    );

    // `transform test` reading a guest that sleeps, with stdin still open.
    let mut test = pipeline
        .command(&["transform", "test", "--module", &guest("probe").display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("transform test starts");
    let mut stdin = test.stdin.take().expect("stdin");
    let line = r#"{"op":"insert","schema":"public","table":"sleep","columns":[]}"#;
    std::io::Write::write_all(&mut stdin, format!("{line}\n").repeat(5).as_bytes()).expect("write");
    tokio::time::sleep(secs(1)).await;
    let started = std::time::Instant::now();
    terminate(&test);
    let deadline = crate::support::wait::Deadline::new("transform test to stop on SIGTERM", secs(5));
    let status = loop {
        if let Some(status) = test.try_wait().expect("wait") {
            break status;
        }
        deadline.tick(&started.elapsed()).await;
    };
    assert!(!status.success(), "an interrupted transform test fails: {status:?}");
    drop(stdin);

    // A module whose `init` sleeps cannot start: one error line, at once.
    let sleepy = pipeline.transform_config("probe.sleep-in-init=yes");
    let started = std::time::Instant::now();
    sleepy
        .expect_error(&["run"], &["could not start", "waiting in a host call"], secs(30))
        .await;
    assert!(started.elapsed() < secs(20), "took {:?}", started.elapsed());
}

/// The batched world: a transaction's changes reach the guest in one call, so
/// one that traps, spins or sleeps must cost only its own change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_guest_fails_one_change_at_a_time() {
    let env = Env::new("batched").await;
    for table in ["orders", "panic", "spin", "sleep", "upper"] {
        env.pg_exec(&format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, note TEXT NOT NULL)"
        ))
        .await;
    }
    let pipeline = env
        .pipeline()
        .tables("public.orders,public.panic,public.spin,public.sleep,public.upper")
        .transform(&guest("probe_batched"));
    let mut running = env.start(&pipeline).await;
    // One transaction mixes every behaviour, so that they share a batch.
    env.pg_exec(
        "BEGIN;
         INSERT INTO orders VALUES (1, 'before');
         INSERT INTO panic VALUES (1, 'x');
         INSERT INTO upper VALUES (1, 'shout');
         INSERT INTO spin VALUES (1, 'x');
         INSERT INTO sleep VALUES (1, 'x');
         INSERT INTO orders VALUES (2, 'after');
         COMMIT;",
    )
    .await;
    let letters = pipeline.wait_dead_letters(&mut running, 3).await;
    let reason = |table: &str| -> String {
        letters
            .iter()
            .find(|l| l.table == format!("public.{table}"))
            .map(|l| l.reason.clone())
            .unwrap_or_else(|| panic!("no dead letter for {table}: {letters:?}"))
    };
    assert!(reason("panic").contains("trapped"), "{}", reason("panic"));
    assert!(
        reason("spin").contains("ran for more than 100 ms"),
        "{}",
        reason("spin")
    );
    assert!(
        reason("sleep").contains("waiting in a host call"),
        "{}",
        reason("sleep")
    );
    env.wait_target(
        &pipeline,
        &mut running,
        ORDERS,
        &vec![orders_row(1, "before"), orders_row(2, "after")],
        secs(30),
    )
    .await;
    env.wait_target(
        &pipeline,
        &mut running,
        "SELECT CAST(id AS CHAR), note FROM upper",
        &vec![orders_row(1, "SHOUT")],
        secs(30),
    )
    .await;
    assert_eq!(
        letters.len(),
        3,
        "only the failing changes are dead-lettered: {letters:?}"
    );
    let (took, status) = running.terminate_within(secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "stopped in {took:?}: {status:?}");
}
