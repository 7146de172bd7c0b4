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

use crate::change::{Change, Column, Lsn, Op, TxContext, Value};

mod wit {
    wasmtime::component::bindgen!({ path: "../wit", world: "transformer" });
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
/// Linear memory per instance.
const MEMORY_LIMIT: usize = 64 << 20;
/// Enough for a component's core instances, tables and memories, and no more.
const INSTANCE_LIMIT: usize = 16;
const TABLE_LIMIT: usize = 16;
const TABLE_ELEMENTS: usize = 20_000;
const MEMORY_COUNT: usize = 4;
/// Guest output kept per stream and call; the rest is dropped, not trapped on.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// Why a transform module could not be loaded or could not transform a change.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The engine could not be configured on this host.
    #[error(
        "the WebAssembly engine could not start ({0}); run wasmcdc on a host that wasmtime supports"
    )]
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
    #[error(
        "transform '{module}' refused its configuration: {message}; fix the configuration or the module"
    )]
    Init { module: String, message: String },
    /// The guest returned an error for a change.
    #[error("transform '{module}' rejected the change: {message}")]
    Rejected { module: String, message: String },
    /// The guest trapped, ran out of time or ran out of memory; its instance is recreated.
    #[error("transform '{module}' failed: {reason}; the change was not transformed")]
    Failed { module: String, reason: String },
    /// A trial input line is not a change.
    #[error(
        "line {line} is not a change: {reason}; give one change per line as JSON, for example {{\"op\":\"insert\",\"schema\":\"public\",\"table\":\"t\",\"columns\":[]}}"
    )]
    BadInput { line: usize, reason: String },
    /// A trial input line could not be transformed.
    #[error("line {line}: {error}")]
    AtLine {
        line: usize,
        error: Box<TransformError>,
    },
    /// The trial input could not be read.
    #[error("the input could not be read ({0}); check that it is readable text")]
    Read(std::io::Error),
    /// The trial output could not be written.
    #[error("the output could not be written ({0}); check that its destination accepts writes")]
    Write(std::io::Error),
}

/// The loaded transform modules, applied in order to every change.
pub struct TransformChain {
    modules: Vec<Module>,
    hashes: Vec<String>,
}

impl TransformChain {
    /// Compiles each module in chain order; an empty list passes changes through unchanged.
    pub fn load(paths: &[PathBuf]) -> Result<Self, TransformError> {
        let mut modules = Vec::with_capacity(paths.len());
        let mut hashes = Vec::with_capacity(paths.len());
        for path in paths {
            let (module, hash) = Module::load(path)?;
            modules.push(module);
            hashes.push(hash);
        }
        Ok(Self { modules, hashes })
    }

    /// SHA-256 (hex) of each module file, in chain order.
    pub fn hashes(&self) -> &[String] {
        &self.hashes
    }

    /// Whether the chain has no modules and so passes changes through.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Runs one change through every module in order.
    pub fn apply(
        &mut self,
        change: Change,
        ctx: &TxContext,
    ) -> Result<Vec<Change>, TransformError> {
        if self.modules.is_empty() {
            return Ok(vec![change]);
        }
        let ctx = wit::TxContext::from(ctx);
        let mut changes = vec![wit::Change::from(change)];
        for module in &mut self.modules {
            let mut next = Vec::with_capacity(changes.len());
            for change in &changes {
                next.extend(module.call(change, &ctx)?);
            }
            changes = next;
        }
        Ok(changes.into_iter().map(Change::from).collect())
    }
}

/// Offline trial: reads one change JSON (serde form of crate::change::Change) per line, writes each resulting change as a JSON line.
pub fn run_test(
    paths: &[PathBuf],
    input: impl BufRead,
    mut output: impl Write,
) -> Result<(), TransformError> {
    let mut chain = TransformChain::load(paths)?;
    // Trial changes have no source transaction; guests see a fixed, recognisable one.
    let ctx = TxContext {
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
        let change: Change = serde_json::from_str(&line).map_err(|e| TransformError::BadInput {
            line: line_no,
            reason: e.to_string(),
        })?;
        let changes = chain
            .apply(change, &ctx)
            .map_err(|e| TransformError::AtLine {
                line: line_no,
                error: Box::new(e),
            })?;
        for change in changes {
            serde_json::to_writer(&mut output, &change)
                .map_err(|e| TransformError::Write(e.into()))?;
            output.write_all(b"\n").map_err(TransformError::Write)?;
        }
    }
    output.flush().map_err(TransformError::Write)
}

