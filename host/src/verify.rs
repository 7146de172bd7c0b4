//! `wasmcdc verify`: compares every replicated table in source and target, row by row.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Row};
use tokio_postgres::Client;

use crate::catalog::{TableDef, canonical_exprs, my_ident};

/// How many differing keys to print per table.
const SHOW: usize = 10;

/// The outcome for one table.
#[derive(Debug, Default)]
pub struct TableReport {
    /// `schema.table`.
    pub table: String,
    /// Rows in the source.
    pub source_rows: usize,
    /// Rows in the target.
    pub target_rows: usize,
    /// Keys in the source only.
    pub missing: Vec<String>,
    /// Keys in the target only.
    pub extra: Vec<String>,
    /// Keys whose rows differ.
    pub different: Vec<String>,
}

impl TableReport {
    /// Whether source and target hold the same rows.
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

impl std::fmt::Display for TableReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} source rows, {} target rows, {} missing, {} extra, {} different",
            self.table,
            self.source_rows,
            self.target_rows,
            self.missing.len(),
            self.extra.len(),
            self.different.len()
        )?;
        for (label, keys) in [
            ("missing in target", &self.missing),
            ("extra in target", &self.extra),
            ("different", &self.different),
        ] {
            for key in keys.iter().take(SHOW) {
                write!(f, "\n  {label}: {key}")?;
            }
            if keys.len() > SHOW {
                write!(f, "\n  ... and {} more {label}", keys.len() - SHOW)?;
            }
        }
        Ok(())
    }
}

type Rows = HashMap<Vec<Option<String>>, Vec<Option<String>>>;

/// Compares one table.
pub async fn compare(pg: &Client, my: &MySqlPool, def: &TableDef) -> Result<TableReport, String> {
    let key_idx: Vec<usize> = def
        .primary_key
        .iter()
        .filter_map(|k| def.columns.iter().position(|c| &c.name == k))
        .collect();
    let mut pg_exprs = Vec::new();
    let mut my_exprs = Vec::new();
    let mut canons = Vec::new();
    for (pg, my, canon) in def.columns.iter().map(canonical_exprs) {
        pg_exprs.push(pg);
        my_exprs.push(my);
        canons.push(canon);
    }
    let pg_sql = format!("SELECT {} FROM {}", pg_exprs.join(", "), def.name.pg_quoted());
    let split = |row: Vec<Option<String>>| -> (Vec<Option<String>>, Vec<Option<String>>) {
        let row: Vec<Option<String>> = row.into_iter().zip(&canons).map(|(v, c)| c.finish(v)).collect();
        (key_idx.iter().map(|&i| row[i].clone()).collect(), row)
    };
    let mut source: Rows = HashMap::new();
    let rows = pg
        .simple_query(&pg_sql)
        .await
        .map_err(|e| format!("reading {} from PostgreSQL: {e}", def.name))?;
    for msg in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
            let row = (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect();
            let (k, v) = split(row);
            source.insert(k, v);
        }
    }
    let my_sql = format!("SELECT {} FROM {}", my_exprs.join(", "), my_ident(&def.name.target()));
    let mut target: Rows = HashMap::new();
    let mut stream = sqlx::query(AssertSqlSafe(my_sql)).fetch(my);
    while let Some(r) = stream
        .try_next()
        .await
        .map_err(|e| format!("reading {} from MariaDB: {e}", def.name.target()))?
    {
        let row = (0..r.len())
            .map(|i| r.try_get::<Option<String>, _>(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading {} from MariaDB: {e}", def.name.target()))?;
        let (k, v) = split(row);
        target.insert(k, v);
    }
    let show = |k: &Vec<Option<String>>| {
        def.primary_key
            .iter()
            .zip(k)
            .map(|(n, v)| format!("{n}={}", v.as_deref().unwrap_or("NULL")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut report = TableReport {
        table: def.name.to_string(),
        source_rows: source.len(),
        target_rows: target.len(),
        ..Default::default()
    };
    for (k, v) in &source {
        match target.get(k) {
            None => report.missing.push(show(k)),
            Some(t) if t != v => report.different.push(show(k)),
            Some(_) => {}
        }
    }
    for k in target.keys() {
        if !source.contains_key(k) {
            report.extra.push(show(k));
        }
    }
    report.missing.sort();
    report.extra.sort();
    report.different.sort();
    Ok(report)
}
