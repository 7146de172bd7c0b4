//! `wasmcdc status`: where the pipeline stands, as a table or one JSON object, and an
//! exit code that says whether it moves.
//!
//! Status reads every position twice, `--stall-window` apart, and judges from the two
//! readings whether the pipeline is stalled (see [`stall`]). Each connect and query is
//! one step under [`STEP_TIMEOUT`](super::STEP_TIMEOUT), so status cannot hang.

mod stall;

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sqlx::MySqlPool;

use self::stall::{Applied, Holder, Reading, SlotPositions, Stall};
use super::{Error, close, step};
use crate::apply::{self, ApplyError, CopyProgress, OFFSETS_TABLE, OffsetsRow, Progress};
use crate::change::Lsn;
use crate::config::{Settings, mask_url};
use crate::queue::{Broker, QueueError};
use crate::source::{PgTarget, SourceError};

/// The exit codes, for `--help`.
pub(super) const EXIT_CODES: &str = "\
Exit codes:
  0  the pipeline moves, or there is nothing to judge yet
  1  bad settings, or another error
  2  bad command line
  3  a server could not be reached, or a step got no answer in time
  4  the pipeline is stalled
  5  dead letters wait (only with --fail-on-dead-letters)";

/// A server could not be reached or did not answer in time.
const EXIT_UNREACHABLE: u8 = 3;
/// The pipeline is stalled.
const EXIT_STALLED: u8 = 4;
/// Dead letters wait, and `--fail-on-dead-letters` was given.
const EXIT_DEAD_LETTERS: u8 = 5;

/// `wasmcdc status` flags.
#[derive(Debug, clap::Args)]
pub(super) struct StatusArgs {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// How far apart the two readings are that tell whether the pipeline is stalled
    /// (5s, 500ms, 1m; a bare number is seconds); 0 reads once and does not judge.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    stall_window: Duration,
    /// Exit with 5 when the dead-letter queue is not empty.
    #[arg(long)]
    fail_on_dead_letters: bool,
}

/// Everything status shows; the table and `--json` carry the same fields.
#[derive(Debug, Serialize)]
struct Report {
    /// The pipeline's name.
    pipeline: String,
    /// The PostgreSQL URL, password masked.
    source: String,
    /// The replication slot; `None` if it does not exist.
    slot: Option<SlotReport>,
    /// The pipeline's queue; `None` if it does not exist.
    queue: Option<QueueReport>,
    /// Messages in the dead-letter queue; `None` if the queues do not exist.
    dead_letters: Option<u32>,
    /// Where the target stands; `None` before anything was applied.
    applied: Option<AppliedReport>,
    /// The transform modules' SHA-256 hashes in chain order; empty for none.
    transforms: Vec<String>,
    /// The apply that committed last; `None` if none is recorded.
    active_apply: Option<ActiveApply>,
    /// The stall decision.
    stall: StallReport,
}

#[derive(Clone, Debug, Serialize)]
struct SlotReport {
    confirmed_lsn: String,
    lag_bytes: u64,
    /// How long the server has recently waited for the pipeline to confirm what it sent.
    time_lag_seconds: Option<f64>,
    active: bool,
    wal_status: String,
    #[serde(skip)]
    positions: SlotPositions,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct QueueReport {
    ready: u32,
    consumers: u32,
}

#[derive(Debug, Serialize)]
struct AppliedReport {
    /// `applied`, or `copying` while the initial copy runs.
    state: &'static str,
    /// The last applied commit LSN; `None` while copying.
    lsn: Option<String>,
    /// While copying: the table, rows copied of all, rows per second and the time left,
    /// as the copying process last recorded them (every 2 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    copy: Option<CopyProgress>,
}

#[derive(Debug, Serialize)]
struct ActiveApply {
    /// `host:pid`.
    applier: String,
    seconds_since_commit: u64,
}

#[derive(Debug, Serialize)]
struct StallReport {
    /// Whether two readings were taken and judged (not with `--stall-window 0`).
    checked: bool,
    window_seconds: f64,
    stalled: bool,
    /// Why it is stalled, and what to check.
    reason: Option<String>,
}

/// The three servers status reads.
struct Servers {
    pg: tokio_postgres::Client,
    broker: Broker,
    my: MySqlPool,
}

/// One reading of the servers.
struct Snapshot {
    slot: Option<SlotReport>,
    queue: Option<QueueReport>,
    dead_letters: Option<u32>,
    offsets: Option<OffsetsRow>,
}

/// Runs `wasmcdc status`; the exit code says whether the pipeline moves.
pub(super) async fn run(settings: &Settings, args: StatusArgs) -> Result<ExitCode, Error> {
    let report = match inspect(settings, &args).await {
        Err(e) if unreachable(&e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_UNREACHABLE));
        }
        other => other?,
    };
    if args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
        println!("{json}");
    } else {
        print_table(&report);
    }
    let mut code = ExitCode::SUCCESS;
    if let Some(dead) = report.dead_letters.filter(|&n| n > 0 && args.fail_on_dead_letters) {
        let letters = match dead {
            1 => "1 dead letter waits".to_owned(),
            n => format!("{n} dead letters wait"),
        };
        eprintln!(
            "error: {letters} in the dead-letter queue; see them with `wasmcdc dlq list` and re-drive them with `wasmcdc dlq replay` once their cause is fixed"
        );
        code = ExitCode::from(EXIT_DEAD_LETTERS);
    }
    if let Some(reason) = &report.stall.reason {
        eprintln!("error: {reason}");
        code = ExitCode::from(EXIT_STALLED);
    }
    Ok(code)
}

