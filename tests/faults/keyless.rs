//! A table without a key (REPLICA IDENTITY FULL) holding identical rows, under
//! kills of the capture and a crash of PostgreSQL. Without a key nothing in
//! the target refuses a change applied twice: a re-sent insert adds a row, and
//! a re-applied "delete one of two identical rows" removes the second one. So
//! the multiset of rows shows whether every source transaction applied once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::random::Rng;
use crate::servers::Postgres;
use crate::support::binary::Running;
use crate::support::db::{self, Rows};
use crate::support::{Env, Pipeline, broker, secs};

const SCHEMA: &str = "CREATE TABLE tags (item int, tag text, weight int); ALTER TABLE tags REPLICA IDENTITY FULL";
const SOURCE_ROWS: &str = "SELECT item::text, tag, weight::text, count(*)::text FROM tags GROUP BY 1, 2, 3";
const TARGET_ROWS: &str = "SELECT CAST(item AS CHAR), tag, CAST(weight AS CHAR), CAST(COUNT(*) AS CHAR) \
                           FROM tags GROUP BY item, tag, weight";
/// How long the load runs, and its pace in transactions per second.
const LOAD: Duration = secs(60);
const RATE: u64 = 600;
const WORKERS: u64 = 4;
const LOG_FILTER: &str = "info,wasmcdc=debug,lapin=warn,sqlx=warn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_full_table_under_kills() {
    let name = "keyless_full";
    let started = Instant::now();
    let mut rng = Rng::for_scenario(name);
    let mut env = Env::new(name).await;
    env.pg_exec(SCHEMA).await;
    let pipeline = env.pipeline().tables("public.tags");
    let mut capture = pipeline.spawn_command("capture", Some(LOG_FILTER));
    env.wait_streaming(&pipeline, &mut capture).await;
    let mut apply = pipeline.spawn_command("apply", Some(LOG_FILTER));
    let mut killed: Vec<Running> = Vec::new();

    let load = Load::start(&pipeline.pg_url, rng.next_u64());
    // Three kills of the capture and one crash of PostgreSQL, in random order
    // and at random moments between 10 % and 85 % of the load.
    let mut moments: Vec<(u64, bool)> = rng.spread(4, 10, 85).into_iter().map(|p| (p, false)).collect();
    let crash = rng.between(0, 3) as usize;
    moments[crash].1 = true;
    let postgres = Postgres::guard();
    for (percent, is_crash) in moments {
        let at = LOAD.mul_f64(percent as f64 / 100.0);
        if let Some(wait) = at.checked_sub(load.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        apply.assert_alive();
        if is_crash {
            eprintln!(
                "scenario {name}: PostgreSQL immediate restart at {percent} % ({} transactions)",
                load.committed()
            );
            postgres.restart_immediate().await;
            env.pg = reconnect(&pipeline.pg_url).await;
        } else {
            capture.assert_alive();
            capture.kill();
            eprintln!(
                "scenario {name}: capture killed at {percent} % ({} transactions)",
                load.committed()
            );
            killed.push(capture);
            tokio::time::sleep(Duration::from_millis(rng.between(0, 1_500))).await;
            capture = pipeline.spawn_command("capture", Some(LOG_FILTER));
        }
    }
    let sent = load.finish().await;
    drop(postgres);
    env.pg = reconnect(&pipeline.pg_url).await;
    eprintln!(
        "scenario {name}: load done after {:.0?}: {} transactions committed, {} in doubt",
        started.elapsed(),
        sent.committed,
        sent.in_doubt
    );

    let result = env
        .wait_equal(
            &pipeline,
            &mut [&mut capture, &mut apply],
            SOURCE_ROWS,
            TARGET_ROWS,
            secs(300),
        )
        .await;
    let (source, target) = multisets(&env, &pipeline).await;
    let differences = differences(&source, &target);
    let rows = |m: &Rows| {
        m.iter()
            .map(|r| r[3].as_deref().unwrap_or("0").parse::<u64>().unwrap_or(0))
            .sum::<u64>()
    };
    println!(
        "scenario {name}: transactions {}, rows source {} target {}, differences {differences}",
        sent.committed,
        rows(&source),
        rows(&target)
    );
    let dead = broker::queue_depth(&format!("wasmcdc.{}.dlq", pipeline.slot)).await;
    if let Err(diff) = result {
        panic!(
            "scenario {name}: the target's multiset of rows did not equal the source's within 300 s: \
             {differences} differences, {dead} dead letters\n{diff}\n{}\n{}",
            capture.log_tail(),
            apply.log_tail()
        );
    }
    assert_eq!(dead, 0, "scenario {name}: {dead} dead letters\n{}", apply.log_tail());
    pipeline.assert_verified().await;
    eprintln!(
        "scenario {name}: caught up {:.0?} after the start; {} capture kills",
        started.elapsed(),
        killed.len()
    );
    capture.stop().await;
    apply.stop().await;
}

