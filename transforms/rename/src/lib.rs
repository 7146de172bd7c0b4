//! Renames the table a change lands in, its schema, and its columns.
//!
//! Configuration:
//! - `table=NEW`: the new table name.
//! - `schema=NEW`: the new schema name.
//! - `column.OLD=NEW`: renames column OLD to NEW, in the new values and in the
//!   key alike; repeat it for more columns.
//!
//! - `target.COLUMN=TYPE`: declares the column COLUMN (its new name) of the
//!   table the changes land in, with PostgreSQL type TYPE; repeat it for more
//!   columns. With any `target.` setting, `schema` and `table` are required.
//! - `target-key=a,b`: the primary key of that declared table; the key of the
//!   changes by default.
//!
//! At least one setting is required. A table the renamed changes land in is
//! created by the apply from their typed columns, keyed by their key, or from
//! the declaration when there is one; a renamed column is added to an existing
//! table.

use std::collections::BTreeMap;

use wasmcdc_guest::{Change, ColumnDef, Config, Target, Transform, TxContext};

impl Transform for Renames {
    fn init(config: Config) -> Result<Self, String> {
        Renames::parse(&config)
    }

    fn targets(&self) -> Vec<Target> {
        match (&self.schema, &self.table, self.declared.is_empty()) {
            (Some(schema), Some(table), false) => vec![Target::new(
                schema.as_str(),
                table.as_str(),
                self.declared.clone(),
                self.declared_key.clone(),
            )],
            _ => Vec::new(),
        }
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
    /// The declared columns of the target, in the order given.
    declared: Vec<ColumnDef>,
    /// The declared primary key of the target.
    declared_key: Vec<String>,
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
                "target-key" => {
                    renames.declared_key = value.split(',').map(|k| k.trim().to_owned()).collect();
                }
                _ => match (key.strip_prefix("column."), key.strip_prefix("target.")) {
                    (Some(old), _) if !old.is_empty() => {
                        renames.columns.insert(old.to_owned(), value.to_owned());
                    }
                    (_, Some(column)) if !column.is_empty() => {
                        renames.declared.push(ColumnDef::new(column, value));
                    }
                    _ => {
                        return Err(format!(
                            "unknown setting '{key}'; rename takes table, schema, column.OLD, target.COLUMN and target-key"
                        ));
                    }
                },
            }
        }
        if renames == Self::default() {
            return Err("nothing to rename; set table=NEW, schema=NEW or column.OLD=NEW".to_owned());
        }
        if renames.declared.is_empty() && !renames.declared_key.is_empty() {
            return Err("target-key needs the declared columns; add target.COLUMN=TYPE for each".to_owned());
        }
        if !renames.declared.is_empty() && (renames.schema.is_none() || renames.table.is_none()) {
            return Err("target.COLUMN declares the table the changes land in; set schema and table too".to_owned());
        }
        if let Some(missing) = renames
            .declared_key
            .iter()
            .find(|k| !renames.declared.iter().any(|c| &c.name == *k))
        {
            return Err(format!("target-key names {missing}, which no target.{missing}=TYPE declares"));
        }
        Ok(renames)
    }

    /// Applies the new names; names not configured stay as they are.
    fn apply(&self, mut change: Change) -> Change {
        if let Some(schema) = &self.schema {
            change.set_schema(schema.as_str());
        }
        if let Some(table) = &self.table {
            change.set_table(table.as_str());
        }
        // Each column is looked up by its source name once, so that renames
        // apply together: `column.a=b` with `column.b=a` swaps the two.
        change.rename_with(|name| self.columns.get(name).cloned());
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

    fn names(change: &Change) -> Vec<&str> {
        change.columns().map(|(c, _)| c.name.as_str()).collect()
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
        assert_eq!((out.schema(), out.table()), ("archive", "requests"));
        assert_eq!(names(&out), ["id", "details"]);
        assert_eq!(out.to_key()[0].name, "id");
    }

    #[test]
    fn leaves_what_is_not_configured() {
        let r = renames(&[("column.a", "b")]).expect("config");
        let out = r.apply(Change::insert("public", "t", vec![column("c")]));
        assert_eq!((out.schema(), out.table()), ("public", "t"));
        assert_eq!(names(&out), ["c"]);
    }

    #[test]
    fn renames_apply_together() {
        let r = renames(&[("column.a", "b"), ("column.b", "c")]).expect("config");
        let out = r.apply(Change::insert("public", "t", vec![column("a"), column("b")]));
        assert_eq!(names(&out), ["b", "c"]);
    }

    #[test]
    fn declares_its_target_when_told_its_columns() {
        let r = renames(&[
            ("schema", "archive"),
            ("table", "tickets"),
            ("target.id", "bigint"),
            ("target.summary", "character varying(200)"),
            ("target-key", "id"),
        ])
        .expect("config");
        let declared = r.targets();
        assert_eq!(declared.len(), 1);
        assert_eq!((declared[0].schema.as_str(), declared[0].name.as_str()), ("archive", "tickets"));
        assert_eq!(declared[0].columns[1], ColumnDef::new("summary", "character varying(200)"));
        assert_eq!(declared[0].key, ["id"]);
        assert!(renames(&[("table", "t")]).expect("plain").targets().is_empty());
        assert!(renames(&[("table", "t"), ("target.id", "int")]).is_err(), "schema missing");
        assert!(renames(&[("schema", "s"), ("table", "t"), ("target.id", "int"), ("target-key", "nope")]).is_err());
        assert!(renames(&[("table", "t"), ("target-key", "id")]).is_err());
    }

    #[test]
    fn refuses_a_configuration_it_cannot_follow() {
        assert!(renames(&[]).is_err());
        assert!(renames(&[("table", "")]).is_err());
        assert!(renames(&[("column.", "x")]).is_err());
        assert!(renames(&[("tabel", "x")]).is_err());
    }
}
