//! What a guest runs inside: the engine with its epoch and compilation cache,
//! a store with memory, instance and table limits, WASI without files,
//! network, environment or stdin, bounded stdout and stderr for the log, and
//! the runtime that abandons a call at its deadline.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Cache, CacheConfig, Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::rows::Rows;
use super::{Limits, TransformError};

/// Wasm stack per call; exhausting the host's own stack would abort the process.
const MAX_WASM_STACK: usize = 512 * 1024;
/// How often the engine's epoch advances.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Extra time a batched call gets per change it carries: with the default
/// limits a batch of 256 has about 356 ms, so a guest that takes a fraction of a millisecond per change
/// never meets the deadline, and one that waits still cannot hold the host.
const PER_CHANGE: Duration = Duration::from_millis(1);
/// Enough for a component's core instances, tables and memories, and no more.
const INSTANCE_LIMIT: usize = 16;
const TABLE_LIMIT: usize = 16;
const TABLE_ELEMENTS: usize = 20_000;
const MEMORY_COUNT: usize = 4;

/// Where compiled modules are kept between runs, unless `WASMCDC_CACHE_DIR` says otherwise.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMCDC_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasmcdc").join("modules"))
}

/// The engine shared by every module, with an epoch that a background thread advances.
///
/// Compiled code is cached on disk, keyed by the module's bytes and the
/// engine's settings, so that a restart or a hot swap back to a known version
/// does not compile again: a component built by `componentize-py` takes
/// seconds to compile and a few milliseconds to load from the cache. A cache
/// that cannot be used is logged and skipped, never an error.
pub(super) fn engine() -> Result<&'static Engine, TransformError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config
                .wasm_component_model(true)
                .epoch_interruption(true)
                .max_wasm_stack(MAX_WASM_STACK);
            if let Some(dir) = cache_dir() {
                let mut cache = CacheConfig::new();
                cache.with_directory(&dir);
                match Cache::new(cache) {
                    Ok(cache) => {
                        config.cache(Some(cache));
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "compiled modules are not cached: {}", error_text(&e))
                    }
                }
            }
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

/// A store for one instance, with `limits` and a WASI context, and the
/// guest's stdout and stderr.
pub(super) fn new_store(limits: &Limits) -> Result<(Store<Guest>, GuestOutput, GuestOutput), TransformError> {
    let stdout = GuestOutput::new(limits.output_bytes);
    let stderr = GuestOutput::new(limits.output_bytes);
    // The defaults already deny files, environment, arguments and stdin;
    // sockets are switched off outright.
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes)
        .table_elements(TABLE_ELEMENTS)
        .instances(INSTANCE_LIMIT)
        .tables(TABLE_LIMIT)
        .memories(MEMORY_COUNT)
        .build();
    let guest = Guest {
        wasi,
        table: ResourceTable::new(),
        limits: Tracked {
            inner: store_limits,
            memory_denied: false,
        },
        memory_bytes: limits.memory_bytes,
        call: limits.call,
        rows: Rows::default(),
    };
    let mut store = Store::new(engine()?, guest);
    store.limiter(|guest| &mut guest.limits);
    arm(&mut store, 1);
    Ok((store, stdout, stderr))
}

/// Arms the deadline of the next call, which carries `changes` changes.
pub(super) fn arm(store: &mut Store<Guest>, changes: usize) {
    store.data_mut().limits.memory_denied = false;
    let call = call_limit(changes, store.data().call);
    let ticks = u64::try_from(call.as_millis().div_ceil(EPOCH_TICK.as_millis())).unwrap_or(u64::MAX);
    store.set_epoch_deadline(ticks);
}

/// The wall-clock deadline of a call that carries `changes` changes, when one change has `call`.
fn call_limit(changes: usize, call: Duration) -> Duration {
    call + PER_CHANGE * u32::try_from(changes.saturating_sub(1)).unwrap_or(u32::MAX)
}

