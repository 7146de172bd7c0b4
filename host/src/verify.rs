//! `wasmcdc verify`: compares every replicated table in source and target, row by row.

use std::collections::HashMap;

use futures::TryStreamExt;
use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, Row};
use tokio_postgres::Client;

use crate::catalog::{Canon, TableDef, canonical_exprs, my_ident};

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
        // Counts too: without a primary key, duplicate rows share a key.
        self.source_rows == self.target_rows
            && self.missing.is_empty()
            && self.extra.is_empty()
            && self.different.is_empty()
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

/// Buckets with differing checksums beyond which one full pass is cheaper than many small ones.
const MAX_BUCKETS_TO_READ: usize = 256;

/// The SQL that prints each column comparably on both sides, and how to finish each in Rust.
struct Exprs {
    pg: Vec<String>,
    my: Vec<String>,
    canons: Vec<Canon>,
    /// Indexes of the key columns.
    key: Vec<usize>,
}

impl Exprs {
    fn of(def: &TableDef) -> Self {
        let mut e = Exprs {
            pg: Vec::new(),
            my: Vec::new(),
            canons: Vec::new(),
            key: def
                .row_key()
                .iter()
                .filter_map(|k| def.columns.iter().position(|c| &c.name == k))
                .collect(),
        };
        for (pg, my, canon) in def.columns.iter().map(canonical_exprs) {
            e.pg.push(pg);
            e.my.push(my);
            e.canons.push(canon);
        }
        e
    }

    /// PostgreSQL's bucket of a row (from its key) and the row's text, for checksums.
    fn pg_bucket_and_row(&self) -> (String, String) {
        let text = |i: usize| {
            let e = &self.pg[i];
            // Floats print their exponent as e+308 / e-05 here and e308 / e-5 in MariaDB.
            let e = if self.canons[i] == Canon::Float {
                format!("regexp_replace({e}, 'e\\+?(-?)0*([0-9])', 'e\\1\\2')")
            } else {
                e.clone()
            };
            format!("coalesce({e}, chr(30))")
        };
        let join = |idx: &mut dyn Iterator<Item = usize>| idx.map(text).collect::<Vec<_>>().join(", ");
        (
            format!(
                "substr(md5(concat_ws(chr(31), {})), 1, 3)",
                join(&mut self.key.iter().copied())
            ),
            format!("concat_ws(chr(31), {})", join(&mut (0..self.pg.len()))),
        )
    }

    /// MariaDB's bucket of a row and the row's text, for checksums.
    fn my_bucket_and_row(&self) -> (String, String) {
        let text = |i: usize| format!("COALESCE({}, CHAR(30 USING utf8mb4))", self.my[i]);
        let join = |idx: &mut dyn Iterator<Item = usize>| idx.map(text).collect::<Vec<_>>().join(", ");
        (
            format!(
                "SUBSTRING(MD5(CONCAT_WS(CHAR(31 USING utf8mb4), {})), 1, 3)",
                join(&mut self.key.iter().copied())
            ),
            format!("CONCAT_WS(CHAR(31 USING utf8mb4), {})", join(&mut (0..self.my.len()))),
        )
    }
}

type Buckets = HashMap<String, (u64, String)>;

