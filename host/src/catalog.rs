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
    /// REPLICA IDENTITY FULL: an update carries the whole old row.
    pub full_identity: bool,
    /// For a partitioned table, its leaf partitions as read at start-up, whose
    /// names wal2json prints on the changes; `None` for a plain table.
    pub partitions: Option<Vec<TableName>>,
}

impl ColumnDef {
    /// A column known only by its name and PostgreSQL type, as a change carries
    /// it: its type OID is unknown (0) and it may hold NULL.
    pub fn named(name: &str, pg_type: &str) -> Self {
        ColumnDef {
            name: name.to_owned(),
            pg_type: pg_type.to_owned(),
            type_oid: 0,
            not_null: false,
        }
    }
}

impl TableDef {
    /// A table that is not partitioned and not REPLICA IDENTITY FULL.
    pub fn plain(name: TableName, columns: Vec<ColumnDef>, primary_key: Vec<String>) -> Self {
        TableDef {
            name,
            columns,
            primary_key,
            full_identity: false,
            partitions: None,
        }
    }

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
        full_identity: identity == "f",
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

/// InnoDB's limit on one key: the most bytes of all its columns together.
const KEY_BYTES: u32 = 3072;

/// The longest `VARCHAR` of utf8mb4 characters MariaDB allows.
const VARCHAR_CHARS: u32 = 16_383;

/// The collation of text columns: binary, and trailing spaces count, so values
/// compare as PostgreSQL's `text` and `varchar` compare them.
pub const TEXT_COLLATION: &str = "utf8mb4_nopad_bin";

/// The collation of `char(n)` columns: binary, with trailing spaces ignored, as
/// PostgreSQL compares `char(n)`.
pub const CHAR_COLLATION: &str = "utf8mb4_bin";

/// Where PostgreSQL's `infinity` and `-infinity` dates land: MariaDB has neither,
/// and nothing PostgreSQL prints as a finite date is year 0.
pub const DATE_INFINITY: (&str, &str) = ("9999-12-31", "0000-01-01");

/// Where `infinity` and `-infinity` timestamps land, printed as `verify` prints a `DATETIME(6)`.
pub const DATETIME_INFINITY: (&str, &str) = ("9999-12-31 23:59:59.999999", "0000-01-01 00:00:00.000000");

/// The MariaDB text for a PostgreSQL date or timestamp, mapping ±infinity;
/// `None` for a date before year 1, which MariaDB cannot hold.
pub fn mariadb_datetime<'a>(text: &'a str, infinity: (&'a str, &'a str)) -> Option<&'a str> {
    match text {
        "infinity" => Some(infinity.0),
        "-infinity" => Some(infinity.1),
        t if t.ends_with(" BC") => None,
        t => Some(t),
    }
}

/// How an array's elements appear in its JSON form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrayElement {
    /// JSON numbers; NaN and ±Infinity, which JSON lacks, as strings.
    Number,
    /// `true` and `false`.
    Bool,
    /// JSON strings, as PostgreSQL prints each element.
    Text,
    /// JSON strings in PostgreSQL's text form (not the `T` form `to_jsonb` gives dates and times).
    Temporal,
    /// The element's own JSON (`json[]`, `jsonb[]`).
    Json,
}

/// The element kind of an array type that has a JSON form; `None` for any
/// other type, including arrays of geometric, composite, enum and binary types.
pub fn json_array_element(pg_type: &str) -> Option<ArrayElement> {
    let element = pg_type.strip_suffix("[]")?;
    let (base, _) = split_type(element);
    Some(match base.as_str() {
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision" => ArrayElement::Number,
        "boolean" => ArrayElement::Bool,
        "text" | "character varying" | "character" | "name" | "citext" | "uuid" | "interval" | "inet" | "cidr"
        | "macaddr" | "macaddr8" => ArrayElement::Text,
        "date"
        | "time without time zone"
        | "time with time zone"
        | "timestamp without time zone"
        | "timestamp with time zone" => ArrayElement::Temporal,
        "json" | "jsonb" => ArrayElement::Json,
        _ => return None,
    })
}

