//! The transform chain: sandboxed WebAssembly components, run in order, that
//! map each change to zero, one or several changes.
//!
//! This is the only module that sees the types generated from `wit/`; it
//! converts them to and from [`crate::change`] at its boundary.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub mod watch;

use crate::catalog::TableName;
use crate::change::{Change, Column, Lsn, Op, TxContext, Value};
use crate::source::wal2json::{self, Event};

mod wit {
    // Async, so that a guest waiting in a host call (a sleep, a poll, a read)
    // can be abandoned at its deadline: see `Module::run`.
    wasmtime::component::bindgen!({ path: "../wit/v0.1", world: "transformer", exports: { default: async } });
    pub use self::wasmcdc::transform::types::*;
}

/// Stack size for host threads that call [`TransformChain::apply`]: well above the wasm stack.
pub const THREAD_STACK: usize = 8 << 20;
/// Wasm stack per call; exhausting the host's own stack would abort the process.
const MAX_WASM_STACK: usize = 512 * 1024;
/// How often the engine's epoch advances.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Epoch ticks a single guest call may run: about 100 ms.
const CALL_TICKS: u64 = 10;
/// Wall-clock time a single guest call may take, waiting in host calls included.
const CALL_LIMIT: Duration = Duration::from_millis(EPOCH_TICK.as_millis() as u64 * CALL_TICKS);
/// Linear memory per instance.
const MEMORY_LIMIT: usize = 64 << 20;
/// Enough for a component's core instances, tables and memories, and no more.
const INSTANCE_LIMIT: usize = 16;
const TABLE_LIMIT: usize = 16;
const TABLE_ELEMENTS: usize = 20_000;
const MEMORY_COUNT: usize = 4;
/// Guest output kept per stream and call; the rest is dropped, not trapped on.
const OUTPUT_LIMIT: usize = 64 * 1024;
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

/// Changes one call may return: a fan-out larger than this is a runaway module.
const MAX_RESULT_CHANGES: usize = 10_000;
/// Bytes of text and binary values one call may return.
const MAX_RESULT_BYTES: usize = 32 << 20;

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
        "transform '{module}' does not fit the wasmcdc:transform@0.1.0 `transformer` world ({reason}); export `init` and `transform` and import nothing beyond WASI 0.2 without files or network"
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
}

impl TransformChain {
    /// Compiles and starts each module in chain order; an empty list passes changes through unchanged.
    ///
    /// `modules` are `--transform` entries (`PATH` or `SCHEMA.TABLE=PATH`);
    /// `config` are `--transform-config` entries (`MODULE.KEY=VALUE`), each
    /// given to the `init` of every module of that name.
    pub fn load(modules: &[PathBuf], config: &[String]) -> Result<Self, TransformError> {
        let specs = modules
            .iter()
            .map(|entry| ModuleSpec::parse(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = specs.iter().map(|spec| module_name(&spec.path)).collect();
        let configs = split_config(&names, config)?;
        let mut loaded = Vec::with_capacity(specs.len());
        let mut hashes = Vec::with_capacity(specs.len());
        for (spec, config) in specs.into_iter().zip(configs) {
            let (module, hash) = Module::load(spec, config)?;
            loaded.push(module);
            hashes.push(hash);
        }
        Ok(Self {
            modules: loaded,
            hashes,
        })
    }

    /// SHA-256 (hex) of each module file, in chain order.
    pub fn hashes(&self) -> &[String] {
        &self.hashes
    }

    /// Whether the chain has no modules and so passes changes through.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Runs one change through every module, in order, that applies to its source table.
    ///
    /// A module limited to a table sees every change derived from that
    /// table's change, even after an earlier module renamed or routed it.
    pub fn apply(&mut self, change: Change, ctx: &TxContext) -> Result<Vec<Change>, TransformError> {
        let (schema, table) = (change.schema.as_str(), change.table.as_str());
        let mut active: Vec<&mut Module> = self
            .modules
            .iter_mut()
            .filter(|module| module.spec.applies_to(schema, table))
            .collect();
        if active.is_empty() {
            return Ok(vec![change]);
        }
        let ctx = wit::TxContext::from(ctx);
        let mut changes = vec![wit::Change::from(change)];
        for module in &mut active {
            let mut next = Vec::with_capacity(changes.len());
            for change in &changes {
                next.extend(module.call(change, &ctx)?);
            }
            changes = next;
        }
        Ok(changes.into_iter().map(Change::from).collect())
    }
}

/// What `wasmcdc transform check` learned about a module that fits the world.
#[derive(Debug)]
pub struct CheckReport {
    /// The module file.
    pub path: PathBuf,
    /// SHA-256 (hex) of the file, as messages record it.
    pub hash: String,
    /// Each export as `name (kind)`.
    pub exports: Vec<String>,
    /// Each import as `name (kind)`.
    pub imports: Vec<String>,
    /// What `init` answered to an empty configuration.
    pub init: Result<(), String>,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "module: {}", self.path.display())?;
        writeln!(f, "sha256: {}", self.hash)?;
        writeln!(f, "exports:")?;
        for export in &self.exports {
            writeln!(f, "  {export}")?;
        }
        writeln!(f, "imports:")?;
        for import in &self.imports {
            writeln!(f, "  {import}")?;
        }
        match &self.init {
            Ok(()) => writeln!(f, "init: accepts an empty configuration")?,
            Err(message) => writeln!(
                f,
                "init: needs configuration (with none it answered: {message}); give it with --transform-config {}.KEY=VALUE",
                module_name(&self.path)
            )?,
        }
        write!(f, "valid: it fits the wasmcdc:transform@0.1.0 `transformer` world")
    }
}

