//! Watching a running pipeline: Prometheus metrics, health probes and a live
//! status page, served by `run`, `capture` and `apply` on `--metrics-addr`.
//!
//! The stages record what they do through the functions in [`metrics`] (one
//! line at each call site). Each records a Prometheus metric and the same
//! figure for the status page, so the page and `/metrics` agree. Until
//! [`start`] runs, as in one-shot commands, they record nothing.

mod http;
pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::metrics::{
    Applied, captured, chain_loaded, chain_swapped, copied, copy_started, dead_lettered, mariadb_recovered,
    mariadb_retrying, published, reconnecting, transform_called, up,
};
pub use self::status::Stage;
use crate::config::Settings;
use crate::queue::Broker;
use crate::source::PgTarget;

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The address cannot be listened on.
    #[error(
        "cannot serve metrics on {addr}: {reason}; give each wasmcdc process on this host its own --metrics-addr (for example 127.0.0.1:9465), or turn it off with --metrics-addr off"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system's reason, as in "the address is already in use".
        reason: String,
    },
    /// The metrics recorder could not be set up.
    #[error("cannot set up the metrics recorder: {0}")]
    Recorder(String),
}

/// The server and the sampler; dropping it stops both.
pub struct Observer {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts serving on `--metrics-addr` for a process that runs `stages`; `None` when it is `off`.
pub async fn start(
    settings: &Settings,
    stages: &[Stage],
    shutdown: &CancellationToken,
) -> Result<Option<Observer>, ObserveError> {
    let Some(addr) = settings.metrics_listen() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ObserveError::Bind {
            addr,
            reason: bind_reason(&e),
        })?;
    let local = listener.local_addr().unwrap_or(addr);
    let tables = settings.tables.iter().map(ToString::to_string).collect();
    if !status::init(&settings.slot, tables, stages) {
        return Err(ObserveError::Recorder("it is already set up in this process".into()));
    }
    let recorder = metrics::recorder().map_err(|e| ObserveError::Recorder(e.to_string()))?;
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|e| ObserveError::Recorder(e.to_string()))?;
    metrics::register(stages);
    let router = http::router(handle.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("the metrics server stopped: {e}");
        }
    });
    let sampler = tokio::spawn(sample(settings.clone(), handle, shutdown.clone()));
    tracing::info!("serving metrics, probes and the status page on http://{local}/");
    Ok(Some(Observer {
        tasks: vec![server, sampler],
    }))
}

fn bind_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "the address is already in use".into(),
        std::io::ErrorKind::AddrNotAvailable => "no interface of this host has that address".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".into(),
        _ => e.to_string(),
    }
}

/// How long one read of a server may take before the sample goes without it.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// Every [`status::SAMPLE_EVERY`]: reads the slot lag and queue depths, keeps the
/// histograms fresh, and records a sample for the page's charts.
async fn sample(
    settings: Settings,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) {
    let mut pg: Option<tokio_postgres::Client> = None;
    let mut broker: Option<Broker> = None;
    // Not at once: the stages declare the queue first, and a missing one would be logged as an error.
    let first = tokio::time::Instant::now() + status::SAMPLE_EVERY;
    let mut tick = tokio::time::interval_at(first, status::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drained = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled(), if !drained => {
                drained = true;
                if let Some(s) = status::get() {
                    s.drain();
                }
                continue;
            }
        }
        let slot_lag = slot_lag(&settings, &mut pg).await;
        let depths = depths(&settings, &mut broker).await;
        metrics::servers(slot_lag, depths);
        handle.run_upkeep();
        if let Some(s) = status::get() {
            s.sample();
        }
    }
}

/// Bytes of WAL the slot holds unconfirmed; `None` (and a new connection next time) when PostgreSQL cannot tell.
async fn slot_lag(settings: &Settings, pg: &mut Option<tokio_postgres::Client>) -> Option<i64> {
    let read = async {
        if pg.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *pg = Some(PgTarget::parse(&settings.pg_url).ok()?.sql().await.ok()?);
        }
        let row = pg
            .as_ref()?
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&settings.slot],
            )
            .await;
        match row {
            Ok(row) => row.and_then(|r| r.get::<_, Option<i64>>(0)),
            Err(e) => {
                tracing::debug!("cannot read the slot lag: {e}");
                *pg = None;
                None
            }
        }
    };
    tokio::time::timeout(READ_LIMIT, read).await.ok().flatten()
}

/// Messages in the queue and the dead-letter queue; `None` (and a new connection next time) when RabbitMQ cannot tell.
async fn depths(settings: &Settings, broker: &mut Option<Broker>) -> Option<(u32, u32)> {
    let read = async {
        if broker.is_none() {
            *broker = Some(Broker::connect(&settings.amqp_url, &settings.slot).await.ok()?);
        }
        match broker.as_ref()?.depths().await {
            Ok(depths) => Some(depths),
            Err(e) => {
                tracing::debug!("cannot read the queue depths: {e}");
                if let Some(b) = broker.take() {
                    b.close().await;
                }
                None
            }
        }
    };
    match tokio::time::timeout(READ_LIMIT, read).await {
        Ok(depths) => depths,
        Err(_) => {
            *broker = None;
            None
        }
    }
}