/// A type name without its modifier, and the modifier: `timestamp(3) without time zone`
/// gives `timestamp without time zone` and `3`.
fn split_type(pg_type: &str) -> (String, Option<&str>) {
    match pg_type.split_once('(') {
        Some((b, rest)) => match rest.split_once(')') {
            // `timestamp(3) without time zone` puts the precision in the middle.
            Some((args, tail)) if !tail.trim().is_empty() => (format!("{} {}", b.trim(), tail.trim()), Some(args)),
            Some((args, _)) => (b.trim().to_owned(), Some(args)),
            None => (pg_type.to_owned(), None),
        },
        None => (pg_type.to_owned(), None),
    }
}

/// How a PostgreSQL type is stored in MariaDB.
#[derive(Clone, Debug, PartialEq)]
enum Storage {
    /// One type of bounded size: the MariaDB type and the most bytes it takes in a key.
    Sized(String, u32),
    /// Characters, at most `max` of them; `padded` for `char(n)`, whose trailing spaces do not count.
    Chars { max: Option<u32>, padded: bool },
    /// Bytes.
    Bytes,
    /// JSON text: `json`, `jsonb`, and arrays with a JSON form.
    Json,
}

fn storage(pg_type: &str) -> Storage {
    let text = Storage::Chars {
        max: None,
        padded: false,
    };
    if pg_type.ends_with("[]") {
        return if json_array_element(pg_type).is_some() {
            Storage::Json
        } else {
            text
        };
    }
    let sized = |sql: &str, bytes| Storage::Sized(sql.to_owned(), bytes);
    let (base, args) = split_type(pg_type);
    let length = || args.and_then(|n| n.trim().parse::<u32>().ok());
    match base.as_str() {
        "smallint" => sized("SMALLINT", 2),
        "integer" => sized("INT", 4),
        "bigint" => sized("BIGINT", 8),
        "boolean" => sized("BOOLEAN", 1),
        "real" => sized("FLOAT", 4),
        "double precision" => sized("DOUBLE", 8),
        "numeric" => match args {
            None => decimal(65, 30),
            Some(ps) => {
                let mut it = ps.split(',').map(|s| s.trim().parse::<i64>().ok());
                match (it.next().flatten(), it.next().unwrap_or(Some(0))) {
                    // A negative scale rounds to tens, hundreds...: -s more integer digits.
                    (Some(p), Some(s)) if s < 0 && p - s <= 65 => decimal(p - s, 0),
                    // A scale above the precision (numeric(3,5)) holds values below 10^(p-s).
                    (Some(p), Some(s)) if (0..=30).contains(&s) && p.max(s) <= 65 => decimal(p.max(s), s),
                    _ => text,
                }
            }
        },
        "character varying" => Storage::Chars {
            max: length(),
            padded: false,
        },
        "character" => Storage::Chars {
            max: length(),
            padded: true,
        },
        "date" => sized("DATE", 3),
        "time without time zone" => sized("TIME(6)", 6),
        "timestamp without time zone" | "timestamp with time zone" => sized("DATETIME(6)", 8),
        "bytea" => Storage::Bytes,
        "json" | "jsonb" => Storage::Json,
        "uuid" => sized("CHAR(36)", 144),
        _ => text,
    }
}

/// `DECIMAL(m,d)` and the bytes MariaDB stores it in: 4 per 9 digits on each side of the point.
fn decimal(m: i64, d: i64) -> Storage {
    let digits = |n: i64| (n / 9 * 4 + [0, 1, 1, 2, 2, 3, 3, 4, 4][(n % 9) as usize]) as u32;
    Storage::Sized(format!("DECIMAL({m},{d})"), digits(m - d) + digits(d))
}

