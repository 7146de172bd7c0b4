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

use crate::catalog::TableDef;
use crate::catalog::TableName;
use crate::change::{Change, Lsn, Message, Op, Transaction, TxContext};
use crate::observe;
use crate::queue::batcher::{Batcher, Limits, Outgoing};
use crate::queue::{Broker, DeadLetter, PendingConfirm, QueueError};
use crate::source::relations::Relations;
use crate::source::wal2json::{self, Event};
use crate::source::{Frame, PgTarget, SourceError};
use crate::transform::watch::ChainWatcher;
use crate::transform::{Refused, TransformChain, TransformError, guest_code};

/// The dead-letter stage of a partition's own TRUNCATE, which `dlq replay` refuses.
pub const PARTITION_STAGE: &str = "partition";

/// Why the capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A shutdown stopped the transform chain in the middle of a transaction,
    /// which is therefore not published; the slot sends it again next time.
    #[error("stopped while transforming a transaction")]
    Stopped,
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
    /// What goes into one message.
    pub limits: Limits,
    /// Messages awaiting a publisher confirm at once.
    pub max_in_flight: usize,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            limits: Limits::default(),
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

struct Capture<'a> {
    pipeline: &'a str,
    broker: &'a Broker,
    /// The shutdown signal, which also stops the chain between guest calls.
    stop: CancellationToken,
    chain: TransformChain,
    /// The replicated tables, by the relation names wal2json prints.
    relations: Relations,
    /// The partitioned table whose TRUNCATE is being read: PostgreSQL logs one
    /// for the table, followed by one for each of its partitions.
    truncating: Option<TableName>,
    /// A new version of the chain, swapped in at the next transaction boundary.
    next_chain: Option<TransformChain>,
    tracker: mpsc::Sender<(Option<Lsn>, PendingConfirm)>,
    batcher: Batcher,
    /// The context of the transaction being read, for transforms and dead letters.
    open: Option<TxContext>,
    /// Changes of the open transaction waiting for the chain, which takes them
    /// in batches: at the commit, or as soon as a batch is full.
    pending: Vec<Change>,
    /// Messages decided and not yet published.
    out: Vec<Outgoing>,
    received: Lsn,
}

