//! The command line: flags, commands, and the dispatch to one file per command.

mod apply;
mod capture;
mod config;
mod dlq;
mod run;
mod slot;
mod status;
mod transform;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyError, Progress};
use crate::config::{ConfigError, Settings};
use crate::logs::LogFormat;
use crate::observe::{self, ObserveError, Stage};
use crate::pipeline::{Failure, NotDrained, Offsets, Refusal, supervise};
use crate::queue::QueueError;
use crate::queue::capture::{CaptureError, Transforms};
use crate::source::snapshot::SnapshotError;
use crate::source::{self, PgTarget, SourceError};
use crate::transform::watch::ChainWatcher;
use crate::transform::{TransformChain, TransformError, guest_code};

/// wasmcdc replicates PostgreSQL tables into MariaDB through sandboxed WebAssembly transforms.
#[derive(Debug, Parser)]
#[command(name = "wasmcdc", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// The settings that have a flag. Each field is named as its key in
/// [`Settings`], holds only what the command line (or the flag's environment
/// variable) gave, and is serialized as the top layer of the settings.
#[derive(Debug, Args, Serialize)]
#[serde(rename_all = "kebab-case")]
struct GlobalArgs {
    /// PostgreSQL URL (the source database).
    #[arg(long, env = "WASMCDC_PG_URL", global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pg_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "WASMCDC_AMQP_URL", global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_url: Option<String>,
    /// MariaDB URL (the target database).
    #[arg(long, env = "WASMCDC_MARIADB_URL", global = true, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mariadb_url: Option<String>,
    /// The pipeline's name: its replication slot, broker objects and offsets row [default: wasmcdc].
    #[arg(long, env = "WASMCDC_SLOT", global = true, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<String>,
    /// Tables to replicate, comma-separated schema.table [default: public.itrequests].
    #[arg(long, env = "WASMCDC_TABLES", global = true, value_name = "LIST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<String>,
    /// A transform component, or SCHEMA.TABLE=PATH to apply it to one source table; repeat to build a chain.
    #[arg(
        long = "transform",
        env = "WASMCDC_TRANSFORM",
        global = true,
        value_name = "PATH",
        value_delimiter = ','
    )]
    #[serde(rename = "transform", skip_serializing_if = "Vec::is_empty")]
    transforms: Vec<PathBuf>,
    /// A transform setting, MODULE.KEY=VALUE (MODULE is the file name without .wasm); repeat for more.
    #[arg(
        long = "transform-config",
        env = "WASMCDC_TRANSFORM_CONFIG",
        global = true,
        value_name = "MODULE.KEY=VALUE",
        value_delimiter = ';'
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    transform_config: Vec<String>,
    /// A TOML file with these flags' keys and the tuning keys of wasmcdc.example.toml (flags and environment take precedence).
    #[arg(long, env = "WASMCDC_CONFIG", global = true, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log lines on stderr as text, or as JSON objects (one a line) for log shippers.
    ///
    /// A flag and environment setting only: logging starts before the file is read.
    #[serde(skip)]
    #[arg(
        long,
        env = "WASMCDC_LOG_FORMAT",
        global = true,
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    /// Where `run`, `capture` and `apply` serve /metrics, /healthz, /readyz and the status page, or `off` [default: 127.0.0.1:9464].
    #[arg(long, env = "WASMCDC_METRICS_ADDR", global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_addr: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create what is missing, then capture and apply in one process until SIGINT or SIGTERM.
    Run,
    /// Read the slot, transform, and publish to RabbitMQ.
    Capture,
    /// Consume from RabbitMQ and apply to MariaDB.
    Apply,
    /// Compare every replicated table in source and target; exit 0 only if they are equal.
    Verify,
    /// Show slot lag, queue depth, the last applied LSN and the dead-letter count; exit non-zero when stalled.
    #[command(after_help = status::EXIT_CODES)]
    Status(status::StatusArgs),
    /// Manage the replication slot.
    Slot {
        #[command(subcommand)]
        command: SlotCommand,
    },
    /// Inspect and re-drive dead-lettered changes.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Work with transform components offline.
    Transform {
        #[command(subcommand)]
        command: TransformCommand,
    },
    /// Show the settings in effect.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective settings as TOML that --config reads back, with passwords masked.
    Print,
}

