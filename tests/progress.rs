//! Progress of long work: the initial copy reports its rows per second and the
//! time it still needs through `status` and the metrics, and `verify` draws a
//! bar on a terminal and writes log lines otherwise.

use std::process::Command;

use crate::status::status_json;
use crate::support::http::{self, metric_sum};
use crate::support::{Deadline, Env, secs};

/// Enough rows for the copy to take several seconds, so that it is seen running.
const ROWS: u64 = 500_000;
const SOURCE_ROWS: &str = "SELECT count(*)::text, sum(length(v))::text FROM big";
const TARGET_ROWS: &str = "SELECT CAST(COUNT(*) AS CHAR), CAST(SUM(LENGTH(v)) AS CHAR) FROM big";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_reports_its_rate_and_time_left_and_verify_its_progress() {
    let env = Env::new("progress").await;
    env.pg_exec("CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL)")
        .await;
    env.pg_exec(&format!(
        "INSERT INTO big SELECT g, repeat('x', 100) || g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let pipeline = env.pipeline().tables("public.big");
    let mut run = pipeline.spawn_run();
    let url = run.metrics_url().await;

    // What the copying process recorded, as `status` reads it from MariaDB.
    let deadline = Deadline::new("status to report the copy's progress", secs(120));
    let copy = loop {
        run.assert_alive();
        let (_, json, _) = status_json(&pipeline, &["--stall-window", "0"]).await;
        let applied = &json["applied"];
        if applied["state"] == "copying" && applied["copy"]["copied"].as_u64().unwrap_or(0) > 0 {
            break applied["copy"].clone();
        }
        assert_ne!(
            applied["state"], "applied",
            "the copy ended before status saw it running; copy more rows\n{json}"
        );
        deadline.tick(&json.to_string()).await;
    };
    assert_eq!(copy["table"], "public.big", "{copy}");
    assert_eq!(copy["total"], ROWS, "{copy}");
    assert_eq!(
        (&copy["tables_done"], &copy["tables"]),
        (&0.into(), &1.into()),
        "{copy}"
    );
    let copied = copy["copied"].as_u64().expect("copied is a number");
    assert!(copied < ROWS, "{copy}");
    let rate = copy["rows_per_second"].as_f64().expect("rows_per_second is a number");
    let eta = copy["eta_seconds"].as_f64().expect("eta_seconds is a number");
    assert!(rate > 0.0 && eta > 0.0, "{copy}");
    // The time left is what the rows left take at that rate.
    let expected = (ROWS - copied) as f64 / rate;
    assert!((eta - expected).abs() < 0.01 * expected + 0.01, "{copy}");

    let metrics = http::get(&format!("{url}/metrics"))
        .await
        .map(|r| r.body)
        .unwrap_or_default();
    let table = ["table=\"public.big\""];
    assert!(
        metric_sum(&metrics, "wasmcdc_copy_rows_per_second", &table) > 0.0,
        "no copy rate in /metrics:\n{metrics}"
    );
    assert_eq!(metric_sum(&metrics, "wasmcdc_copy_rows_expected", &table), ROWS as f64);

    env.wait_replicated(&pipeline, &mut run, SOURCE_ROWS, TARGET_ROWS, secs(300))
        .await;
    let (_, json, _) = status_json(&pipeline, &["--stall-window", "0"]).await;
    assert_eq!(json["applied"]["state"], "applied", "{json}");
    assert!(json["applied"].get("copy").is_none(), "{json}");
    // Without a terminal, the copy logs lines: the first batch, and the end.
    let log = run.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("initial copy of public.big: "))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains(&format!("{ROWS} of {ROWS} rows (100%)"))),
        "{lines:?}"
    );
    assert!(!log.contains('\u{1b}'), "a bar was drawn into a log file:\n{log}");

    // verify without a terminal: its report on stdout, its progress as log lines.
    let out = pipeline.output(&["verify"], secs(120)).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("verify: 1 of 1 tables (100%)"), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'), "{stderr}");

    // verify on a terminal: a bar naming the table it works on.
    let screen = on_terminal(pipeline.command(&["verify"]));
    assert!(
        screen.contains("equal: source and target hold the same rows"),
        "{screen}"
    );
    assert!(
        screen.contains("verify public.big"),
        "no bar on the terminal:\n{screen}"
    );
    assert!(screen.contains("tables"), "{screen}");
    run.stop().await;
}

/// Runs `cmd` on a pseudo-terminal (util-linux `script`) and returns what it drew there.
fn on_terminal(cmd: Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let line = std::iter::once(quote(cmd.get_program()))
        .chain(cmd.get_args().map(quote))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    // A terminal the size of a common window, so the bar has room.
    script.args(["-qec", &format!("stty cols 160 rows 40; {line}"), "/dev/null"]);
    for (name, value) in cmd.get_envs() {
        match value {
            Some(v) => script.env(name, v),
            None => script.env_remove(name),
        };
    }
    let out = script.output().expect("util-linux script runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
