//! The workload: a stream of small and large transactions of inserts, updates
//! and deletes, shaped so that the target's rows tell how many changes it holds
//! and so that a change applied twice cannot go unnoticed.
//!
//! - `txlog` gets one row per transaction: its number and how many row changes
//!   it made, itself included.
//! - `events` is append-only with a serial key.
//! - `counters` are bumped with `n = n + 1`, and each new value is logged into
//!   `history`, whose key is `(counter_id, n)`: a replayed bump is a duplicate key.
//! - `items` are inserted, updated (even ids only, `version + 1`) and deleted
//!   (odd ids only, never updated); each deletion is logged into `deletions`,
//!   keyed by the item.
//!
//! So a target holds exactly
//! `|txlog| + |events| + |counters| + Σn + |history| + |items| + Σversion + 3·|deletions|`
//! changes (a deleted item was inserted, deleted, and logged). Every insert goes through a key MariaDB enforces, so a duplicate
//! apply is refused and dead-lettered: the scenarios also require an empty
//! dead-letter queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use crate::random::Rng;
use crate::support::secs;

/// The source tables, created before the pipeline starts.
pub const SCHEMA: &str = "
    CREATE TABLE txlog (tx BIGINT PRIMARY KEY, kind TEXT NOT NULL, changes INTEGER NOT NULL);
    CREATE TABLE events (id BIGSERIAL PRIMARY KEY, tx BIGINT NOT NULL, payload TEXT NOT NULL);
    CREATE TABLE counters (id INTEGER PRIMARY KEY, n BIGINT NOT NULL);
    CREATE TABLE history (counter_id INTEGER NOT NULL, n BIGINT NOT NULL, tx BIGINT NOT NULL, PRIMARY KEY (counter_id, n));
    CREATE TABLE items (id BIGSERIAL PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0, label TEXT NOT NULL, amount NUMERIC(12,2));
    CREATE TABLE deletions (item_id BIGINT PRIMARY KEY, tx BIGINT NOT NULL);
";

/// The `--tables` of the pipeline.
pub const TABLES: &str = "public.txlog,public.events,public.counters,public.history,public.items,public.deletions";

/// Each table's rows as text, in the source and in the target.
pub const COMPARED: [(&str, &str, &str); 6] = [
    (
        "txlog",
        "SELECT tx::text, kind, changes::text FROM txlog",
        "SELECT CAST(tx AS CHAR), kind, CAST(changes AS CHAR) FROM txlog",
    ),
    (
        "events",
        "SELECT id::text, tx::text, payload FROM events",
        "SELECT CAST(id AS CHAR), CAST(tx AS CHAR), payload FROM events",
    ),
    (
        "counters",
        "SELECT id::text, n::text FROM counters",
        "SELECT CAST(id AS CHAR), CAST(n AS CHAR) FROM counters",
    ),
    (
        "history",
        "SELECT counter_id::text, n::text, tx::text FROM history",
        "SELECT CAST(counter_id AS CHAR), CAST(n AS CHAR), CAST(tx AS CHAR) FROM history",
    ),
    (
        "items",
        "SELECT id::text, version::text, label, amount::text FROM items",
        "SELECT CAST(id AS CHAR), CAST(version AS CHAR), label, CAST(amount AS CHAR) FROM items",
    ),
    (
        "deletions",
        "SELECT item_id::text, tx::text FROM deletions",
        "SELECT CAST(item_id AS CHAR), CAST(tx AS CHAR) FROM deletions",
    ),
];

/// The number of changes the rows account for (see the module docs), in the source.
pub const SOURCE_CHANGES: &str = "SELECT ((SELECT count(*) FROM txlog) + (SELECT count(*) FROM events) \
     + (SELECT count(*) FROM counters) + (SELECT coalesce(sum(n), 0) FROM counters) \
     + (SELECT count(*) FROM history) + (SELECT count(*) FROM items) \
     + (SELECT coalesce(sum(version), 0) FROM items) + 3 * (SELECT count(*) FROM deletions))::text";

/// The same count in the target.
pub const TARGET_CHANGES: &str = "SELECT CAST((SELECT COUNT(*) FROM txlog) + (SELECT COUNT(*) FROM events) \
     + (SELECT COUNT(*) FROM counters) + (SELECT COALESCE(SUM(n), 0) FROM counters) \
     + (SELECT COUNT(*) FROM history) + (SELECT COUNT(*) FROM items) \
     + (SELECT COALESCE(SUM(version), 0) FROM items) + 3 * (SELECT COUNT(*) FROM deletions) AS CHAR)";