/// A character type of `n` characters, with `char(n)`'s collation when padded.
fn chars_type(n: Option<u32>, padded: bool) -> String {
    let sql = match n {
        Some(n) if padded && n <= 255 => format!("CHAR({n})"),
        Some(n) if n <= VARCHAR_CHARS => format!("VARCHAR({n})"),
        _ => "LONGTEXT".to_owned(),
    };
    if padded {
        format!("{sql} COLLATE {CHAR_COLLATION}")
    } else {
        sql
    }
}

/// MariaDB's limit on the bytes of a row's columns, counting a LONGTEXT or LONGBLOB as a pointer.
const ROW_BYTES: u32 = 65_000;

/// What a LONGTEXT, LONGBLOB or JSON column counts towards [`ROW_BYTES`].
const LONGTEXT_ROW_BYTES: u32 = 12;

/// The most bytes a column outside the key counts towards [`ROW_BYTES`].
fn row_bytes(pg_type: &str) -> u32 {
    match storage(pg_type) {
        Storage::Sized(_, bytes) => bytes,
        Storage::Chars { max: Some(n), padded } if (padded && n <= 255) || n <= VARCHAR_CHARS => 4 * n + 2,
        _ => LONGTEXT_ROW_BYTES,
    }
}

/// The MariaDB column type for a PostgreSQL type, outside a key.
pub fn mariadb_type(pg_type: &str) -> String {
    match storage(pg_type) {
        Storage::Sized(sql, _) => sql,
        Storage::Chars { max, padded } => chars_type(max, padded),
        Storage::Bytes => "LONGBLOB".into(),
        Storage::Json => "JSON".into(),
    }
}

/// The collation a column of this type must have where it finds rows (a key,
/// or every column of a table without one); `None` where collation plays no part.
pub fn exact_collation(pg_type: &str) -> Option<&'static str> {
    match storage(pg_type) {
        Storage::Chars { padded: true, .. } => Some(CHAR_COLLATION),
        // In a key, JSON is held as text.
        Storage::Chars { padded: false, .. } | Storage::Json => Some(TEXT_COLLATION),
        Storage::Sized(..) | Storage::Bytes => None,
    }
}

/// A primary key that no MariaDB key can hold.
#[derive(Debug, thiserror::Error)]
#[error(
    "the primary key of {table} does not fit in a MariaDB key: {why}; replicate the table with a narrower primary key (for example a bigint identity column) instead"
)]
pub struct KeyTooWide {
    table: TableName,
    why: String,
}

/// The MariaDB type of each primary-key column, in key order. InnoDB keys hold
/// at most 3072 bytes: fixed-size columns take what they need, and text and
/// binary columns share the rest, none getting more than its declared length.
/// A longer value is refused by MariaDB and dead-lettered; uniqueness stays exact.
fn key_types(def: &TableDef) -> Result<Vec<String>, KeyTooWide> {
    let parts: Vec<Storage> = def
        .primary_key
        .iter()
        .map(|k| {
            let pg_type = def
                .columns
                .iter()
                .find(|c| &c.name == k)
                .map_or("text", |c| c.pg_type.as_str());
            storage(pg_type)
        })
        .collect();
    let fixed: u32 = parts
        .iter()
        .map(|p| if let Storage::Sized(_, b) = p { *b } else { 0 })
        .sum();
    let too_wide = |why: String| KeyTooWide {
        table: def.name.clone(),
        why,
    };
    let mut left = KEY_BYTES.checked_sub(fixed).ok_or_else(|| {
        too_wide(format!(
            "its fixed-size columns alone take {fixed} bytes, and InnoDB allows {KEY_BYTES}"
        ))
    })?;
    // Bytes per unit, and the most units a part needs (its declared length).
    let unit = |p: &Storage| match p {
        Storage::Bytes => 1,
        _ => 4,
    };
    let cap = |p: &Storage| match p {
        Storage::Chars { max: Some(n), .. } => *n,
        _ => u32::MAX,
    };
    let mut sized: Vec<usize> = (0..parts.len())
        .filter(|&i| !matches!(parts[i], Storage::Sized(..)))
        .collect();
    // The shortest first, so what they leave goes to the longer ones.
    sized.sort_by_key(|&i| cap(&parts[i]).saturating_mul(unit(&parts[i])));
    let mut units = vec![0u32; parts.len()];
    let count = sized.len() as u32;
    for (n, &i) in sized.iter().enumerate() {
        let share = left / (count - n as u32);
        units[i] = cap(&parts[i]).min(share / unit(&parts[i]));
        if units[i] == 0 {
            return Err(too_wide(format!(
                "its fixed-size columns take {fixed} of InnoDB's {KEY_BYTES} bytes, leaving no room for column {}",
                def.primary_key[i]
            )));
        }
        left -= units[i] * unit(&parts[i]);
    }
    Ok(parts
        .into_iter()
        .zip(units)
        .map(|(p, n)| match p {
            Storage::Sized(sql, _) => sql,
            Storage::Chars { padded, .. } => chars_type(Some(n), padded),
            Storage::Bytes => format!("VARBINARY({n})"),
            Storage::Json => format!("VARCHAR({n})"),
        })
        .collect())
}

