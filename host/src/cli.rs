//! The command line: flags, commands, and the orchestration of each command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApplyError, ApplyOptions, Progress};
use crate::queue::capture::{self, CaptureError, CaptureOptions, Transforms};
use crate::catalog::TableName;
use crate::config::{ConfigError, Overrides, Settings, mask_url};
use crate::queue::{Broker, QueueError};
use crate::source::snapshot::{self, SnapshotError};
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

#[derive(Debug, Args)]
struct GlobalArgs {
    /// PostgreSQL URL (the source database).
    #[arg(long, env = "WASMCDC_PG_URL", global = true, value_name = "URL")]
    pg_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "WASMCDC_AMQP_URL", global = true, value_name = "URL")]
    amqp_url: Option<String>,
    /// MariaDB URL (the target database).
    #[arg(long, env = "WASMCDC_MARIADB_URL", global = true, value_name = "URL")]
    mariadb_url: Option<String>,
    /// The pipeline's name: its replication slot, broker objects and offsets row [default: wasmcdc].
    #[arg(long, env = "WASMCDC_SLOT", global = true, value_name = "NAME")]
    slot: Option<String>,
    /// Tables to replicate, comma-separated schema.table [default: public.itrequests].
    #[arg(long, env = "WASMCDC_TABLES", global = true, value_name = "LIST")]
    tables: Option<String>,
    /// A transform component, or SCHEMA.TABLE=PATH to apply it to one source table; repeat to build a chain.
    #[arg(
        long = "transform",
        env = "WASMCDC_TRANSFORM",
        global = true,
        value_name = "PATH",
        value_delimiter = ','
    )]
    transforms: Vec<PathBuf>,
    /// A transform setting, MODULE.KEY=VALUE (MODULE is the file name without .wasm); repeat for more.
    #[arg(
        long = "transform-config",
        env = "WASMCDC_TRANSFORM_CONFIG",
        global = true,
        value_name = "MODULE.KEY=VALUE",
        value_delimiter = ';'
    )]
    transform_config: Vec<String>,
    /// A TOML file with the same keys as these flags (flags and environment take precedence).
    #[arg(long, env = "WASMCDC_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Show slot lag, queue depth, the last applied LSN and the dead-letter count.
    Status,
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
    /// Something else, already phrased for the user.
    #[error("{0}")]
    Other(String),
}

impl Cli {
    fn settings(&self) -> Result<Settings, ConfigError> {
        let g = &self.global;
        Settings::resolve(Overrides {
            pg_url: g.pg_url.clone(),
            amqp_url: g.amqp_url.clone(),
            mariadb_url: g.mariadb_url.clone(),
            slot: g.slot.clone(),
            tables: g.tables.clone(),
            transforms: g.transforms.clone(),
            transform_config: g.transform_config.clone(),
            config: g.config.clone(),
        })
    }
}