/// Streams the slot until `shutdown` fires, then publishes what is whole,
/// waits for its confirms, confirms them to PostgreSQL, and returns.
///
/// A publish that RabbitMQ refuses or returns ends the stream with an error:
/// the slot was confirmed only up to the messages before it, so the next
/// attempt resumes from there and sends the refused transactions again. Any
/// message RabbitMQ accepted after the refused one names a predecessor the
/// apply has not reached, and is never applied.
pub async fn run(
    pipeline: &str,
    target: &PgTarget,
    tables: &[TableDef],
    transforms: Transforms,
    broker: &Broker,
    opts: &CaptureOptions,
    shutdown: CancellationToken,
) -> Result<(), CaptureError> {
    let pg = target.sql().await?;
    let slot = crate::source::ensure_slot(target, &pg, pipeline).await?;
    let relations = Relations::open(tables, Relations::needs_catalog(tables).then_some(pg), pipeline).await?;
    let start = slot.confirmed_flush;
    let filter = relations.wal2json_filter();
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
    // Any number that differs between sessions will do: the clock's nanoseconds.
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut batcher = Batcher::new(
        pipeline,
        opts.limits.clone(),
        transforms.chain.hashes().to_vec(),
        start,
        Instant::now(),
        session,
    );
    batcher.set_transforms(transforms.chain.hashes().to_vec(), transforms.chain.targets().to_vec());
    let mut chain = transforms.chain;
    chain.stop_when(shutdown.clone());
    let mut capture = Capture {
        pipeline,
        broker,
        stop: shutdown.clone(),
        chain,
        relations,
        truncating: None,
        next_chain: None,
        tracker: track_tx,
        batcher,
        open: None,
        pending: Vec::new(),
        out: Vec::new(),
        received: start,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = start;
    let mut reported_at = Instant::now();

    let mut tracker_joined = false;
    let outcome: Result<(), CaptureError> = async {
        loop {
            let linger_at = capture.batcher.linger_deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                joined = &mut tracker => {
                    tracker_joined = true;
                    return Err(tracker_result(joined).err().unwrap_or_else(|| {
                        QueueError::NotConfirmed("the confirm tracker stopped".into())
                    }).into());
                }
                frame = stream.recv() => {
                    match frame.map_err(|e| target.replication_error(e))? {
                        Frame::XLogData { start, data } => {
                            capture.received = capture.received.max(start);
                            match capture.on_output(&data).await {
                                Err(CaptureError::Stopped) => return Ok(()),
                                other => other?,
                            }
                        }
                        Frame::Keepalive { wal_end, reply_requested } => {
                            capture.received = capture.received.max(wal_end);
                            capture.batcher.keepalive(wal_end);
                            if reply_requested {
                                let flush = capture.relations.confirmable(*confirmed_rx.borrow_and_update());
                                stream.send_status(capture.received, flush, false).await.map_err(|e| target.replication_error(e))?;
                                (reported, reported_at) = (flush, Instant::now());
                            }
                        }
                    }
                }
                _ = sleep_until_opt(linger_at) => capture.tick().await?,
                Some(chain) = next_chain(&mut watcher) => capture.next_chain = Some(chain),
                _ = tick.tick() => {
                    capture.tick().await?;
                    let flush = capture.relations.confirmable(*confirmed_rx.borrow_and_update());
                    if flush != reported || reported_at.elapsed() >= Duration::from_secs(10) {
                        stream.send_status(capture.received, flush, false).await.map_err(|e| target.replication_error(e))?;
                        (reported, reported_at) = (flush, Instant::now());
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        // A publish that found the tracker gone stopped first: the tracker's own
        // error says why (a refused publish, with RabbitMQ's reason).
        if !tracker_joined && tracker.is_finished() {
            tracker_result((&mut tracker).await)?;
        }
        return Err(e);
    }

    // Drain: publish whole transactions, wait for every confirm, and tell the server.
    capture.batcher.flush(&mut capture.out);
    capture.publish().await?;
    let Capture {
        tracker: track_tx,
        relations,
        ..
    } = capture;
    drop(track_tx);
    match tokio::time::timeout(Duration::from_secs(5), &mut tracker).await {
        Ok(joined) => tracker_result(joined)?,
        Err(_) => {
            return Err(QueueError::NotConfirmed("confirms did not arrive within 5 s of shutdown".into()).into());
        }
    }
    let flush = relations.confirmable(*confirmed_rx.borrow());
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
///
/// It stops at the first refused publish: the position never moves past a
/// message RabbitMQ does not hold, even if later ones were accepted.
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
                let why = DeadLetter {
                    stage: "decode",
                    reason: e.to_string(),
                    lsn: self.open.as_ref().map(|o| o.commit_lsn.to_string()).unwrap_or_default(),
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
                if self.open.is_some() {
                    return Err(SourceError::Replication("wal2json sent a BEGIN inside a transaction".into()).into());
                }
                // Also here: while a backlog streams, the loop's tick seldom runs.
                self.relations.check().await?;
                if let Some(chain) = self.next_chain.take() {
                    // Every message names one chain version: publish what the old one made first.
                    self.batcher.flush(&mut self.out);
                    tracing::info!(hashes = ?chain.hashes(), "swapped in the new transform chain");
                    let mut chain = chain;
                    chain.stop_when(self.stop.clone());
                    self.batcher
                        .set_transforms(chain.hashes().to_vec(), chain.targets().to_vec());
                    observe::chain_swapped(chain.hashes());
                    self.chain = chain;
                }
                let context = TxContext {
                    xid,
                    commit_lsn,
                    commit_time,
                };
                self.batcher.begin(context.clone());
                self.open = Some(context);
            }
            Event::Change { mut change, old_row } => {
                let Some(context) = self.open.as_ref() else {
                    return Err(SourceError::Replication("wal2json sent a change outside a transaction".into()).into());
                };
                // A truncate is rare: keep the relation's own name.
                let relation = (change.op == Op::Truncate).then(|| TableName {
                    schema: change.schema.clone(),
                    name: change.table.clone(),
                });
                let Some(def) = self.relations.resolve(&mut change, context.commit_lsn).await? else {
                    return Ok(());
                };
                observe::captured(&change);
                // Before any transform: a rewrite must see what the update left out. The
                // whole old row is trusted only under FULL: a USING INDEX identity can
                // look whole when an update leaves a TOASTed value out.
                let old_row = if def.full_identity { old_row } else { Vec::new() };
                wal2json::complete_update(&mut change, old_row, &def.columns);
                let partitioned = def.partitions.is_some();
                let table = def.name.clone();
                if !self.chain.is_empty() {
                    change = with_insert_key(change, &def.primary_key);
                }
                match relation {
                    Some(relation) if partitioned && relation == table => self.truncating = Some(table),
                    // A partition's own truncate after its table's: already emptied.
                    Some(_) if partitioned && self.truncating.as_ref() == Some(&table) => return Ok(()),
                    Some(relation) if partitioned => {
                        change.schema = relation.schema;
                        change.table = relation.name;
                        return self.dead_letter_truncate(change).await;
                    }
                    _ => self.truncating = None,
                }
                if self.chain.is_empty() {
                    self.batcher.change(change, &mut self.out);
                } else {
                    self.pending.push(change);
                    if self.pending.len() >= self.chain.limits().batch {
                        self.transform_pending().await?;
                    }
                }
            }
            Event::Commit { commit_lsn } => {
                self.truncating = None;
                self.transform_pending().await?;
                if self.open.take().is_none() {
                    return Err(SourceError::Replication("wal2json sent a commit outside a transaction".into()).into());
                }
                self.batcher.commit(commit_lsn, Instant::now(), &mut self.out);
            }
            Event::Message => {}
        }
        self.publish().await
    }

    /// Dead-letters, under the partition's own name, the TRUNCATE of some of a
    /// table's partitions: the target holds every partition's rows in one table
    /// and cannot tell which were theirs.
    async fn dead_letter_truncate(&mut self, change: Change) -> Result<(), CaptureError> {
        let Some(context) = self.open.as_ref() else {
            return Ok(());
        };
        let table = change.qualified_table();
        tracing::error!(%table, lsn = %context.commit_lsn, "dead-lettering a TRUNCATE of a partition alone");
        let why = DeadLetter {
            stage: PARTITION_STAGE,
            reason: format!(
                "a TRUNCATE of partition {table} alone cannot be applied to its table's one MariaDB table, which does not know which rows were in it; delete those rows in MariaDB, or use DELETE on the partition in PostgreSQL"
            ),
            lsn: context.commit_lsn.to_string(),
            table,
        };
        let message = Message::new(
            self.pipeline,
            self.chain.hashes(),
            vec![Transaction {
                context: context.clone(),
                changes: vec![change],
            }],
            context.commit_lsn,
        );
        self.broker.dead_letter_message(&message, &why).await?;
        Ok(())
    }

    /// Runs the changes waiting for the chain through it, in one batch, into the batcher.
    async fn transform_pending(&mut self) -> Result<(), CaptureError> {
        let (Some(context), false) = (self.open.as_ref(), self.pending.is_empty()) else {
            return Ok(());
        };
        let changes = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(changes.len());
        if !transform_changes(self.pipeline, &mut self.chain, self.broker, changes, context, &mut out).await? {
            return Err(CaptureError::Stopped);
        }
        for change in out {
            self.batcher.change(change, &mut self.out);
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), CaptureError> {
        self.relations.check().await?;
        self.batcher.tick(Instant::now(), &mut self.out);
        self.publish().await
    }

    /// Publishes what the batcher decided, in order, each with the position it lets the slot be confirmed to.
    async fn publish(&mut self) -> Result<(), CaptureError> {
        if self.out.is_empty() {
            return Ok(());
        }
        for outgoing in std::mem::take(&mut self.out) {
            observe::published(&outgoing.message);
            let confirm = self.broker.publish(&outgoing.message).await?;
            self.tracker
                .send((outgoing.confirms, confirm))
                .await
                .map_err(|_| QueueError::NotConfirmed("the confirm tracker stopped".into()))?;
        }
        self.batcher.published(Instant::now());
        Ok(())
    }
}

/// An insert with its key filled in from its new row's `primary_key` columns:
/// a transform sees it, so that a change it routes to a new table names the
/// key that table needs.
pub(crate) fn with_insert_key(mut change: Change, primary_key: &[String]) -> Change {
    if change.op == Op::Insert && change.key.is_empty() {
        change.key = primary_key
            .iter()
            .filter_map(|k| change.columns.iter().find(|c| &c.name == k).cloned())
            .collect();
    }
    change
}

/// Runs changes of one transaction through the chain, in batches, into `out`;
/// a change the chain refuses is dead-lettered, untransformed, with the reason.
///
/// Returns `false`, with `out` incomplete, when a shutdown stopped the chain
/// first: the transaction must then not be published.
pub(crate) async fn transform_changes(
    pipeline: &str,
    chain: &mut TransformChain,
    broker: &Broker,
    changes: Vec<Change>,
    context: &TxContext,
    out: &mut Vec<Change>,
) -> Result<bool, QueueError> {
    if chain.is_empty() {
        out.extend(changes);
        return Ok(true);
    }
    // The source table of each change, as an index into `sources`: a batch names few tables.
    let mut sources: Vec<(String, String)> = Vec::new();
    let origins: Vec<usize> = changes
        .iter()
        .map(
            |c| match sources.iter().rposition(|(s, t)| *s == c.schema && *t == c.table) {
                Some(at) => at,
                None => {
                    sources.push((c.schema.clone(), c.table.clone()));
                    sources.len() - 1
                }
            },
        )
        .collect();
    let outcomes = guest_code(|| chain.apply_batch(changes, context));
    if outcomes
        .iter()
        .any(|o| matches!(o, Err(refused) if matches!(refused.error, TransformError::Stopped)))
    {
        return Ok(false);
    }
    for (origin, outcome) in origins.into_iter().zip(outcomes) {
        let Refused { error: e, change } = match outcome {
            Ok(changes) => {
                // The key an insert was given is for a table made from a routed change;
                // one that stays in its source table, which exists, needs no key on the wire.
                let (schema, table) = &sources[origin];
                out.extend(changes.into_iter().map(|mut c| {
                    if c.op == Op::Insert && c.table == *table && c.schema == *schema {
                        c.key.clear();
                    }
                    c
                }));
                continue;
            }
            Err(refused) => *refused,
        };
        let table = change.qualified_table();
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
    Ok(true)
}
