//! Decoding of wal2json format-version 2 output into the pipeline's changes.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::catalog::ColumnDef;
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
    Change {
        /// The change, its key narrowed to the primary key.
        change: Change,
        /// For an update under REPLICA IDENTITY FULL, the whole old row; empty
        /// otherwise (wal2json then sends at most the old key).
        old_row: Vec<Column>,
    },
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
    let new_row = columns(&line.columns)?;
    let identity = columns(&line.identity)?;
    let whole = op == Op::Update && is_whole_row(&identity, &line.pk, &new_row);
    let (key, old_row) = match (primary_key(&identity, &line.pk), whole) {
        (Some(key), true) => (key, identity),
        (Some(key), false) => (key, Vec::new()),
        (None, true) => (identity.clone(), identity),
        (None, false) => (identity, Vec::new()),
    };
    Ok(Event::Change {
        change: Change {
            op,
            schema: line.schema.clone().ok_or_else(|| fail("no schema".into()))?,
            table: line.table.clone().ok_or_else(|| fail("no table".into()))?,
            columns: new_row,
            key,
        },
        old_row,
    })
}

/// Whether an update's identity is its whole old row (REPLICA IDENTITY FULL):
/// it holds more than the primary key, and every column of the new row.
/// Under the default identity it is at most the old key.
fn is_whole_row(identity: &[Column], pk: &[KeyColumn], new_row: &[Column]) -> bool {
    let names: HashSet<&str> = identity.iter().map(|c| c.name.as_str()).collect();
    identity.iter().any(|c| !pk.iter().any(|k| k.name == c.name))
        && new_row.iter().all(|c| names.contains(c.name.as_str()))
}

/// With REPLICA IDENTITY FULL, wal2json sends the whole old row as identity;
/// the row is found by its primary key alone (floats and NULLs never match by
/// equality). `None` when the identity is the key already or lacks part of it.
fn primary_key(identity: &[Column], pk: &[KeyColumn]) -> Option<Vec<Column>> {
    if pk.is_empty() {
        return None;
    }
    let keyed: Vec<Column> = pk
        .iter()
        .filter_map(|k| identity.iter().find(|c| c.name == k.name).cloned())
        .collect();
    (keyed.len() == pk.len()).then_some(keyed)
}

/// Completes an update's new row with the columns wal2json left out of it.
///
/// wal2json leaves out a TOASTed value that the update did not change, which a
/// transform could not tell from a column the row lacks. Given the whole old row
/// (`old_row`, under REPLICA IDENTITY FULL, with TOASTed values inline), each
/// such value is filled in from it: an unchanged value is the old value, and the
/// columns take the old row's order. Otherwise each column of `table` (the
/// replicated table's columns as read at start-up, matched by name, so a
/// partition's own column order does not matter) that the update left out and
/// that could be stored out of line is marked [`Value::UnchangedToast`], so the
/// target keeps its value; the columns take `table`'s order, followed by any
/// added since it was read.
///
/// A column `table` lists that the table no longer has is never invented from a
/// whole old row, and a fixed-width one is never marked: neither could be a
/// TOASTed value. Inserts, deletes and truncates are left as they are.
pub fn complete_update(change: &mut Change, old_row: Vec<Column>, table: &[ColumnDef]) {
    if change.op != Op::Update {
        return;
    }
    let sent = std::mem::take(&mut change.columns);
    change.columns = completed(sent, old_row, table);
}