/// Validates a module against the WIT world: compiles it, starts it, and
/// calls `init` with no configuration. A module that refuses an empty
/// configuration is still valid; the report says so.
pub fn check(path: &Path) -> Result<CheckReport, TransformError> {
    let spec = ModuleSpec {
        path: path.to_owned(),
        table: None,
    };
    let (component, pre, hash) = Module::compile(&spec.path)?;
    let module = Module {
        name: spec.path.display().to_string(),
        spec,
        config: Vec::new(),
        pre,
        instance: None,
        runtime: GuestRuntime::new()?,
    };
    let init = match module.start() {
        Ok(_) => Ok(()),
        Err(TransformError::Init { message, .. }) => Err(message),
        Err(e) => return Err(e),
    };
    let engine = engine()?;
    let ty = component.component_type();
    let describe =
        |name: &str, item: &wasmtime::component::types::ComponentItem| format!("{name} ({})", item_kind(item));
    Ok(CheckReport {
        path: path.to_owned(),
        hash,
        exports: ty
            .exports(engine)
            .map(|(name, item)| describe(name, &item.ty))
            .collect(),
        imports: ty
            .imports(engine)
            .map(|(name, item)| describe(name, &item.ty))
            .collect(),
        init,
    })
}

/// A component item's kind, in words.
fn item_kind(item: &wasmtime::component::types::ComponentItem) -> &'static str {
    use wasmtime::component::types::ComponentItem;
    match item {
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::CoreFunc(_) => "core function",
        ComponentItem::Module(_) => "core module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// Offline trial: reads changes, one per line, and writes each resulting change as a JSON line.
///
/// A line is either a change in the host's JSON form (the serde form of
/// [`Change`]) or a wal2json format-version 2 line as `pg_recvlogical`
/// prints it. A wal2json `B` line sets the transaction context that guests
/// see for the changes after it; `C` and `M` lines are skipped.
pub fn run_test(
    modules: &[PathBuf],
    config: &[String],
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), TransformError> {
    let mut chain = TransformChain::load(modules, config)?;
    // Trial changes have no source transaction unless a wal2json B line gives
    // one; guests see a fixed, recognisable one.
    let mut ctx = TxContext {
        xid: 0,
        commit_lsn: Lsn(0),
        commit_time: "1970-01-01 00:00:00+00".to_owned(),
    };
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(TransformError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TransformError::BadInput { line: line_no, reason };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let change = if object.contains_key("action") {
            match wal2json::decode(line.as_bytes()) {
                // Without the table's column list, only a whole old row (REPLICA
                // IDENTITY FULL) tells what an update left out.
                Ok(Event::Change { mut change, old_row }) => {
                    wal2json::complete_update(&mut change, old_row, &[]);
                    change
                }
                Ok(Event::Begin {
                    xid,
                    commit_lsn,
                    commit_time,
                }) => {
                    ctx = TxContext {
                        xid,
                        commit_lsn,
                        commit_time,
                    };
                    continue;
                }
                Ok(Event::Commit { .. } | Event::Message) => continue,
                // B and C lines lack LSNs unless include-lsn is on; they carry no change.
                Err(_) if matches!(object["action"].as_str(), Some("B" | "C")) => continue,
                Err(e) => return Err(bad(e.to_string())),
            }
        } else {
            serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| bad(e.to_string()))?
        };
        let changes = chain.apply(change, &ctx).map_err(|e| TransformError::AtLine {
            line: line_no,
            error: Box::new(e),
        })?;
        for change in changes {
            serde_json::to_writer(&mut output, &change).map_err(|e| TransformError::Write(e.into()))?;
            output.write_all(b"\n").map_err(TransformError::Write)?;
        }
    }
    output.flush().map_err(TransformError::Write)
}