/// `CREATE TABLE IF NOT EXISTS` for the table's MariaDB copy, or why its key cannot be one.
pub fn create_table_sql(def: &TableDef) -> Result<String, KeyTooWide> {
    let key_types = key_types(def)?;
    let mut types: Vec<(String, u32)> = def
        .columns
        .iter()
        .map(|c| match def.primary_key.iter().position(|k| k == &c.name) {
            // All key columns together take at most KEY_BYTES, counted once below.
            Some(k) => (key_types[k].clone(), 2),
            None => (mariadb_type(&c.pg_type), row_bytes(&c.pg_type)),
        })
        .collect();
    // MariaDB refuses a table whose VARCHAR and CHAR columns could together exceed
    // ROW_BYTES; the widest of those outside the key become LONGTEXT until they fit.
    let mut total = KEY_BYTES + types.iter().map(|(_, b)| b).sum::<u32>();
    while total > ROW_BYTES {
        let Some(widest) = (0..types.len())
            .filter(|&i| types[i].1 > LONGTEXT_ROW_BYTES && !def.primary_key.contains(&def.columns[i].name))
            .filter(|&i| matches!(storage(&def.columns[i].pg_type), Storage::Chars { .. }))
            .max_by_key(|&i| types[i].1)
        else {
            break;
        };
        let padded = matches!(
            storage(&def.columns[widest].pg_type),
            Storage::Chars { padded: true, .. }
        );
        total -= types[widest].1 - LONGTEXT_ROW_BYTES;
        types[widest] = (chars_type(None, padded), LONGTEXT_ROW_BYTES);
    }
    let mut cols: Vec<String> = def
        .columns
        .iter()
        .zip(types)
        .map(|(c, (sql_type, _))| {
            let null = if c.not_null || def.primary_key.contains(&c.name) {
                " NOT NULL"
            } else {
                " NULL"
            };
            format!("{} {sql_type}{null}", my_ident(&c.name))
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
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  {}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={TEXT_COLLATION}",
        my_ident(&def.name.target()),
        cols.join(",\n  ")
    ))
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
    // ±infinity is stored as MariaDB's largest and smallest value, so it is printed as those.
    let finite = |infinity: (&str, &str), text: String| {
        format!(
            "CASE WHEN {pg} = 'infinity' THEN '{}' WHEN {pg} = '-infinity' THEN '{}' ELSE {text} END",
            infinity.0, infinity.1
        )
    };
    if let Some(element) = json_array_element(t) {
        // Dates and times as PostgreSQL prints them, as the copy and the stream store them.
        let json = match element {
            ArrayElement::Temporal => format!("to_jsonb(({pg})::text[])"),
            _ => format!("to_jsonb({pg})"),
        };
        (format!("({json})::text"), format!("CAST({my} AS CHAR)"), Canon::Json)
    } else if t == "date" {
        (
            finite(DATE_INFINITY, format!("({pg})::text")),
            format!("CAST({my} AS CHAR)"),
            Canon::Text,
        )
    } else if t.starts_with("character(") {
        // Trailing spaces do not count in char(n); a VARCHAR (n > 255) keeps them.
        (
            format!("({pg})::text"),
            format!("TRIM(TRAILING ' ' FROM CAST({my} AS CHAR))"),
            Canon::Text,
        )
    } else if t == "boolean" {
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
            finite(
                DATETIME_INFINITY,
                format!("to_char({pg} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"),
            ),
            format!("DATE_FORMAT({my}, '%Y-%m-%d %H:%i:%s.%f')"),
            Canon::Text,
        )
    } else if t.starts_with("timestamp") {
        (
            finite(DATETIME_INFINITY, format!("to_char({pg}, 'YYYY-MM-DD HH24:MI:SS.US')")),
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
        assert_eq!(mariadb_type("character varying(60)"), "VARCHAR(60)");
        assert_eq!(mariadb_type("character varying(20000)"), "LONGTEXT");
        assert_eq!(mariadb_type("numeric(10,2)"), "DECIMAL(10,2)");
        assert_eq!(mariadb_type("numeric(5,-2)"), "DECIMAL(7,0)");
        assert_eq!(mariadb_type("numeric(3,5)"), "DECIMAL(5,5)");
        assert_eq!(mariadb_type("numeric(65,-1)"), "LONGTEXT");
        assert_eq!(mariadb_type("numeric(70,5)"), "LONGTEXT");
        assert_eq!(mariadb_type("numeric"), "DECIMAL(65,30)");
        assert_eq!(mariadb_type("timestamp(3) without time zone"), "DATETIME(6)");
        assert_eq!(mariadb_type("character(5)"), "CHAR(5) COLLATE utf8mb4_bin");
        assert_eq!(mariadb_type("character(300)"), "VARCHAR(300) COLLATE utf8mb4_bin");
        assert_eq!(mariadb_type("text"), "LONGTEXT");
        assert_eq!(mariadb_type("integer[]"), "JSON");
        assert_eq!(mariadb_type("character varying(10)[]"), "JSON");
        assert_eq!(mariadb_type("timestamp(3) with time zone[]"), "JSON");
        assert_eq!(mariadb_type("point[]"), "LONGTEXT");
        assert_eq!(mariadb_type("bytea[]"), "LONGTEXT");
        assert_eq!(mariadb_type("mood[]"), "LONGTEXT");
        assert_eq!(json_array_element("numeric(10,2)[]"), Some(ArrayElement::Number));
        assert_eq!(json_array_element("date[]"), Some(ArrayElement::Temporal));
        assert_eq!(json_array_element("integer"), None);
        assert_eq!(exact_collation("text"), Some(TEXT_COLLATION));
        assert_eq!(exact_collation("character(3)"), Some(CHAR_COLLATION));
        assert_eq!(exact_collation("integer"), None);
        assert_eq!(my_ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn wide_text_columns_fit_a_row() {
        let cols: Vec<(String, &str)> = (0..20)
            .map(|i| (format!("c{i}"), "character varying(1000)"))
            .chain([("k".to_owned(), "text"), ("small".to_owned(), "character varying(50)")])
            .collect();
        let cols: Vec<(&str, &str)> = cols.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let sql = create_table_sql(&table(&cols, &["k"])).expect("fits");
        // 20 × 4 002 bytes is too many: the fewest become LONGTEXT, the rest and the key stay.
        assert_eq!(sql.matches("VARCHAR(1000)").count(), 15, "{sql}");
        assert_eq!(sql.matches("LONGTEXT").count(), 5, "{sql}");
        assert!(
            sql.contains("`small` VARCHAR(50) NULL") && sql.contains("`k` VARCHAR(768) NOT NULL"),
            "{sql}"
        );
        let narrow = create_table_sql(&table(&cols[..10], &[])).expect("fits");
        assert_eq!(narrow.matches("VARCHAR(1000)").count(), 10, "{narrow}");
    }

    #[test]
    fn maps_infinity_and_refuses_bc_dates() {
        assert_eq!(mariadb_datetime("infinity", DATE_INFINITY), Some("9999-12-31"));
        assert_eq!(
            mariadb_datetime("-infinity", DATETIME_INFINITY),
            Some("0000-01-01 00:00:00.000000")
        );
        assert_eq!(mariadb_datetime("2024-02-29", DATE_INFINITY), Some("2024-02-29"));
        assert_eq!(mariadb_datetime("0044-03-15 BC", DATE_INFINITY), None);
    }

    fn table(columns: &[(&str, &str)], key: &[&str]) -> TableDef {
        TableDef::plain(
            TableName::parse("t").expect("valid"),
            columns
                .iter()
                .map(|(name, pg_type)| ColumnDef::named(name, pg_type))
                .collect(),
            key.iter().map(|k| (*k).to_string()).collect(),
        )
    }

    #[test]
    fn keys_share_innodbs_bytes() {
        let types = |cols: &[(&str, &str)], key: &[&str]| key_types(&table(cols, key));
        let two_texts = types(&[("tenant", "text"), ("slug", "text")], &["tenant", "slug"]).expect("fits");
        assert_eq!(two_texts, ["VARCHAR(384)", "VARCHAR(384)"]);
        let int_text = types(&[("id", "integer"), ("region", "text")], &["id", "region"]).expect("fits");
        assert_eq!(int_text, ["INT", "VARCHAR(767)"]);
        assert_eq!(types(&[("t", "text")], &["t"]).expect("fits"), ["VARCHAR(768)"]);
        assert_eq!(types(&[("b", "bytea")], &["b"]).expect("fits"), ["VARBINARY(3072)"]);
        // A short declared length keeps its size and leaves the rest to the others.
        let mixed = types(
            &[
                ("a", "character varying(10)"),
                ("b", "text"),
                ("c", "bytea"),
                ("d", "uuid"),
            ],
            &["a", "b", "c", "d"],
        )
        .expect("fits");
        assert_eq!(mixed, ["VARCHAR(10)", "VARCHAR(361)", "VARBINARY(1444)", "CHAR(36)"]);
        assert_eq!(
            types(&[("c", "character(400)"), ("n", "numeric(65,30)")], &["c", "n"]).expect("fits"),
            ["VARCHAR(400) COLLATE utf8mb4_bin", "DECIMAL(65,30)"]
        );
        assert_eq!(types(&[("a", "integer[]")], &["a"]).expect("fits"), ["VARCHAR(768)"]);
        // 22 uuids take 3168 bytes: no MariaDB key holds them.
        let uuids: Vec<(String, &str)> = (0..22).map(|i| (format!("u{i}"), "uuid")).collect();
        let cols: Vec<(&str, &str)> = uuids.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        let err = types(&cols, &names).expect_err("too wide");
        assert!(err.to_string().contains("3168 bytes"), "{err}");
        // 21 uuids and 6 bigints take all 3072 bytes.
        let mut cols = cols[..21].to_vec();
        cols.extend(["b0", "b1", "b2", "b3", "b4", "b5"].map(|b| (b, "bigint")));
        cols.push(("t", "text"));
        let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        let err = types(&cols, &names).expect_err("no room");
        assert!(err.to_string().contains("no room for column t"), "{err}");
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
            full_identity: false,
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
        let sql = create_table_sql(&def).expect("fits");
        assert!(sql.ends_with("COLLATE=utf8mb4_nopad_bin"), "{sql}");
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS `itrequests`"));
        assert!(sql.contains("`details` VARCHAR(60) NOT NULL"));
        assert!(sql.contains("PRIMARY KEY (`requestid`)"));
    }
}
