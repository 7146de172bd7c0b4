//! Decoding of wal2json format-version 2 output into the pipeline's changes.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::change::{Change, Column, Lsn, Op, Value};

/// The plugin options the capture always asks for.
pub const BASE_OPTIONS: &[(&str, &str)] = &[
    ("format-version", "2"),
    ("include-transaction", "true"),
    ("include-xids", "true"),
    ("include-timestamp", "true"),
    ("include-lsn", "true"),
    ("include-types", "true"),
    ("include-type-oids", "true"),
    ("include-pk", "true"),
];

/// One decoded wal2json line.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A transaction starts; `commit_lsn` is where it will commit.
    Begin {
        /// Transaction id.
        xid: u64,
        /// End of the commit record.
        commit_lsn: Lsn,
        /// Commit time.
        commit_time: String,
    },
    /// A row change.
    Change(Change),
    /// The transaction ends.
    Commit {
        /// End of the commit record.
        commit_lsn: Lsn,
    },
    /// A logical decoding message (`pg_logical_emit_message`); carries no rows.
    Message,
}

/// A line wal2json produced that this decoder cannot read.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode wal2json output ({reason}): {line}")]
pub struct DecodeError {
    reason: String,
    line: String,
}

#[derive(Deserialize)]
struct Line {
    action: String,
    xid: Option<u64>,
    timestamp: Option<String>,
    nextlsn: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    #[serde(default)]
    columns: Vec<RawColumn>,
    #[serde(default)]
    identity: Vec<RawColumn>,
    #[serde(default)]
    pk: Vec<KeyColumn>,
}

#[derive(Deserialize)]
struct KeyColumn {
    name: String,
}

#[derive(Deserialize)]
struct RawColumn {
    name: String,
    #[serde(rename = "type")]
    pg_type: String,
    typeoid: Option<u32>,
    /// Kept as raw JSON text so that numbers keep every digit.
    value: Box<RawValue>,
}

/// Decodes one wal2json format-version 2 line.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let fail = |reason: String| DecodeError {
        reason,
        line: String::from_utf8_lossy(bytes).chars().take(200).collect(),
    };
    let line: Line = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
    let commit_lsn = || -> Result<Lsn, DecodeError> {
        line.nextlsn
            .as_deref()
            .ok_or_else(|| fail("no nextlsn".into()))?
            .parse()
            .map_err(|e: crate::change::BadLsn| fail(e.to_string()))
    };
    let op = match line.action.as_str() {
        "B" => {
            return Ok(Event::Begin {
                xid: line.xid.unwrap_or_default(),
                commit_lsn: commit_lsn()?,
                commit_time: line.timestamp.clone().unwrap_or_default(),
            });
        }
        "C" => {
            return Ok(Event::Commit {
                commit_lsn: commit_lsn()?,
            });
        }
        "M" => return Ok(Event::Message),
        "I" => Op::Insert,
        "U" => Op::Update,
        "D" => Op::Delete,
        "T" => Op::Truncate,
        other => return Err(fail(format!("unknown action '{other}'"))),
    };
    let columns = |raw: &[RawColumn]| -> Result<Vec<Column>, DecodeError> {
        raw.iter()
            .map(|c| {
                Ok(Column {
                    name: c.name.clone(),
                    pg_type: c.pg_type.clone(),
                    value: typed_value(c).map_err(|reason| fail(format!("column {}: {reason}", c.name)))?,
                })
            })
            .collect()
    };
    Ok(Event::Change(Change {
        op,
        schema: line.schema.clone().ok_or_else(|| fail("no schema".into()))?,
        table: line.table.clone().ok_or_else(|| fail("no table".into()))?,
        columns: columns(&line.columns)?,
        key: key_columns(columns(&line.identity)?, &line.pk),
    }))
}

/// With REPLICA IDENTITY FULL, wal2json sends the whole old row as identity;
/// the row is found by its primary key alone (floats and NULLs never match by equality).
fn key_columns(identity: Vec<Column>, pk: &[KeyColumn]) -> Vec<Column> {
    if pk.is_empty() {
        return identity;
    }
    let keyed: Vec<Column> = pk
        .iter()
        .filter_map(|k| identity.iter().find(|c| c.name == k.name).cloned())
        .collect();
    if keyed.len() == pk.len() { keyed } else { identity }
}

// PostgreSQL type OIDs (pg_type.dat) that get a dedicated value variant.
const BOOL: u32 = 16;
/// `bytea`'s type OID.
pub const BYTEA: u32 = 17;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const JSONB: u32 = 3802;