/// One compiled component and its live instance.
struct Module {
    name: String,
    spec: ModuleSpec,
    /// What `init` receives, on the first start and on every restart.
    config: Vec<(String, String)>,
    pre: wit::TransformerPre<Guest>,
    /// `None` after a failure: the next call starts a fresh instance, because
    /// a trapped instance cannot be entered again.
    instance: Option<Instance>,
    /// Drives guest calls, with the timers that WASI clocks and the call deadline use.
    runtime: GuestRuntime,
}

impl Module {
    fn load(spec: ModuleSpec, config: Vec<(String, String)>) -> Result<(Self, String), TransformError> {
        let (_, pre, hash) = Self::compile(&spec.path)?;
        let mut module = Self {
            name: spec.path.display().to_string(),
            spec,
            config,
            pre,
            instance: None,
            runtime: GuestRuntime::new()?,
        };
        // Starting it now reports a module that cannot run at load time, not on the first change.
        module.instance = Some(module.start()?);
        Ok((module, hash))
    }

    /// Reads, hashes and compiles a component, and links it against the host.
    fn compile(path: &Path) -> Result<(Component, wit::TransformerPre<Guest>, String), TransformError> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TransformError::Missing(path.to_owned()),
            _ => TransformError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        })?;
        let hash = hex::encode(Sha256::digest(&bytes));
        let engine = engine()?;
        let not_component = |reason: String| TransformError::NotComponent {
            path: path.to_owned(),
            reason,
        };
        if !bytes.starts_with(b"\0asm") {
            return Err(not_component("the file is not WebAssembly".to_owned()));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(not_component(
                "it is a core module, as built for wasm32-unknown-unknown or wasm32-wasip1".to_owned(),
            ));
        }
        // Compiled from the bytes just hashed, so the hash names exactly what runs.
        let component = Component::from_binary(engine, &bytes).map_err(|e| not_component(error_text(&e)))?;
        let name = path.display().to_string();
        let incompatible = |e: wasmtime::Error| TransformError::Incompatible {
            module: name.clone(),
            reason: error_text(&e),
        };
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(incompatible)?;
        let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
        let pre = wit::TransformerPre::new(pre).map_err(incompatible)?;
        Ok((component, pre, hash))
    }

    fn start(&self) -> Result<Instance, TransformError> {
        let stdout = GuestOutput::default();
        let stderr = GuestOutput::default();
        // The defaults already deny files, environment, arguments and stdin;
        // sockets are switched off outright.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(MEMORY_LIMIT)
            .table_elements(TABLE_ELEMENTS)
            .instances(INSTANCE_LIMIT)
            .tables(TABLE_LIMIT)
            .memories(MEMORY_COUNT)
            .build();
        let guest = Guest {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                inner: limits,
                memory_denied: false,
            },
        };
        let mut store = Store::new(engine()?, guest);
        store.limiter(|guest| &mut guest.limits);
        // Instantiation runs the guest's start code, which needs a deadline too.
        store.set_epoch_deadline(CALL_TICKS);
        let started = self.runtime.run(self.pre.instantiate_async(&mut store));
        let mut instance = match started {
            Some(Ok(bindings)) => Instance {
                store,
                bindings,
                stdout,
                stderr,
            },
            failed => {
                let reason = match failed {
                    Some(Err(e)) => describe_failure(&self.name, &e, &store),
                    _ => waited_too_long(),
                };
                log_output(&self.name, &stdout, &stderr);
                return Err(TransformError::Start {
                    module: self.name.clone(),
                    reason,
                });
            }
        };
        instance.store.set_epoch_deadline(CALL_TICKS);
        let result = self
            .runtime
            .run(instance.bindings.call_init(&mut instance.store, &self.config));
        instance.log_output(&self.name);
        match result {
            Some(Ok(Ok(()))) => Ok(instance),
            Some(Ok(Err(message))) => Err(TransformError::Init {
                module: self.name.clone(),
                message,
            }),
            Some(Err(e)) => Err(TransformError::Start {
                module: self.name.clone(),
                reason: describe_failure(&self.name, &e, &instance.store),
            }),
            None => Err(TransformError::Start {
                module: self.name.clone(),
                reason: waited_too_long(),
            }),
        }
    }

    fn call(&mut self, change: &wit::Change, ctx: &wit::TxContext) -> Result<Vec<wit::Change>, TransformError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => self.instance.insert(self.start()?),
        };
        instance.store.data_mut().limits.memory_denied = false;
        instance.store.set_epoch_deadline(CALL_TICKS);
        let result = self
            .runtime
            .run(instance.bindings.call_transform(&mut instance.store, change, ctx));
        instance.log_output(&self.name);
        let Some(result) = result else {
            self.instance = None;
            return Err(TransformError::Failed {
                module: self.name.clone(),
                reason: waited_too_long(),
            });
        };
        match result {
            Ok(Ok(changes)) => {
                let bytes: usize = changes.iter().map(result_bytes).sum();
                if changes.len() > MAX_RESULT_CHANGES || bytes > MAX_RESULT_BYTES {
                    return Err(TransformError::Failed {
                        module: self.name.clone(),
                        reason: format!(
                            "it returned {} changes ({bytes} bytes of values) for one change; at most {MAX_RESULT_CHANGES} changes and {} MiB are allowed",
                            changes.len(),
                            MAX_RESULT_BYTES >> 20
                        ),
                    });
                }
                Ok(changes)
            }
            Ok(Err(message)) => Err(TransformError::Rejected {
                module: self.name.clone(),
                message,
            }),
            Err(e) => {
                let reason = describe_failure(&self.name, &e, &instance.store);
                self.instance = None;
                Err(TransformError::Failed {
                    module: self.name.clone(),
                    reason,
                })
            }
        }
    }
}