#[derive(Debug, Subcommand)]
enum SlotCommand {
    /// Drop the pipeline's slot, broker objects and offsets row (target tables are kept).
    Drop,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print the dead letters (they stay in the queue).
    List {
        /// Print at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send the dead letters back through the pipeline, after their cause is fixed.
    ///
    /// Changes a transform refused run through the current --transform chain again;
    /// changes MariaDB refused are applied as they were. What still fails stays in the queue.
    Replay,
}

#[derive(Debug, Subcommand)]
enum TransformCommand {
    /// Read change JSON or wal2json lines on stdin, print the transformed changes as JSON lines.
    ///
    /// wal2json lines without type OIDs are typed by their type names; with
    /// --pg-url (or WASMCDC_PG_URL) each name is looked up in that database's
    /// catalog, so domains, enums and arrays are typed as in production.
    Test {
        /// The component to run, or SCHEMA.TABLE=PATH; repeat to build a chain.
        #[arg(long = "module", required = true, value_name = "M.wasm")]
        modules: Vec<PathBuf>,
    },
    /// Validate a component against the WIT world; print its hash, exports and imports.
    Check {
        /// The component file.
        #[arg(value_name = "M.wasm")]
        module: PathBuf,
    },
}

/// Any error a command ends with; each says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// PostgreSQL.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// RabbitMQ.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// MariaDB.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The capture loop.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The initial copy.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A transform module.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// The target cannot be brought up to date from the slot; never retried.
    #[error("{0}")]
    Diverged(String),
    /// A stage that did not stop in time after shutdown.
    #[error(transparent)]
    NotDrained(#[from] NotDrained),
    /// The metrics and status server.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// A network step of a one-shot command got no answer in time.
    #[error("timed out after {secs} s while {step}; check that the server is reachable and not overloaded")]
    Timeout {
        /// What was being done, as in "reading the queue depth from RabbitMQ".
        step: &'static str,
        /// The limit, in seconds.
        secs: u64,
    },
    /// SIGINT or SIGTERM stopped a one-shot command before it finished.
    #[error("interrupted")]
    Interrupted,
    /// Something else, already phrased for the user.
    #[error("{0}")]
    Other(String),
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        if refusal.is_diverged() {
            Error::Diverged(refusal.to_string())
        } else {
            Error::Other(refusal.to_string())
        }
    }
}

impl Failure for Error {
    /// Failures that a retry cannot cure: the target cannot be brought up to date from the
    /// slot, the queue lost transactions, or a message or queue this version cannot use.
    fn is_permanent(&self) -> bool {
        let queue = |e: &QueueError| matches!(e, QueueError::TooLarge { .. } | QueueError::OldQueue { .. });
        match self {
            Error::Diverged(_)
            | Error::Apply(
                ApplyError::Gap(_)
                | ApplyError::KeyTooWide(_)
                | ApplyError::LooseCollation(_)
                | ApplyError::NoTarget(_),
            ) => true,
            Error::Snapshot(crate::source::snapshot::SnapshotError::Apply(ApplyError::NoTarget(_))) => true,
            Error::Source(e) | Error::Capture(CaptureError::Source(e)) => e.is_permanent(),
            Error::Queue(e) | Error::Apply(ApplyError::Queue(e)) | Error::Capture(CaptureError::Queue(e)) => queue(e),
            _ => false,
        }
    }
}

impl Cli {
    /// Whether the command runs until it is stopped (and then drains) rather than once.
    fn long_running(&self) -> bool {
        matches!(self.command, Command::Run | Command::Capture | Command::Apply)
    }

    /// The settings: these flags, over the environment, over the `--config` file, over the defaults.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        // The environment variables of flags are clap's to read, with the flags' own splitting.
        let flag_keys: Vec<String> = Cli::command()
            .get_arguments()
            .filter(|arg| arg.get_env().is_some())
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .collect();
        Settings::resolve(&self.global, &flag_keys, self.global.config.as_deref())
    }
}

/// Runs the command until it finishes or `shutdown` fires.
///
/// Long-running commands drain on shutdown (within [`GRACE`](crate::pipeline::GRACE));
/// one-shot commands stop at once and end with [`Error::Interrupted`].
pub async fn execute(cli: Cli, shutdown: CancellationToken) -> Result<ExitCode, Error> {
    let settings = cli.settings()?;
    let long_running = cli.long_running();
    // `transform test` reads types from the catalog only when told where it is.
    let catalog = cli.global.pg_url.is_some().then(|| settings.pg_url.clone());
    let work = dispatch(cli.command, &settings, catalog, &shutdown);
    if long_running {
        work.await
    } else {
        until_interrupted(&shutdown, work).await
    }
}