/// One compiled component and its live instance.
struct Module {
    name: String,
    pre: wit::TransformerPre<Guest>,
    /// `None` after a failure: the next call starts a fresh instance, because
    /// a trapped instance cannot be entered again.
    instance: Option<Instance>,
}

impl Module {
    fn load(path: &Path) -> Result<(Self, String), TransformError> {
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
                "it is a core module, as built for wasm32-unknown-unknown or wasm32-wasip1"
                    .to_owned(),
            ));
        }
        // Compiled from the bytes just hashed, so the hash names exactly what runs.
        let component =
            Component::from_binary(engine, &bytes).map_err(|e| not_component(error_text(&e)))?;
        let name = path.display().to_string();
        let incompatible = |e: wasmtime::Error| TransformError::Incompatible {
            module: name.clone(),
            reason: error_text(&e),
        };
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(incompatible)?;
        let pre = linker.instantiate_pre(&component).map_err(incompatible)?;
        let pre = wit::TransformerPre::new(pre).map_err(incompatible)?;
        let mut module = Self {
            name,
            pre,
            instance: None,
        };
        // Starting it now reports a module that cannot run at load time, not on the first change.
        module.instance = Some(module.start()?);
        Ok((module, hash))
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
        let mut instance = match self.pre.instantiate(&mut store) {
            Ok(bindings) => Instance {
                store,
                bindings,
                stdout,
                stderr,
            },
            Err(e) => {
                let reason = describe_failure(&self.name, &e, &store);
                log_output(&self.name, &stdout, &stderr);
                return Err(TransformError::Start {
                    module: self.name.clone(),
                    reason,
                });
            }
        };
        instance.store.set_epoch_deadline(CALL_TICKS);
        let result = instance.bindings.call_init(&mut instance.store, &[]);
        instance.log_output(&self.name);
        match result {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(TransformError::Init {
                module: self.name.clone(),
                message,
            }),
            Err(e) => Err(TransformError::Start {
                module: self.name.clone(),
                reason: describe_failure(&self.name, &e, &instance.store),
            }),
        }
    }

    fn call(
        &mut self,
        change: &wit::Change,
        ctx: &wit::TxContext,
    ) -> Result<Vec<wit::Change>, TransformError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => self.instance.insert(self.start()?),
        };
        instance.store.data_mut().limits.memory_denied = false;
        instance.store.set_epoch_deadline(CALL_TICKS);
        let result = instance
            .bindings
            .call_transform(&mut instance.store, change, ctx);
        instance.log_output(&self.name);
        match result {
            Ok(Ok(changes)) => Ok(changes),
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
        return format!(
            "it needed more than its {} MiB of memory",
            MEMORY_LIMIT >> 20
        );
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
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
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
            tracing::info!(
                module,
                stream,
                dropped,
                "guest output over the limit was dropped"
            );
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
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
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
            column(
                "t",
                "character varying(60)",
                Value::Text("Repair laptop ✓".into()),
            ),
            column("by", "bytea", Value::Bytes(vec![0, 0xde, 0xad, 0xff])),
            column("j", "jsonb", Value::Json(r#"{"a": [1, 2]}"#.into())),
            column("d", "date", Value::Date("2024-05-01".into())),
            column(
                "tm",
                "time without time zone",
                Value::Time("12:34:56.789".into()),
            ),
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
        let mut chain = TransformChain::load(&[component("identity")]).expect("load identity");
        for op in [Op::Insert, Op::Update, Op::Delete, Op::Truncate] {
            let input = change(op, "itrequests");
            let out = chain.apply(input.clone(), &ctx()).expect("apply");
            assert_eq!(out, vec![input]);
        }
    }

    #[test]
    fn empty_chain_passes_through() {
        let mut chain = TransformChain::load(&[]).expect("empty chain");
        assert!(chain.is_empty());
        assert!(chain.hashes().is_empty());
        let input = change(Op::Update, "itrequests");
        assert_eq!(
            chain.apply(input.clone(), &ctx()).expect("apply"),
            vec![input]
        );
    }

    #[test]
    fn chain_of_two_identities_passes_through_and_hashes_each() {
        let identity = component("identity");
        let mut chain = TransformChain::load(&[identity.clone(), identity.clone()]).expect("load");
        assert!(!chain.is_empty());
        let expected = hex::encode(Sha256::digest(std::fs::read(&identity).expect("read")));
        assert_eq!(chain.hashes(), [expected.clone(), expected]);
        let input = change(Op::Insert, "itrequests");
        assert_eq!(
            chain.apply(input.clone(), &ctx()).expect("apply"),
            vec![input]
        );
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
            let err = TransformChain::load(std::slice::from_ref(&path))
                .err()
                .expect("refused");
            assert!(matches!(err, TransformError::NotComponent { .. }), "{err}");
            let message = err.to_string();
            assert!(
                !message.contains('\n')
                    && message.starts_with(&format!(
                        "'{}' is not a WebAssembly component (",
                        path.display()
                    )),
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
        let err = TransformChain::load(std::slice::from_ref(&path))
            .err()
            .expect("refused");
        assert!(matches!(err, TransformError::Missing(_)), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/transform.wasm"),
            "{err}"
        );
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
        run_test(&[component("identity")], input.as_bytes(), &mut output).expect("run_test");
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
        let err = run_test(&[component("identity")], input.as_bytes(), std::io::sink())
            .expect_err("error");
        assert!(
            matches!(err, TransformError::BadInput { line: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("line 2 is not a change: "),
            "{err}"
        );
    }

    #[test]
    fn guests_drop_fan_out_and_reject() {
        let mut chain = TransformChain::load(&[component("probe")]).expect("load probe");
        assert!(
            chain
                .apply(change(Op::Insert, "drop"), &ctx())
                .expect("drop")
                .is_empty()
        );
        let fanned = chain
            .apply(change(Op::Insert, "fanout"), &ctx())
            .expect("fan out");
        let tables: Vec<_> = fanned.iter().map(|c| c.table.as_str()).collect();
        assert_eq!(tables, ["fanout", "fanout_copy"]);
        let err = chain
            .apply(change(Op::Insert, "reject"), &ctx())
            .expect_err("rejected");
        assert!(matches!(err, TransformError::Rejected { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("rejected the change: rejected on request"),
            "{err}"
        );
        assert_eq!(
            chain
                .apply(change(Op::Insert, "print"), &ctx())
                .expect("print")
                .len(),
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
        let mut chain = TransformChain::load(&[component("probe")]).expect("load probe");
        tracing::subscriber::with_default(subscriber, || {
            chain
                .apply(change(Op::Insert, "print"), &ctx())
                .expect("print");
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
        let mut chain = TransformChain::load(&[component("probe")]).expect("load probe");
        for (table, reason) in [
            ("panic", "it trapped"),
            ("spin", "it ran for more than 100 ms"),
            ("hog", "it needed more than its 64 MiB of memory"),
            ("recurse", "it overflowed its 512 KiB stack"),
        ] {
            let err = chain
                .apply(change(Op::Insert, table), &ctx())
                .expect_err("failure");
            assert!(
                matches!(err, TransformError::Failed { .. }),
                "{table}: {err}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("failed: {reason}")),
                "{table}: {message}"
            );
            assert!(
                message.ends_with("; the change was not transformed"),
                "{message}"
            );
            let next = change(Op::Update, "itrequests");
            assert_eq!(
                chain.apply(next.clone(), &ctx()).expect("after failure"),
                vec![next]
            );
        }
    }

    #[test]
    fn the_chain_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<TransformChain>();
    }
}