/// A guest abandoned at its deadline while it waited in a host call.
fn waited_too_long() -> String {
    format!(
        "it took more than {} ms, waiting in a host call (a sleep, a poll or a read)",
        CALL_LIMIT.as_millis()
    )
}

/// A single-threaded runtime for one module's guest calls.
///
/// Guest calls are async so that one waiting in WASI (a clock subscription, a
/// poll, a read) is a pending future, which the call deadline can drop; the
/// epoch deadline alone interrupts only guest code. Calls arrive from
/// synchronous code (through [`guest_code`], which leaves the caller's
/// runtime), so each is driven to completion here.
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    fn new() -> Result<Self, TransformError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| Self(Some(rt)))
            .map_err(|e| TransformError::Engine(format!("the guest runtime could not start: {e}")))
    }

    /// Drives a guest call for at most [`CALL_LIMIT`]; `None` when it took longer.
    /// The guest's instance must then be dropped: its call was abandoned midway.
    fn run<F: Future>(&self, call: F) -> Option<F::Output> {
        let runtime = self.0.as_ref()?;
        runtime.block_on(async { tokio::time::timeout(CALL_LIMIT, call).await.ok() })
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        // A chain replaced by a hot swap is dropped on an async thread, where a
        // runtime must not wait for its tasks; this one has none.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The size of a returned change's names and values, for the output cap.
fn result_bytes(change: &wit::Change) -> usize {
    let value = |v: &wit::Value| match v {
        wit::Value::Bytes(b) => b.len(),
        wit::Value::Numeric(s)
        | wit::Value::Text(s)
        | wit::Value::Json(s)
        | wit::Value::Date(s)
        | wit::Value::Time(s)
        | wit::Value::Timestamp(s)
        | wit::Value::Timestamptz(s) => s.len(),
        _ => 8,
    };
    change.schema.len()
        + change.table.len()
        + change
            .columns
            .iter()
            .chain(&change.key)
            .map(|c| c.name.len() + c.pg_type.len() + value(&c.value))
            .sum::<usize>()
}

/// A running instance with its own store, so a failure poisons nothing else.
struct Instance {
    store: Store<Guest>,
    bindings: wit::Transformer,
    stdout: GuestOutput,
    stderr: GuestOutput,
}

impl Instance {
    fn log_output(&self, module: &str) {
        log_output(module, &self.stdout, &self.stderr);
    }
}

/// An error and its causes on one line.
fn error_text(error: &wasmtime::Error) -> String {
    let causes: Vec<String> = error.chain().map(ToString::to_string).collect();
    causes.join(": ")
}

/// Says in words why a guest call failed.
fn describe_failure(module: &str, error: &wasmtime::Error, store: &Store<Guest>) -> String {
    // The wasm backtrace helps the module's author, not the change's reader.
    tracing::debug!(module, "guest failure: {error:?}");
    if store.data().limits.memory_denied {
        return format!("it needed more than its {} MiB of memory", MEMORY_LIMIT >> 20);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!(
            "it ran for more than {} ms",
            EPOCH_TICK.as_millis() * u128::from(CALL_TICKS)
        ),
        Some(Trap::StackOverflow) => {
            format!("it overflowed its {} KiB stack", MAX_WASM_STACK >> 10)
        }
        Some(trap) => format!("it trapped ({trap})"),
        None => format!("it failed ({})", error.root_cause()),
    }
}

/// The engine shared by every module, with an epoch that a background thread advances.
fn engine() -> Result<&'static Engine, TransformError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config
                .wasm_component_model(true)
                .epoch_interruption(true)
                .max_wasm_stack(MAX_WASM_STACK);
            let engine = Engine::new(&config).map_err(|e| error_text(&e))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| format!("the epoch thread could not start: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(|e| TransformError::Engine(e.clone()))
}

/// Per-instance host state.
struct Guest {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Store limits that remember a refused memory growth, so that the trap that
/// follows can be reported as running out of memory.
struct Limits {
    inner: StoreLimits,
    memory_denied: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Emits what the guest wrote since the last call to the host's log.
fn log_output(module: &str, stdout: &GuestOutput, stderr: &GuestOutput) {
    for (stream, output) in [("stdout", stdout), ("stderr", stderr)] {
        let (bytes, dropped) = output.take();
        for line in String::from_utf8_lossy(&bytes).lines() {
            tracing::info!(module, stream, "{line}");
        }
        if dropped > 0 {
            tracing::info!(module, stream, dropped, "guest output over the limit was dropped");
        }
    }
}

/// A guest's stdout or stderr: buffered for the log, bounded, and never an
/// error for the guest, so that chatty output cannot fail a change.
#[derive(Clone, Default)]
struct GuestOutput(Arc<Mutex<OutputBuffer>>);

#[derive(Default)]
struct OutputBuffer {
    bytes: Vec<u8>,
    dropped: usize,
}

impl GuestOutput {
    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let room = OUTPUT_LIMIT.saturating_sub(buffer.bytes.len());
        let kept = bytes.len().min(room);
        buffer.bytes.extend_from_slice(&bytes[..kept]);
        buffer.dropped += bytes.len() - kept;
    }

    fn take(&self) -> (Vec<u8>, usize) {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = std::mem::take(&mut buffer.dropped);
        (std::mem::take(&mut buffer.bytes), dropped)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(OUTPUT_LIMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl From<Change> for wit::Change {
    fn from(c: Change) -> Self {
        Self {
            op: c.op.into(),
            schema: c.schema,
            table: c.table,
            columns: c.columns.into_iter().map(Into::into).collect(),
            key: c.key.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<wit::Change> for Change {
    fn from(c: wit::Change) -> Self {
        Self {
            op: c.op.into(),
            schema: c.schema,
            table: c.table,
            columns: c.columns.into_iter().map(Into::into).collect(),
            key: c.key.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Column> for wit::Column {
    fn from(c: Column) -> Self {
        Self {
            name: c.name,
            pg_type: c.pg_type,
            value: c.value.into(),
        }
    }
}

impl From<wit::Column> for Column {
    fn from(c: wit::Column) -> Self {
        Self {
            name: c.name,
            pg_type: c.pg_type,
            value: c.value.into(),
        }
    }
}

impl From<Op> for wit::Op {
    fn from(op: Op) -> Self {
        match op {
            Op::Insert => Self::Insert,
            Op::Update => Self::Update,
            Op::Delete => Self::Delete,
            Op::Truncate => Self::Truncate,
        }
    }
}

impl From<wit::Op> for Op {
    fn from(op: wit::Op) -> Self {
        match op {
            wit::Op::Insert => Self::Insert,
            wit::Op::Update => Self::Update,
            wit::Op::Delete => Self::Delete,
            wit::Op::Truncate => Self::Truncate,
        }
    }
}

impl From<Value> for wit::Value {
    fn from(v: Value) -> Self {
        match v {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(b),
            Value::Int(i) => Self::Int(i),
            Value::Float(f) => Self::Float(f),
            Value::Numeric(s) => Self::Numeric(s),
            Value::Text(s) => Self::Text(s),
            Value::Bytes(b) => Self::Bytes(b),
            Value::Json(s) => Self::Json(s),
            Value::Date(s) => Self::Date(s),
            Value::Time(s) => Self::Time(s),
            Value::Timestamp(s) => Self::Timestamp(s),
            Value::Timestamptz(s) => Self::Timestamptz(s),
            Value::UnchangedToast => Self::UnchangedToast,
        }
    }
}

impl From<wit::Value> for Value {
    fn from(v: wit::Value) -> Self {
        match v {
            wit::Value::Null => Self::Null,
            wit::Value::Bool(b) => Self::Bool(b),
            wit::Value::Int(i) => Self::Int(i),
            wit::Value::Float(f) => Self::Float(f),
            wit::Value::Numeric(s) => Self::Numeric(s),
            wit::Value::Text(s) => Self::Text(s),
            wit::Value::Bytes(b) => Self::Bytes(b),
            wit::Value::Json(s) => Self::Json(s),
            wit::Value::Date(s) => Self::Date(s),
            wit::Value::Time(s) => Self::Time(s),
            wit::Value::Timestamp(s) => Self::Timestamp(s),
            wit::Value::Timestamptz(s) => Self::Timestamptz(s),
            wit::Value::UnchangedToast => Self::UnchangedToast,
        }
    }
}

impl From<&TxContext> for wit::TxContext {
    fn from(ctx: &TxContext) -> Self {
        Self {
            xid: ctx.xid,
            commit_lsn: ctx.commit_lsn.to_string(),
            commit_time: ctx.commit_time.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        run_test(&[component("identity")], &[], input.as_bytes(), &mut output).expect("run_test");
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
        let err = run_test(&[component("identity")], &[], input.as_bytes(), std::io::sink()).expect_err("error");
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
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let mut chain = TransformChain::load(&[component("probe")], &[]).expect("load probe");
        tracing::subscriber::with_default(subscriber, || {
            // Other tests print from the same callsites with no subscriber; a
            // callsite they register first caches "never", which a scoped
            // subscriber does not revisit until the cache is rebuilt.
            tracing::callsite::rebuild_interest_cache();
            chain.apply(change(Op::Insert, "print"), &ctx()).expect("print");
        });
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
    fn check_reports_hash_exports_imports_and_init() {
        let path = component("identity");
        let report = check(&path).expect("valid");
        let expected = hex::encode(Sha256::digest(std::fs::read(&path).expect("read")));
        assert_eq!(report.hash, expected);
        assert!(report.exports.contains(&"init (function)".to_owned()), "{report}");
        assert!(report.exports.contains(&"transform (function)".to_owned()), "{report}");
        assert!(
            report
                .imports
                .iter()
                .any(|i| i.starts_with("wasmcdc:transform/types@0.1.0")),
            "{report}"
        );
        assert_eq!(report.init, Ok(()));
        assert!(report.to_string().contains("init: accepts an empty configuration"));
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
        run_test(&[component("identity")], &[], input.as_bytes(), &mut output).expect("run_test");
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
            r#"{"action":"X"}"#.as_bytes(),
            std::io::sink(),
        )
        .expect_err("unknown action");
        assert!(err.to_string().starts_with("line 1 is not a change: "), "{err}");
    }

    #[test]
    fn the_chain_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<TransformChain>();
    }
}