/// Runs the command until it finishes or `shutdown` fires.
pub async fn execute(cli: Cli, shutdown: CancellationToken) -> Result<ExitCode, Error> {
    let settings = cli.settings()?;
    if let Command::Transform { command } = &cli.command {
        match command {
            TransformCommand::Test { modules } => {
                let stdin = std::io::stdin().lock();
                let stdout = std::io::stdout().lock();
                guest_code(|| crate::transform::run_test(modules, &settings.transform_config, stdin, stdout))?;
            }
            TransformCommand::Check { module } => println!("{}", guest_code(|| crate::transform::check(module))?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Command::Run => {
            supervise("the pipeline", &shutdown, async |up| {
                run(&settings, shutdown.clone(), up).await
            })
            .await?
        }
        Command::Capture => {
            supervise("the capture", &shutdown, async |up| {
                capture_only(&settings, shutdown.clone(), up).await
            })
            .await?
        }
        Command::Apply => {
            supervise("the apply", &shutdown, async |up| {
                apply_only(&settings, shutdown.clone(), up).await
            })
            .await?
        }
        Command::Verify => return verify(&settings).await,
        Command::Status => status(&settings).await?,
        Command::Dlq {
            command: DlqCommand::List { limit },
        } => dlq_list(&settings, limit).await?,
        Command::Dlq {
            command: DlqCommand::Replay,
        } => return dlq_replay(&settings).await,
        Command::Slot {
            command: SlotCommand::Drop,
        } => slot_drop(&settings).await?,
        Command::Transform { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Set by a pipeline once it is connected and streaming.
type Up<'a> = &'a AtomicBool;

/// Runs `attempt` until it ends cleanly or `shutdown` fires.
///
/// An attempt that fails before it was ever up ends the command: bad settings
/// should be reported at once. Once a pipeline has run, a failure (a server
/// restarting, a connection dropped) is retried with exponential backoff,
/// which is safe because delivery is at-least-once and the apply skips what it
/// already holds.
async fn supervise(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: impl AsyncFnMut(Up<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(30);
    let up = AtomicBool::new(false);
    let mut delay = FIRST;
    let mut failing_since: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let error = match attempt(&up).await {
            Ok(()) => return Ok(()),
            Err(e @ Error::Diverged(_)) => return Err(e),
            Err(e) if !up.load(Ordering::Relaxed) => return Err(e),
            Err(e) => e,
        };
        if shutdown.is_cancelled() {
            return Err(error);
        }
        if started.elapsed() > Duration::from_secs(60) {
            delay = FIRST;
            failing_since = None;
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        tracing::warn!(
            "{what} stopped: {error}; retrying in {} s (failing for {} s)",
            delay.as_secs(),
            since.elapsed().as_secs()
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(LONGEST);
    }
}

/// Source checks shared by every command that reads PostgreSQL.
async fn source_tables(
    settings: &Settings,
) -> Result<(PgTarget, tokio_postgres::Client, Vec<crate::catalog::TableDef>), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = target.sql().await?;
    let defs = source::preflight(&pg, &settings.tables).await?;
    Ok((target, pg, defs))
}

/// The chain and, when there are modules, a watcher that recompiles them when their files change.
fn live_chain(settings: &Settings, chain: TransformChain) -> Result<Transforms, Error> {
    let reloads = if settings.transforms.is_empty() {
        None
    } else {
        Some(ChainWatcher::start(
            &settings.transforms,
            &settings.transform_config,
            chain.hashes(),
        )?)
    };
    Ok(Transforms { chain, reloads })
}

fn load_chain(settings: &Settings) -> Result<TransformChain, Error> {
    let chain = guest_code(|| TransformChain::load(&settings.transforms, &settings.transform_config))?;
    for (path, hash) in settings.transforms.iter().zip(chain.hashes()) {
        tracing::info!(module = %path.display(), %hash, "transform loaded");
    }
    Ok(chain)
}

async fn run(settings: &Settings, shutdown: CancellationToken, up: Up<'_>) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    let chain = load_chain(settings)?;
    // Watch from the start, so a module replaced during the initial copy is not missed.
    let mut transforms = live_chain(settings, chain)?;
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::prepare(&pool, &defs).await?;
    let publisher = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    publisher.declare().await?;
    let consumer = Broker::connect(&settings.amqp_url, &settings.slot).await?;

    // Fail closed when the slot cannot deliver what the target is missing.
    let mut existed = source::slot_state(&pg, &settings.slot).await?.is_some();
    let progress = apply::progress(&pool, &settings.slot).await?;
    if existed && progress == Some(Progress::Copying) {
        tracing::warn!(pipeline = %settings.slot, "the initial copy was interrupted; starting it again with a new slot");
        source::drop_slot(&pg, &settings.slot).await?;
        existed = false;
    }
    match (existed, progress) {
        (false, Some(Progress::Applied(offset))) if offset.0 > 0 => {
            return Err(Error::Diverged(format!(
                "the target has applied up to {offset} for pipeline '{}', but its replication slot is gone, so changes made since are missing; run `wasmcdc slot drop` and start again (the initial copy re-copies the tables)",
                settings.slot
            )));
        }
        (false, _) => {
            let copied = snapshot::initial_copy(
                &settings.slot,
                &target,
                &defs,
                &mut transforms.chain,
                &pool,
                &publisher,
                &shutdown,
            )
            .await?;
            if copied.is_none() {
                return Ok(());
            }
        }
        (true, Some(Progress::Applied(offset))) => {
            let slot = source::ensure_slot(&target, &pg, &settings.slot).await?;
            if slot.confirmed_flush > offset && publisher.depths().await?.0 == 0 {
                return Err(Error::Diverged(format!(
                    "replication slot '{}' was confirmed up to {}, but the target has applied only up to {offset} and the queue is empty, so changes in between were lost; run `wasmcdc slot drop` and start again (the initial copy re-copies the tables)",
                    settings.slot, slot.confirmed_flush
                )));
            }
        }
        (true, _) => {}
    }
    drop(pg);
    up.store(true, Ordering::Relaxed);

    // Either half failing stops the other; both drain on shutdown.
    let stop = shutdown.child_token();
    let capture_opts = CaptureOptions::default();
    let apply_opts = ApplyOptions::default();
    let tables: Vec<TableName> = defs.iter().map(|d| d.name.clone()).collect();
    let capture = async {
        let r = capture::run(
            &settings.slot,
            &target,
            &tables,
            transforms,
            &publisher,
            &capture_opts,
            stop.clone(),
        )
        .await;
        stop.cancel();
        r
    };
    let apply = async {
        let r = apply::run(&settings.slot, &consumer, &pool, &target, &apply_opts, stop.clone()).await;
        stop.cancel();
        r
    };
    let (captured, applied) = tokio::join!(capture, apply);
    publisher.close().await;
    consumer.close().await;
    captured?;
    applied?;
    Ok(())
}

async fn capture_only(settings: &Settings, shutdown: CancellationToken, up: Up<'_>) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    let tables: Vec<TableName> = defs.iter().map(|d| d.name.clone()).collect();
    drop(pg);
    let chain = load_chain(settings)?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    up.store(true, Ordering::Relaxed);
    let result = capture::run(
        &settings.slot,
        &target,
        &tables,
        live_chain(settings, chain)?,
        &broker,
        &CaptureOptions::default(),
        shutdown,
    )
    .await;
    broker.close().await;
    Ok(result?)
}

async fn apply_only(settings: &Settings, shutdown: CancellationToken, up: Up<'_>) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    drop(pg);
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::prepare(&pool, &defs).await?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    up.store(true, Ordering::Relaxed);
    let result = apply::run(&settings.slot, &broker, &pool, &target, &ApplyOptions::default(), shutdown).await;
    broker.close().await;
    Ok(result?)
}

async fn verify(settings: &Settings) -> Result<ExitCode, Error> {
    let (_, pg, defs) = source_tables(settings).await?;
    let pool = apply::connect(&settings.mariadb_url).await?;
    let mut equal = true;
    for def in &defs {
        let report = crate::verify::compare(&pg, &pool, def).await.map_err(Error::Other)?;
        println!("{report}");
        equal &= report.equal();
    }
    if equal {
        println!("equal: source and target hold the same rows");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("different: source and target do not hold the same rows");
        Ok(ExitCode::FAILURE)
    }
}

async fn status(settings: &Settings) -> Result<(), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = target.sql().await?;
    println!("pipeline: {}", settings.slot);
    println!("source: {}", mask_url(&settings.pg_url));
    let lag = pg
        .query_opt(
            "SELECT s.confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
                    s.active, coalesce(s.wal_status, ''), \
                    coalesce(round(extract(epoch FROM r.flush_lag)::numeric, 3)::text || ' s', 'none measured') \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&settings.slot],
        )
        .await
        .map_err(SourceError::from)?;
    match lag {
        // flush_lag: how long the server has recently waited for the pipeline to confirm what it sent.
        Some(r) => println!(
            "slot: confirmed {}, lag {} bytes, time lag {}, {}, wal_status {}",
            r.get::<_, Option<String>>(0).unwrap_or_default(),
            r.get::<_, Option<i64>>(1).unwrap_or_default(),
            r.get::<_, String>(4),
            if r.get::<_, bool>(2) { "active" } else { "inactive" },
            r.get::<_, String>(3)
        ),
        None => println!("slot: none (it is created by `wasmcdc run` or `wasmcdc capture`)"),
    }
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    match broker.depths().await {
        Ok((ready, dead)) => {
            println!("queue: {ready} messages ready");
            println!("dead letters: {dead}");
        }
        Err(_) => println!("queue: none (it is created by `wasmcdc run`)"),
    }
    broker.close().await;
    let pool = apply::connect(&settings.mariadb_url).await?;
    match apply::offsets_row(&pool, &settings.slot).await {
        Ok(Some(row)) => {
            match row.progress {
                Progress::Copying => println!("applied: the initial copy is in progress"),
                Progress::Applied(lsn) => println!("applied: up to {lsn}"),
            }
            if row.transforms.is_empty() {
                println!("transforms in use: none (changes pass through unchanged)");
            } else {
                println!("transforms in use (SHA-256, chain order): {}", row.transforms);
            }
        }
        _ => println!("applied: nothing yet"),
    }
    Ok(())
}

async fn slot_drop(settings: &Settings) -> Result<(), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = target.sql().await?;
    if source::drop_slot(&pg, &settings.slot).await? {
        println!("dropped replication slot '{}'", settings.slot);
    } else {
        println!("no replication slot '{}'", settings.slot);
    }
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.delete().await?;
    broker.close().await;
    println!("deleted the broker objects of pipeline '{}'", settings.slot);
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::forget_offset(&pool, &settings.slot).await?;
    println!(
        "forgot the applied offset of pipeline '{}' (target tables are kept)",
        settings.slot
    );
    Ok(())
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn,sqlx=warn"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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

async fn dlq_list(settings: &Settings, limit: usize) -> Result<(), Error> {
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    let (_, total) = broker.depths().await?;
    println!("{total} dead letters in {}", broker.names.dlq);
    let mut shown = 0;
    while shown < limit.min(total as usize) {
        let Some(dead) = broker.next_dead_letter().await? else {
            break;
        };
        shown += 1;
        let changes = serde_json::from_slice::<crate::change::Message>(&dead.body)
            .map(|m| format!("{} changes", m.change_count()))
            .unwrap_or_else(|_| format!("{} bytes, not a change message", dead.body.len()));
        println!(
            "#{shown} stage={} lsn={} table={} ({changes})\n    {}",
            dead.stage,
            if dead.lsn.is_empty() { "-" } else { &dead.lsn },
            if dead.table.is_empty() { "-" } else { &dead.table },
            dead.reason
        );
    }
    // Closing the channel returns every message read, unsettled, to the queue.
    broker.close().await;
    Ok(())
}

async fn dlq_replay(settings: &Settings) -> Result<ExitCode, Error> {
    let mut chain = load_chain(settings)?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    let (_, total) = broker.depths().await?;
    let (mut replayed, mut kept) = (0usize, 0usize);
    // Kept letters stay unsettled until the end, so each is read once.
    let mut keep = Vec::new();
    for _ in 0..total {
        let Some(dead) = broker.next_dead_letter().await? else {
            break;
        };
        match replayable(&dead, &settings.slot, &mut chain) {
            Ok(message) => {
                broker.publish(&message).await?.wait().await?;
                broker.settle_dead_letter(dead.tag, true).await?;
                replayed += 1;
            }
            Err(why) => {
                println!(
                    "kept: stage={} lsn={} table={}: {why}",
                    dead.stage, dead.lsn, dead.table
                );
                keep.push(dead.tag);
                kept += 1;
            }
        }
    }
    for tag in keep {
        broker.settle_dead_letter(tag, false).await?;
    }
    broker.close().await;
    println!("replayed {replayed}, kept {kept}");
    Ok(if kept == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The message that re-drives a dead letter, or why it cannot be.
fn replayable(
    dead: &crate::queue::DeadMessage,
    pipeline: &str,
    chain: &mut TransformChain,
) -> Result<crate::change::Message, String> {
    let mut message: crate::change::Message = serde_json::from_slice(&dead.body)
        .map_err(|_| "it is not a change message (undecodable source output cannot be replayed)".to_owned())?;
    if message.pipeline != pipeline {
        return Err(format!("it belongs to pipeline '{}'", message.pipeline));
    }
    if let Some(chunk) = message.chunk {
        return Err(format!(
            "it is chunk {} of a large transaction; applied alone it would apply part of that transaction, so fix the cause and re-copy the affected tables instead",
            chunk.index
        ));
    }
    if dead.stage == "transform" {
        for tx in &mut message.transactions {
            let mut out = Vec::new();
            for change in std::mem::take(&mut tx.changes) {
                out.extend(guest_code(|| chain.apply(change, &tx.context)).map_err(|e| format!("still refused: {e}"))?);
            }
            tx.changes = out;
        }
        message.transforms = chain.hashes().to_vec();
    }
    message.chunk = None;
    message.replay = true;
    Ok(message)
}