/// What `txlog` says was committed: transactions and their changes.
pub const SOURCE_LOGGED: &str = "SELECT count(*)::text, coalesce(sum(changes), 0)::text FROM txlog";
/// The same in the target.
pub const TARGET_LOGGED: &str = "SELECT CAST(COUNT(*) AS CHAR), CAST(COALESCE(SUM(changes), 0) AS CHAR) FROM txlog";

/// Counters bumped by the workload.
const COUNTERS: u64 = 50;

/// What the workload committed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Row changes in committed transactions.
    pub changes: u64,
    /// Committed transactions.
    pub transactions: u64,
    /// Transactions that failed or whose commit was lost with the connection.
    pub failed: u64,
    /// Transactions whose outcome was unknown and was looked up after reconnecting.
    pub in_doubt: u64,
    /// Times the workload had to reconnect.
    pub reconnects: u64,
}

/// A workload running in the background.
pub struct Workload {
    sent: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    task: JoinHandle<Sent>,
}

impl Workload {
    /// Starts committing transactions into `pg_url` until `total` changes are
    /// committed, at about `rate` changes per second.
    pub fn start(pg_url: &str, total: u64, rate: u64, seed: u64) -> Workload {
        let sent = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(pg_url.to_owned(), total, rate, seed, sent.clone(), done.clone()));
        Workload { sent, done, task }
    }

    /// Changes committed so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether it has committed all it was asked to.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Relaxed) || self.task.is_finished()
    }

    /// Waits until `changes` are committed or the workload is done.
    pub async fn reached(&self, changes: u64) {
        while self.sent() < changes && !self.done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the end of the workload.
    pub async fn finish(self) -> Sent {
        match tokio::time::timeout(secs(600), self.task).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(e)) => panic!("the workload failed: {e}"),
            Err(_) => panic!("the workload did not finish within 600 s"),
        }
    }
}

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects, retrying for up to two minutes (the server may be restarting).
async fn reconnect(url: &str) -> Client {
    let start = Instant::now();
    loop {
        match connect(url).await {
            Ok(c) => return c,
            Err(e) if start.elapsed() > secs(120) => panic!("the workload cannot reconnect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn run(url: String, total: u64, rate: u64, seed: u64, shared: Arc<AtomicU64>, done: Arc<AtomicBool>) -> Sent {
    let mut rng = Rng::new(seed);
    let mut sent = Sent::default();
    let mut client = reconnect(&url).await;
    let started = Instant::now();
    let mut tx: i64 = 0;
    while sent.changes < total {
        let kind = if tx == 0 { Kind::Setup } else { Kind::pick(&mut rng) };
        let sql = kind.statements(tx, &mut rng);
        match transaction(&mut client, tx, kind, &sql).await {
            Ok(changes) => {
                sent.changes += changes;
                sent.transactions += 1;
            }
            Err(e) => {
                // The commit may or may not have happened: txlog knows.
                sent.in_doubt += 1;
                eprintln!("workload: transaction {tx} failed ({e}); reconnecting to look it up");
                client = reconnect(&url).await;
                sent.reconnects += 1;
                let logged = loop {
                    match client
                        .query_opt("SELECT changes FROM txlog WHERE tx = $1", &[&tx])
                        .await
                    {
                        Ok(row) => break row.map(|r| r.get::<_, i32>(0)),
                        Err(_) => {
                            client = reconnect(&url).await;
                            sent.reconnects += 1;
                        }
                    }
                };
                match logged {
                    Some(changes) => {
                        sent.changes += changes as u64;
                        sent.transactions += 1;
                    }
                    None => sent.failed += 1,
                }
            }
        }
        shared.store(sent.changes, Ordering::Relaxed);
        tx += 1;
        // Hold the rate: sleep while ahead of it.
        let due = Duration::from_secs_f64(sent.changes as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    done.store(true, Ordering::Relaxed);
    sent
}

/// Runs `statements` and the txlog row in one transaction; returns the changes it made.
async fn transaction(
    client: &mut Client,
    tx: i64,
    kind: Kind,
    statements: &[String],
) -> Result<u64, tokio_postgres::Error> {
    let t = client.transaction().await?;
    let mut changes = 0;
    for sql in statements {
        // Each counter bump and each deletion is logged: two changes per returned row.
        let rows = t.execute(sql.as_str(), &[]).await?;
        changes += if sql.starts_with("WITH") { 2 * rows } else { rows };
    }
    changes += 1;
    let logged = i32::try_from(changes).expect("a transaction makes fewer than 2^31 changes");
    t.execute(
        "INSERT INTO txlog (tx, kind, changes) VALUES ($1, $2, $3)",
        &[&tx, &kind.name(), &logged],
    )
    .await?;
    t.commit().await?;
    Ok(changes)
}

/// The kinds of transaction the workload makes.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The counters, once.
    Setup,
    Events,
    Bumps,
    NewItems,
    ItemUpdates,
    ItemDeletes,
    /// A bit of everything.
    Mixed,
    /// More changes than one message chunk holds.
    Large,
}

impl Kind {
    fn pick(rng: &mut Rng) -> Kind {
        match rng.between(0, 199) {
            0..=2 => Kind::Large,
            3..=62 => Kind::Events,
            63..=112 => Kind::Bumps,
            113..=142 => Kind::NewItems,
            143..=162 => Kind::ItemUpdates,
            163..=180 => Kind::ItemDeletes,
            _ => Kind::Mixed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Setup => "setup",
            Kind::Events => "events",
            Kind::Bumps => "bumps",
            Kind::NewItems => "new items",
            Kind::ItemUpdates => "item updates",
            Kind::ItemDeletes => "item deletes",
            Kind::Mixed => "mixed",
            Kind::Large => "large",
        }
    }

    /// The statements of transaction `tx`. A statement starting with `WITH`
    /// returns the rows it logged, each standing for two changes.
    fn statements(self, tx: i64, rng: &mut Rng) -> Vec<String> {
        let events = |n: u64| {
            format!(
                "INSERT INTO events (tx, payload) SELECT {tx}, 'event ' || {tx} || '.' || g FROM generate_series(1, {n}) g"
            )
        };
        // Between `low` and `high` distinct counters.
        let bumps = |rng: &mut Rng, low: u64, high: u64| {
            let n = rng.between(low, high) as usize;
            let ids = rng.points(n, 1, COUNTERS);
            let ids = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            format!(
                "WITH u AS (UPDATE counters SET n = n + 1 WHERE id IN ({ids}) RETURNING id, n) \
                 INSERT INTO history (counter_id, n, tx) SELECT id, n, {tx} FROM u"
            )
        };
        let new_items = |n: u64| {
            format!(
                "INSERT INTO items (label, amount) \
                 SELECT 'item ' || {tx} || '.' || g, CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.25 END \
                 FROM generate_series(1, {n}) g"
            )
        };
        let updates = |n: u64| {
            format!(
                "UPDATE items SET version = version + 1, amount = coalesce(amount, 0) + 0.5, label = 'item updated by {tx}' \
                 WHERE id IN (SELECT id FROM items WHERE id % 2 = 0 ORDER BY random() LIMIT {n})"
            )
        };
        let deletes = |n: u64| {
            format!(
                "WITH d AS (DELETE FROM items WHERE id IN \
                   (SELECT id FROM items WHERE id % 2 = 1 ORDER BY random() LIMIT {n}) RETURNING id) \
                 INSERT INTO deletions (item_id, tx) SELECT id, {tx} FROM d"
            )
        };
        match self {
            Kind::Setup => vec![format!(
                "INSERT INTO counters (id, n) SELECT g, 0 FROM generate_series(1, {COUNTERS}) g"
            )],
            Kind::Events => vec![events(rng.between(1, 60))],
            Kind::Bumps => vec![bumps(rng, 1, 8)],
            Kind::NewItems => vec![new_items(rng.between(1, 40))],
            Kind::ItemUpdates => vec![updates(rng.between(1, 20))],
            Kind::ItemDeletes => vec![deletes(rng.between(1, 10))],
            Kind::Mixed => {
                let mut all = vec![
                    events(rng.between(1, 20)),
                    new_items(rng.between(1, 20)),
                    bumps(rng, 1, 5),
                    updates(rng.between(1, 10)),
                    deletes(rng.between(1, 5)),
                ];
                // Different orders within one transaction.
                let turn = rng.between(0, 4) as usize;
                all.rotate_left(turn);
                all
            }
            Kind::Large => vec![events(rng.between(2_100, 3_000)), bumps(rng, 20, 20), updates(200)],
        }
    }
}