/// Errors that mean a server could not be reached or did not answer, rather than bad settings.
fn unreachable(e: &Error) -> bool {
    match e {
        Error::Timeout { .. }
        | Error::Source(SourceError::Unreachable { .. })
        | Error::Apply(ApplyError::Unreachable { .. }) => true,
        // RabbitMQ refuses a wrong user or password with ACCESS_REFUSED: bad settings.
        Error::Queue(QueueError::Connect { reason, .. }) => !reason.contains("ACCESS_REFUSED"),
        _ => false,
    }
}

async fn inspect(settings: &Settings, args: &StatusArgs) -> Result<Report, Error> {
    let target = PgTarget::parse(&settings.pg_url)?;
    let pg = step("connecting to PostgreSQL", target.sql()).await?;
    let broker = step(
        "connecting to RabbitMQ",
        Broker::connect(&settings.amqp_url, &settings.slot),
    )
    .await?;
    let my = step("connecting to MariaDB", apply::connect(&settings.mariadb_url)).await?;
    let servers = Servers { pg, broker, my };
    let outcome = readings(&servers, settings, args.stall_window).await;
    close(servers.broker).await;
    let (first, last) = outcome?;
    let stall = match &first {
        Some(first) => {
            let stall = stall::judge(&first.reading(), &last.reading(), args.stall_window);
            StallReport {
                checked: true,
                window_seconds: args.stall_window.as_secs_f64(),
                stalled: stall.is_some(),
                reason: stall.as_ref().map(Stall::to_string),
            }
        }
        None => StallReport {
            checked: false,
            window_seconds: 0.0,
            stalled: false,
            reason: None,
        },
    };
    Ok(report(settings, last, stall))
}

/// A reading, and another `window` later; just one when the window is zero.
async fn readings(
    servers: &Servers,
    settings: &Settings,
    window: Duration,
) -> Result<(Option<Snapshot>, Snapshot), Error> {
    let first = read(servers, settings).await?;
    if window.is_zero() {
        return Ok((None, first));
    }
    tokio::time::sleep(window).await;
    Ok((Some(first), read(servers, settings).await?))
}

async fn read(servers: &Servers, settings: &Settings) -> Result<Snapshot, Error> {
    let slot = step("reading the replication slot from PostgreSQL", async {
        servers
            .pg
            .query_opt(
                "SELECT s.confirmed_flush_lsn::text, \
                        coalesce(pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0'), 0)::bigint, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, \
                        s.active, coalesce(s.wal_status, ''), extract(epoch FROM r.flush_lag)::float8, \
                        extract(epoch FROM now() - r.reply_time)::float8 \
                 FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = $1",
                &[&settings.slot],
            )
            .await
            .map_err(SourceError::from)
    })
    .await?
    .map(|r| {
        let confirmed_lsn: Option<String> = r.get(0);
        let active: bool = r.get(3);
        let positions = SlotPositions {
            confirmed: Lsn(u64::try_from(r.get::<_, i64>(1)).unwrap_or_default()),
            wal: Lsn(u64::try_from(r.get::<_, i64>(2)).unwrap_or_default()),
            // The capture's last status update to the server, which it sends at least every 10 s.
            holder: if active {
                Holder::Capture {
                    silent_for: r.get::<_, Option<f64>>(6).map(|s| s.max(0.0) as u64),
                }
            } else {
                Holder::Nobody
            },
        };
        SlotReport {
            lag_bytes: if confirmed_lsn.is_some() {
                positions.pending()
            } else {
                0
            },
            confirmed_lsn: confirmed_lsn.unwrap_or_default(),
            time_lag_seconds: r.get::<_, Option<f64>>(5).map(|s| (s * 1000.0).round() / 1000.0),
            active,
            wal_status: r.get(4),
            positions,
        }
    });
    let names = &servers.broker.names;
    let queue = step(
        "reading the queue depth from RabbitMQ",
        servers.broker.probe(&names.queue),
    )
    .await?;
    let dead_letters = match queue {
        Some(_) => Some(
            step(
                "reading the dead-letter count from RabbitMQ",
                servers.broker.probe(&names.dlq),
            )
            .await?
            .map_or(0, |d| d.ready),
        ),
        None => None,
    };
    let offsets = step("reading the offsets row from MariaDB", async {
        offsets_row(&servers.my, &settings.slot).await
    })
    .await?;
    Ok(Snapshot {
        slot,
        queue: queue.map(|q| QueueReport {
            ready: q.ready,
            consumers: q.consumers,
        }),
        dead_letters,
        offsets,
    })
}

