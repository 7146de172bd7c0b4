//! Hot swap: replacing a module file while changes flow swaps the new version
//! in at a transaction boundary, loses nothing, and never mixes two versions in
//! one transaction; a file that fails to load leaves the running version in use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::binary::{Running, guest};
use crate::support::env::unique;
use crate::support::{Deadline, Env, Pipeline, db, secs};

const TABLE: &str = "CREATE TABLE notes (id INT PRIMARY KEY, tx INT NOT NULL, details TEXT NOT NULL)";
const SOURCE_KEYS: &str = "SELECT id::text, tx::text FROM notes";
const TARGET_KEYS: &str = "SELECT CAST(id AS CHAR), CAST(tx AS CHAR) FROM notes";
const SOURCE_ROWS: &str = "SELECT id::text, tx::text, details FROM notes";
const TARGET_ROWS: &str = "SELECT CAST(id AS CHAR), CAST(tx AS CHAR), details FROM notes";
/// What `mask_columns` with `mode=redact` writes for a text value.
const MASKED: &str = "***";
const SWAPS: usize = 10;
/// The log line of a module file that failed to load.
const LOAD_FAILED: &str = "failed to load; the running version stays in use";

/// Which module version made a target row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Identity,
    Mask,
}

impl Version {
    fn module(self) -> PathBuf {
        guest(match self {
            Version::Identity => "identity",
            Version::Mask => "mask_columns",
        })
    }

    fn other(self) -> Version {
        match self {
            Version::Identity => Version::Mask,
            Version::Mask => Version::Identity,
        }
    }

    /// The version that gives `target` for a row whose source value is `source`, if any.
    fn of(source: &str, target: &str) -> Option<Version> {
        if target == source {
            Some(Version::Identity)
        } else if target == MASKED {
            Some(Version::Mask)
        } else {
            None
        }
    }
}

/// A directory holding the pipeline's module file `m.wasm`; removed on drop.
struct ModuleDir {
    dir: PathBuf,
}