fn typed_value(c: &RawColumn) -> Result<Value, String> {
    let text = match c.value.get() {
        "null" => return Ok(Value::Null),
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        raw if raw.starts_with('"') => serde_json::from_str::<String>(raw).map_err(|e| e.to_string())?,
        raw => raw.to_owned(),
    };
    value_from_text(c.typeoid.unwrap_or_default(), &c.pg_type, text)
}

/// Types a value from PostgreSQL's text form (or wal2json's), by type OID, and
/// arrays with a JSON form by their type name (`integer[]`), as JSON arrays.
///
/// NaN and ±Infinity in `real`, `double precision` and `numeric` become NULL:
/// MariaDB cannot store them, and wal2json already sends them as null.
pub fn value_from_text(typeoid: u32, pg_type: &str, text: String) -> Result<Value, String> {
    if let Some(element) = crate::catalog::json_array_element(pg_type) {
        return Ok(Value::Json(super::array::to_json(&text, element)?));
    }
    Ok(match typeoid {
        BOOL => Value::Bool(matches!(text.as_str(), "true" | "t")),
        INT2 | INT4 | INT8 => Value::Int(text.parse().map_err(|e| format!("'{text}' is not an integer: {e}"))?),
        FLOAT4 | FLOAT8 => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Float(f),
            Ok(_) => Value::Null,
            Err(e) => return Err(format!("'{text}' is not a float: {e}")),
        },
        NUMERIC if matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity") => Value::Null,
        NUMERIC => Value::Numeric(text),
        // wal2json prints bytea as bare hex; tolerate PostgreSQL's own `\x` prefix too.
        BYTEA => {
            let hex = text.strip_prefix("\\x").unwrap_or(&text);
            Value::Bytes(hex::decode(hex).map_err(|e| format!("bytea is not hex: {e}"))?)
        }
        JSON | JSONB => Value::Json(text),
        DATE => Value::Date(text),
        TIME => Value::Time(text),
        TIMESTAMP => Value::Timestamp(text),
        TIMESTAMPTZ => Value::Timestamptz(text),
        _ => Value::Text(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_transaction() {
        let begin = decode(br#"{"action":"B","xid":731,"timestamp":"2026-11-26 14:59:09.236558+00","lsn":"0/21AF548","nextlsn":"0/21AFAE0"}"#).expect("begin");
        assert_eq!(
            begin,
            Event::Begin {
                xid: 731,
                commit_lsn: "0/21AFAE0".parse().expect("lsn"),
                commit_time: "2026-11-26 14:59:09.236558+00".into()
            }
        );
        let insert = decode(br#"{"action":"I","xid":731,"lsn":"0/21AF228","schema":"public","table":"itrequests","columns":[{"name":"requestid","type":"integer","typeoid":23,"value":"1"},{"name":"details","type":"character varying(60)","typeoid":1043,"value":"Reset"},{"name":"duedate","type":"date","typeoid":1082,"value":"2026-01-02"},{"name":"fulfilled","type":"boolean","typeoid":16,"value":false},{"name":"b","type":"bytea","typeoid":17,"value":"dead"}],"pk":[{"name":"requestid","type":"integer","typeoid":23}]}"#).expect("insert");
        let Event::Change(change) = insert else {
            panic!("not a change")
        };
        assert_eq!(change.op, Op::Insert);
        let values: Vec<_> = change.columns.iter().map(|c| c.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(1),
                Value::Text("Reset".into()),
                Value::Date("2026-01-02".into()),
                Value::Bool(false),
                Value::Bytes(vec![0xde, 0xad])
            ]
        );
        let full = decode(br#"{"action":"D","schema":"public","table":"acct","identity":[{"name":"id","type":"integer","typeoid":23,"value":1},{"name":"ratio","type":"double precision","typeoid":701,"value":0.1}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#).expect("full");
        let Event::Change(full) = full else {
            panic!("not a change")
        };
        assert_eq!(full.key.len(), 1, "a FULL identity is narrowed to the primary key");
        assert_eq!(full.key[0].name, "id");
        let delete = decode(br#"{"action":"D","schema":"public","table":"ct","identity":[{"name":"a","type":"integer","typeoid":23,"value":5}]}"#).expect("delete");
        let Event::Change(change) = delete else {
            panic!("not a change")
        };
        assert_eq!(change.key[0].value, Value::Int(5));
        assert!(change.columns.is_empty());
        assert!(decode(b"{not json").is_err());
        assert!(decode(br#"{"action":"X"}"#).is_err());
    }
}
