//! `--metrics-addr`: the Prometheus metrics count what reaches MariaDB, the
//! readiness probe follows MariaDB going away and coming back, and the status
//! page, rendered by headless Chromium, shows the figures `/metrics` holds.

use std::path::PathBuf;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::seed::SEED_TABLE;
use crate::support::binary::{Running, guest, log_dir};
use crate::support::http::{self, metric_sum};
use crate::support::proxy::Proxy;
use crate::support::{Deadline, Env, Pipeline, db, secs};

const SOURCE_ROWS: &str =
    "SELECT requestid::text, details, duedate::text, CASE WHEN fulfilled THEN '1' ELSE '0' END FROM itrequests";
const TARGET_ROWS: &str =
    "SELECT CAST(requestid AS CHAR), details, CAST(duedate AS CHAR), CAST(fulfilled AS CHAR) FROM itrequests";
const TABLE: &str = "table=\"public.itrequests\"";

/// Three source transactions: 40 inserts, 10 updates, 5 deletes.
async fn write_changes(env: &Env) {
    env.pg_exec(
        "INSERT INTO itrequests (details, duedate, fulfilled)
         SELECT 'request ' || g, date '2026-01-01' + g, false FROM generate_series(1, 40) g",
    )
    .await;
    env.pg_exec("UPDATE itrequests SET fulfilled = true WHERE requestid <= 10")
        .await;
    env.pg_exec("DELETE FROM itrequests WHERE requestid > 35").await;
}

/// A `run` of the seed table in fresh databases, and the address it serves metrics on.
async fn seed_run(tag: &str) -> (Env, Pipeline, Running, String) {
    let env = Env::new(tag).await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    let mut run = env.start(&pipeline).await;
    let url = run.metrics_url().await;
    (env, pipeline, run, url)
}

