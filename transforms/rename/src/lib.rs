//! Renames the table a change lands in, its schema, and its columns.
//!
//! Configuration:
//! - `table=NEW`: the new table name.
//! - `schema=NEW`: the new schema name.
//! - `column.OLD=NEW`: renames column OLD to NEW, in the new values and in the
//!   key alike; repeat it for more columns.
//!
//! At least one setting is required. A table the renamed changes land in is
//! created by the apply from their typed columns, keyed by their key; a renamed
//! column is added to an existing table.

use std::collections::BTreeMap;

use wasmcdc_guest::{Change, Config, Transform, TxContext};

impl Transform for Renames {
    fn init(config: Config) -> Result<Self, String> {
        Renames::parse(&config)
    }

    fn transform(&self, change: Change, _ctx: &TxContext) -> Result<Vec<Change>, String> {
        Ok(vec![self.apply(change)])
    }
}

wasmcdc_guest::export!(Renames);

/// New names for the table, its schema and its columns.
#[derive(Debug, Default, PartialEq)]
struct Renames {
    schema: Option<String>,
    table: Option<String>,
    columns: BTreeMap<String, String>,
}

impl Renames {
    /// Reads `schema`, `table` and `column.OLD`; anything else is refused.
    fn parse(config: &Config) -> Result<Self, String> {
        let mut renames = Self::default();
        for (key, value) in config.iter() {
            if value.is_empty() {
                return Err(format!("{key} is empty; give the new name"));
            }
            match key {
                "schema" => renames.schema = Some(value.to_owned()),
                "table" => renames.table = Some(value.to_owned()),
                _ => match key.strip_prefix("column.") {
                    Some(old) if !old.is_empty() => {
                        renames.columns.insert(old.to_owned(), value.to_owned());
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
        // Each column is looked up by its source name once, so that renames
        // apply together: `column.a=b` with `column.b=a` swaps the two.
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
    use wasmcdc_guest::{Column, Value};

    fn renames(pairs: &[(&str, &str)]) -> Result<Renames, String> {
        Renames::parse(&pairs.iter().copied().collect())
    }

    fn column(name: &str) -> Column {
        Column::new(name, "integer", Value::Int(1))
    }

    #[test]
    fn renames_table_schema_and_columns_in_values_and_key() {
        let r = renames(&[("table", "requests"), ("schema", "archive"), ("column.requestid", "id")]).expect("config");
        let out = r.apply(Change::update(
            "public",
            "itrequests",
            vec![column("requestid"), column("details")],
            vec![column("requestid")],
        ));
        assert_eq!((out.schema.as_str(), out.table.as_str()), ("archive", "requests"));
        let names: Vec<_> = out.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "details"]);
        assert_eq!(out.key[0].name, "id");
    }

    #[test]
    fn leaves_what_is_not_configured() {
        let r = renames(&[("column.a", "b")]).expect("config");
        let out = r.apply(Change::insert("public", "t", vec![column("c")]));
        assert_eq!((out.schema.as_str(), out.table.as_str()), ("public", "t"));
        assert_eq!(out.columns[0].name, "c");
    }

    #[test]
    fn renames_apply_together() {
        let r = renames(&[("column.a", "b"), ("column.b", "c")]).expect("config");
        let out = r.apply(Change::insert("public", "t", vec![column("a"), column("b")]));
        let names: Vec<_> = out.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn refuses_a_configuration_it_cannot_follow() {
        assert!(renames(&[]).is_err());
        assert!(renames(&[("table", "")]).is_err());
        assert!(renames(&[("column.", "x")]).is_err());
        assert!(renames(&[("tabel", "x")]).is_err());
    }
}