/// Both multisets, as `(item, tag, weight, count)` rows.
async fn multisets(env: &Env, pipeline: &Pipeline) -> (Rows, Rows) {
    let source = env.pg_rows(SOURCE_ROWS).await;
    let my = env.my(pipeline).await;
    let target = db::my_rows(&my, TARGET_ROWS).await;
    my.close().await;
    (source, target)
}

/// Groups whose count differs, or that exist on one side only; prints the first few.
fn differences(source: &Rows, target: &Rows) -> usize {
    use std::collections::BTreeMap;
    let counts = |rows: &Rows| -> BTreeMap<Vec<Option<String>>, Option<String>> {
        rows.iter().map(|r| (r[..3].to_vec(), r[3].clone())).collect()
    };
    let (source, target) = (counts(source), counts(target));
    let mut differing = Vec::new();
    for key in source.keys().chain(target.keys().filter(|k| !source.contains_key(*k))) {
        let (s, t) = (source.get(key), target.get(key));
        if s != t {
            differing.push((key, s, t));
        }
    }
    for (key, s, t) in differing.iter().take(10) {
        eprintln!("  {key:?}: count in source {s:?}, in target {t:?}");
    }
    differing.len()
}

/// Connects to the source, retrying for up to two minutes while PostgreSQL recovers.
async fn reconnect(url: &str) -> Client {
    let utc = format!("{url}?options=-c%20TimeZone%3DUTC");
    let started = Instant::now();
    loop {
        let error = match tokio_postgres::connect(&utc, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                match client.simple_query("SELECT 1").await {
                    Ok(_) => return client,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        assert!(
            started.elapsed() < secs(120),
            "PostgreSQL did not accept connections within 120 s: {error}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the load committed.
struct Sent {
    committed: u64,
    /// Transactions cut off by the crash; whichever way they went, the comparison holds.
    in_doubt: u64,
}

/// Transactions of one to three operations on duplicate rows, at `RATE` in
/// all from `WORKERS` connections, for `LOAD`. Several small transactions per
/// message is what makes a re-sent message straddle the applied offset.
struct Load {
    started: Instant,
    committed: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Sent>>,
}

impl Load {
    fn start(pg_url: &str, seed: u64) -> Load {
        let committed = Arc::new(AtomicU64::new(0));
        let items = Arc::new(AtomicI64::new(0));
        let started = Instant::now();
        let workers = (0..WORKERS)
            .map(|worker| {
                let (url, committed, items) = (pg_url.to_owned(), committed.clone(), items.clone());
                tokio::spawn(async move {
                    let mut rng = Rng::new(seed.wrapping_add(worker));
                    let mut client = reconnect(&url).await;
                    let mut sent = Sent {
                        committed: 0,
                        in_doubt: 0,
                    };
                    let mut attempts: u64 = 0;
                    while started.elapsed() < LOAD {
                        let mut sql = String::from("BEGIN;");
                        for _ in 0..rng.between(1, 3) {
                            sql.push_str(&operation(&mut rng, &items));
                        }
                        sql.push_str("COMMIT;");
                        attempts += 1;
                        match client.batch_execute(&sql).await {
                            Ok(()) => {
                                sent.committed += 1;
                                committed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                // Cut off by the crash: committed or not, the comparison holds either way.
                                sent.in_doubt += 1;
                                client = reconnect(&url).await;
                            }
                        }
                        let due = Duration::from_secs_f64(attempts as f64 * WORKERS as f64 / RATE as f64);
                        if let Some(ahead) = due.checked_sub(started.elapsed()) {
                            tokio::time::sleep(ahead).await;
                        }
                    }
                    sent
                })
            })
            .collect();
        Load {
            started,
            committed,
            workers,
        }
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Sent {
        let mut total = Sent {
            committed: 0,
            in_doubt: 0,
        };
        for worker in self.workers {
            let sent = tokio::time::timeout(LOAD + secs(180), worker)
                .await
                .expect("the load finishes")
                .expect("the load did not fail");
            total.committed += sent.committed;
            total.in_doubt += sent.in_doubt;
        }
        total
    }
}

/// One operation: a new item as two identical rows, or a change to one row of an item.
fn operation(rng: &mut Rng, items: &AtomicI64) -> String {
    let pick = rng.between(0, 99);
    let known = items.load(Ordering::Relaxed);
    if known < 20 || pick < 40 {
        let item = items.fetch_add(1, Ordering::Relaxed) + 1;
        let tag = format!("tag-{}", item % 13);
        return format!("INSERT INTO tags VALUES ({item}, '{tag}', 0), ({item}, '{tag}', 0);");
    }
    let item = rng.between(1, known as u64);
    let one_row = format!("ctid = (SELECT ctid FROM tags WHERE item = {item} LIMIT 1)");
    if pick < 75 {
        format!("UPDATE tags SET weight = weight + 1 WHERE {one_row};")
    } else {
        format!("DELETE FROM tags WHERE {one_row};")
    }
}
