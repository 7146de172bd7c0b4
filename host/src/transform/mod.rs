//! The transform chain: sandboxed WebAssembly components, run in order, that
//! map each change to zero, one or several changes.
//!
//! `wit` holds the generated types of both worlds and is the only place that
//! converts them to and from [`crate::change`]; `module` runs one component
//! in whichever world it exports; `sandbox` is what every guest runs inside.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub mod watch;

mod check;
mod module;
mod rows;
mod sandbox;
mod trial;
mod wit;

pub use check::{CheckReport, check};
pub use module::{Outcome, Refused};
pub use trial::{TypeOids, run_test};

use crate::catalog::TableName;
use crate::change::{Change, Target, TxContext};
use module::Module;

/// Stack size for host threads that call [`TransformChain::apply`]: well above the wasm stack.
pub const THREAD_STACK: usize = 8 << 20;

/// What each guest may use, and how changes are handed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time a call carrying one change may take, waiting in host calls included.
    pub call: Duration,
    /// Guest stdout and stderr kept per stream and call, in bytes; the rest is dropped, not trapped on.
    pub output_bytes: usize,
    /// Changes given to a module in one call: a transaction, or a slice of a
    /// large one. Large enough that the fixed cost of a call vanishes, small
    /// enough that the batch's deadline stays short.
    pub batch: usize,
    /// Changes one call may return for one change: a fan-out larger than this is a runaway module.
    pub result_changes: usize,
    /// Bytes of text and binary values one call may return for one change.
    pub result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call: Duration::from_millis(100),
            output_bytes: 64 << 10,
            batch: 256,
            result_changes: 10_000,
            result_bytes: 32 << 20,
        }
    }
}

/// Runs guest code (load, init, transform) from anywhere, async code included.
///
/// wasmtime-wasi flushes a guest's stdout and stderr by blocking on the ambient
/// tokio runtime, which panics on a runtime thread; `block_in_place` makes the
/// thread a blocking one for the duration of the call.
pub fn guest_code<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Why a transform module could not be loaded or could not transform a change.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The engine could not be configured on this host.
    #[error("the WebAssembly engine could not start ({0}); run wasmcdc on a host that wasmtime supports")]
    Engine(String),
    /// The module file does not exist.
    #[error("transform module '{0}' does not exist; check the --transform path")]
    Missing(PathBuf),
    /// The module file could not be read.
    #[error("transform module '{path}' could not be read ({reason}); check its permissions")]
    Unreadable { path: PathBuf, reason: String },
    /// The file is not a valid WebAssembly component.
    #[error(
        "'{path}' is not a WebAssembly component ({reason}); build it with `cargo build --target wasm32-wasip2 --release` or `cargo component build --release`"
    )]
    NotComponent { path: PathBuf, reason: String },
    /// The component does not fit the `transformer` world or needs imports the host withholds.
    #[error(
        "transform '{module}' fits none of the wasmcdc:transform@0.3.0, @0.2.0 and @0.1.0 `transformer` worlds ({reason}); export `init` and `transform` as wit/world.wit says, and import nothing beyond the world's `rows` and WASI 0.2 without files or network"
    )]
    Incompatible { module: String, reason: String },
    /// Instantiation or `init` trapped.
    #[error(
        "transform '{module}' could not start ({reason}); check that it initialises within the time and memory limits"
    )]
    Start { module: String, reason: String },
    /// `init` returned an error.
    #[error("transform '{module}' refused its configuration: {message}; fix the configuration or the module")]
    Init { module: String, message: String },
    /// The guest returned an error for a change.
    #[error("transform '{module}' rejected the change: {message}")]
    Rejected { module: String, message: String },
    /// The guest trapped, ran out of time or ran out of memory; its instance is recreated.
    #[error("transform '{module}' failed: {reason}; the change was not transformed")]
    Failed { module: String, reason: String },
    /// A `--transform` entry names a table but no module.
    #[error(
        "--transform '{0}' names a table but no module file; write SCHEMA.TABLE=PATH, for example public.orders=orders.wasm"
    )]
    BadScope(String),
    /// A `--transform-config` entry is not `MODULE.KEY=VALUE`.
    #[error("--transform-config '{0}' is not MODULE.KEY=VALUE; write for example mask-columns.columns=details")]
    BadConfig(String),
    /// A `--transform-config` entry names no module of the chain.
    #[error(
        "--transform-config '{entry}' names no module of the chain; start it with one of the module names ({modules}), the file name without .wasm"
    )]
    UnknownModule { entry: String, modules: String },
    /// A trial input line is not a change.
    #[error(
        "line {line} is not a change: {reason}; give one change per line as JSON, for example {{\"op\":\"insert\",\"schema\":\"public\",\"table\":\"t\",\"columns\":[]}}, or wal2json format-version 2 lines as pg_recvlogical prints them"
    )]
    BadInput { line: usize, reason: String },
    /// A type of a trial input line could not be looked up in the catalog.
    #[error("line {line}: {reason}; check that --pg-url names the database the lines came from")]
    UnknownType { line: usize, reason: String },
    /// The chain was told to stop (a shutdown) before it reached the change.
    #[error("the transform chain stopped for a shutdown before it reached the change")]
    Stopped,
    /// A trial input line could not be transformed.
    #[error("line {line}: {error}")]
    AtLine { line: usize, error: Box<TransformError> },
    /// The trial input could not be read.
    #[error("the input could not be read ({0}); check that it is readable text")]
    Read(std::io::Error),
    /// The trial output could not be written.
    #[error("the output could not be written ({0}); check that its destination accepts writes")]
    Write(std::io::Error),
}

impl TransformError {
    /// The same start-up failure again, for each further change of the batch it stopped.
    fn again(&self) -> Self {
        match self {
            Self::Engine(reason) => Self::Engine(reason.clone()),
            Self::Init { module, message } => Self::Init {
                module: module.clone(),
                message: message.clone(),
            },
            Self::Start { module, reason } => Self::Start {
                module: module.clone(),
                reason: reason.clone(),
            },
            other => Self::Start {
                module: String::new(),
                reason: other.to_string(),
            },
        }
    }
}

