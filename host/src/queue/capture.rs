//! The capture: reads the slot, runs each change through the transform chain,
//! and publishes whole transactions to RabbitMQ.
//!
//! Progress is confirmed to PostgreSQL only up to the last message RabbitMQ has
//! confirmed. Every confirmed position is the `last_lsn` of a published message,
//! including heartbeats sent while only unrelated tables change, so the apply's
//! offset and the slot's `confirmed_flush_lsn` agree once the queue is drained.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::TableName;
use crate::change::{Change, Chunk, Lsn, Message, Transaction, TxContext};
use crate::queue::{Broker, DeadLetter, PendingConfirm, QueueError};
use crate::source::wal2json::{self, Event};
use crate::source::{Frame, PgTarget, SourceError};
use crate::transform::watch::ChainWatcher;
use crate::transform::{TransformChain, guest_code};

/// Why the capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The broker failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Tuning for the capture loop.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Publish a batch of small transactions once it holds this many changes.
    pub batch_changes: usize,
    /// Split a transaction into chunks of this many changes.
    pub chunk_changes: usize,
    /// Publish a batch at the latest this long after its first transaction arrived.
    pub linger: Duration,
    /// While only unrelated tables change, publish a heartbeat this often so the slot moves on.
    pub heartbeat: Duration,
    /// Messages awaiting a publisher confirm at once.
    pub max_in_flight: usize,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            batch_changes: 1_000,
            chunk_changes: 2_000,
            linger: Duration::from_millis(10),
            heartbeat: Duration::from_secs(5),
            max_in_flight: 256,
        }
    }
}

/// The transform chain in use, and where new versions of it come from.
pub struct Transforms {
    /// The chain changes run through now.
    pub chain: TransformChain,
    /// New versions compiled when a module file changes; `None` when not watching.
    pub reloads: Option<ChainWatcher>,
}

/// Transactions waiting to be published together.
struct Batch {
    transactions: Vec<Transaction>,
    changes: usize,
    /// The highest position this batch accounts for: its last commit, or a
    /// later empty transaction or idle keepalive.
    last_lsn: Lsn,
    since: Option<Instant>,
}

/// The transaction being read.
struct OpenTx {
    context: TxContext,
    changes: Vec<Change>,
    /// Chunks of it already published.
    chunks: u32,
}

struct Capture<'a> {
    pipeline: &'a str,
    broker: &'a Broker,
    chain: TransformChain,
    /// A new version of the chain, swapped in at the next transaction boundary.
    next_chain: Option<TransformChain>,
    opts: &'a CaptureOptions,
    tracker: mpsc::Sender<(Option<Lsn>, PendingConfirm)>,
    batch: Batch,
    open: Option<OpenTx>,
    last_published: Lsn,
    last_publish_at: Instant,
    received: Lsn,
}