fn completed(sent: Vec<Column>, old_row: Vec<Column>, table: &[ColumnDef]) -> Vec<Column> {
    let sent_names: HashSet<&str> = sent.iter().map(|c| c.name.as_str()).collect();
    let left_out = |name: &str| !sent_names.contains(name);
    let missing = if old_row.is_empty() {
        table.iter().any(|c| left_out(&c.name) && toastable(c.type_oid))
    } else {
        old_row.iter().any(|c| left_out(&c.name))
    };
    if !missing {
        return sent;
    }
    let order: Vec<String> = sent.iter().map(|c| c.name.clone()).collect();
    let mut new: HashMap<String, Column> = sent.into_iter().map(|c| (c.name.clone(), c)).collect();
    let mut columns = Vec::with_capacity(order.len().max(table.len()));
    if old_row.is_empty() {
        for def in table {
            if let Some(c) = new.remove(&def.name) {
                columns.push(c);
            } else if toastable(def.type_oid) {
                columns.push(Column {
                    name: def.name.clone(),
                    pg_type: def.pg_type.clone(),
                    value: Value::UnchangedToast,
                });
            }
        }
    } else {
        for old in old_row {
            columns.push(new.remove(&old.name).unwrap_or(old));
        }
    }
    // Columns added since the table was read follow, in wal2json's order.
    columns.extend(order.iter().filter_map(|name| new.remove(name)));
    columns
}

/// Whether a value of this type (by OID) may be stored out of line: every type
/// but the fixed-width built-ins may, so an unknown OID counts as TOASTable.
fn toastable(typeoid: u32) -> bool {
    !FIXED_WIDTH.contains(&typeoid)
}

/// Fixed-width built-in types (pg_type.dat, `typlen` > 0): never TOASTed.
const FIXED_WIDTH: &[u32] = &[
    BOOL,
    INT2,
    INT4,
    INT8,
    FLOAT4,
    FLOAT8,
    DATE,
    TIME,
    TIMESTAMP,
    TIMESTAMPTZ,
    18,   // "char"
    26,   // oid
    27,   // tid
    28,   // xid
    29,   // cid
    600,  // point
    603,  // box
    628,  // line
    718,  // circle
    774,  // macaddr8
    790,  // money
    829,  // macaddr
    1186, // interval
    1266, // timetz
    2950, // uuid
    3220, // pg_lsn
];

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
    // Without include-type-oids (pg_recvlogical's default), type by the printed name.
    let typeoid = c.typeoid.unwrap_or_else(|| oid_of_type_name(&c.pg_type));
    value_from_text(typeoid, &c.pg_type, text)
}