/// One `--transform` entry: a module file, applied to every change or only to
/// the changes of one source table.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleSpec {
    /// The component file.
    pub path: PathBuf,
    /// The source table it is limited to; `None` applies it to every table.
    pub table: Option<TableName>,
}

impl ModuleSpec {
    /// Reads `PATH` or `SCHEMA.TABLE=PATH`.
    ///
    /// Text before the first `=` is a table only when it is `schema.table` and
    /// holds no `/`, so a file whose name contains `=` is given as `./x=y.wasm`.
    pub fn parse(entry: &Path) -> Result<Self, TransformError> {
        let plain = || Self {
            path: entry.to_owned(),
            table: None,
        };
        let Some((table, path)) = entry.to_str().and_then(|text| text.split_once('=')) else {
            return Ok(plain());
        };
        if !table.contains('.') || table.contains('/') {
            return Ok(plain());
        }
        match TableName::parse(table) {
            Some(table) if !path.is_empty() => Ok(Self {
                path: PathBuf::from(path),
                table: Some(table),
            }),
            _ => Err(TransformError::BadScope(entry.display().to_string())),
        }
    }

    /// Whether a change captured from `schema.table` goes through this module.
    fn applies_to(&self, schema: &str, table: &str) -> bool {
        self.table
            .as_ref()
            .is_none_or(|t| t.schema == schema && t.name == table)
    }
}

