//! The domain model every stage speaks: changes, transactions, and the
//! messages that carry them through the broker.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A position in PostgreSQL's write-ahead log.
///
/// Only commit LSNs are totally ordered between transactions, so the pipeline
/// tracks progress by the commit LSN (the end of the commit record) alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// An LSN that is not of the form `X/Y` in hexadecimal.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not an LSN of the form X/Y (hexadecimal)")]
pub struct BadLsn(String);

impl FromStr for Lsn {
    type Err = BadLsn;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or_else(|| BadLsn(s.to_owned()))?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| BadLsn(s.to_owned()))?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| BadLsn(s.to_owned()))?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(BadLsn(s.to_owned()));
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One column value, typed so that transforms and the target never re-parse text.
///
/// Date and time values keep PostgreSQL's ISO text; timestamps with a time zone
/// are captured in UTC (`YYYY-MM-DD HH:MM:SS[.ffffff]+00`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "kebab-case")]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `smallint`, `integer`, `bigint` (and their serial forms).
    Int(i64),
    /// `real`, `double precision`.
    Float(f64),
    /// `numeric`, as its exact decimal text.
    Numeric(String),
    /// Character types and any type without a dedicated variant, as PostgreSQL prints it.
    Text(String),
    /// `bytea`, hex-encoded in JSON.
    Bytes(#[serde(with = "hex::serde")] Vec<u8>),
    /// `json` / `jsonb`, as its JSON text.
    Json(String),
    /// `date`, `YYYY-MM-DD`.
    Date(String),
    /// `time`, `HH:MM:SS[.ffffff]`.
    Time(String),
    /// `timestamp` without time zone.
    Timestamp(String),
    /// `timestamp with time zone`, in UTC.
    Timestamptz(String),
    /// A TOASTed column that an UPDATE left unchanged: the target keeps its value.
    UnchangedToast,
}

/// A named, typed column value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// PostgreSQL type as `format_type` prints it, for example `character varying(60)`.
    #[serde(rename = "type")]
    pub pg_type: String,
    /// The value.
    pub value: Value,
}

/// What a change does to its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A new row.
    Insert,
    /// A changed row; `key` names the row as it was.
    Update,
    /// A removed row; `key` names it.
    Delete,
    /// Every row of the table removed.
    Truncate,
}

/// One row-level change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What happened.
    pub op: Op,
    /// Schema of the table; a transform may change it to route the change.
    pub schema: String,
    /// Table name; a transform may change it to route the change.
    pub table: String,
    /// The row's new values (insert, update). Empty for delete and truncate.
    #[serde(default)]
    pub columns: Vec<Column>,
    /// The row's identity before the change (update, delete). Empty for insert and truncate.
    #[serde(default)]
    pub key: Vec<Column>,
}

impl Change {
    /// The qualified source-style name, `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// A table that a transform declares ahead, so that the apply creates it with
/// these columns, types and key rather than inferring them from the first
/// change that reaches it. Messages carry the declarations of their chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Schema of the target table.
    pub schema: String,
    /// Target table name.
    pub table: String,
    /// Its columns, each with its PostgreSQL type.
    pub columns: Vec<TargetColumn>,
    /// The names of its primary-key columns, all among `columns`.
    pub key: Vec<String>,
}

/// A declared column: its name and PostgreSQL type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetColumn {
    /// Column name.
    pub name: String,
    /// PostgreSQL type as `format_type` prints it.
    #[serde(rename = "type")]
    pub pg_type: String,
}

impl Target {
    /// Why the declaration cannot make a table, if it cannot.
    pub fn fault(&self) -> Option<String> {
        let name = format!("{}.{}", self.schema, self.table);
        if self.schema.is_empty() || self.table.is_empty() {
            return Some(format!("the declared target '{name}' needs a schema and a table name"));
        }
        if self.columns.is_empty() {
            return Some(format!("the declared target {name} has no columns"));
        }
        if let Some(missing) = self.key.iter().find(|k| !self.columns.iter().any(|c| &c.name == *k)) {
            return Some(format!(
                "the key column {missing} of the declared target {name} is not among its columns"
            ));
        }
        None
    }
}

/// Where a change sits in its source transaction; given to transforms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxContext {
    /// PostgreSQL transaction id.
    pub xid: u64,
    /// Commit LSN (end of the commit record).
    pub commit_lsn: Lsn,
    /// Commit time as PostgreSQL prints it, in UTC.
    pub commit_time: String,
}

/// A whole source transaction (or, in a chunked message, a slice of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// Transaction id, commit LSN and commit time.
    #[serde(flatten)]
    pub context: TxContext,
    /// Its changes in source order, after the transform chain.
    pub changes: Vec<Change>,
}