/// A guest abandoned at its deadline, `call`, while it waited in a host call.
pub(super) fn waited_too_long(call: Duration) -> String {
    format!(
        "it took more than {} ms, waiting in a host call (a sleep, a poll or a read)",
        call.as_millis()
    )
}

/// A single-threaded runtime for one module's guest calls.
///
/// Guest calls are async so that one waiting in WASI (a clock subscription, a
/// poll, a read) is a pending future, which the call deadline can drop; the
/// epoch deadline alone interrupts only guest code. Calls arrive from
/// synchronous code (through [`guest_code`], which leaves the caller's
/// runtime), so each is driven to completion here.
pub(super) struct GuestRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    /// The deadline of a call that carries one change.
    call: Duration,
}

impl GuestRuntime {
    /// A runtime whose calls carrying one change end after `call`.
    pub(super) fn new(call: Duration) -> Result<Self, TransformError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| Self {
                runtime: Some(rt),
                call,
            })
            .map_err(|e| TransformError::Engine(format!("the guest runtime could not start: {e}")))
    }

    /// Drives a guest call that carries `changes` changes until its deadline;
    /// `None` when it took longer. The guest's instance must then be dropped:
    /// its call was abandoned midway.
    pub(super) fn run<F: Future>(&self, changes: usize, call: F) -> Option<F::Output> {
        let runtime = self.runtime.as_ref()?;
        let limit = call_limit(changes, self.call);
        runtime.block_on(async { tokio::time::timeout(limit, call).await.ok() })
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        // A chain replaced by a hot swap is dropped on an async thread, where a
        // runtime must not wait for its tasks; this one has none.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
/// An error and its causes on one line.
pub(super) fn error_text(error: &wasmtime::Error) -> String {
    let causes: Vec<String> = error.chain().map(ToString::to_string).collect();
    causes.join(": ")
}

/// Says in words why a guest call failed.
pub(super) fn describe_failure(module: &str, error: &wasmtime::Error, store: &Store<Guest>) -> String {
    // The wasm backtrace helps the module's author, not the change's reader.
    tracing::debug!(module, "guest failure: {error:?}");
    let guest = store.data();
    if guest.limits.memory_denied {
        return format!("it needed more than its {} MiB of memory", guest.memory_bytes >> 20);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("it ran for more than {} ms", guest.call.as_millis()),
        Some(Trap::StackOverflow) => {
            format!("it overflowed its {} KiB stack", MAX_WASM_STACK >> 10)
        }
        Some(trap) => format!("it trapped ({trap})"),
        None => format!("it failed ({})", error.root_cause()),
    }
}

/// Per-instance host state.
pub(super) struct Guest {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Tracked,
    /// The memory limit, for the message when it is reached.
    memory_bytes: usize,
    /// The deadline of a call carrying one change.
    call: Duration,
    /// The batch of the `@0.3.0` call under way, which the guest reads from.
    pub(super) rows: Rows,
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
struct Tracked {
    inner: StoreLimits,
    memory_denied: bool,
}

impl ResourceLimiter for Tracked {
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
pub(super) fn log_output(module: &str, stdout: &GuestOutput, stderr: &GuestOutput) {
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
#[derive(Clone)]
pub(super) struct GuestOutput(Arc<Mutex<OutputBuffer>>);

struct OutputBuffer {
    bytes: Vec<u8>,
    dropped: usize,
    /// Bytes kept per call.
    limit: usize,
}

impl GuestOutput {
    /// An empty stream that keeps at most `limit` bytes per call.
    fn new(limit: usize) -> Self {
        GuestOutput(Arc::new(Mutex::new(OutputBuffer {
            bytes: Vec::new(),
            dropped: 0,
            limit,
        })))
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let room = buffer.limit.saturating_sub(buffer.bytes.len());
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
        Ok(self.0.lock().unwrap_or_else(PoisonError::into_inner).limit.max(1))
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