/// The name `--transform-config` uses for a module: its file name without `.wasm`.
pub fn module_name(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Splits `MODULE.KEY=VALUE` entries by module, in chain order.
///
/// A module name matches with `-` and `_` taken as the same character, since
/// cargo writes `mask_columns.wasm` for the crate `mask-columns`. The longest
/// matching name wins, so module names and keys may both contain dots.
fn split_config(names: &[String], entries: &[String]) -> Result<Vec<Vec<(String, String)>>, TransformError> {
    let fold = |s: &str| s.replace('_', "-");
    let mut configs = vec![Vec::new(); names.len()];
    for entry in entries {
        let (target, value) = entry
            .split_once('=')
            .ok_or_else(|| TransformError::BadConfig(entry.clone()))?;
        let folded = fold(target);
        let name = names
            .iter()
            .map(|name| fold(name))
            .filter(|name| {
                folded.len() > name.len() + 1
                    && folded.starts_with(name.as_str())
                    && folded.as_bytes()[name.len()] == b'.'
            })
            .max_by_key(String::len);
        let Some(name) = name else {
            if !target.contains('.') {
                return Err(TransformError::BadConfig(entry.clone()));
            }
            let mut modules: Vec<&str> = names.iter().map(String::as_str).collect();
            modules.dedup();
            return Err(TransformError::UnknownModule {
                entry: entry.clone(),
                modules: if modules.is_empty() {
                    "none is loaded".to_owned()
                } else {
                    modules.join(", ")
                },
            });
        };
        let key = &target[name.len() + 1..];
        for (config, candidate) in configs.iter_mut().zip(names) {
            if fold(candidate) == name {
                config.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    Ok(configs)
}

/// The loaded transform modules, applied in order to every change.
pub struct TransformChain {
    modules: Vec<Module>,
    hashes: Vec<String>,
    targets: Vec<Target>,
    limits: Limits,
    /// Cancelled when the process shuts down: a batch whose changes each wait
    /// out a deadline stops between calls, so SIGTERM is never held up by more
    /// than one call.
    stop: CancellationToken,
}

impl TransformChain {
    /// Compiles and starts each module in chain order; an empty list passes changes through unchanged.
    ///
    /// `modules` are `--transform` entries (`PATH` or `SCHEMA.TABLE=PATH`);
    /// `config` are `--transform-config` entries (`MODULE.KEY=VALUE`), each
    /// given to the `init` of every module of that name. Guests run under the default [`Limits`].
    pub fn load(modules: &[PathBuf], config: &[String]) -> Result<Self, TransformError> {
        Self::load_with(modules, config, Limits::default())
    }

    /// Like [`load`](Self::load), with guests running under `limits`.
    pub fn load_with(modules: &[PathBuf], config: &[String], limits: Limits) -> Result<Self, TransformError> {
        let specs = modules
            .iter()
            .map(|entry| ModuleSpec::parse(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = specs.iter().map(|spec| module_name(&spec.path)).collect();
        let configs = split_config(&names, config)?;
        let mut loaded = Vec::with_capacity(specs.len());
        let mut hashes = Vec::with_capacity(specs.len());
        let mut targets: Vec<Target> = Vec::new();
        for (spec, config) in specs.into_iter().zip(configs) {
            let (module, hash) = Module::load(spec, config, limits)?;
            tracing::info!(module = %module.name, world = module.world(), %hash, "loaded transform");
            // A later module's declaration of the same table wins: it is closer to the apply.
            for target in &module.targets {
                targets.retain(|t| (&t.schema, &t.table) != (&target.schema, &target.table));
                targets.push(target.clone());
            }
            loaded.push(module);
            hashes.push(hash);
        }
        Ok(Self {
            modules: loaded,
            hashes,
            targets,
            limits,
            stop: CancellationToken::new(),
        })
    }

    /// Makes the chain stop between guest calls once `token` is cancelled;
    /// the changes it did not reach end as [`TransformError::Stopped`].
    pub fn stop_when(&mut self, token: CancellationToken) {
        self.stop = token;
    }

    /// SHA-256 (hex) of each module file, in chain order.
    pub fn hashes(&self) -> &[String] {
        &self.hashes
    }

    /// The tables the chain's modules declare ahead, for the apply to create.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The limits its guests run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the chain has no modules and so passes changes through.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Runs one change through every module, in order, that applies to its source table.
    pub fn apply(&mut self, change: Change, ctx: &TxContext) -> Result<Vec<Change>, TransformError> {
        match self.apply_batch(vec![change], ctx).pop() {
            Some(outcome) => outcome.map_err(|refused| refused.error),
            None => Ok(Vec::new()),
        }
    }

    /// Runs changes of one transaction through the chain: each module that
    /// applies to a change's source table sees it, in chain order, and each
    /// module gets its changes in one call per [`Limits::batch`]. Returns one outcome
    /// per change, in order; a change that a module refuses or fails on is an
    /// error on its own, handed back as it came into the chain, and nothing
    /// derived from it goes further.
    ///
    /// A module limited to a table sees every change derived from that
    /// table's change, even after an earlier module renamed or routed it.
    pub fn apply_batch(&mut self, changes: Vec<Change>, ctx: &TxContext) -> Vec<Outcome> {
        let count = changes.len();
        if self.modules.is_empty() {
            return changes.into_iter().map(|c| Ok(vec![c])).collect();
        }
        // One module for every table, the common chain: its outcomes are the chain's.
        if let ([module], [hash]) = (self.modules.as_mut_slice(), self.hashes.as_slice())
            && module.spec.table.is_none()
        {
            let mut outcomes = Vec::with_capacity(count);
            let mut changes = changes.into_iter().peekable();
            while changes.peek().is_some() {
                let batch = changes.by_ref().take(self.limits.batch).collect();
                outcomes.extend(observed_call(module, hash, batch, ctx, &self.stop));
            }
            return outcomes;
        }
        // The source table of each change decides which scoped modules see it.
        let sources: Vec<(String, String)> = if self.modules.iter().any(|m| m.spec.table.is_some()) {
            changes.iter().map(|c| (c.schema.clone(), c.table.clone())).collect()
        } else {
            Vec::new()
        };
        // A change refused by a later module is handed back as it came in.
        let originals = changes.clone();
        let mut failed: Vec<Option<TransformError>> = (0..count).map(|_| None).collect();
        // Every change in flight, with the index of the change it came from.
        let mut items: Vec<(usize, Change)> = changes.into_iter().enumerate().collect();
        for (module, hash) in self.modules.iter_mut().zip(&self.hashes) {
            let applies = |origin: usize| match sources.get(origin) {
                Some((schema, table)) => module.spec.applies_to(schema, table),
                None => true,
            };
            let mut sent = Vec::new();
            let mut order = Vec::with_capacity(items.len());
            for (origin, change) in items {
                if failed[origin].is_some() {
                    continue;
                }
                if applies(origin) {
                    order.push((origin, None));
                    sent.push(change);
                } else {
                    order.push((origin, Some(change)));
                }
            }
            let mut results = Vec::with_capacity(sent.len());
            let mut sent = sent.into_iter().peekable();
            while sent.peek().is_some() {
                let batch = sent.by_ref().take(self.limits.batch).collect();
                results.extend(observed_call(module, hash, batch, ctx, &self.stop));
            }
            let mut results = results.into_iter();
            items = Vec::with_capacity(order.len());
            for (origin, passed) in order {
                match passed {
                    Some(change) => items.push((origin, change)),
                    None => match results.next() {
                        Some(Ok(changes)) => items.extend(changes.into_iter().map(|c| (origin, c))),
                        Some(Err(refused)) => {
                            failed[origin].get_or_insert(refused.error);
                        }
                        None => {
                            failed[origin].get_or_insert(TransformError::Failed {
                                module: module.name.clone(),
                                reason: "it gave no outcome for the change".to_owned(),
                            });
                        }
                    },
                }
            }
        }
        let mut outcomes: Vec<Outcome> = failed
            .into_iter()
            .zip(originals)
            .map(|(failure, change)| match failure {
                Some(error) => Err(Box::new(Refused { error, change })),
                None => Ok(Vec::new()),
            })
            .collect();
        for (origin, change) in items {
            if let Some(Ok(changes)) = outcomes.get_mut(origin) {
                changes.push(change);
            }
        }
        outcomes
    }
}

/// One call of `module` (whose file hashes to `hash`) on a batch, timed and its
/// failures counted under that hash. A shutdown's unreached changes are not failures.
fn observed_call(
    module: &mut Module,
    hash: &str,
    batch: Vec<Change>,
    ctx: &TxContext,
    stop: &CancellationToken,
) -> Vec<Outcome> {
    let started = Instant::now();
    let outcomes = module.call(batch, ctx, stop);
    crate::observe::transform_called(
        hash,
        started,
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err().map(|refused| &refused.error))
            .filter(|e| !matches!(e, TransformError::Stopped)),
    );
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use sha2::{Digest, Sha256};

    use crate::change::{Column, Op, Value};

    /// A guest component from `transforms/`; the tests need it built and say how.
    fn component(name: &str) -> PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../transforms/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm"));
        assert!(
            path.exists(),
            "{} is missing; build the transforms first: `cd transforms && cargo build --target wasm32-wasip2 --release`",
            path.display()
        );
        path
    }

    fn ctx() -> TxContext {
        TxContext {
            xid: 771,
            commit_lsn: "16/B374D848".parse().expect("lsn"),
            commit_time: "2024-05-01 12:00:00.123456+00".to_owned(),
        }
    }

    fn column(name: &str, pg_type: &str, value: Value) -> Column {
        Column {
            name: name.to_owned(),
            pg_type: pg_type.to_owned(),
            value,
        }
    }

    fn every_value() -> Vec<Column> {
        vec![
            column("n", "text", Value::Null),
            column("b", "boolean", Value::Bool(true)),
            column("i", "bigint", Value::Int(i64::MIN)),
            column("f", "double precision", Value::Float(-1.5e300)),
            column(
                "num",
                "numeric(30,10)",
                Value::Numeric("12345678901234567890.0123456789".into()),
            ),
            column("t", "character varying(60)", Value::Text("Repair laptop ✓".into())),
            column("by", "bytea", Value::Bytes(vec![0, 0xde, 0xad, 0xff])),
            column("j", "jsonb", Value::Json(r#"{"a": [1, 2]}"#.into())),
            column("d", "date", Value::Date("2024-05-01".into())),
            column("tm", "time without time zone", Value::Time("12:34:56.789".into())),
            column(
                "ts",
                "timestamp without time zone",
                Value::Timestamp("2024-05-01 12:34:56".into()),
            ),
            column(
                "tz",
                "timestamp with time zone",
                Value::Timestamptz("2024-05-01 10:34:56+00".into()),
            ),
            column("big", "text", Value::UnchangedToast),
        ]
    }

    fn change(op: Op, table: &str) -> Change {
        let key = vec![column("requestid", "integer", Value::Int(2))];
        let (columns, key) = match op {
            Op::Insert => (every_value(), Vec::new()),
            Op::Update => (every_value(), key),
            Op::Delete => (Vec::new(), key),
            Op::Truncate => (Vec::new(), Vec::new()),
        };
        Change {
            op,
            schema: "public".to_owned(),
            table: table.to_owned(),
            columns,
            key,
        }
    }

    #[test]
    fn identity_returns_every_change_unchanged() {
        let mut chain = TransformChain::load(&[component("identity")], &[]).expect("load identity");
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
            let input = change(op, "itrequests");
            let out = chain.apply(input.clone(), &ctx()).expect("apply");
            assert_eq!(out, vec![input]);
        }
    }

    #[test]
    fn empty_chain_passes_through() {
        let mut chain = TransformChain::load(&[], &[]).expect("empty chain");
        assert!(chain.is_empty());
        assert!(chain.hashes().is_empty());
        let input = change(Op::Update, "itrequests");
        assert_eq!(chain.apply(input.clone(), &ctx()).expect("apply"), vec![input]);
    }

    #[test]
    fn chain_of_two_identities_passes_through_and_hashes_each() {
        let identity = component("identity");
        let mut chain = TransformChain::load(&[identity.clone(), identity.clone()], &[]).expect("load");
        assert!(!chain.is_empty());
        let expected = hex::encode(Sha256::digest(std::fs::read(&identity).expect("read")));
        assert_eq!(chain.hashes(), [expected.clone(), expected]);
        let input = change(Op::Insert, "itrequests");
        assert_eq!(chain.apply(input.clone(), &ctx()).expect("apply"), vec![input]);
    }

    #[test]
    fn a_file_that_is_not_a_component_is_refused() {
        let dir = std::env::temp_dir().join(format!("wasmcdc-transform-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let text = dir.join("not-a-component.wasm");
        std::fs::write(&text, "this is text").expect("write");
        // A core module (magic and version 1) is wasm, but not a component.
        let core = dir.join("core-module.wasm");
        std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
        for path in [text, core] {
            let err = TransformChain::load(std::slice::from_ref(&path), &[])
                .err()
                .expect("refused");
            assert!(matches!(err, TransformError::NotComponent { .. }), "{err}");
            let message = err.to_string();
            assert!(
                !message.contains('\n')
                    && message.starts_with(&format!("'{}' is not a WebAssembly component (", path.display())),
                "{message}"
            );
            assert!(
                message.contains("cargo build --target wasm32-wasip2 --release"),
                "{message}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_missing_file_is_named() {
        let path = PathBuf::from("/nonexistent/transform.wasm");
        let err = TransformChain::load(std::slice::from_ref(&path), &[])
            .err()
            .expect("refused");
        assert!(matches!(err, TransformError::Missing(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/transform.wasm"), "{err}");
    }

    #[test]
    fn run_test_round_trips_lines() {
        let changes = [
            change(Op::Insert, "itrequests"),
            change(Op::Update, "itrequests"),
            change(Op::Delete, "itrequests"),
        ];
        let mut input = String::new();
        for c in &changes {
            input.push_str(&serde_json::to_string(c).expect("json"));
            input.push('\n');
        }
        input.push('\n');
        let mut output = Vec::new();
        run_test(
            &[component("identity")],
            &[],
            Limits::default(),
            input.as_bytes(),
            &mut output,
            None,
        )
        .expect("run_test");
        let output = String::from_utf8(output).expect("utf-8");
        let back: Vec<Change> = output
            .lines()
            .map(|line| serde_json::from_str(line).expect("change line"))
            .collect();
        assert_eq!(back, changes);
    }

    #[test]
    fn run_test_names_a_bad_line() {
        let good = serde_json::to_string(&change(Op::Insert, "itrequests")).expect("json");
        let input = format!("{good}\n{{\"op\": \"upsert\"}}\n");
        let err = run_test(
            &[component("identity")],
            &[],
            Limits::default(),
            input.as_bytes(),
            std::io::sink(),
            None,
        )
        .expect_err("error");
        assert!(matches!(err, TransformError::BadInput { line: 2, .. }), "{err}");
        assert!(err.to_string().starts_with("line 2 is not a change: "), "{err}");
    }

    #[test]
    fn guests_drop_fan_out_and_reject() {
        let mut chain = TransformChain::load(&[component("probe")], &[]).expect("load probe");
        assert!(
            chain
                .apply(change(Op::Insert, "drop"), &ctx())
                .expect("drop")
                .is_empty()
        );
        let fanned = chain.apply(change(Op::Insert, "fanout"), &ctx()).expect("fan out");
        let tables: Vec<_> = fanned.iter().map(|c| c.table.as_str()).collect();
        assert_eq!(tables, ["fanout", "fanout_copy"]);
        let err = chain.apply(change(Op::Insert, "reject"), &ctx()).expect_err("rejected");
        assert!(matches!(err, TransformError::Rejected { .. }), "{err}");
        assert!(
            err.to_string().ends_with("rejected the change: rejected on request"),
            "{err}"
        );
        assert_eq!(
            chain.apply(change(Op::Insert, "print"), &ctx()).expect("print").len(),
            1
        );
    }

    #[test]
    fn guest_output_goes_to_the_log() {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        );
        let mut chain = TransformChain::load(&[component("probe")], &[]).expect("load probe");
        // While only one subscriber is registered, tracing works out whether a
        // callsite is wanted from the default subscriber of whichever thread
        // asks. Another test, on a thread with no subscriber, that reaches the
        // guest-output callsite first during this one would cache it as
        // unwanted, and this test would see an empty log. With a second
        // subscriber registered for the whole test, tracing asks every
        // registered subscriber instead, and this test's always wants it. A
        // thread that started asking before that can still store its answer
        // after this test rebuilt the cache; no such answer can start later,
        // so one more rebuild settles it.
        let _witness = tracing::Dispatch::new(tracing_subscriber::fmt().with_writer(std::io::sink).finish());
        for _ in 0..3 {
            tracing::dispatcher::with_default(&subscriber, || {
                tracing::callsite::rebuild_interest_cache();
                chain.apply(change(Op::Insert, "print"), &ctx()).expect("print");
            });
            if !captured.0.lock().expect("log").is_empty() {
                break;
            }
        }
        let log = String::from_utf8(captured.0.lock().expect("log").clone()).expect("utf-8");
        assert!(
            log.contains("stdout from probe") && log.contains("stream=\"stdout\""),
            "{log}"
        );
        assert!(
            log.contains("stderr from probe") && log.contains("stream=\"stderr\""),
            "{log}"
        );
        assert!(log.contains("probe.wasm"), "{log}");
    }

    #[test]
    fn a_failing_guest_is_recreated_for_the_next_change() {
        let mut chain = TransformChain::load(&[component("probe")], &[]).expect("load probe");
        for (table, reason) in [
            ("panic", "it trapped"),
            ("spin", "it ran for more than 100 ms"),
            ("hog", "it needed more than its 64 MiB of memory"),
            ("recurse", "it overflowed its 512 KiB stack"),
            ("wide", "it returned 10001 changes"),
            ("flood", "it"),
            ("sleep", "it took more than 100 ms, waiting in a host call"),
        ] {
            let err = chain.apply(change(Op::Insert, table), &ctx()).expect_err("failure");
            assert!(matches!(err, TransformError::Failed { .. }), "{table}: {err}");
            let message = err.to_string();
            assert!(message.contains(&format!("failed: {reason}")), "{table}: {message}");
            assert!(message.ends_with("; the change was not transformed"), "{message}");
            let next = change(Op::Update, "itrequests");
            assert_eq!(chain.apply(next.clone(), &ctx()).expect("after failure"), vec![next]);
        }
    }

    #[test]
    fn a_guest_waiting_in_the_host_is_abandoned_at_its_deadline() {
        let mut chain = TransformChain::load(&[component("probe")], &[]).expect("load probe");
        // The clock subscription and poll behind a sleep: bounded like guest code.
        let started = std::time::Instant::now();
        let err = chain.apply(change(Op::Insert, "sleep"), &ctx()).expect_err("abandoned");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert!(matches!(err, TransformError::Failed { .. }), "{err}");
        // stdin is empty and closed: a read returns at once.
        let read = chain.apply(change(Op::Insert, "stdin"), &ctx()).expect("read");
        assert_eq!(text_of(&read[0], "outcome"), "stdin=0");
        // The same for `init`: the module cannot start, with the reason.
        let started = std::time::Instant::now();
        let err = TransformChain::load(&[component("probe")], &config(&["probe.sleep-in-init=yes"]))
            .err()
            .expect("init abandoned");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert!(matches!(err, TransformError::Start { .. }), "{err}");
        assert!(err.to_string().contains("waiting in a host call"), "{err}");
    }

    fn config(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    fn scoped(table: &str, name: &str) -> PathBuf {
        PathBuf::from(format!("{table}={}", component(name).display()))
    }

    fn text_of(change: &Change, column: &str) -> String {
        match &change.columns.iter().find(|c| c.name == column).expect("column").value {
            Value::Text(s) => s.clone(),
            other => panic!("{column} is not text: {other:?}"),
        }
    }

    #[test]
    fn module_specs_name_a_table_or_not() {
        let plain = ModuleSpec::parse(Path::new("dir/m.wasm")).expect("plain");
        assert_eq!((plain.path.as_path(), plain.table), (Path::new("dir/m.wasm"), None));
        let spec = ModuleSpec::parse(Path::new("public.orders=m.wasm")).expect("scoped");
        assert_eq!(spec.path, Path::new("m.wasm"));
        assert_eq!(spec.table, TableName::parse("public.orders"));
        for path in ["./a.b=c.wasm", "x=y.wasm"] {
            let spec = ModuleSpec::parse(Path::new(path)).expect("path with =");
            assert_eq!((spec.path.as_path(), spec.table), (Path::new(path), None));
        }
        let err = ModuleSpec::parse(Path::new("public.orders=")).expect_err("no path");
        assert!(matches!(err, TransformError::BadScope(_)), "{err}");
        assert_eq!(module_name(Path::new("/t/mask_columns.wasm")), "mask_columns");
    }

    #[test]
    fn config_is_split_by_module_name() {
        let names = config(&["mask_columns", "rename", "orders.v2", "orders"]);
        let split = split_config(
            &names,
            &config(&[
                "mask-columns.columns=a,b",
                "rename.column.old=new=x",
                "orders.v2.k=2",
                "orders.k=1",
            ]),
        )
        .expect("split");
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(split[0], [pair("columns", "a,b")]);
        assert_eq!(split[1], [pair("column.old", "new=x")]);
        assert_eq!(split[2], [pair("k", "2")]);
        assert_eq!(split[3], [pair("k", "1")]);
        let err = split_config(&names, &config(&["renam.table=x"])).expect_err("unknown");
        assert!(matches!(err, TransformError::UnknownModule { .. }), "{err}");
        assert!(err.to_string().contains("mask_columns, rename"), "{err}");
        for bad in ["rename", "rename.=x", "table=x"] {
            assert!(split_config(&names, &config(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_module_gets_its_own_configuration() {
        let mut chain = TransformChain::load(
            &[component("rename"), component("mask_columns")],
            &config(&[
                "rename.table=requests",
                "rename.column.requestid=id",
                "mask-columns.columns=t",
                "mask-columns.mode=redact",
            ]),
        )
        .expect("load");
        let out = chain.apply(change(Op::Update, "itrequests"), &ctx()).expect("apply");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].table, "requests");
        assert_eq!(out[0].key[0].name, "id");
        assert_eq!(text_of(&out[0], "t"), "***");
    }

    #[test]
    fn a_module_that_refuses_its_configuration_fails_to_load() {
        let err = TransformChain::load(&[component("mask_columns")], &[])
            .err()
            .expect("refused");
        assert!(matches!(err, TransformError::Init { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("mask_columns.wasm' refused its configuration: set columns"),
            "{message}"
        );
        let err = TransformChain::load(&[component("rename")], &config(&["mask-columns.columns=t"]))
            .err()
            .expect("unknown module");
        assert!(matches!(err, TransformError::UnknownModule { .. }), "{err}");
    }

    #[test]
    fn a_scoped_module_sees_only_its_source_table() {
        // The rename runs first and renames every itrequests change; the
        // scoped mask still sees it, because scope follows the source table.
        let mut chain = TransformChain::load(
            &[
                scoped("public.itrequests", "rename"),
                scoped("public.itrequests", "mask_columns"),
                component("identity"),
            ],
            &config(&["rename.table=renamed", "mask_columns.columns=t"]),
        )
        .expect("load");
        assert_eq!(chain.hashes().len(), 3);
        let out = chain.apply(change(Op::Insert, "itrequests"), &ctx()).expect("scoped");
        assert_eq!(out[0].table, "renamed");
        assert_eq!(text_of(&out[0], "t").len(), 64);
        let other = change(Op::Insert, "orders");
        assert_eq!(chain.apply(other.clone(), &ctx()).expect("unscoped"), vec![other]);
        let elsewhere = Change {
            schema: "sales".to_owned(),
            ..change(Op::Insert, "itrequests")
        };
        assert_eq!(
            chain.apply(elsewhere.clone(), &ctx()).expect("other schema"),
            vec![elsewhere]
        );
    }

    #[test]
    fn a_chain_scoped_away_from_a_change_passes_it_through() {
        let mut chain = TransformChain::load(&[scoped("public.orders", "probe")], &[]).expect("load");
        // The probe would drop this change; it is not for the probe's table.
        let input = change(Op::Insert, "drop");
        assert_eq!(chain.apply(input.clone(), &ctx()).expect("apply"), vec![input]);
    }

    #[test]
    fn check_reports_hash_world_exports_imports_and_init() {
        let path = component("identity");
        let report = check(&path).expect("valid");
        let expected = hex::encode(Sha256::digest(std::fs::read(&path).expect("read")));
        assert_eq!(report.hash, expected);
        assert_eq!(report.world, "wasmcdc:transform@0.3.0");
        assert!(report.exports.contains(&"init (function)".to_owned()), "{report}");
        assert!(report.exports.contains(&"transform (function)".to_owned()), "{report}");
        for interface in ["wasmcdc:transform/types@0.3.0", "wasmcdc:transform/rows@0.3.0"] {
            assert!(report.imports.iter().any(|i| i.starts_with(interface)), "{report}");
        }
        assert_eq!(report.init, Ok(Vec::new()));
        let text = report.to_string();
        assert!(text.contains("world: wasmcdc:transform@0.3.0 transformer"), "{text}");
        assert!(text.contains("init: accepts an empty configuration"), "{text}");
        let sent = check(&component("identity_v2")).expect("a 0.2.0 component is valid");
        assert_eq!(sent.world, "wasmcdc:transform@0.2.0");
        let old = check(&component("probe")).expect("a 0.1.0 component is valid");
        assert_eq!(old.world, "wasmcdc:transform@0.1.0");
        assert!(
            old.to_string()
                .ends_with("valid: it fits the wasmcdc:transform@0.1.0 `transformer` world")
        );
        let report = check(&component("mask_columns")).expect("valid but needs config");
        assert!(report.init.is_err());
        assert!(
            report.to_string().contains("--transform-config mask_columns.KEY=VALUE"),
            "{report}"
        );
        let err = check(Path::new("/nonexistent/m.wasm")).expect_err("missing");
        assert!(matches!(err, TransformError::Missing(_)), "{err}");
    }

    #[test]
    fn every_world_transforms_alike() {
        // The probe is built against 0.1.0 and passes other tables through;
        // identity_v2 is identity on 0.2.0, identity is on 0.3.0.
        let mut old = TransformChain::load(&[component("probe")], &[]).expect("load probe");
        let mut sent = TransformChain::load(&[component("identity_v2")], &[]).expect("load identity_v2");
        let mut batched = TransformChain::load(&[component("identity")], &[]).expect("load identity");
        let mut widened = change(Op::Insert, "itrequests");
        widened.columns.push(column("added", "integer", Value::Int(5)));
        let batch = vec![
            change(Op::Insert, "itrequests"),
            change(Op::Update, "itrequests"),
            change(Op::Delete, "itrequests"),
            // A table's column added mid-stream, and the same name in another schema.
            widened,
            Change {
                schema: "sales".to_owned(),
                ..change(Op::Update, "itrequests")
            },
            change(Op::Truncate, "itrequests"),
            change(Op::Insert, "orders"),
        ];
        let expected: Vec<Vec<Change>> = batch.iter().map(|c| vec![c.clone()]).collect();
        for chain in [&mut old, &mut sent, &mut batched] {
            let out: Vec<Vec<Change>> = chain
                .apply_batch(batch.clone(), &ctx())
                .into_iter()
                .map(|o| o.expect("passed"))
                .collect();
            assert_eq!(out, expected);
            // Tables already sent serve the next batch.
            let again = chain.apply_batch(batch.clone(), &ctx());
            assert_eq!(again.len(), batch.len());
            assert_eq!(
                again.into_iter().map(|o| o.expect("passed")).collect::<Vec<_>>(),
                expected
            );
        }
    }

    #[test]
    fn wide_rows_and_large_batches_keep_their_own_values() {
        // The instance keeps the value lists it lends for the next call, but
        // only narrow ones and only so many. Rows wider than that, and more
        // lists in one call than it keeps (a batch of 1 000 changes is one
        // call that lends 2 000), mix here with rows that reuse kept lists,
        // over several calls: every change must come back as it was.
        let limits = Limits {
            batch: 1000,
            ..Limits::default()
        };
        let mut chain = TransformChain::load_with(&[component("identity_v2")], &[], limits).expect("load identity_v2");
        let wide = |n: i64| Change {
            columns: (0..100)
                .map(|i| column(&format!("c{i}"), "bigint", Value::Int(n * 1000 + i)))
                .collect(),
            ..change(Op::Insert, "wide")
        };
        let narrow = |n: i64| Change {
            columns: vec![
                column("requestid", "integer", Value::Int(n)),
                column("details", "text", Value::Text(format!("row {n}"))),
            ],
            key: vec![column("requestid", "integer", Value::Int(n))],
            ..change(Op::Update, "itrequests")
        };
        for round in 0..3 {
            let batch: Vec<Change> = (0..1000)
                .map(|n| if n % 7 == round { wide(n) } else { narrow(n) })
                .collect();
            let out: Vec<Change> = chain
                .apply_batch(batch.clone(), &ctx())
                .into_iter()
                .flat_map(|o| o.expect("passed"))
                .collect();
            assert!(out == batch, "round {round}: a change came back with other values");
        }
    }

    #[test]
    fn a_batch_isolates_the_change_that_fails() {
        let mut chain = TransformChain::load(&[component("probe_batched")], &[]).expect("load");
        let tables = [
            "itrequests",
            "panic",
            "orders",
            "reject",
            "upper",
            "drop",
            "sleep",
            "spin",
            "itrequests",
        ];
        let batch: Vec<Change> = tables.iter().map(|t| change(Op::Insert, t)).collect();
        let started = std::time::Instant::now();
        let out = chain.apply_batch(batch.clone(), &ctx());
        // One deadline for the batch, then one per change that fails alone.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(out.len(), tables.len());
        let failure = |i: usize| match &out[i] {
            Err(e) => e.to_string(),
            Ok(changes) => panic!("{} passed: {changes:?}", tables[i]),
        };
        assert_eq!(out[0].as_ref().expect("first"), &vec![batch[0].clone()]);
        assert!(failure(1).contains("failed: it trapped"), "{}", failure(1));
        assert_eq!(out[2].as_ref().expect("orders"), &vec![batch[2].clone()]);
        assert!(
            failure(3).ends_with("rejected the change: rejected on request"),
            "{}",
            failure(3)
        );
        let upper = out[4].as_ref().expect("upper");
        assert_eq!(text_of(&upper[0], "t"), "REPAIR LAPTOP ✓");
        assert_eq!(upper[0].columns.len(), batch[4].columns.len());
        assert!(out[5].as_ref().expect("drop").is_empty());
        assert!(failure(6).contains("waiting in a host call"), "{}", failure(6));
        assert!(failure(7).contains("it ran for more than 100 ms"), "{}", failure(7));
        // Each refused change comes back as it was given, for its dead letter.
        for i in [1, 3, 6, 7] {
            assert_eq!(out[i].as_ref().expect_err("refused").change, batch[i], "{}", tables[i]);
        }
        assert_eq!(out[8].as_ref().expect("last"), &vec![batch[8].clone()]);
        // A failed batch leaves a working instance behind.
        let next = change(Op::Update, "orders");
        assert_eq!(chain.apply(next.clone(), &ctx()).expect("after"), vec![next]);
    }

    #[test]
    fn a_row_read_after_its_call_fails_its_reader() {
        // `hold` keeps its change unread and drops it; `stale` reads the kept
        // change in a later call, where its id names no row of the call.
        let mut chain = TransformChain::load(&[component("probe_batched")], &[]).expect("load");
        let held = chain.apply_batch(vec![change(Op::Insert, "hold")], &ctx());
        assert!(held[0].as_ref().expect("hold").is_empty());
        let stale = chain.apply_batch(vec![change(Op::Insert, "stale")], &ctx());
        let failure = stale[0].as_ref().expect_err("a stale read passed").to_string();
        assert!(
            failure.contains("which is not in the call under way; a row can be read only during the `transform` call that delivered it"),
            "{failure}"
        );
        // The failed instance is replaced, and rows of later calls read as usual.
        let batch = vec![change(Op::Insert, "itrequests"), change(Op::Insert, "upper")];
        let out = chain.apply_batch(batch.clone(), &ctx());
        assert_eq!(out[0].as_ref().expect("first"), &vec![batch[0].clone()]);
        assert_eq!(text_of(&out[1].as_ref().expect("upper")[0], "t"), "REPAIR LAPTOP ✓");
        // In a batch of several, the stale read fails the call, and the rows
        // are transformed again one at a time on fresh instances, which hold
        // nothing: what the failed instance kept is gone, and nothing else.
        chain.apply_batch(vec![change(Op::Insert, "hold")], &ctx());
        let batch = vec![change(Op::Insert, "itrequests"), change(Op::Insert, "stale")];
        let out = chain.apply_batch(batch.clone(), &ctx());
        assert_eq!(out[0].as_ref().expect("first"), &vec![batch[0].clone()]);
        assert_eq!(
            out[1].as_ref().expect("stale, on a fresh instance"),
            &vec![batch[1].clone()]
        );
    }

    #[test]
    fn a_change_refused_further_down_a_chain_comes_back_as_it_came_in() {
        // The first module routes every change to table `reject`, which the
        // second rejects: the refused change is the chain's input, not the
        // routed one.
        let mut chain = TransformChain::load(
            &[component("rename"), component("probe_batched")],
            &config(&["rename.table=reject"]),
        )
        .expect("load");
        let batch = vec![change(Op::Insert, "itrequests"), change(Op::Update, "orders")];
        let out = chain.apply_batch(batch.clone(), &ctx());
        for (sent, outcome) in batch.iter().zip(&out) {
            let refused = outcome.as_ref().expect_err("rejected");
            assert!(
                refused
                    .to_string()
                    .ends_with("rejected the change: rejected on request"),
                "{refused}"
            );
            assert_eq!(&refused.change, sent);
        }
    }

    #[test]
    fn each_row_reads_its_own_values_and_key() {
        // Rows that differ in every read: `route` reads values and key and
        // sends them back whole, `upper` reads and edits the values, and the
        // rest are kept unread, interleaved so that an id off by one, or
        // values and key swapped, shows.
        let mut chain = TransformChain::load(&[component("probe_batched")], &[]).expect("load");
        let batch: Vec<Change> = ["route", "upper", "itrequests", "route", "upper", "route"]
            .iter()
            .enumerate()
            .map(|(i, table)| {
                let mut c = change(Op::Update, table);
                c.key[0].value = Value::Int(i as i64);
                for column in &mut c.columns {
                    if column.name == "t" {
                        column.value = Value::Text(format!("row {i}"));
                    }
                }
                c
            })
            .collect();
        for round in 0..2 {
            let out = chain.apply_batch(batch.clone(), &ctx());
            for (i, (sent, outcome)) in batch.iter().zip(out).enumerate() {
                let got = outcome.expect("passed").pop().expect("one change");
                assert_eq!(got.key, sent.key, "round {round}, row {i}: key");
                let expected = match sent.table.as_str() {
                    "upper" => format!("ROW {i}"),
                    _ => format!("row {i}"),
                };
                assert_eq!(text_of(&got, "t"), expected, "round {round}, row {i}");
                let table = if sent.table == "route" {
                    "routed"
                } else {
                    sent.table.as_str()
                };
                assert_eq!(got.table, table);
                assert_eq!(got.columns.len(), sent.columns.len());
            }
        }
    }

    #[test]
    fn a_module_declares_its_target() {
        let chain = TransformChain::load(
            &[component("rename")],
            &config(&[
                "rename.schema=archive",
                "rename.table=tickets",
                "rename.target.id=bigint",
                "rename.target.summary=text",
                "rename.target-key=id",
            ]),
        )
        .expect("load");
        let target = &chain.targets()[0];
        assert_eq!((target.schema.as_str(), target.table.as_str()), ("archive", "tickets"));
        assert_eq!(target.key, ["id"]);
        let types: Vec<_> = target
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.pg_type.as_str()))
            .collect();
        assert_eq!(types, [("id", "bigint"), ("summary", "text")]);
    }

    #[test]
    fn run_test_reads_wal2json_lines() {
        let input = concat!(
            r#"{"action":"B","xid":731,"timestamp":"2026-11-26 14:59:09.236558+00","lsn":"0/21AF548","nextlsn":"0/21AFAE0"}"#,
            "\n",
            r#"{"action":"I","xid":731,"schema":"public","table":"itrequests","columns":[{"name":"requestid","type":"integer","typeoid":23,"value":1},{"name":"details","type":"character varying(60)","typeoid":1043,"value":"Reset"}]}"#,
            "\n",
            r#"{"action":"U","schema":"public","table":"itrequests","columns":[{"name":"requestid","type":"integer","typeoid":23,"value":1},{"name":"details","type":"character varying(60)","typeoid":1043,"value":"Done"}],"identity":[{"name":"requestid","type":"integer","typeoid":23,"value":1}]}"#,
            "\n",
            r#"{"action":"D","schema":"public","table":"itrequests","identity":[{"name":"requestid","type":"integer","value":1}]}"#,
            "\n",
            r#"{"action":"T","schema":"public","table":"itrequests"}"#,
            "\n",
            r#"{"action":"C"}"#,
            "\n",
            r#"{"action":"B"}"#,
            "\n",
        );
        let mut output = Vec::new();
        run_test(
            &[component("identity")],
            &[],
            Limits::default(),
            input.as_bytes(),
            &mut output,
            None,
        )
        .expect("run_test");
        let output = String::from_utf8(output).expect("utf-8");
        let back: Vec<Change> = output
            .lines()
            .map(|line| serde_json::from_str(line).expect("change line"))
            .collect();
        let ops: Vec<Op> = back.iter().map(|c| c.op).collect();
        assert_eq!(ops, [Op::Insert, Op::Update, Op::Delete, Op::Truncate]);
        assert_eq!(back[0].columns[0].value, Value::Int(1));
        assert_eq!(back[1].key[0].name, "requestid");
        let err = run_test(
            &[component("identity")],
            &[],
            Limits::default(),
            r#"{"action":"X"}"#.as_bytes(),
            std::io::sink(),
            None,
        )
        .expect_err("unknown action");
        assert!(err.to_string().starts_with("line 1 is not a change: "), "{err}");
    }

    #[test]
    fn run_test_types_by_the_catalog_when_asked() {
        struct Catalog(Vec<String>);
        impl TypeOids for Catalog {
            fn oid(&mut self, name: &str) -> Result<u32, String> {
                self.0.push(name.to_owned());
                match name {
                    "posint" => Ok(23),
                    "mood" => Ok(16_400),
                    other => Err(format!("type \"{other}\" does not exist")),
                }
            }
        }
        let line = concat!(
            r#"{"action":"I","schema":"public","table":"t","columns":["#,
            r#"{"name":"n","type":"posint","value":5},{"name":"m","type":"mood","value":"happy"},"#,
            r#"{"name":"k","type":"integer","typeoid":23,"value":7}]}"#,
            "\n"
        );
        let by_name = |types: Option<&mut dyn TypeOids>| -> Change {
            let mut output = Vec::new();
            run_test(
                &[component("identity")],
                &[],
                Limits::default(),
                line.as_bytes(),
                &mut output,
                types,
            )
            .expect("run_test");
            serde_json::from_slice(&output).expect("change")
        };
        // By name alone, a domain over integer is text; the catalog knows better.
        assert_eq!(by_name(None).columns[0].value, Value::Text("5".into()));
        let mut catalog = Catalog(Vec::new());
        let typed = by_name(Some(&mut catalog));
        assert_eq!(typed.columns[0].value, Value::Int(5));
        assert_eq!(typed.columns[1].value, Value::Text("happy".into()));
        assert_eq!(typed.columns[2].value, Value::Int(7));
        assert_eq!(catalog.0, ["posint", "mood"], "columns with an OID are not looked up");
        let unknown =
            r#"{"action":"I","schema":"public","table":"t","columns":[{"name":"x","type":"nope","value":1}]}"#;
        let err = run_test(
            &[component("identity")],
            &[],
            Limits::default(),
            unknown.as_bytes(),
            std::io::sink(),
            Some(&mut Catalog(Vec::new())),
        )
        .expect_err("unknown type");
        assert!(err.to_string().contains("type \"nope\" does not exist"), "{err}");
    }

    #[test]
    fn the_chain_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<TransformChain>();
    }
}