/// Streams the slot until `shutdown` fires, then publishes what is whole,
/// waits for its confirms, confirms them to PostgreSQL, and returns.
pub async fn run(
    pipeline: &str,
    target: &PgTarget,
    tables: &[TableName],
    transforms: Transforms,
    broker: &Broker,
    opts: &CaptureOptions,
    shutdown: CancellationToken,
) -> Result<(), CaptureError> {
    let pg = target.sql().await?;
    let slot = crate::source::ensure_slot(target, &pg, pipeline).await?;
    drop(pg);
    let start = slot.confirmed_flush;
    let filter = tables
        .iter()
        .map(TableName::wal2json_filter)
        .collect::<Vec<_>>()
        .join(",");
    let mut options: Vec<(&str, String)> = wal2json::BASE_OPTIONS
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    options.push(("add-tables", filter));
    let client = target.replication().await?;
    let mut stream = client
        .start_replication(pipeline, start, &options)
        .await
        .map_err(|e| target.replication_error(e))?;
    tracing::info!(pipeline, from = %start, "capture streaming");

    let (track_tx, track_rx) = mpsc::channel(opts.max_in_flight);
    let (confirmed_tx, mut confirmed_rx) = watch::channel(start);
    let mut tracker = tokio::spawn(track(track_rx, confirmed_tx));
    let mut watcher = transforms.reloads;
    let mut capture = Capture {
        pipeline,
        broker,
        chain: transforms.chain,
        next_chain: None,
        opts,
        tracker: track_tx,
        batch: Batch {
            transactions: Vec::new(),
            changes: 0,
            last_lsn: start,
            since: None,
        },
        open: None,
        last_published: start,
        last_publish_at: Instant::now(),
        received: start,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = start;
    let mut reported_at = Instant::now();

    let outcome: Result<(), CaptureError> = async {
        loop {
            let linger_at = capture.batch.since.map(|t| t + opts.linger);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                joined = &mut tracker => return Err(tracker_result(joined).err().unwrap_or_else(|| {
                    QueueError::NotConfirmed("the confirm tracker stopped".into())
                }).into()),
                frame = stream.recv() => {
                    match frame.map_err(|e| target.replication_error(e))? {
                        Frame::XLogData { start, data } => {
                            capture.received = capture.received.max(start);
                            capture.on_output(&data).await?;
                        }
                        Frame::Keepalive { wal_end, reply_requested } => {
                            capture.received = capture.received.max(wal_end);
                            capture.on_keepalive(wal_end);
                            if reply_requested {
                                let flush = *confirmed_rx.borrow_and_update();
                                stream.send_status(capture.received, flush, false).await.map_err(|e| target.replication_error(e))?;
                                (reported, reported_at) = (flush, Instant::now());
                            }
                        }
                    }
                }
                _ = sleep_until_opt(linger_at) => capture.flush().await?,
                Some(chain) = next_chain(&mut watcher) => capture.next_chain = Some(chain),
                _ = tick.tick() => {
                    capture.heartbeat().await?;
                    let flush = *confirmed_rx.borrow_and_update();
                    if flush != reported || reported_at.elapsed() >= Duration::from_secs(10) {
                        stream.send_status(capture.received, flush, false).await.map_err(|e| target.replication_error(e))?;
                        (reported, reported_at) = (flush, Instant::now());
                    }
                }
            }
        }
    }
    .await;
    outcome?;

    // Drain: publish whole transactions, wait for every confirm, and tell the server.
    capture.flush().await?;
    let Capture { tracker: track_tx, .. } = capture;
    drop(track_tx);
    match tokio::time::timeout(Duration::from_secs(30), &mut tracker).await {
        Ok(joined) => tracker_result(joined)?,
        Err(_) => {
            return Err(QueueError::NotConfirmed("confirms did not arrive within 30 s of shutdown".into()).into());
        }
    }
    let flush = *confirmed_rx.borrow();
    stream
        .send_status(flush, flush, false)
        .await
        .map_err(|e| target.replication_error(e))?;
    stream.close().await;
    tracing::info!(pipeline, confirmed = %flush, "capture stopped");
    Ok(())
}

fn tracker_result(joined: Result<Result<(), QueueError>, tokio::task::JoinError>) -> Result<(), QueueError> {
    joined.map_err(|e| QueueError::NotConfirmed(format!("the confirm tracker failed: {e}")))?
}

