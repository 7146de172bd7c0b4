//! What the capture publishes, and when, decided without servers.
//!
//! Transactions come in from the slot already transformed; messages go out.
//! Small consecutive transactions share a message; a transaction too large for
//! one is cut into ordered chunks. Both are bounded by count and by bytes. Every
//! message names the stream position before it (`prev_lsn`) and the position it
//! accounts for (`last_lsn`), so consecutive messages form a chain the apply can
//! check for gaps. Only a message that completes its transactions moves the
//! position the slot may be confirmed to.

use std::time::{Duration, Instant};

use crate::change::{Change, Chunk, Lsn, Message, Target, Transaction, TxContext};

/// Limits for the messages the capture publishes.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Publish a batch of small transactions once it holds this many changes.
    pub batch_changes: usize,
    /// Split a transaction into chunks of at most this many changes.
    pub chunk_changes: usize,
    /// Keep batches and chunks under about this many bytes (a single larger change travels alone).
    pub message_bytes: usize,
    /// Publish a batch at the latest this long after its first transaction arrived.
    pub linger: Duration,
    /// While only unrelated tables change, publish a heartbeat this often so the slot moves on.
    pub heartbeat: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_changes: 1_000,
            chunk_changes: 2_000,
            message_bytes: 1024 * 1024,
            linger: Duration::from_millis(10),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// A message to publish, and the position the slot may be confirmed to once RabbitMQ has it.
#[derive(Debug)]
pub struct Outgoing {
    /// The message.
    pub message: Message,
    /// `Some` for a message that completes its transactions; `None` for a chunk before the last.
    pub confirms: Option<Lsn>,
}

/// The transaction being read.
#[derive(Debug)]
struct Open {
    context: TxContext,
    changes: Vec<Change>,
    bytes: usize,
    /// Chunks of it already cut.
    chunks: u32,
}

/// The capture's publishing decisions.
#[derive(Debug)]
pub struct Batcher {
    pipeline: String,
    limits: Limits,
    /// Transform hashes stamped on the messages.
    transforms: Vec<String>,
    /// The tables the chain declares ahead, carried by the messages for the apply.
    targets: Vec<Target>,
    /// The `last_lsn` of the last message that completed its transactions: the next message's `prev_lsn`.
    stream: Lsn,
    batch: Vec<Transaction>,
    batch_changes: usize,
    batch_bytes: usize,
    /// The highest position the batch accounts for: its last commit, or a later
    /// empty transaction or idle keepalive.
    batch_last: Lsn,
    batch_since: Option<Instant>,
    open: Option<Open>,
    last_out: Instant,
    /// Stamped on chunks, so that chunks cut by another session are never staged with these.
    session: u64,
}

impl Batcher {
    /// A batcher whose stream starts at `start` (the slot's confirmed position); `session`
    /// tells this capture session's chunks from any other's.
    pub fn new(
        pipeline: &str,
        limits: Limits,
        transforms: Vec<String>,
        start: Lsn,
        now: Instant,
        session: u64,
    ) -> Self {
        Batcher {
            pipeline: pipeline.to_owned(),
            limits,
            transforms,
            targets: Vec::new(),
            stream: start,
            batch: Vec::new(),
            batch_changes: 0,
            batch_bytes: 0,
            batch_last: start,
            batch_since: None,
            open: None,
            last_out: now,
            session,
        }
    }

    /// Whether a transaction is being read.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// When the batch must go out at the latest, if one is waiting.
    pub fn linger_deadline(&self) -> Option<Instant> {
        self.batch_since.map(|t| t + self.limits.linger)
    }

    /// Transform hashes and declared tables for messages from now on; the
    /// caller flushes first, so a message names one chain.
    pub fn set_transforms(&mut self, transforms: Vec<String>, targets: Vec<Target>) {
        self.transforms = transforms;
        self.targets = targets;
    }

    /// A transaction begins.
    pub fn begin(&mut self, context: TxContext) {
        debug_assert!(self.open.is_none(), "the capture refuses a BEGIN inside a transaction");
        self.open = Some(Open {
            context,
            changes: Vec::new(),
            bytes: 0,
            chunks: 0,
        });
    }

    /// A transformed change of the open transaction; returns a chunk when the transaction has outgrown a message.
    pub fn change(&mut self, change: Change, out: &mut Vec<Outgoing>) {
        let Some(open) = self.open.as_mut() else { return };
        let bytes = change.approx_bytes();
        // Cut before a change that would take the chunk over the byte limit, so that only a
        // change larger than the limit by itself makes a message larger than it.
        if !open.changes.is_empty() && open.bytes + bytes > self.limits.message_bytes {
            self.cut_chunk(false, out);
        }
        let Some(open) = self.open.as_mut() else { return };
        open.changes.push(change);
        open.bytes += bytes;
        if open.changes.len() >= self.limits.chunk_changes {
            self.cut_chunk(false, out);
        }
    }