async fn dispatch(
    command: Command,
    settings: &Settings,
    catalog: Option<String>,
    shutdown: &CancellationToken,
) -> Result<ExitCode, Error> {
    match command {
        Command::Run => {
            let _observer = observe::start(settings, &[Stage::Capture, Stage::Apply], shutdown).await?;
            supervise("the pipeline", shutdown, settings.backoff(), async |up| {
                run::run(settings, shutdown.clone(), up).await
            })
            .await?
        }
        Command::Capture => {
            let _observer = observe::start(settings, &[Stage::Capture], shutdown).await?;
            supervise("the capture", shutdown, settings.backoff(), async |up| {
                capture::run(settings, shutdown.clone(), up).await
            })
            .await?
        }
        Command::Apply => {
            let _observer = observe::start(settings, &[Stage::Apply], shutdown).await?;
            supervise("the apply", shutdown, settings.backoff(), async |up| {
                apply::run(settings, shutdown.clone(), up).await
            })
            .await?
        }
        Command::Verify => return verify::run(settings).await,
        Command::Status(args) => return status::run(settings, args).await,
        Command::Dlq {
            command: DlqCommand::List { limit },
        } => dlq::list(settings, limit).await?,
        Command::Dlq {
            command: DlqCommand::Replay,
        } => return dlq::replay(settings, shutdown).await,
        Command::Slot {
            command: SlotCommand::Drop,
        } => slot::drop_pipeline(settings).await?,
        Command::Transform { command } => transform::execute(command, settings, catalog).await?,
        Command::Config {
            command: ConfigCommand::Print,
        } => config::print(settings)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// How long an interrupted one-shot command may take to settle what is in flight.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// Runs a one-shot command until it finishes or `shutdown` fires.
async fn until_interrupted<T>(
    shutdown: &CancellationToken,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        done = &mut work => done,
        _ = shutdown.cancelled() => {
            // Lets `dlq replay` settle the letter it is on; everything else is simply dropped.
            let _ = tokio::time::timeout(INTERRUPT_GRACE, &mut work).await;
            Err(Error::Interrupted)
        }
    }
}

/// How long one network step of a command (a connect, a query, a broker call) may take.
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one network step, failing with [`Error::Timeout`] naming `step` if it takes longer than [`STEP_TIMEOUT`].
pub(super) async fn step<T, E>(step: &'static str, work: impl Future<Output = Result<T, E>>) -> Result<T, Error>
where
    Error: From<E>,
{
    within(step, work).await?.map_err(Error::from)
}

/// Like [`step`], for a step whose own outcome the caller inspects.
pub(super) async fn within<T>(step: &'static str, work: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .map_err(|_| Error::Timeout {
            step,
            secs: STEP_TIMEOUT.as_secs(),
        })
}

/// Closes a broker connection, giving up after [`STEP_TIMEOUT`]: dropping it closes it too.
pub(super) async fn close(broker: crate::queue::Broker) {
    let _ = tokio::time::timeout(STEP_TIMEOUT, broker.close()).await;
}

/// The offsets row as the start-up planner sees it.
pub(super) fn offsets(progress: Option<Progress>) -> Offsets {
    match progress {
        None => Offsets::Absent,
        Some(Progress::Copying) => Offsets::Copying,
        Some(Progress::Applied(lsn)) => Offsets::Applied(lsn),
    }
}

/// Source checks shared by every command that reads PostgreSQL.
pub(super) async fn source_tables(
    settings: &Settings,
) -> Result<(PgTarget, tokio_postgres::Client, Vec<crate::catalog::TableDef>), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = step("connecting to PostgreSQL", target.sql()).await?;
    // No step limit: describing many tables over a slow link may take long, and SIGTERM still stops it.
    let defs = source::preflight(&pg, &settings.tables).await?;
    Ok((target, pg, defs))
}

/// The chain and, when there are modules, a watcher that recompiles them when their files change.
pub(super) fn live_chain(settings: &Settings, chain: TransformChain) -> Result<Transforms, Error> {
    let reloads = if settings.transforms.is_empty() {
        None
    } else {
        Some(ChainWatcher::start(
            &settings.transforms,
            &settings.transform_config,
            chain.hashes(),
            chain.limits(),
        )?)
    };
    Ok(Transforms { chain, reloads })
}

pub(super) fn load_chain(settings: &Settings) -> Result<TransformChain, Error> {
    let chain = guest_code(|| {
        TransformChain::load_with(
            &settings.transforms,
            &settings.transform_config,
            settings.transform_limits(),
        )
    })?;
    for (path, hash) in settings.transforms.iter().zip(chain.hashes()) {
        tracing::info!(module = %path.display(), %hash, "transform loaded");
    }
    observe::chain_loaded(&settings.transforms, chain.hashes());
    Ok(chain)
}

/// Logs to stderr in the `--log-format`; `RUST_LOG` overrides the default level.
pub fn init_logging(cli: &Cli) {
    crate::logs::init(cli.global.log_format, "info,lapin=warn,sqlx=warn");
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn shutdown_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
}