async fn next_chain(watcher: &mut Option<ChainWatcher>) -> Option<TransformChain> {
    match watcher {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Awaits confirms in publish order and moves the confirmed position.
async fn track(
    mut pending: mpsc::Receiver<(Option<Lsn>, PendingConfirm)>,
    confirmed: watch::Sender<Lsn>,
) -> Result<(), QueueError> {
    while let Some((lsn, confirm)) = pending.recv().await {
        confirm.wait().await?;
        if let Some(lsn) = lsn {
            confirmed.send_modify(|c| *c = (*c).max(lsn));
        }
    }
    Ok(())
}

impl Capture<'_> {
    async fn on_output(&mut self, data: &[u8]) -> Result<(), CaptureError> {
        let event = match wal2json::decode(data) {
            Ok(e) => e,
            Err(e) => {
                // Nothing can be made of it; keep it, with the reason, and go on.
                tracing::error!(error = %e, "dead-lettering undecodable output");
                let lsn = self
                    .open
                    .as_ref()
                    .map(|o| o.context.commit_lsn.to_string())
                    .unwrap_or_default();
                let why = DeadLetter {
                    stage: "decode",
                    reason: e.to_string(),
                    lsn,
                    table: String::new(),
                };
                self.broker.dead_letter(data, &why).await?;
                return Ok(());
            }
        };
        match event {
            Event::Begin {
                xid,
                commit_lsn,
                commit_time,
            } => {
                if let Some(chain) = self.next_chain.take() {
                    // Every message names one chain version: publish what the old one made first.
                    self.flush().await?;
                    tracing::info!(hashes = ?chain.hashes(), "swapped in the new transform chain");
                    self.chain = chain;
                }
                self.open = Some(OpenTx {
                    context: TxContext {
                        xid,
                        commit_lsn,
                        commit_time,
                    },
                    changes: Vec::new(),
                    chunks: 0,
                });
            }
            Event::Change(change) => self.on_change(change).await?,
            Event::Commit { commit_lsn } => self.on_commit(commit_lsn).await?,
            Event::Message => {}
        }
        Ok(())
    }

    async fn on_change(&mut self, change: Change) -> Result<(), CaptureError> {
        let Some(open) = self.open.as_mut() else {
            return Err(SourceError::Replication("wal2json sent a change outside a transaction".into()).into());
        };
        transform_change(
            self.pipeline,
            &mut self.chain,
            self.broker,
            change,
            &open.context,
            &mut open.changes,
        )
        .await?;
        if open.changes.len() >= self.opts.chunk_changes {
            self.publish_chunk(false).await?;
        }
        Ok(())
    }

    async fn on_commit(&mut self, commit_lsn: Lsn) -> Result<(), CaptureError> {
        let Some(open) = self.open.as_ref() else {
            return Err(SourceError::Replication("wal2json sent a commit outside a transaction".into()).into());
        };
        if open.chunks > 0 {
            self.publish_chunk(true).await?;
            self.open = None;
            return Ok(());
        }
        let Some(open) = self.open.take() else { return Ok(()) };
        if !open.changes.is_empty() {
            self.batch.changes += open.changes.len();
            self.batch.transactions.push(Transaction {
                context: open.context,
                changes: open.changes,
            });
            self.batch.since.get_or_insert_with(Instant::now);
        }
        self.batch.last_lsn = self.batch.last_lsn.max(commit_lsn);
        if self.batch.changes >= self.opts.batch_changes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Between transactions, the server has sent everything up to `wal_end`.
    fn on_keepalive(&mut self, wal_end: Lsn) {
        if self.open.is_none() {
            self.batch.last_lsn = self.batch.last_lsn.max(wal_end);
        }
    }

    /// Publishes the batch of whole transactions, if any.
    async fn flush(&mut self) -> Result<(), CaptureError> {
        if self.batch.transactions.is_empty() {
            self.batch.since = None;
            return Ok(());
        }
        let transactions = std::mem::take(&mut self.batch.transactions);
        let last_lsn = self.batch.last_lsn;
        self.batch.changes = 0;
        self.batch.since = None;
        self.publish(transactions, last_lsn, None).await
    }

    /// When idle and behind, publishes an empty message so the slot can be confirmed past unrelated changes.
    async fn heartbeat(&mut self) -> Result<(), CaptureError> {
        let idle = self.open.is_none() && self.batch.transactions.is_empty();
        if idle && self.batch.last_lsn > self.last_published && self.last_publish_at.elapsed() >= self.opts.heartbeat {
            self.publish(Vec::new(), self.batch.last_lsn, None).await?;
        }
        Ok(())
    }

    /// Publishes the open transaction's changes so far as one chunk.
    async fn publish_chunk(&mut self, last: bool) -> Result<(), CaptureError> {
        // Earlier whole transactions go first, to keep commit order.
        self.flush().await?;
        let Some(open) = self.open.as_mut() else { return Ok(()) };
        let chunk = Chunk {
            index: open.chunks,
            last,
        };
        open.chunks += 1;
        let transaction = Transaction {
            context: open.context.clone(),
            changes: std::mem::take(&mut open.changes),
        };
        let lsn = transaction.context.commit_lsn;
        if last {
            self.batch.last_lsn = self.batch.last_lsn.max(lsn);
        }
        self.publish(vec![transaction], lsn, Some(chunk)).await
    }

    async fn publish(
        &mut self,
        transactions: Vec<Transaction>,
        last_lsn: Lsn,
        chunk: Option<Chunk>,
    ) -> Result<(), CaptureError> {
        let message = Message {
            chunk,
            ..Message::new(self.pipeline, self.chain.hashes(), transactions, last_lsn)
        };
        let confirm = self.broker.publish(&message).await?;
        // Only a transaction's final message moves the confirmed position.
        let moves = chunk.is_none_or(|c| c.last).then_some(last_lsn);
        self.tracker
            .send((moves, confirm))
            .await
            .map_err(|_| QueueError::NotConfirmed("the confirm tracker stopped".into()))?;
        if moves.is_some() {
            self.last_published = last_lsn;
        }
        self.last_publish_at = Instant::now();
        Ok(())
    }
}

/// Runs one change through the chain into `out`; a change the chain refuses is
/// dead-lettered, untransformed, with the reason.
pub(crate) async fn transform_change(
    pipeline: &str,
    chain: &mut TransformChain,
    broker: &Broker,
    change: Change,
    context: &TxContext,
    out: &mut Vec<Change>,
) -> Result<(), QueueError> {
    if chain.is_empty() {
        out.push(change);
        return Ok(());
    }
    let table = change.qualified_table();
    match guest_code(|| chain.apply(change.clone(), context)) {
        Ok(changes) => out.extend(changes),
        Err(e) => {
            tracing::error!(%table, lsn = %context.commit_lsn, error = %e, "dead-lettering a change the transform chain refused");
            let message = Message::new(
                pipeline,
                chain.hashes(),
                vec![Transaction {
                    context: context.clone(),
                    changes: vec![change],
                }],
                context.commit_lsn,
            );
            let why = DeadLetter {
                stage: "transform",
                reason: e.to_string(),
                lsn: context.commit_lsn.to_string(),
                table,
            };
            broker.dead_letter_message(&message, &why).await?;
        }
    }
    Ok(())
}