/// The version of the message body format written. Bumped on any incompatible change.
///
/// Version 2 added `prev_lsn`; version 1 messages (without it) are still read.
pub const MESSAGE_FORMAT: u32 = 2;

/// The oldest message body format still read.
pub const OLDEST_MESSAGE_FORMAT: u32 = 1;

/// Position of a message within a source transaction too large for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Zero-based index of this chunk.
    pub index: u32,
    /// Whether this is the transaction's final chunk.
    pub last: bool,
    /// The capture session that cut it: chunks of one transaction from two sessions
    /// (a re-send after a restart, perhaps through another transform version) never mix.
    #[serde(default)]
    pub session: u64,
}

/// The unit published to RabbitMQ: whole consecutive transactions, or one
/// chunk of a large transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Message body format version ([`MESSAGE_FORMAT`]).
    pub format: u32,
    /// The pipeline (slot) name that produced it.
    pub pipeline: String,
    /// The stream position before this message: the `last_lsn` of the message
    /// that precedes it. The apply applies it only once its offset has reached
    /// this position, so a message past a gap is never applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_lsn: Option<Lsn>,
    /// Commit LSN of the first transaction carried.
    pub first_lsn: Lsn,
    /// Commit LSN of the last transaction carried; the apply offset moves to it.
    pub last_lsn: Lsn,
    /// Transaction ids carried, in order.
    pub xids: Vec<u64>,
    /// Content hashes (SHA-256, hex) of the transform modules that produced it, in chain order.
    pub transforms: Vec<String>,
    /// Set when the message is one slice of a larger transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<Chunk>,
    /// Set when `wasmcdc dlq replay` re-drives a dead letter: it is applied
    /// even though the offset has moved past it, and it does not move the offset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// The tables its chain declares ahead ([`Target`]); the apply creates a
    /// missing target from its declaration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Target>,
    /// The transactions, in commit order.
    pub transactions: Vec<Transaction>,
}

impl Message {
    /// A message carrying whole `transactions` and accounting for the source up to `last_lsn`.
    pub fn new(pipeline: &str, transforms: &[String], transactions: Vec<Transaction>, last_lsn: Lsn) -> Self {
        Message {
            format: MESSAGE_FORMAT,
            pipeline: pipeline.to_owned(),
            prev_lsn: None,
            first_lsn: transactions.first().map_or(last_lsn, |t| t.context.commit_lsn),
            last_lsn,
            xids: transactions.iter().map(|t| t.context.xid).collect(),
            transforms: transforms.to_vec(),
            chunk: None,
            replay: false,
            targets: Vec::new(),
            transactions,
        }
    }

    /// The message without its transactions and declarations: where it stands in the stream.
    pub fn header(&self) -> Message {
        Message {
            format: self.format,
            pipeline: self.pipeline.clone(),
            prev_lsn: self.prev_lsn,
            first_lsn: self.first_lsn,
            last_lsn: self.last_lsn,
            xids: Vec::new(),
            transforms: Vec::new(),
            chunk: self.chunk,
            replay: self.replay,
            targets: Vec::new(),
            transactions: Vec::new(),
        }
    }

    /// Number of changes carried.
    pub fn change_count(&self) -> usize {
        self.transactions.iter().map(|t| t.changes.len()).sum()
    }
}

impl Change {
    /// About how many bytes this change takes in a JSON message body, erring high,
    /// so that messages and statements can be bounded by size before they are built.
    pub fn approx_bytes(&self) -> usize {
        let column = |c: &Column| c.name.len() + c.pg_type.len() + c.value.approx_bytes() + 48;
        64 + self.schema.len() + self.table.len() + self.columns.iter().chain(&self.key).map(column).sum::<usize>()
    }
}

impl Value {
    /// About how many bytes the value takes in JSON: text may need escaping, bytes are hex.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Value::Null | Value::UnchangedToast | Value::Bool(_) | Value::Int(_) | Value::Float(_) => 24,
            Value::Bytes(b) => 2 * b.len() + 2,
            Value::Numeric(s)
            | Value::Text(s)
            | Value::Json(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::Timestamp(s)
            | Value::Timestamptz(s) => s.len() + s.len() / 4 + 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        let lsn: Lsn = "16/B374D848".parse().expect("valid");
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn values_serialize_with_their_type() {
        let v = serde_json::to_string(&Value::Bytes(vec![0xde, 0xad])).expect("json");
        assert_eq!(v, r#"{"type":"bytes","value":"dead"}"#);
        let n = serde_json::to_string(&Value::Null).expect("json");
        assert_eq!(n, r#"{"type":"null"}"#);
        let back: Value = serde_json::from_str(&v).expect("parse");
        assert_eq!(back, Value::Bytes(vec![0xde, 0xad]));
    }
}