impl ModuleDir {
    fn new() -> ModuleDir {
        let dir = std::env::temp_dir().join(unique("modules"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        ModuleDir { dir }
    }

    fn module(&self) -> PathBuf {
        self.dir.join("m.wasm")
    }

    /// Replaces `m.wasm` atomically: a temporary file in the same directory, renamed over it.
    fn install(&self, bytes: &[u8]) {
        let tmp = self.dir.join(".m.wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.module())
            .unwrap_or_else(|e| panic!("cannot rename {} over m.wasm: {e}", tmp.display()));
    }

    fn install_version(&self, version: Version) {
        self.install(&read(&version.module()));
    }
}

impl Drop for ModuleDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The pipeline replicating `notes` through `dir/m.wasm`, configured for `mask_columns` (identity ignores it).
fn swap_pipeline(env: &Env, modules: &ModuleDir) -> Pipeline {
    env.pipeline()
        .tables("public.notes")
        .transform(&modules.module())
        .transform_config("m.columns=details")
        .transform_config("m.mode=redact")
}

/// Asserts that `wasmcdc status` names `expected` as the chain in use.
async fn assert_status_names(pipeline: &Pipeline, expected: &str) {
    let status = pipeline.status().await;
    let line = status
        .lines()
        .find(|l| l.starts_with("transforms in use"))
        .unwrap_or_else(|| panic!("wasmcdc status names no transforms:\n{status}"));
    assert_eq!(
        line,
        format!("transforms in use (SHA-256, chain order): {expected}"),
        "wasmcdc status does not name the module file in use:\n{status}"
    );
}

/// Inserts transactions of 3 to 5 rows until `stop`, each row's `details` a unique marker.
/// `written` is the highest id committed so far. Returns the number of transactions.
async fn write_continuously(pg_url: String, stop: Arc<AtomicBool>, written: Arc<AtomicU32>) -> u32 {
    let pg = db::pg_connect(&pg_url).await;
    let (mut tx, mut id) = (0u32, 0u32);
    while !stop.load(Ordering::Relaxed) {
        tx += 1;
        let rows: Vec<String> = (0..3 + tx % 3)
            .map(|_| {
                id += 1;
                format!("({id}, {tx}, 'marker {id} of transaction {tx}')")
            })
            .collect();
        db::pg_exec(
            &pg,
            &format!(
                "BEGIN; INSERT INTO notes (id, tx, details) VALUES {}; COMMIT;",
                rows.join(", ")
            ),
        )
        .await;
        written.store(id, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tx
}

/// Waits until the newest target row with an id above `after` was made by `version`.
async fn wait_for_version(env: &Env, pipeline: &Pipeline, running: &mut Running, after: u32, version: Version) {
    let my = env.my(pipeline).await;
    let deadline = Deadline::new(
        format!("rows written after the swap to be made by {version:?}"),
        secs(60),
    );
    loop {
        running.assert_alive();
        let newest = db::my_rows(
            &my,
            &format!("SELECT CAST(id AS CHAR), details FROM notes WHERE id > {after} ORDER BY id DESC LIMIT 1"),
        )
        .await;
        if let Some([id, Some(details)]) = newest.first().map(Vec::as_slice) {
            let id = id.as_deref().unwrap_or_default();
            let source = env.pg_rows(&format!("SELECT details FROM notes WHERE id = {id}")).await;
            let source = source[0][0].as_deref().unwrap_or_default();
            match Version::of(source, details) {
                Some(v) if v == version => break,
                Some(_) => {}
                None => panic!("row {id} holds {details:?}, made by neither version (source {source:?})"),
            }
        }
        deadline.tick(&format!("{newest:?}\n{}", running.log_tail())).await;
    }
    my.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_swaps_under_load_lose_nothing_and_never_mix_versions() {
    let env = Env::new("hotswap").await;
    env.pg_exec(TABLE).await;
    let modules = ModuleDir::new();
    modules.install_version(Version::Identity);
    let pipeline = swap_pipeline(&env, &modules);
    let mut running = env.start(&pipeline).await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let writer = tokio::spawn(write_continuously(
        pipeline.pg_url.clone(),
        stop.clone(),
        written.clone(),
    ));

    wait_for_version(&env, &pipeline, &mut running, 0, Version::Identity).await;
    let mut version = Version::Identity;
    for _ in 0..SWAPS {
        version = version.other();
        let before = written.load(Ordering::Relaxed);
        modules.install_version(version);
        wait_for_version(&env, &pipeline, &mut running, before, version).await;
        // Keep each version under load for a while before the next swap.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // A little more load on the final version, then quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.expect("the writer finished");

    env.wait_replicated(&pipeline, &mut running, SOURCE_KEYS, TARGET_KEYS, secs(120))
        .await;
    let source = env.pg_rows(SOURCE_ROWS).await;
    let target = db::my_rows(&env.my(&pipeline).await, TARGET_ROWS).await;
    assert_eq!(source.len(), target.len(), "row counts differ");

    // Each row is its source value or masked; each transaction one version throughout.
    let mut by_tx: BTreeMap<u32, Vec<Version>> = BTreeMap::new();
    for (s, t) in source.iter().zip(&target) {
        assert_eq!((&s[0], &s[1]), (&t[0], &t[1]), "source and target keys differ");
        let (source_details, target_details) =
            (s[2].as_deref().unwrap_or_default(), t[2].as_deref().unwrap_or_default());
        let version = Version::of(source_details, target_details).unwrap_or_else(|| {
            panic!(
                "row {:?} holds {target_details:?}: neither its source value {source_details:?} nor {MASKED:?}",
                t[0]
            )
        });
        let tx: u32 = t[1].as_deref().unwrap_or_default().parse().expect("tx is a number");
        by_tx.entry(tx).or_default().push(version);
    }
    assert_eq!(by_tx.len(), transactions as usize, "transactions in the target");
    let mut sequence = Vec::new();
    for (tx, versions) in &by_tx {
        assert!(
            versions.iter().all(|v| *v == versions[0]),
            "transaction {tx} was transformed by more than one version: {versions:?}"
        );
        sequence.push(versions[0]);
    }
    let masked = sequence.iter().filter(|v| **v == Version::Mask).count();
    assert!(
        masked > 0 && masked < sequence.len(),
        "both versions should have been in effect: {masked} of {} transactions masked",
        sequence.len()
    );
    // In commit order, the version changes exactly once per swap: each swap took
    // effect, and none went back to an older version.
    let changes = sequence.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(
        changes,
        SWAPS,
        "the version changed {changes} times over {} transactions",
        sequence.len()
    );

    assert_status_names(&pipeline, &sha256_hex(&read(&modules.module()))).await;
    running.assert_alive();
    running.stop().await;
}

/// Inserts row `id` in its own transaction and waits until the target holds it with `details`.
async fn insert_and_expect(env: &Env, pipeline: &Pipeline, running: &mut Running, id: u32, details: &str) {
    env.pg_exec(&format!(
        "INSERT INTO notes (id, tx, details) VALUES ({id}, {id}, 'note {id}')"
    ))
    .await;
    env.wait_target(
        pipeline,
        running,
        &format!("SELECT CAST(id AS CHAR), details FROM notes WHERE id = {id}"),
        &vec![vec![Some(id.to_string()), Some(details.to_owned())]],
        secs(60),
    )
    .await;
}

/// Waits until the run's log reports `count` module files that failed to load.
async fn wait_for_load_failures(running: &mut Running, count: usize) {
    let deadline = Deadline::new(format!("{count} module load failure(s) in the log"), secs(60));
    loop {
        running.assert_alive();
        let seen = running.log().matches(LOAD_FAILED).count();
        if seen >= count {
            return;
        }
        deadline.tick(&running.log_tail()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_fails_to_load_leaves_the_running_version() {
    let env = Env::new("badswap").await;
    env.pg_exec(TABLE).await;
    let modules = ModuleDir::new();
    let mask = read(&Version::Mask.module());
    modules.install(&mask);
    let pipeline = swap_pipeline(&env, &modules);
    let mut running = env.start(&pipeline).await;
    insert_and_expect(&env, &pipeline, &mut running, 1, MASKED).await;

    // Not WebAssembly at all, then a component cut short.
    let broken: [&[u8]; 2] = [b"this is not a WebAssembly component\n", &mask[..mask.len() / 2]];
    for (n, bytes) in (1..).zip(broken) {
        modules.install(bytes);
        wait_for_load_failures(&mut running, n).await;
        let id = 1 + u32::try_from(n).expect("small");
        insert_and_expect(&env, &pipeline, &mut running, id, MASKED).await;
    }
    assert_status_names(&pipeline, &sha256_hex(&mask)).await;

    // A good file after the broken ones is picked up.
    let identity = read(&Version::Identity.module());
    modules.install(&identity);
    let my = env.my(&pipeline).await;
    let deadline = Deadline::new("the identity module to be swapped in after the broken files", secs(60));
    for id in 10.. {
        env.pg_exec(&format!(
            "INSERT INTO notes (id, tx, details) VALUES ({id}, {id}, 'note {id}')"
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let newest = db::my_rows(&my, "SELECT details FROM notes ORDER BY id DESC LIMIT 1").await;
        if newest.first().and_then(|r| r[0].as_deref()) == Some(&format!("note {id}")) {
            break;
        }
        running.assert_alive();
        deadline.tick(&newest).await;
    }
    my.close().await;
    assert_status_names(&pipeline, &sha256_hex(&identity)).await;
    running.stop().await;
}

/// A compiled module is kept on disk, so that a restart, or a swap back to a
/// version seen before, does not compile it again; an empty cache directory
/// setting switches the cache off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_on_disk() {
    let dir = std::env::temp_dir().join(unique("module-cache"));
    // The compiled code: each file of the cache with its size and time of writing.
    fn compiled(dir: &Path, found: &mut BTreeMap<PathBuf, (u64, std::time::SystemTime)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let (path, meta) = (entry.path(), entry.metadata().expect("metadata"));
            if meta.is_dir() {
                compiled(&path, found);
            } else if meta.len() > 10_000 {
                found.insert(path, (meta.len(), meta.modified().expect("mtime")));
            }
        }
    }
    let snapshot = |dir: &Path| {
        let mut found = BTreeMap::new();
        compiled(dir, &mut found);
        found
    };
    let check = |cache: &Path| {
        let out = std::process::Command::new(crate::support::binary::binary())
            .args(["transform", "check"])
            .arg(guest("mask_columns"))
            .env("WASMCDC_CACHE_DIR", cache)
            .output()
            .expect("transform check runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    check(&dir);
    let deadline = Deadline::new("compiled code in the cache directory", secs(10));
    while snapshot(&dir).is_empty() {
        deadline.tick(&dir).await;
    }
    let first = snapshot(&dir);
    tokio::time::sleep(Duration::from_millis(50)).await;
    check(&dir);
    assert_eq!(
        snapshot(&dir),
        first,
        "the second start reads the compiled code and rewrites none"
    );
    let off = std::env::temp_dir().join(unique("no-cache"));
    let out = std::process::Command::new(crate::support::binary::binary())
        .args(["transform", "check"])
        .arg(guest("mask_columns"))
        .env("WASMCDC_CACHE_DIR", "")
        .env("HOME", &off)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .expect("transform check runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!off.exists(), "an empty WASMCDC_CACHE_DIR writes no cache");
    std::fs::remove_dir_all(&dir).ok();
}