/// The OID of a type wal2json printed by name, for the types that get a
/// dedicated value variant; 0 (text) for any other.
fn oid_of_type_name(name: &str) -> u32 {
    // `numeric(10,2)`, `timestamp(3) without time zone`: the modifier does not change the type.
    let base: String = match name.split_once('(') {
        Some((head, rest)) => match rest.split_once(')') {
            Some((_, tail)) => format!("{}{}", head.trim_end(), tail),
            None => head.to_owned(),
        },
        None => name.to_owned(),
    };
    match base.trim() {
        "boolean" | "bool" => BOOL,
        "bytea" => BYTEA,
        "bigint" | "int8" => INT8,
        "smallint" | "int2" => INT2,
        "integer" | "int" | "int4" => INT4,
        "json" => JSON,
        "jsonb" => JSONB,
        "real" | "float4" => FLOAT4,
        "double precision" | "float8" => FLOAT8,
        "date" => DATE,
        "time without time zone" | "time" => TIME,
        "timestamp without time zone" | "timestamp" => TIMESTAMP,
        "timestamp with time zone" | "timestamptz" => TIMESTAMPTZ,
        "numeric" | "decimal" => NUMERIC,
        _ => 0,
    }
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
        let Event::Change { change, .. } = insert else {
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
        let Event::Change { change: full, old_row } = full else {
            panic!("not a change")
        };
        assert!(old_row.is_empty(), "only an update keeps its old row");
        assert_eq!(full.key.len(), 1, "a FULL identity is narrowed to the primary key");
        assert_eq!(full.key[0].name, "id");
        let delete = decode(br#"{"action":"D","schema":"public","table":"ct","identity":[{"name":"a","type":"integer","typeoid":23,"value":5}]}"#).expect("delete");
        let Event::Change { change, .. } = delete else {
            panic!("not a change")
        };
        assert_eq!(change.key[0].value, Value::Int(5));
        assert!(change.columns.is_empty());
        assert!(decode(b"{not json").is_err());
        // pg_recvlogical's default output has no type OIDs: values are typed by name.
        let plain = decode(br#"{"action":"I","schema":"public","table":"t","columns":[{"name":"a","type":"integer","value":5},{"name":"b","type":"numeric(10,2)","value":1.50},{"name":"c","type":"timestamp(3) without time zone","value":"2026-01-02 03:04:05.678"},{"name":"d","type":"boolean","value":true},{"name":"e","type":"text","value":"5"}]}"#).expect("plain");
        let Event::Change { change: plain, .. } = plain else {
            panic!("not a change")
        };
        let values: Vec<_> = plain.columns.iter().map(|c| c.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(5),
                Value::Numeric("1.50".into()),
                Value::Timestamp("2026-01-02 03:04:05.678".into()),
                Value::Bool(true),
                Value::Text("5".into())
            ]
        );
        assert!(decode(br#"{"action":"X"}"#).is_err());
    }

    fn def(name: &str, pg_type: &str, type_oid: u32) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            pg_type: pg_type.into(),
            type_oid,
            not_null: false,
        }
    }

    fn col(name: &str, value: Value) -> Column {
        Column {
            name: name.into(),
            pg_type: "text".into(),
            value,
        }
    }

    fn update(columns: Vec<Column>) -> Change {
        Change {
            op: Op::Update,
            schema: "public".into(),
            table: "docs".into(),
            columns,
            key: vec![col("id", Value::Int(1))],
        }
    }

    fn shape(change: &Change) -> Vec<(&str, &Value)> {
        change.columns.iter().map(|c| (c.name.as_str(), &c.value)).collect()
    }

    /// `id integer, body text, n integer, note text`.
    fn docs() -> Vec<ColumnDef> {
        vec![
            def("id", "integer", 23),
            def("body", "text", 25),
            def("n", "integer", 23),
            def("note", "text", 25),
        ]
    }

    #[test]
    fn a_column_left_out_of_an_update_is_marked_unchanged() {
        let mut change = update(vec![
            col("id", Value::Int(1)),
            col("n", Value::Int(2)),
            col("note", Value::Null),
        ]);
        complete_update(&mut change, Vec::new(), &docs());
        assert_eq!(
            shape(&change),
            [
                ("id", &Value::Int(1)),
                ("body", &Value::UnchangedToast),
                ("n", &Value::Int(2)),
                ("note", &Value::Null)
            ]
        );
        assert_eq!(
            change.columns[1].pg_type, "text",
            "the marker carries the column's type"
        );
    }

    #[test]
    fn a_whole_old_row_fills_in_what_the_update_left_out() {
        let old = vec![
            col("id", Value::Int(1)),
            col("body", Value::Text("long".into())),
            col("n", Value::Int(1)),
            col("note", Value::Null),
        ];
        let mut change = update(vec![
            col("id", Value::Int(1)),
            col("n", Value::Int(2)),
            col("note", Value::Null),
        ]);
        complete_update(&mut change, old.clone(), &docs());
        assert_eq!(
            shape(&change),
            [
                ("id", &Value::Int(1)),
                ("body", &Value::Text("long".into())),
                ("n", &Value::Int(2)),
                ("note", &Value::Null)
            ]
        );
        // Without the table's columns (`transform test`), the whole old row still fills it in.
        let mut offline = update(vec![
            col("id", Value::Int(1)),
            col("n", Value::Int(2)),
            col("note", Value::Null),
        ]);
        complete_update(&mut offline, old, &[]);
        assert_eq!(offline, change);
    }

    #[test]
    fn a_complete_update_and_other_operations_are_left_alone() {
        let full = vec![
            col("note", Value::Null),
            col("id", Value::Int(1)),
            col("n", Value::Int(2)),
            col("body", Value::Text("b".into())),
        ];
        let mut change = update(full.clone());
        complete_update(&mut change, Vec::new(), &docs());
        assert_eq!(change.columns, full, "nothing missing: not even reordered");
        for op in [Op::Insert, Op::Delete] {
            let mut other = update(vec![col("id", Value::Int(1))]);
            other.op = op;
            complete_update(&mut other, Vec::new(), &docs());
            assert_eq!(other.columns.len(), 1, "{op:?} is not an update");
        }
    }

    #[test]
    fn drift_neither_invents_nor_loses_columns() {
        // `added` is newer than the column list; `gone` and `count` were dropped since.
        let table = vec![
            def("id", "integer", 23),
            def("gone", "text", 25),
            def("count", "bigint", 20),
            def("n", "integer", 23),
        ];
        let mut change = update(vec![
            col("n", Value::Int(2)),
            col("id", Value::Int(1)),
            col("added", Value::Int(5)),
        ]);
        complete_update(&mut change, Vec::new(), &table);
        assert_eq!(
            shape(&change),
            [
                ("id", &Value::Int(1)),
                ("gone", &Value::UnchangedToast),
                ("n", &Value::Int(2)),
                ("added", &Value::Int(5))
            ],
            "a fixed-width column is never an unchanged TOAST value; a new column is kept"
        );
        // A whole old row shows what the table has now: a dropped column is not marked.
        let old = vec![
            col("id", Value::Int(1)),
            col("n", Value::Int(1)),
            col("added", Value::Int(5)),
        ];
        let mut change = update(vec![
            col("id", Value::Int(1)),
            col("n", Value::Int(2)),
            col("added", Value::Int(5)),
        ]);
        complete_update(&mut change, old, &table);
        assert_eq!(
            shape(&change),
            [("id", &Value::Int(1)), ("n", &Value::Int(2)), ("added", &Value::Int(5))]
        );
    }

    #[test]
    fn only_a_full_identity_is_a_whole_old_row() {
        let decoded = |identity: &str| {
            let line = format!(
                r#"{{"action":"U","schema":"public","table":"docs","columns":[{{"name":"id","type":"integer","typeoid":23,"value":2}}],"identity":[{identity}],"pk":[{{"name":"id","type":"integer","typeoid":23}}]}}"#
            );
            match decode(line.as_bytes()).expect("update") {
                Event::Change { change, old_row } => (change, old_row),
                other => panic!("not a change: {other:?}"),
            }
        };
        // The key changed under the default identity: the old key, not a whole row,
        // even though it holds every column the update sent.
        let (change, old_row) = decoded(r#"{"name":"id","type":"integer","typeoid":23,"value":1}"#);
        assert!(old_row.is_empty());
        assert_eq!(change.key[0].value, Value::Int(1));
        let (change, old_row) = decoded(
            r#"{"name":"id","type":"integer","typeoid":23,"value":1},{"name":"body","type":"text","typeoid":25,"value":"long"}"#,
        );
        assert_eq!(old_row.len(), 2);
        assert_eq!(change.key.len(), 1, "the key is narrowed to the primary key");
    }

    #[test]
    fn an_update_keeps_its_whole_old_row_and_a_narrowed_key() {
        let line = br#"{"action":"U","schema":"public","table":"docs","columns":[{"name":"id","type":"integer","typeoid":23,"value":1},{"name":"n","type":"integer","typeoid":23,"value":2}],"identity":[{"name":"id","type":"integer","typeoid":23,"value":1},{"name":"body","type":"text","typeoid":25,"value":"long"},{"name":"n","type":"integer","typeoid":23,"value":1}],"pk":[{"name":"id","type":"integer","typeoid":23}]}"#;
        let Event::Change { mut change, old_row } = decode(line).expect("update") else {
            panic!("not a change")
        };
        assert_eq!(change.key.len(), 1);
        assert_eq!(old_row.len(), 3);
        complete_update(&mut change, old_row, &[]);
        assert_eq!(change.columns[1].value, Value::Text("long".into()));
    }
}
