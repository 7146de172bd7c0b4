//! The command line: flags, commands, and the orchestration of each command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApplyError, ApplyOptions};
use crate::capture::{self, CaptureError, CaptureOptions};
use crate::config::{ConfigError, Overrides, Settings, mask_url};
use crate::queue::{Broker, QueueError};
use crate::source::{self, PgTarget, SourceError};
use crate::transform::{TransformChain, TransformError};

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
    #[arg(long = "transform", env = "WASMCDC_TRANSFORM", global = true, value_name = "PATH", value_delimiter = ',')]
    transforms: Vec<PathBuf>,
    /// A transform setting, MODULE.KEY=VALUE (MODULE is the file name without .wasm); repeat for more.
    #[arg(long = "transform-config", env = "WASMCDC_TRANSFORM_CONFIG", global = true, value_name = "MODULE.KEY=VALUE", value_delimiter = ';')]
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
    /// A transform module.
    #[error(transparent)]
    Transform(#[from] TransformError),
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
                crate::transform::run_test(modules, &settings.transform_config, stdin, stdout)?;
            }
            TransformCommand::Check { module } => println!("{}", crate::transform::check(module)?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    match cli.command {
        Command::Run => run(&settings, shutdown).await?,
        Command::Capture => capture_only(&settings, shutdown).await?,
        Command::Apply => apply_only(&settings, shutdown).await?,
        Command::Verify => return verify(&settings).await,
        Command::Status => status(&settings).await?,
        Command::Slot {
            command: SlotCommand::Drop,
        } => slot_drop(&settings).await?,
        Command::Transform { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Source checks shared by every command that reads PostgreSQL.
async fn source_tables(settings: &Settings) -> Result<(PgTarget, tokio_postgres::Client, Vec<crate::catalog::TableDef>), Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = target.sql().await?;
    let defs = source::preflight(&pg, &settings.tables).await?;
    Ok((target, pg, defs))
}

fn load_chain(settings: &Settings) -> Result<TransformChain, Error> {
    let chain = TransformChain::load(&settings.transforms, &settings.transform_config)?;
    for (path, hash) in settings.transforms.iter().zip(chain.hashes()) {
        tracing::info!(module = %path.display(), %hash, "transform loaded");
    }
    Ok(chain)
}

async fn run(settings: &Settings, shutdown: CancellationToken) -> Result<(), Error> {
    let (target, pg, defs) = source_tables(settings).await?;
    let chain = load_chain(settings)?;
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::prepare(&pool, &defs).await?;
    let publisher = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    publisher.declare().await?;
    let consumer = Broker::connect(&settings.amqp_url, &settings.slot).await?;

    // Fail closed when the slot cannot deliver what the target is missing.
    let existed = source::slot_state(&pg, &settings.slot).await?.is_some();
    let slot = source::ensure_slot(&target, &pg, &settings.slot).await?;
    let offset = apply::applied_offset(&pool, &settings.slot).await?.filter(|l| l.0 > 0);
    match (existed, offset) {
        (false, Some(offset)) => {
            return Err(Error::Other(format!(
                "the target has applied up to {offset} for pipeline '{}', but its replication slot was gone and had to be recreated, so changes made in between are missing; re-copy the tables, then run `wasmcdc slot drop` and start again",
                settings.slot
            )));
        }
        (false, None) => apply::set_offset(&pool, &settings.slot, slot.confirmed_flush).await?,
        (true, Some(offset)) if slot.confirmed_flush > offset && publisher.depths().await?.0 == 0 => {
            return Err(Error::Other(format!(
                "replication slot '{}' was confirmed up to {}, but the target has applied only up to {offset} and the queue is empty, so changes in between were lost; re-copy the tables, then run `wasmcdc slot drop` and start again",
                settings.slot, slot.confirmed_flush
            )));
        }
        (true, _) => {}
    }
    drop(pg);

    // Either half failing stops the other; both drain on shutdown.
    let stop = shutdown.child_token();
    let capture_opts = CaptureOptions::default();
    let apply_opts = ApplyOptions::default();
    let capture = async {
        let r = capture::run(&settings.slot, &target, &settings.tables, chain, &publisher, &capture_opts, stop.clone()).await;
        stop.cancel();
        r
    };
    let apply = async {
        let r = apply::run(&settings.slot, &consumer, &pool, &apply_opts, stop.clone()).await;
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

async fn capture_only(settings: &Settings, shutdown: CancellationToken) -> Result<(), Error> {
    let (target, pg, _) = source_tables(settings).await?;
    drop(pg);
    let chain = load_chain(settings)?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    let result = capture::run(
        &settings.slot,
        &target,
        &settings.tables,
        chain,
        &broker,
        &CaptureOptions::default(),
        shutdown,
    )
    .await;
    broker.close().await;
    Ok(result?)
}

async fn apply_only(settings: &Settings, shutdown: CancellationToken) -> Result<(), Error> {
    let (_, pg, defs) = source_tables(settings).await?;
    drop(pg);
    let pool = apply::connect(&settings.mariadb_url).await?;
    apply::prepare(&pool, &defs).await?;
    let broker = Broker::connect(&settings.amqp_url, &settings.slot).await?;
    broker.declare().await?;
    let result = apply::run(&settings.slot, &broker, &pool, &ApplyOptions::default(), shutdown).await;
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
            "SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active, coalesce(wal_status, '') \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&settings.slot],
        )
        .await
        .map_err(|e| SourceError::Query(e.to_string()))?;
    match lag {
        Some(r) => println!(
            "slot: confirmed {} , lag {} bytes, {}, wal_status {}",
            r.get::<_, Option<String>>(0).unwrap_or_default(),
            r.get::<_, Option<i64>>(1).unwrap_or_default(),
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
    match apply::applied_offset(&pool, &settings.slot).await {
        Ok(Some(lsn)) => println!("applied: up to {lsn}"),
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
    println!("forgot the applied offset of pipeline '{}' (target tables are kept)", settings.slot);
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
