//! `wasmcdc transform test`: a chain run offline over changes read as lines.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use super::{TransformChain, TransformError};
use crate::change::{Lsn, TxContext};
use crate::source::wal2json::{self, Event};

/// Offline trial: reads changes, one per line, and writes each resulting change as a JSON line.
///
/// A line is either a change in the host's JSON form (the serde form of
/// [`Change`]) or a wal2json format-version 2 line as `pg_recvlogical`
/// prints it. A wal2json `B` line sets the transaction context that guests
/// see for the changes after it; `C` and `M` lines are skipped.
///
/// Without type OIDs on a wal2json line, values are typed by the type names
/// it prints, as the stream would type them for the built-in types; `types`,
/// when given, looks each name up instead (the catalog, with `--pg-url`), so
/// that domains, enums and arrays are typed exactly as in production.
pub fn run_test(
    modules: &[PathBuf],
    config: &[String],
    input: impl BufRead,
    mut output: impl Write,
    mut types: Option<&mut dyn TypeOids>,
) -> Result<(), TransformError> {
    let mut chain = TransformChain::load(modules, config)?;
    // Trial changes have no source transaction unless a wal2json B line gives
    // one; guests see a fixed, recognisable one.
    let mut ctx = TxContext {
        xid: 0,
        commit_lsn: Lsn(0),
        commit_time: "1970-01-01 00:00:00+00".to_owned(),
    };
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(TransformError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TransformError::BadInput { line: line_no, reason };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let change = if object.contains_key("action") {
            let line = match types.as_deref_mut() {
                Some(types) => with_type_oids(object.clone(), types)
                    .map_err(|reason| TransformError::UnknownType { line: line_no, reason })?,
                None => line,
            };
            match wal2json::decode(line.as_bytes()) {
                // Without the table's column list, only a whole old row (REPLICA
                // IDENTITY FULL) tells what an update left out.
                Ok(Event::Change { mut change, old_row }) => {
                    wal2json::complete_update(&mut change, old_row, &[]);
                    change
                }
                Ok(Event::Begin {
                    xid,
                    commit_lsn,
                    commit_time,
                }) => {
                    ctx = TxContext {
                        xid,
                        commit_lsn,
                        commit_time,
                    };
                    continue;
                }
                Ok(Event::Commit { .. } | Event::Message) => continue,
                // B and C lines lack LSNs unless include-lsn is on; they carry no change.
                Err(_) if matches!(object["action"].as_str(), Some("B" | "C")) => continue,
                Err(e) => return Err(bad(e.to_string())),
            }
        } else {
            serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| bad(e.to_string()))?
        };
        let changes = chain.apply(change, &ctx).map_err(|e| TransformError::AtLine {
            line: line_no,
            error: Box::new(e),
        })?;
        for change in changes {
            serde_json::to_writer(&mut output, &change).map_err(|e| TransformError::Write(e.into()))?;
            output.write_all(b"\n").map_err(TransformError::Write)?;
        }
    }
    output.flush().map_err(TransformError::Write)
}

/// Finds the OID of a type by the name wal2json prints for it.
pub trait TypeOids {
    /// The OID of the type called `name`, or why it cannot be found.
    fn oid(&mut self, name: &str) -> Result<u32, String>;
}

/// A wal2json line with a `typeoid` for each column that lacks one.
fn with_type_oids(
    mut object: serde_json::Map<String, serde_json::Value>,
    types: &mut dyn TypeOids,
) -> Result<String, String> {
    for field in ["columns", "identity"] {
        let Some(serde_json::Value::Array(columns)) = object.get_mut(field) else {
            continue;
        };
        for column in columns {
            let Some(column) = column.as_object_mut() else { continue };
            if column.contains_key("typeoid") {
                continue;
            }
            if let Some(name) = column.get("type").and_then(|t| t.as_str()) {
                let oid = types.oid(name)?;
                column.insert("typeoid".to_owned(), oid.into());
            }
        }
    }
    serde_json::to_string(&object).map_err(|e| e.to_string())
}