    /// The open transaction commits at `commit_lsn`.
    pub fn commit(&mut self, commit_lsn: Lsn, now: Instant, out: &mut Vec<Outgoing>) {
        let Some(open) = self.open.as_ref() else { return };
        if open.chunks > 0 {
            self.cut_chunk(true, out);
            self.open = None;
            return;
        }
        let Some(open) = self.open.take() else { return };
        if !open.changes.is_empty() {
            if self.batch_bytes + open.bytes > self.limits.message_bytes {
                self.flush(out);
            }
            self.batch_changes += open.changes.len();
            self.batch_bytes += open.bytes;
            self.batch.push(Transaction {
                context: open.context,
                changes: open.changes,
            });
            self.batch_since.get_or_insert(now);
        }
        self.batch_last = self.batch_last.max(commit_lsn);
        if self.batch_changes >= self.limits.batch_changes || self.batch_bytes >= self.limits.message_bytes {
            self.flush(out);
        }
    }

    /// Between transactions, the server has sent everything up to `wal_end`.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if self.open.is_none() {
            self.batch_last = self.batch_last.max(wal_end);
        }
    }

    /// Time passes: a lingering batch goes out, and an idle stream that has moved gets a heartbeat.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        if self.linger_deadline().is_some_and(|at| now >= at) {
            self.flush(out);
        }
        let idle = self.open.is_none() && self.batch.is_empty();
        if idle && self.batch_last > self.stream && now.duration_since(self.last_out) >= self.limits.heartbeat {
            self.emit(Vec::new(), self.batch_last, None, out);
            self.last_out = now;
        }
    }

    /// Publishes the batch of whole transactions, if any.
    pub fn flush(&mut self, out: &mut Vec<Outgoing>) {
        self.batch_since = None;
        if self.batch.is_empty() {
            return;
        }
        let transactions = std::mem::take(&mut self.batch);
        self.batch_changes = 0;
        self.batch_bytes = 0;
        self.emit(transactions, self.batch_last, None, out);
    }

    /// Cuts the open transaction's changes so far into a chunk.
    fn cut_chunk(&mut self, last: bool, out: &mut Vec<Outgoing>) {
        // Earlier whole transactions go first, to keep commit order.
        self.flush(out);
        let Some(open) = self.open.as_mut() else { return };
        let chunk = Chunk {
            index: open.chunks,
            last,
            session: self.session,
        };
        open.chunks += 1;
        open.bytes = 0;
        let transaction = Transaction {
            context: open.context.clone(),
            changes: std::mem::take(&mut open.changes),
        };
        let commit_lsn = open.context.commit_lsn;
        if last {
            self.batch_last = self.batch_last.max(commit_lsn);
        }
        // Every chunk names the position before the transaction: the batch before it has
        // just been flushed, and nothing else is published until the transaction ends.
        let message = self.message(vec![transaction], commit_lsn, Some(chunk));
        if last {
            self.stream = commit_lsn;
        }
        out.push(Outgoing {
            message,
            confirms: last.then_some(commit_lsn),
        });
    }

    fn emit(&mut self, transactions: Vec<Transaction>, last_lsn: Lsn, chunk: Option<Chunk>, out: &mut Vec<Outgoing>) {
        let message = self.message(transactions, last_lsn, chunk);
        self.stream = last_lsn;
        out.push(Outgoing {
            message,
            confirms: Some(last_lsn),
        });
    }

    fn message(&mut self, transactions: Vec<Transaction>, last_lsn: Lsn, chunk: Option<Chunk>) -> Message {
        let mut message = Message::new(&self.pipeline, &self.transforms, transactions, last_lsn);
        message.targets.clone_from(&self.targets);
        message.prev_lsn = Some(self.stream);
        message.chunk = chunk;
        message
    }

    /// Notes that a message went out at `now` (heartbeats wait for a quiet stream).
    pub fn published(&mut self, now: Instant) {
        self.last_out = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, Op, Value};

    fn limits() -> Limits {
        Limits {
            batch_changes: 3,
            chunk_changes: 4,
            message_bytes: 10_000,
            linger: Duration::from_millis(10),
            heartbeat: Duration::from_secs(5),
        }
    }

    fn change(text_len: usize) -> Change {
        Change {
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![Column {
                name: "v".into(),
                pg_type: "text".into(),
                value: Value::Text("x".repeat(text_len)),
            }],
            key: Vec::new(),
        }
    }

    fn ctx(lsn: u64) -> TxContext {
        TxContext {
            xid: lsn,
            commit_lsn: Lsn(lsn),
            commit_time: String::new(),
        }
    }

    /// Feeds one transaction of `n` changes of `len` bytes each.
    fn tx(b: &mut Batcher, lsn: u64, n: usize, len: usize, now: Instant, out: &mut Vec<Outgoing>) {
        b.begin(ctx(lsn));
        for _ in 0..n {
            b.change(change(len), out);
        }
        b.commit(Lsn(lsn), now, out);
    }

    /// Each message's (prev, last, chunk index) and whether it confirms.
    fn chain(out: &[Outgoing]) -> Vec<(u64, u64, Option<u32>, bool)> {
        out.iter()
            .map(|o| {
                (
                    o.message.prev_lsn.map_or(0, |l| l.0),
                    o.message.last_lsn.0,
                    o.message.chunk.map(|c| c.index),
                    o.confirms.is_some(),
                )
            })
            .collect()
    }

    #[test]
    fn small_transactions_share_a_message_that_names_its_predecessor() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        tx(&mut b, 110, 1, 10, now, &mut out);
        tx(&mut b, 120, 1, 10, now, &mut out);
        assert!(out.is_empty(), "two changes stay under the batch limit");
        tx(&mut b, 130, 1, 10, now, &mut out);
        assert_eq!(chain(&out), [(100, 130, None, true)]);
        assert_eq!(out[0].message.xids, [110, 120, 130]);
        tx(&mut b, 140, 3, 10, now, &mut out);
        assert_eq!(
            chain(&out)[1],
            (130, 140, None, true),
            "the next message follows the first"
        );
    }

    #[test]
    fn a_lingering_batch_goes_out_and_keeps_the_chain() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        tx(&mut b, 110, 1, 10, now, &mut out);
        b.tick(now, &mut out);
        assert!(out.is_empty());
        b.tick(now + Duration::from_millis(11), &mut out);
        assert_eq!(chain(&out), [(100, 110, None, true)]);
    }

    #[test]
    fn a_large_transaction_is_cut_into_chunks_that_share_its_predecessor() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        tx(&mut b, 110, 1, 10, now, &mut out);
        tx(&mut b, 150, 9, 10, now, &mut out);
        // The earlier small transaction goes first; then chunks of 4, 4 and the final 1.
        assert_eq!(
            chain(&out),
            [
                (100, 110, None, true),
                (110, 150, Some(0), false),
                (110, 150, Some(1), false),
                (110, 150, Some(2), true),
            ]
        );
        assert!(out[3].message.chunk.is_some_and(|c| c.last));
        tx(&mut b, 160, 3, 10, now, &mut out);
        assert_eq!(chain(&out)[4], (150, 160, None, true));
    }

    #[test]
    fn chunks_and_batches_are_bounded_by_bytes() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        // Three changes of ~3.9 KB as estimated: two fit under 10 000 bytes, the third starts a new chunk.
        tx(&mut b, 110, 3, 3_000, now, &mut out);
        let sizes: Vec<usize> = out.iter().map(|o| o.message.change_count()).collect();
        assert_eq!(sizes, [2, 1]);
        // Two small transactions of ~6 KB each do not share a message.
        out.clear();
        tx(&mut b, 120, 1, 6_000, now, &mut out);
        tx(&mut b, 130, 1, 6_000, now, &mut out);
        b.flush(&mut out);
        assert_eq!(chain(&out), [(110, 120, None, true), (120, 130, None, true)]);
    }

    #[test]
    fn a_single_change_larger_than_the_limit_travels_alone() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        tx(&mut b, 110, 3, 30_000, now, &mut out);
        let sizes: Vec<usize> = out.iter().map(|o| o.message.change_count()).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }

    #[test]
    fn an_idle_stream_sends_a_heartbeat_only_when_it_has_moved() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        b.tick(now + Duration::from_secs(6), &mut out);
        assert!(out.is_empty(), "nothing moved");
        // An unrelated transaction commits, then a keepalive.
        b.begin(ctx(120));
        b.commit(Lsn(120), now, &mut out);
        b.keepalive(Lsn(130));
        b.tick(now + Duration::from_secs(1), &mut out);
        assert!(out.is_empty(), "too soon");
        b.tick(now + Duration::from_secs(6), &mut out);
        assert_eq!(chain(&out), [(100, 130, None, true)]);
        assert!(out[0].message.transactions.is_empty());
    }

    #[test]
    fn a_keepalive_inside_a_transaction_does_not_move_the_position() {
        let now = Instant::now();
        let mut b = Batcher::new("p", limits(), Vec::new(), Lsn(100), now, 7);
        let mut out = Vec::new();
        b.begin(ctx(150));
        b.change(change(1), &mut out);
        b.keepalive(Lsn(200));
        b.commit(Lsn(150), now, &mut out);
        b.flush(&mut out);
        assert_eq!(chain(&out), [(100, 150, None, true)]);
    }
}
