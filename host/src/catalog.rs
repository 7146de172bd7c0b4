//! The PostgreSQL catalog: which tables to replicate, their columns and keys,
//! and how each PostgreSQL type is stored in MariaDB. This is the one place
//! that knows the type mapping; table creation and `verify` both use it.

use std::fmt;

use tokio_postgres::Client;

use crate::source::SourceError;

/// A source table, `schema.name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Schema, `public` when not given.
    pub schema: String,
    /// Table name.
    pub name: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`), as psql users type them:
    /// a part in double quotes is taken literally (`""` is a quote), so it may hold
    /// dots, commas and spaces; an unquoted part is taken as written, without
    /// folding its case.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = split_unquoted(s.trim(), '.')?
            .into_iter()
            .map(|p| unquote(p.trim()))
            .collect::<Option<Vec<_>>>()?;
        if parts.iter().any(String::is_empty) {
            return None;
        }
        let name = parts.pop()?;
        let schema = match parts.len() {
            0 => "public".to_owned(),
            1 => parts.pop()?,
            _ => return None,
        };
        Some(TableName { schema, name })
    }

    /// Parses a comma-separated list; commas inside double quotes belong to the name.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        let Some(entries) = split_unquoted(s, ',') else {
            return Err(s.to_owned());
        };
        entries
            .into_iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| Self::parse(e).ok_or_else(|| e.trim().to_owned()))
            .collect()
    }

    /// Whether this names tables by a `*` pattern rather than one table.
    pub fn is_pattern(&self) -> bool {
        self.schema.contains('*') || self.name.contains('*')
    }

    /// The MariaDB table it lands in: `public.T` becomes `T`, `S.T` becomes `S_T`.
    pub fn target(&self) -> String {
        target_table(&self.schema, &self.name)
    }

    /// wal2json's `add-tables` form, with its wildcard and comma escaping.
    pub fn wal2json_filter(&self) -> String {
        // wal2json splits the list at commas and whitespace and each entry at its
        // first dot, and reads `*` as a wildcard; a backslash makes any byte literal.
        let esc = |s: &str| {
            let mut out = String::with_capacity(s.len());
            for c in s.chars() {
                if matches!(c, '\\' | ',' | '.' | '*' | ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r') {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        };
        format!("{}.{}", esc(&self.schema), esc(&self.name))
    }

    /// A quoted, qualified name for PostgreSQL SQL.
    pub fn pg_quoted(&self) -> String {
        format!("{}.{}", pg_ident(&self.schema), pg_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    /// `schema.table`, with a part quoted where it would not read back as one part.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: &str| {
            if p.contains(['.', ',', '"']) || p.trim() != p {
                pg_ident(p)
            } else {
                p.to_owned()
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.name))
    }
}

/// Splits at `sep` outside double quotes; `None` when a quote is left open.
fn split_unquoted(s: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            // A doubled quote inside quotes toggles twice, staying quoted.
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// A part as written, or the text inside its double quotes with `""` undoubled.
fn unquote(part: &str) -> Option<String> {
    let Some(inner) = part.strip_prefix('"') else {
        return (!part.contains('"')).then(|| part.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    // Every quote inside must be doubled.
    let undoubled = inner.replace("\"\"", "");
    (!undoubled.contains('"')).then(|| inner.replace("\"\"", "\""))
}

/// The MariaDB table for a change routed to `schema.table`.
pub fn target_table(schema: &str, table: &str) -> String {
    if schema == "public" {
        table.to_owned()
    } else {
        format!("{schema}_{table}")
    }
}

/// Quotes a PostgreSQL identifier.
pub fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a MariaDB identifier with backticks, doubling embedded backticks.
pub fn my_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// One column of a source table.
#[derive(Clone, Debug)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// PostgreSQL type as `format_type` prints it.
    pub pg_type: String,
    /// Type OID, of the base type for a domain.
    pub type_oid: u32,
    /// Declared NOT NULL.
    pub not_null: bool,
}

/// A source table's shape.
#[derive(Clone, Debug)]
pub struct TableDef {
    /// Its name.
    pub name: TableName,
    /// Columns in order.
    pub columns: Vec<ColumnDef>,
    /// Primary-key column names in key order; empty when there is none.
    pub primary_key: Vec<String>,
    /// For a partitioned table, its leaf partitions as read at start-up, whose
    /// names wal2json prints on the changes; `None` for a plain table.
    pub partitions: Option<Vec<TableName>>,
}

impl TableDef {
    /// The columns that tell rows apart: the primary key, or every column when there is none.
    pub fn row_key(&self) -> Vec<String> {
        if self.primary_key.is_empty() {
            self.columns.iter().map(|c| c.name.clone()).collect()
        } else {
            self.primary_key.clone()
        }
    }
}

/// Reads a table's definition, refusing tables whose updates and deletes
/// wal2json could not describe.
pub async fn describe(pg: &Client, table: &TableName) -> Result<TableDef, SourceError> {
    let sql_err = SourceError::from;
    let rel = pg
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(sql_err)?
        .ok_or_else(|| SourceError::NoSuchTable(table.clone()))?;
    let oid: u32 = rel.get(0);
    let identity: String = rel.get(1);
    let kind: String = rel.get(2);
    let columns = pg
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(sql_err)?
        .iter()
        .map(|r| ColumnDef {
            name: r.get(0),
            pg_type: r.get(1),
            not_null: r.get(2),
            type_oid: r.get(3),
        })
        .collect();
    let primary_key = pg
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await
        .map_err(sql_err)?
        .iter()
        .map(|r| r.get(0))
        .collect::<Vec<String>>();
    if !identifiable(&identity, !primary_key.is_empty()) {
        return Err(SourceError::NoKey(table.clone()));
    }
    let partitions = if kind == "p" {
        Some(leaves(pg, oid).await?)
    } else {
        None
    };
    Ok(TableDef {
        name: table.clone(),
        columns,
        primary_key,
        partitions,
    })
}

/// Whether wal2json can describe a relation's updates and deletes, from its
/// `relreplident` ('d' default, 'f' full, 'i' index, 'n' nothing).
fn identifiable(identity: &str, has_primary_key: bool) -> bool {
    match identity {
        "d" => has_primary_key,
        "f" | "i" => true,
        _ => false,
    }
}

/// The leaf partitions of a partitioned table, at any depth. Each is checked on
/// its own: wal2json describes a change with the replica identity of the leaf
/// it was written to, not the parent's.
async fn leaves(pg: &Client, parent: u32) -> Result<Vec<TableName>, SourceError> {
    let rows = pg
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_partition_tree($1::oid) t JOIN pg_class c ON c.oid = t.relid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf ORDER BY 1, 2",
            &[&parent],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let leaf = TableName {
                schema: r.get(0),
                name: r.get(1),
            };
            let identity: String = r.get(2);
            if identifiable(&identity, r.get(3)) {
                Ok(leaf)
            } else {
                Err(SourceError::NoKey(leaf))
            }
        })
        .collect()
}

/// The MariaDB column type for a PostgreSQL type. Key columns of unbounded
/// text or binary get a bounded type, since InnoDB keys are limited to 3072 bytes.
pub fn mariadb_type(pg_type: &str, is_key: bool) -> String {
    let (base, args) = match pg_type.split_once('(') {
        Some((b, rest)) => (b.trim(), rest.split_once(')').map(|(a, tail)| (a, tail.trim()))),
        None => (pg_type, None),
    };
    let base = match args {
        // `timestamp(3) without time zone` puts the precision in the middle.
        Some((_, tail)) if !tail.is_empty() => format!("{base} {tail}"),
        _ => base.to_owned(),
    };
    let args = args.map(|(a, _)| a);
    if base.ends_with("[]") {
        return unbounded_text(is_key);
    }
    match (base.as_str(), args) {
        ("smallint", _) => "SMALLINT".into(),
        ("integer", _) => "INT".into(),
        ("bigint", _) => "BIGINT".into(),
        ("boolean", _) => "BOOLEAN".into(),
        ("real", _) => "FLOAT".into(),
        ("double precision", _) => "DOUBLE".into(),
        ("numeric", Some(ps)) => {
            let mut it = ps.split(',').map(|s| s.trim().parse::<u32>().unwrap_or(0));
            let (p, s) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            if (1..=65).contains(&p) && s <= 30 {
                format!("DECIMAL({p},{s})")
            } else {
                unbounded_text(is_key)
            }
        }
        ("numeric", None) => "DECIMAL(65,30)".into(),
        ("character varying", Some(n)) => format!("VARCHAR({n})"),
        ("character", Some(n)) => format!("CHAR({n})"),
        ("character varying" | "text" | "name" | "citext", _) => unbounded_text(is_key),
        ("date", _) => "DATE".into(),
        ("time without time zone", _) => "TIME(6)".into(),
        ("timestamp without time zone" | "timestamp with time zone", _) => "DATETIME(6)".into(),
        ("bytea", _) => {
            if is_key {
                "VARBINARY(3072)".into()
            } else {
                "LONGBLOB".into()
            }
        }
        ("json" | "jsonb", _) => "JSON".into(),
        ("uuid", _) => "CHAR(36)".into(),
        _ => unbounded_text(is_key),
    }
}

fn unbounded_text(is_key: bool) -> String {
    if is_key {
        "VARCHAR(768)".into()
    } else {
        "LONGTEXT".into()
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the table's MariaDB copy.
pub fn create_table_sql(def: &TableDef) -> String {
    let mut cols: Vec<String> = def
        .columns
        .iter()
        .map(|c| {
            let is_key = def.primary_key.contains(&c.name);
            let null = if c.not_null || is_key { " NOT NULL" } else { " NULL" };
            format!("{} {}{}", my_ident(&c.name), mariadb_type(&c.pg_type, is_key), null)
        })
        .collect();
    // Without a primary key (REPLICA IDENTITY FULL), rows are found by all their old values.
    if !def.primary_key.is_empty() {
        cols.push(format!(
            "PRIMARY KEY ({})",
            def.primary_key
                .iter()
                .map(|k| my_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        my_ident(&def.name.target()),
        cols.join(",\n  ")
    )
}

/// How `verify` finishes a column's text before comparing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canon {
    /// Compared as printed.
    Text,
    /// Parsed as a number: the two servers print exponents and digits differently.
    Float,
    /// Parsed as JSON: MariaDB keeps the text as written, PostgreSQL's jsonb reorders it.
    Json,
}

/// SQL expressions that print a column comparably on both sides, and how to finish them, for `verify`.
pub fn canonical_exprs(column: &ColumnDef) -> (String, String, Canon) {
    let pg = pg_ident(&column.name);
    let my = my_ident(&column.name);
    let t = column.pg_type.as_str();
    let plain = |canon| (format!("({pg})::text"), format!("CAST({my} AS CHAR)"), canon);
    if t == "boolean" {
        (
            format!("CASE WHEN {pg} IS NULL THEN NULL WHEN {pg} THEN '1' ELSE '0' END"),
            format!("CAST({my} AS CHAR)"),
            Canon::Text,
        )
    } else if t == "bytea" {
        (format!("encode({pg}, 'hex')"), format!("LOWER(HEX({my}))"), Canon::Text)
    } else if t == "real" || t == "double precision" {
        // Both widened to double, so a FLOAT is compared at its stored precision.
        // NaN and ±Infinity are stored as NULL (see the README).
        (
            format!("CASE WHEN {pg} IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE ({pg})::float8::text END"),
            format!("CAST(CAST({my} AS DOUBLE) AS CHAR)"),
            Canon::Float,
        )
    } else if t == "numeric" {
        // The target column is DECIMAL(65,30): print the source at the same scale.
        (
            format!(
                "CASE WHEN {pg} IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE ({pg})::numeric(65,30)::text END"
            ),
            format!("CAST({my} AS CHAR)"),
            Canon::Text,
        )
    } else if t.starts_with("timestamp") && t.ends_with("with time zone") {
        (
            format!("to_char({pg} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
            format!("DATE_FORMAT({my}, '%Y-%m-%d %H:%i:%s.%f')"),
            Canon::Text,
        )
    } else if t.starts_with("timestamp") {
        (
            format!("to_char({pg}, 'YYYY-MM-DD HH24:MI:SS.US')"),
            format!("DATE_FORMAT({my}, '%Y-%m-%d %H:%i:%s.%f')"),
            Canon::Text,
        )
    } else if t.starts_with("time") {
        (
            format!("to_char({pg}, 'HH24:MI:SS.US')"),
            format!("TIME_FORMAT({my}, '%H:%i:%s.%f')"),
            Canon::Text,
        )
    } else if t == "json" || t == "jsonb" {
        plain(Canon::Json)
    } else {
        plain(Canon::Text)
    }
}

impl Canon {
    /// The comparable form of one printed value.
    pub fn finish(self, text: Option<String>) -> Option<String> {
        let text = text?;
        Some(match self {
            Canon::Text => text,
            Canon::Float => text.parse::<f64>().map_or(text, |f| format!("{f:?}")),
            Canon::Json => serde_json::from_str::<serde_json::Value>(&text).map_or(text, |v| v.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table_names() {
        let t = TableName::parse("public.itrequests").expect("valid");
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "itrequests"));
        assert_eq!(TableName::parse("orders").expect("valid").schema, "public");
        assert_eq!(
            TableName::parse("sales.orders").expect("valid").target(),
            "sales_orders"
        );
        assert!(TableName::parse("a.b.c").is_none());
        assert!(TableName::parse("").is_none());
        assert!(TableName::parse("public.").is_none());
    }

    #[test]
    fn parses_quoted_names_as_psql_does() {
        let t = TableName::parse(r#"public."Order Items""#).expect("valid");
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "Order Items"));
        let t = TableName::parse(r#""Sales"."Q1.2026""#).expect("valid");
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("Sales", "Q1.2026"));
        let t = TableName::parse(r#""say ""hi"", ok""#).expect("valid");
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", r#"say "hi", ok"#));
        // Unquoted parts keep today's meaning: as written, case and spaces kept.
        let t = TableName::parse("Public.Order Items").expect("valid");
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("Public", "Order Items"));
        assert!(TableName::parse(r#"public."open"#).is_none());
        assert!(TableName::parse(r#"public.a"b"#).is_none());
        assert!(TableName::parse(r#"public."a"b""#).is_none());
        assert!(TableName::parse(r#"public."""#).is_none());
        let list = TableName::parse_list(r#"a, "b,c".d ,"x.y""#).expect("valid");
        let names: Vec<String> = list.iter().map(|t| format!("{}|{}", t.schema, t.name)).collect();
        assert_eq!(names, ["public|a", "b,c|d", "public|x.y"]);
        assert_eq!(TableName::parse_list(r#"a,"b"#), Err(r#"a,"b"#.to_owned()));
        for t in [r#""Sales"."Q1.2026""#, r#"public."a,""b""#, "public.Order Items"] {
            let name = TableName::parse(t).expect("valid");
            assert_eq!(TableName::parse(&name.to_string()), Some(name), "{t} reads back");
        }
    }

    #[test]
    fn escapes_every_name_for_wal2json() {
        let t = TableName::parse(r#""S p.a,c\e"."t*ab	le""#).expect("valid");
        assert_eq!(t.wal2json_filter(), r"S\ p\.a\,c\\e.t\*ab\	le");
    }

    #[test]
    fn maps_types() {
        assert_eq!(mariadb_type("character varying(60)", false), "VARCHAR(60)");
        assert_eq!(mariadb_type("numeric(10,2)", false), "DECIMAL(10,2)");
        assert_eq!(mariadb_type("timestamp(3) without time zone", false), "DATETIME(6)");
        assert_eq!(mariadb_type("text", true), "VARCHAR(768)");
        assert_eq!(mariadb_type("integer[]", false), "LONGTEXT");
        assert_eq!(my_ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn canonical_forms_agree_across_servers() {
        assert_eq!(
            Canon::Float.finish(Some("1.7976931348623157e+308".into())),
            Canon::Float.finish(Some("1.7976931348623157e308".into()))
        );
        assert_eq!(
            Canon::Json.finish(Some(r#"{"b": 1,  "a":2}"#.into())),
            Canon::Json.finish(Some(r#"{"a": 2, "b": 1}"#.into()))
        );
        assert_eq!(Canon::Text.finish(None), None);
    }

    #[test]
    fn creates_seed_table() {
        let def = TableDef {
            name: TableName::parse("itrequests").expect("valid"),
            columns: vec![
                ColumnDef {
                    name: "requestid".into(),
                    pg_type: "integer".into(),
                    type_oid: 23,
                    not_null: true,
                },
                ColumnDef {
                    name: "details".into(),
                    pg_type: "character varying(60)".into(),
                    type_oid: 1043,
                    not_null: true,
                },
            ],
            primary_key: vec!["requestid".into()],
            partitions: None,
        };
        let sql = create_table_sql(&def);
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS `itrequests`"));
        assert!(sql.contains("`details` VARCHAR(60) NOT NULL"));
        assert!(sql.contains("PRIMARY KEY (`requestid`)"));
    }
}
