//! Renames the table a change lands in, its schema, and its columns.
//!
//! Configuration:
//! - `table=NEW`: the new table name.
//! - `schema=NEW`: the new schema name.
//! - `column.OLD=NEW`: renames column OLD to NEW, in the new values and in the
//!   key alike; repeat it for more columns.
//!
//! At least one setting is required. The target table is created from the
//! source table, so a renamed table or column must exist in the target under
//! its new name.

// The generated bindings flatten a change into many core-wasm parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../wit", world: "transformer" });

use std::collections::BTreeMap;
use std::sync::OnceLock;

struct Rename;

/// The renames `init` accepted; `transform` runs only after it.
static RENAMES: OnceLock<Renames> = OnceLock::new();

impl Guest for Rename {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let renames = Renames::parse(&config)?;
        // An instance is initialised once; a second call keeps the first configuration.
        let _ = RENAMES.set(renames);
        Ok(())
    }

    fn transform(change: Change, _ctx: TxContext) -> Result<Vec<Change>, String> {
        let renames = RENAMES.get().ok_or("rename was not initialised")?;
        Ok(vec![renames.apply(change)])
    }
}

export!(Rename);

/// New names for the table, its schema and its columns.
#[derive(Debug, Default, PartialEq)]
struct Renames {
    schema: Option<String>,
    table: Option<String>,
    columns: BTreeMap<String, String>,
}

impl Renames {
    /// Reads `schema`, `table` and `column.OLD`; anything else is refused.
    fn parse(config: &[(String, String)]) -> Result<Self, String> {
        let mut renames = Self::default();
        for (key, value) in config {
            if value.is_empty() {
                return Err(format!("{key} is empty; give the new name"));
            }
            match key.as_str() {
                "schema" => renames.schema = Some(value.clone()),
                "table" => renames.table = Some(value.clone()),
                _ => match key.strip_prefix("column.") {
                    Some(old) if !old.is_empty() => {
                        renames.columns.insert(old.to_owned(), value.clone());
                    }
                    _ => {
                        return Err(format!(
                            "unknown setting '{key}'; rename takes table, schema and column.OLD"
                        ));
                    }
                },
            }
        }
        if renames == Self::default() {
            return Err("nothing to rename; set table=NEW, schema=NEW or column.OLD=NEW".to_owned());
        }
        Ok(renames)
    }

    /// Applies the new names; names not configured stay as they are.
    fn apply(&self, mut change: Change) -> Change {
        if let Some(schema) = &self.schema {
            change.schema.clone_from(schema);
        }
        if let Some(table) = &self.table {
            change.table.clone_from(table);
        }
        for column in change.columns.iter_mut().chain(change.key.iter_mut()) {
            if let Some(new) = self.columns.get(&column.name) {
                column.name.clone_from(new);
            }
        }
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcdc::transform::types::{Column, Op, Value};

    fn renames(pairs: &[(&str, &str)]) -> Result<Renames, String> {
        let config: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Renames::parse(&config)
    }

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            pg_type: "integer".into(),
            value: Value::Int(1),
        }
    }

    #[test]
    fn renames_table_schema_and_columns_in_values_and_key() {
        let r = renames(&[("table", "requests"), ("schema", "archive"), ("column.requestid", "id")]).expect("config");
        let out = r.apply(Change {
            op: Op::Update,
            schema: "public".into(),
            table: "itrequests".into(),
            columns: vec![column("requestid"), column("details")],
            key: vec![column("requestid")],
        });
        assert_eq!((out.schema.as_str(), out.table.as_str()), ("archive", "requests"));
        let names: Vec<_> = out.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "details"]);
        assert_eq!(out.key[0].name, "id");
    }

    #[test]
    fn leaves_what_is_not_configured() {
        let r = renames(&[("column.a", "b")]).expect("config");
        let out = r.apply(Change {
            op: Op::Insert,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![column("c")],
            key: vec![],
        });
        assert_eq!((out.schema.as_str(), out.table.as_str()), ("public", "t"));
        assert_eq!(out.columns[0].name, "c");
    }

    #[test]
    fn refuses_a_configuration_it_cannot_follow() {
        assert!(renames(&[]).is_err());
        assert!(renames(&[("table", "")]).is_err());
        assert!(renames(&[("column.", "x")]).is_err());
        assert!(renames(&[("tabel", "x")]).is_err());
    }
}