/// Row count and checksum per bucket of the key's hash, computed by each server.
async fn checksums(pg: &Client, my: &MySqlPool, def: &TableDef, e: &Exprs) -> Result<(Buckets, Buckets), String> {
    let (pb, pr) = e.pg_bucket_and_row();
    let pg_sql = format!(
        "SELECT b, count(*)::text, sum(('x' || substr(h, 1, 15))::bit(60)::bigint)::text \
         FROM (SELECT {pb} AS b, md5({pr}) AS h FROM {}) s GROUP BY b",
        def.name.pg_quoted()
    );
    let mut source = Buckets::new();
    for msg in pg
        .simple_query(&pg_sql)
        .await
        .map_err(|e| format!("checksumming {} in PostgreSQL: {e}", def.name))?
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = msg {
            let count = r.get(1).and_then(|c| c.parse().ok()).unwrap_or_default();
            source.insert(
                r.get(0).unwrap_or_default().to_owned(),
                (count, r.get(2).unwrap_or_default().to_owned()),
            );
        }
    }
    let (mb, mr) = e.my_bucket_and_row();
    let my_sql = format!(
        "SELECT b, CAST(COUNT(*) AS CHAR), CAST(SUM(CAST(CONV(SUBSTRING(h, 1, 15), 16, 10) AS UNSIGNED)) AS CHAR) \
         FROM (SELECT {mb} AS b, MD5({mr}) AS h FROM {}) s GROUP BY b",
        my_ident(&def.name.target())
    );
    let mut target = Buckets::new();
    for r in sqlx::query(AssertSqlSafe(my_sql))
        .fetch_all(my)
        .await
        .map_err(|e| format!("checksumming {} in MariaDB: {e}", def.name.target()))?
    {
        let bucket: String = r.try_get(0).map_err(|e| e.to_string())?;
        let count: String = r.try_get(1).map_err(|e| e.to_string())?;
        let sum: String = r.try_get(2).map_err(|e| e.to_string())?;
        target.insert(bucket, (count.parse().unwrap_or_default(), sum));
    }
    Ok((source, target))
}

/// Compares one table: checksums per bucket of the primary key's hash on each
/// server, then the rows of only the buckets that differ.
pub async fn compare(pg: &Client, my: &MySqlPool, def: &TableDef) -> Result<TableReport, String> {
    let e = Exprs::of(def);
    let (source, target) = checksums(pg, my, def, &e).await?;
    let mut differing: Vec<&String> = source
        .keys()
        .chain(target.keys())
        .filter(|b| source.get(*b) != target.get(*b))
        .collect();
    differing.sort();
    differing.dedup();
    tracing::info!(table = %def.name, buckets = source.len().max(target.len()), differing = differing.len(), "checksums compared");
    let total = |b: &Buckets| b.values().map(|(n, _)| *n as usize).sum::<usize>();
    let (source_rows, target_rows) = (total(&source), total(&target));
    let mut report = if differing.is_empty() {
        TableReport::default()
    } else if differing.len() > MAX_BUCKETS_TO_READ {
        compare_rows(pg, my, def, &e, None).await?
    } else {
        let list = differing
            .iter()
            .map(|b| format!("'{b}'"))
            .collect::<Vec<_>>()
            .join(", ");
        compare_rows(pg, my, def, &e, Some(&list)).await?
    };
    report.table = def.name.to_string();
    report.source_rows = source_rows;
    report.target_rows = target_rows;
    Ok(report)
}

/// Reads rows from both sides (all, or those in the listed buckets) and compares them one by one.
async fn compare_rows(
    pg: &Client,
    my: &MySqlPool,
    def: &TableDef,
    e: &Exprs,
    buckets: Option<&str>,
) -> Result<TableReport, String> {
    let (pg_exprs, my_exprs, canons, key_idx) = (&e.pg, &e.my, &e.canons, &e.key);
    let (pb, _) = e.pg_bucket_and_row();
    let (mb, _) = e.my_bucket_and_row();
    let pg_where = buckets.map(|l| format!(" WHERE {pb} IN ({l})")).unwrap_or_default();
    let my_where = buckets.map(|l| format!(" WHERE {mb} IN ({l})")).unwrap_or_default();
    let pg_sql = format!("SELECT {} FROM {}{pg_where}", pg_exprs.join(", "), def.name.pg_quoted());
    let split = |row: Vec<Option<String>>| -> (Vec<Option<String>>, Vec<Option<String>>) {
        let row: Vec<Option<String>> = row.into_iter().zip(canons).map(|(v, c)| c.finish(v)).collect();
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
    let my_sql = format!(
        "SELECT {} FROM {}{my_where}",
        my_exprs.join(", "),
        my_ident(&def.name.target())
    );
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
        def.row_key()
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