/// `/metrics`, once `wasmcdc_changes_applied_total` for the table adds up to `applied`.
async fn metrics_once_applied(url: &str, running: &mut Running, applied: f64) -> String {
    let deadline = Deadline::new(format!("{applied} applied changes in {url}/metrics"), secs(60));
    loop {
        running.assert_alive();
        let text = http::get(&format!("{url}/metrics"))
            .await
            .map(|r| r.body)
            .unwrap_or_default();
        if metric_sum(&text, "wasmcdc_changes_applied_total", &[TABLE]) == applied {
            return text;
        }
        deadline.tick(&text).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_changes_applied() {
    let (env, pipeline, mut run, url) = seed_run("metrics").await;

    write_changes(&env).await;
    env.wait_replicated(&pipeline, &mut run, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    let text = metrics_once_applied(&url, &mut run, 55.0).await;

    let my = env.my(&pipeline).await;
    let rows: i64 = db::my_rows(&my, "SELECT CAST(COUNT(*) AS CHAR) FROM itrequests").await[0][0]
        .as_deref()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    let applied = |op: &str| {
        metric_sum(
            &text,
            "wasmcdc_changes_applied_total",
            &[TABLE, &format!("op=\"{op}\"")],
        )
    };
    assert_eq!(
        (applied("insert"), applied("update"), applied("delete")),
        (40.0, 10.0, 5.0),
        "applied changes by operation\n{text}"
    );
    assert_eq!(
        applied("insert") - applied("delete"),
        rows as f64,
        "inserts less deletes applied equal the rows in MariaDB\n{text}"
    );
    for metric in ["wasmcdc_changes_captured_total", "wasmcdc_changes_published_total"] {
        assert_eq!(metric_sum(&text, metric, &[TABLE]), 55.0, "{metric}\n{text}");
    }
    assert_eq!(
        metric_sum(&text, "wasmcdc_transactions_applied_total", &[]),
        3.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "wasmcdc_replication_lag_seconds_count", &[]),
        3.0,
        "one replication lag per transaction\n{text}"
    );
    assert!(
        metric_sum(&text, "wasmcdc_apply_commit_seconds_count", &[]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "wasmcdc_stage_up", &["stage=\"apply\""]),
        1.0,
        "{text}"
    );
    for series in [
        "wasmcdc_slot_lag_bytes",
        "wasmcdc_queue_messages",
        "wasmcdc_dead_letter_queue_messages",
    ] {
        // Sampled every 5 s from the servers.
        let deadline = Deadline::new(format!("{series} in /metrics"), secs(30));
        loop {
            let text = http::get(&format!("{url}/metrics"))
                .await
                .map(|r| r.body)
                .unwrap_or_default();
            if text.lines().any(|l| l.starts_with(&format!("{series} "))) {
                break;
            }
            deadline.tick(&text).await;
        }
    }
    let health = http::get(&format!("{url}/healthz")).await.expect("/healthz answers");
    assert_eq!(health.status, 200);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_address_is_refused_in_one_sentence() {
    let (_env, pipeline, run, url) = seed_run("metrics_port").await;
    let taken = url.trim_start_matches("http://");
    let error = pipeline
        .expect_error(
            &["apply", "--metrics-addr", taken],
            &["cannot serve metrics on", "already in use", "--metrics-addr"],
            secs(30),
        )
        .await;
    assert!(!error.contains('\n'), "{error}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_mariadb_going_away_and_coming_back() {
    let env = Env::new("metrics_ready").await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env.pipeline();
    // The shared MariaDB stays up for the other tests: this pipeline reaches it through a proxy.
    let proxy = Proxy::start("127.0.0.1:3306").await;
    let proxied = pipeline.mariadb_url(&pipeline.mariadb_url.replace("127.0.0.1:3306", &proxy.address()));
    let mut run = env.start(&proxied).await;
    let url = run.metrics_url().await;
    http::wait_ready(&url, &mut run, 200, secs(30)).await;

    proxy.set_down(true);
    // Idle, the apply notices within seconds, without waiting for a write.
    let why = http::wait_ready(&url, &mut run, 503, secs(60)).await;
    assert!(why.contains("apply"), "{why}");
    assert!(why.contains("MariaDB"), "{why}");
    let health = http::get(&format!("{url}/healthz")).await.expect("/healthz answers");
    assert_eq!(health.status, 200, "the process is alive while MariaDB is away");
    let status = http::get(&format!("{url}/api/status"))
        .await
        .expect("/api/status answers");
    assert!(status.body.contains("\"ready\":false"), "{}", status.body);

    proxy.set_down(false);
    http::wait_ready(&url, &mut run, 200, secs(90)).await;
    write_changes(&env).await;
    env.wait_replicated(&pipeline, &mut run, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    let text = http::get(&format!("{url}/metrics"))
        .await
        .expect("/metrics answers")
        .body;
    let retried = metric_sum(&text, "wasmcdc_retries_total", &["component=\"mariadb\""])
        + metric_sum(&text, "wasmcdc_reconnects_total", &[]);
    assert!(retried >= 1.0, "the outage shows as retries or reconnects\n{text}");
    run.stop().await;
}

/// Debian's `chromium`, or the Chrome found on PATH.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!(
        "headless Chromium is needed for the status page test; install it with `apt-get install -y chromium` (scripts/services.sh does)"
    );
}

/// The page at `url` after its scripts have run, as Chromium serialises it.
fn rendered(url: &str, args: &[&str]) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in serialised HTML.
fn text_of_id(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} on the page:\n{dom}"));
    let start = at + dom[at..].find('>').expect("the tag ends") + 1;
    let end = start + dom[start..].find('<').expect("the text ends");
    dom[start..end].to_owned()
}

fn number(text: &str) -> f64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_what_metrics_holds() {
    let module = guest("identity");
    let hash = hex(&Sha256::digest(
        std::fs::read(&module).expect("the identity module reads"),
    ));
    // A second module in the chain, masking a column the table does not have: each
    // module's calls are timed under its own hash.
    let mask = guest("mask_columns");
    let mask_hash = hex(&Sha256::digest(std::fs::read(&mask).expect("the mask module reads")));
    let env = Env::new("metrics_page").await;
    env.pg_exec(SEED_TABLE).await;
    let pipeline = env
        .pipeline()
        .transform(&module)
        .transform(&mask)
        .transform_config("mask_columns.columns=no_such_column");
    let mut run = env.start(&pipeline).await;
    let url = run.metrics_url().await;

    write_changes(&env).await;
    env.wait_replicated(&pipeline, &mut run, SOURCE_ROWS, TARGET_ROWS, secs(60))
        .await;
    metrics_once_applied(&url, &mut run, 55.0).await;

    let dom = rendered(&format!("{url}/"), &["--dump-dom"]);
    let metrics = http::get(&format!("{url}/metrics"))
        .await
        .expect("/metrics answers")
        .body;
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script did not render:\n{dom}"
    );
    for (id, metric) in [
        ("total-captured", "wasmcdc_changes_captured_total"),
        ("total-published", "wasmcdc_changes_published_total"),
        ("total-applied", "wasmcdc_changes_applied_total"),
        ("total-transactions", "wasmcdc_transactions_applied_total"),
        ("total-dead-lettered", "wasmcdc_changes_dead_lettered_total"),
    ] {
        assert_eq!(
            number(&text_of_id(&dom, id)),
            metric_sum(&metrics, metric, &[]),
            "{id} on the page against {metric}\n{metrics}"
        );
    }
    assert_eq!(number(&text_of_id(&dom, "total-applied")), 55.0);
    // The table's row: captured, published, applied, dead-lettered.
    let row_at = dom
        .find("data-table=\"public.itrequests\"")
        .unwrap_or_else(|| panic!("no row for the table:\n{dom}"));
    let row = &dom[row_at..row_at + dom[row_at..].find("</tr>").expect("the row ends")];
    let cell = |class: &str| {
        let opening = format!("class=\"n {class}\">");
        let at = row.find(&opening).expect("the cell") + opening.len();
        number(&row[at..at + row[at..].find('<').expect("the cell ends")])
    };
    for (class, metric) in [
        ("captured", "wasmcdc_changes_captured_total"),
        ("applied", "wasmcdc_changes_applied_total"),
    ] {
        assert_eq!(cell(class), metric_sum(&metrics, metric, &[TABLE]), "{class}\n{row}");
    }
    assert!(dom.contains(&hash[..16]), "the chain's hash {hash} is not on the page");
    for module in [&hash, &mask_hash] {
        let calls = metric_sum(
            &metrics,
            "wasmcdc_transform_call_seconds_count",
            &[&format!("module=\"{module}\"")],
        );
        assert!(calls >= 1.0, "no timed calls of module {module}\n{metrics}");
    }
    assert!(dom.contains("streaming"), "the stages' state is not on the page");
    assert!(
        dom.contains("<polyline") || dom.contains("chart-throughput"),
        "no charts"
    );

    let shot = log_dir().join(format!("{}.status-page.png", pipeline.slot));
    rendered(
        &format!("{url}/"),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1200,900"],
    );
    assert!(shot.is_file(), "chromium saved no screenshot");
    run.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