/// The pipeline's offsets row; `None` if it or the offsets table does not exist yet.
async fn offsets_row(pool: &MySqlPool, pipeline: &str) -> Result<Option<OffsetsRow>, Error> {
    let table: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(OFFSETS_TABLE)
    .fetch_optional(pool)
    .await
    .map_err(|e| ApplyError::Database(e.to_string()))?;
    match table {
        Some(_) => Ok(apply::offsets_row(pool, pipeline).await?),
        None => Ok(None),
    }
}

impl Snapshot {
    /// The positions the stall decision compares.
    fn reading(&self) -> Reading {
        Reading {
            slot: self.slot.as_ref().map(|s| s.positions),
            ready: self.queue.map(|q| q.ready),
            applied: match &self.offsets {
                None => Applied::Nothing,
                Some(OffsetsRow {
                    progress: Progress::Copying,
                    ..
                }) => Applied::Copying,
                Some(
                    row @ OffsetsRow {
                        progress: Progress::Applied(lsn),
                        ..
                    },
                ) => Applied::At {
                    lsn: *lsn,
                    seconds_ago: seconds_since(row),
                },
            },
        }
    }
}

fn seconds_since(row: &OffsetsRow) -> u64 {
    u64::try_from(row.seconds_since_commit).unwrap_or_default()
}

fn report(settings: &Settings, last: Snapshot, stall: StallReport) -> Report {
    let offsets = last.offsets.as_ref();
    Report {
        pipeline: settings.slot.clone(),
        source: mask_url(&settings.pg_url),
        slot: last.slot,
        queue: last.queue,
        dead_letters: last.dead_letters,
        applied: offsets.map(|row| match row.progress {
            Progress::Copying => AppliedReport {
                state: "copying",
                lsn: None,
                copy: row.copy.clone(),
            },
            Progress::Applied(lsn) => AppliedReport {
                state: "applied",
                lsn: Some(lsn.to_string()),
                copy: None,
            },
        }),
        transforms: offsets
            .map(|row| {
                row.transforms
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        active_apply: offsets.filter(|row| !row.applier.is_empty()).map(|row| ActiveApply {
            applier: row.applier.clone(),
            seconds_since_commit: seconds_since(row),
        }),
        stall,
    }
}

fn print_table(r: &Report) {
    println!("pipeline: {}", r.pipeline);
    println!("source: {}", r.source);
    match &r.slot {
        Some(s) => println!(
            "slot: confirmed {}, lag {} bytes, time lag {}, {}, wal_status {}",
            s.confirmed_lsn,
            s.lag_bytes,
            s.time_lag_seconds
                .map_or_else(|| "none measured".to_owned(), |t| format!("{t:.3} s")),
            if s.active { "active" } else { "inactive" },
            s.wal_status
        ),
        None => println!("slot: none (it is created by `wasmcdc run` or `wasmcdc capture`)"),
    }
    match r.queue {
        Some(q) => {
            println!("queue: {} messages ready", q.ready);
            println!("dead letters: {}", r.dead_letters.unwrap_or_default());
        }
        None => println!("queue: none (it is created by `wasmcdc run`)"),
    }
    match &r.applied {
        Some(AppliedReport { lsn: Some(lsn), .. }) => println!("applied: up to {lsn}"),
        Some(AppliedReport {
            lsn: None,
            copy: Some(copy),
            ..
        }) => println!("applied: the initial copy is in progress: {}", copy.describe()),
        Some(AppliedReport { lsn: None, .. }) => println!("applied: the initial copy is in progress"),
        None => println!("applied: nothing yet"),
    }
    if r.applied.is_some() {
        if r.transforms.is_empty() {
            println!("transforms in use: none (changes pass through unchanged)");
        } else {
            println!("transforms in use (SHA-256, chain order): {}", r.transforms.join(","));
        }
    }
    match &r.active_apply {
        Some(a) => println!(
            "active apply: {} (last commit {} s ago)",
            a.applier, a.seconds_since_commit
        ),
        None => println!("active apply: none recorded"),
    }
}

/// Reads `5s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use for example 5s, 500ms or 1m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("'{text}' has an unknown unit; use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("'{text}' is not a usable duration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
