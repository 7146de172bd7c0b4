//! Which replicated table a decoded change belongs to.
//!
//! wal2json names the relation a change was written to. For a plain table that
//! is the table itself. For a partitioned table it is the leaf partition, so the
//! capture maps each leaf back to the partitioned table named in `--tables`.
//!
//! Partitions can be created while the pipeline runs, and wal2json's
//! `add-tables` is fixed when the stream starts. So for a partitioned table the
//! filter names every schema that holds one of its partitions (`schema.*`), not
//! the partitions themselves: a partition created later in one of those schemas
//! is decoded from its first change, and the capture looks up, in the catalog,
//! each relation it has not seen before. What the stream cannot carry stops the
//! pipeline with a sentence that names the partition and says to copy the table
//! afresh ([`SourceError::Refused`]):
//! - a table attached with `ATTACH PARTITION`: the rows it held were never
//!   changes of the partitioned table, and changes it had before may sit in the
//!   stream under its name;
//! - a partition in a schema the filter did not name, whose changes wal2json
//!   dropped before the host saw them;
//! - a partition without a usable replica identity, whose updates and deletes
//!   wal2json cannot describe.
//!
//! The refusals hold across restarts until the table is copied afresh: at
//! start-up, a partition linked after the slot's `catalog_xmin` (so after the
//! point the stream resumes from) is judged as if it had appeared mid-run.
//! While running, the partition tree is read again every 10 s, which also finds
//! attached partitions that have not been written, and forgets detached ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Row};

use crate::catalog::{ColumnDef, TableDef, TableName};
use crate::change::{Change, Lsn, Op};
use crate::source::SourceError;

/// How often the partition trees are read again.
const RECHECK: Duration = Duration::from_secs(10);

/// How long one catalog query may take before the capture gives up and restarts.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a relation's changes are, as far as the pipeline knows.
#[derive(Clone, Copy, Debug)]
enum Known {
    /// Changes of `defs[i]`.
    Table(usize),
    /// Not replicated in any transaction that committed at or before this
    /// position: the catalog was read after the server's WAL had reached it.
    Unrelated(Lsn),
}

/// Columns that describe a leaf partition `c`, read after its schema and name
/// (`$1` is the slot): its replica identity, and when it joined the tree.
const LEAF_FACTS: &str = "c.relreplident::text, \
     EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
     (SELECT min(age(ih.xmin)) FROM pg_partition_ancestors(c.oid) p(relid) \
        JOIN pg_inherits ih ON ih.inhrelid = p.relid), \
     (SELECT age(d.xmin) FROM pg_depend d WHERE d.classid = 'pg_type'::regclass \
        AND d.objid = c.reltype AND d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid), \
     (SELECT age(s.catalog_xmin) FROM pg_replication_slots s WHERE s.slot_name = $1)";

/// A leaf partition as the catalog describes it.
struct Leaf {
    name: TableName,
    /// A primary key, or REPLICA IDENTITY FULL or USING INDEX.
    identifiable: bool,
    /// Linked into the tree after it was created: ATTACH PARTITION. The row type's
    /// dependency row is written with the table and never rewritten (unlike the
    /// row type itself, which OWNER TO and RENAME rewrite).
    attached: bool,
    /// Linked into the tree after the slot's `catalog_xmin`: the stream may still
    /// hold its joining, so a previous run may not have judged it.
    fresh: bool,
}

impl Leaf {
    /// Reads a row whose first two columns are the leaf's schema and name,
    /// followed by [`LEAF_FACTS`].
    fn from_row(r: &Row) -> Self {
        let identity: String = r.get(2);
        let has_key: bool = r.get(3);
        let link: Option<i32> = r.get(4);
        let created: Option<i32> = r.get(5);
        let slot: Option<i32> = r.get(6);
        Leaf {
            name: TableName {
                schema: r.get(0),
                name: r.get(1),
            },
            identifiable: identity == "f" || identity == "i" || (identity == "d" && has_key),
            // An age is smaller for a younger transaction.
            attached: match (link, created) {
                (Some(link), Some(created)) => link < created,
                (Some(_), None) => true,
                (None, _) => false,
            },
            fresh: matches!((link, slot), (Some(link), Some(slot)) if link <= slot),
        }
    }
}

/// The replicated tables, and the relations whose changes belong to each.
pub struct Relations {
    defs: Vec<TableDef>,
    /// By schema, then relation, as wal2json prints them.
    known: HashMap<String, HashMap<String, Known>>,
    /// Schemas named by the filter as `schema.*`, for partitioned tables.
    covered: BTreeSet<String>,
    /// A connection for catalog lookups; only when a table is partitioned.
    catalog: Option<Client>,
    slot: String,
    checked_at: Instant,
    /// Where the server's WAL was when the partition trees were last read: the
    /// slot is confirmed no further, so that a partition that joined a tree
    /// after it is judged again at the next start (see [`Leaf::fresh`]).
    checked_through: Lsn,
}

impl Relations {
    /// The tables as read at start-up, each with its partitions. `catalog` is
    /// needed only when a table is partitioned: it reads partition trees, and
    /// judges at once the partitions that joined after `slot` last moved on.
    pub async fn open(defs: &[TableDef], catalog: Option<Client>, slot: &str) -> Result<Self, SourceError> {
        let mut relations = Relations {
            defs: defs.to_vec(),
            known: HashMap::new(),
            covered: BTreeSet::new(),
            catalog,
            slot: slot.to_owned(),
            checked_at: Instant::now(),
            checked_through: Lsn(0),
        };
        for (i, def) in defs.iter().enumerate() {
            relations.remember(&def.name, Known::Table(i));
            if let Some(leaves) = &def.partitions {
                relations.covered.insert(def.name.schema.clone());
                for leaf in leaves {
                    relations.covered.insert(leaf.schema.clone());
                    relations.remember(leaf, Known::Table(i));
                }
            }
        }
        if let Some(pg) = &relations.catalog {
            // A lookup waits neither for a lock nor for long: the capture must stay stoppable.
            timed(pg.batch_execute("SET statement_timeout = '5s'; SET lock_timeout = '2s'")).await?;
            relations.read_trees(true).await?;
        }
        Ok(relations)
    }

    /// How far the slot may be confirmed, given the position `flush` that RabbitMQ holds.
    pub fn confirmable(&self, flush: Lsn) -> Lsn {
        if self.catalog.is_some() {
            flush.min(self.checked_through)
        } else {
            flush
        }
    }

    /// Whether any table is partitioned, so that lookups need a catalog connection.
    pub fn needs_catalog(defs: &[TableDef]) -> bool {
        defs.iter().any(|d| d.partitions.is_some())
    }

    fn remember(&mut self, name: &TableName, known: Known) {
        self.known
            .entry(name.schema.clone())
            .or_default()
            .insert(name.name.clone(), known);
    }

    fn get(&self, schema: &str, relation: &str) -> Option<Known> {
        self.known.get(schema)?.get(relation).copied()
    }

    /// wal2json's `add-tables` value: each plain table, and each schema that
    /// holds partitions of a partitioned table.
    pub fn wal2json_filter(&self) -> String {
        let all = |schema: &str| {
            let mut entry = TableName {
                schema: schema.to_owned(),
                name: String::new(),
            }
            .wal2json_filter();
            entry.push('*');
            entry
        };
        self.defs
            .iter()
            .filter(|d| d.partitions.is_none() && !self.covered.contains(&d.name.schema))
            .map(|d| d.name.wal2json_filter())
            .chain(self.covered.iter().map(|s| all(s)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Renames a change, of the transaction committing at `commit_lsn`, to the
    /// replicated table it belongs to and returns that table's definition;
    /// `None` for a relation that is not replicated.
    ///
    /// A relation found unrelated is looked up again for a transaction that
    /// committed after the lookup, since it may have joined a tree meanwhile;
    /// a capture that is behind reuses one lookup for its whole backlog.
    pub async fn resolve(&mut self, change: &mut Change, commit_lsn: Lsn) -> Result<Option<&TableDef>, SourceError> {
        let index = match self.get(&change.schema, &change.table) {
            Some(Known::Table(i)) => Some(i),
            Some(Known::Unrelated(through)) if commit_lsn <= through => None,
            _ => {
                let relation = TableName {
                    schema: change.schema.clone(),
                    name: change.table.clone(),
                };
                self.look_up(relation).await?
            }
        };
        let Some(i) = index else {
            return Ok(None);
        };
        learn_columns(&mut self.defs[i].columns, change);
        let def = &self.defs[i];
        if def.name.schema != change.schema || def.name.name != change.table {
            change.schema.clone_from(&def.name.schema);
            change.table.clone_from(&def.name.name);
        }
        Ok(Some(def))
    }

    /// Reads the partition trees again, at most every [`RECHECK`].
    pub async fn check(&mut self) -> Result<(), SourceError> {
        if self.catalog.is_none() || self.checked_at.elapsed() < RECHECK {
            return Ok(());
        }
        self.read_trees(false).await
    }

    /// Judges every leaf that joined a tree since the pipeline knew it (at
    /// start-up: since the slot's `catalog_xmin`), and forgets the leaves that
    /// left. Start-up also refuses a schema whose every leaf is fresh: the
    /// previous run's filter may not have named it.
    async fn read_trees(&mut self, at_start: bool) -> Result<(), SourceError> {
        self.checked_at = Instant::now();
        let Some(pg) = &self.catalog else {
            return Ok(());
        };
        let through = current_wal_lsn(pg).await?;
        let sql = format!(
            "SELECT n.nspname::text, c.relname::text, {LEAF_FACTS} \
             FROM pg_class pc JOIN pg_namespace pn ON pn.oid = pc.relnamespace, \
                  pg_partition_tree(pc.oid) t JOIN pg_class c ON c.oid = t.relid \
                  JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE pn.nspname = $2 AND pc.relname = $3 AND t.isleaf"
        );
        let mut found = Vec::new();
        for (i, def) in self.defs.iter().enumerate().filter(|(_, d)| d.partitions.is_some()) {
            let rows = timed(pg.query(&sql, &[&self.slot, &def.name.schema, &def.name.name])).await?;
            let leaves: Vec<Leaf> = rows.iter().map(Leaf::from_row).collect();
            if at_start {
                let mut by_schema: BTreeMap<&str, Vec<&Leaf>> = BTreeMap::new();
                for leaf in &leaves {
                    by_schema.entry(leaf.name.schema.as_str()).or_default().push(leaf);
                }
                for (schema, in_schema) in by_schema {
                    if schema != def.name.schema && in_schema.iter().all(|l| l.fresh) {
                        return Err(uncovered(&in_schema[0].name, &def.name));
                    }
                }
            }
            for leaf in &leaves {
                let known = matches!(self.get(&leaf.name.schema, &leaf.name.name), Some(Known::Table(j)) if j == i);
                if !known || (at_start && leaf.fresh) {
                    self.judge(leaf, &def.name)?;
                }
            }
            found.push((i, leaves));
        }
        for (i, leaves) in found {
            let current: BTreeSet<(&str, &str)> = leaves
                .iter()
                .map(|l| (l.name.schema.as_str(), l.name.name.as_str()))
                .collect();
            let parent = self.defs[i].name.clone();
            for (schema, relations) in &mut self.known {
                relations.retain(|relation, known| {
                    let leaf_of_i = matches!(known, Known::Table(j) if *j == i)
                        && (schema != &parent.schema || relation != &parent.name);
                    let gone = leaf_of_i && !current.contains(&(schema.as_str(), relation.as_str()));
                    if gone {
                        tracing::warn!(partition = %format!("{schema}.{relation}"), table = %parent, "a partition left its table (detached or dropped); its changes are no longer replicated");
                    }
                    !gone
                });
            }
            for leaf in leaves {
                if !matches!(self.get(&leaf.name.schema, &leaf.name.name), Some(Known::Table(_))) {
                    tracing::info!(partition = %leaf.name, table = %parent, "a new partition: its changes are replicated into its partitioned table");
                    self.remember(&leaf.name, Known::Table(i));
                }
            }
        }
        self.checked_through = through;
        Ok(())
    }

    /// Refuses a leaf that joined its tree in a way the stream cannot carry.
    fn judge(&self, leaf: &Leaf, parent: &TableName) -> Result<(), SourceError> {
        let recopy = format!("copy {parent} afresh (stop the pipeline, `wasmcdc slot drop`, start it again)");
        if !leaf.identifiable {
            return Err(SourceError::Refused(format!(
                "partition {} of {parent} has no primary key and its replica identity is not FULL, so wal2json cannot describe its updates and deletes; run ALTER TABLE {} REPLICA IDENTITY FULL (or add a key), then {recopy}",
                leaf.name,
                leaf.name.pg_quoted()
            )));
        }
        if leaf.attached {
            return Err(SourceError::Refused(format!(
                "{} was attached to {parent} with ATTACH PARTITION while the pipeline streamed it; the rows it held, and its changes from before, were never changes of {parent}; {recopy}, or create partitions with CREATE TABLE ... PARTITION OF",
                leaf.name
            )));
        }
        if !self.covered.contains(&leaf.name.schema) {
            return Err(uncovered(&leaf.name, parent));
        }
        Ok(())
    }

    /// Finds in the catalog whether a relation is a partition of a replicated
    /// table, judges it, and remembers the answer.
    async fn look_up(&mut self, relation: TableName) -> Result<Option<usize>, SourceError> {
        let Some(pg) = &self.catalog else {
            self.remember(&relation, Known::Unrelated(Lsn(u64::MAX)));
            return Ok(None);
        };
        let through = current_wal_lsn(pg).await?;
        let sql = format!(
            "SELECT n.nspname::text, c.relname::text, {LEAF_FACTS}, an.nspname::text, ac.relname::text, c.relkind::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN LATERAL (SELECT p.relid FROM pg_partition_ancestors(c.oid) p(relid) \
                                WHERE p.relid <> c.oid) a ON true \
             LEFT JOIN pg_class ac ON ac.oid = a.relid LEFT JOIN pg_namespace an ON an.oid = ac.relnamespace \
             WHERE n.nspname = $2 AND c.relname = $3 AND c.relkind IN ('r', 'p')"
        );
        let rows = timed(pg.query(&sql, &[&self.slot, &relation.schema, &relation.name])).await?;
        if rows.is_empty() {
            // wal2json prints the name a relation had when the change was written.
            tracing::warn!(relation = %relation, "changes of a relation that no longer exists under this name are not replicated; if it was a partition of a replicated table, renamed or dropped while the capture was behind, its changes under this name are missing from the target");
        }
        let found = rows.iter().find_map(|r| {
            let ancestor = TableName {
                schema: r.get::<_, Option<String>>(7)?,
                name: r.get::<_, Option<String>>(8)?,
            };
            self.defs
                .iter()
                .position(|d| d.partitions.is_some() && d.name == ancestor)
                .map(|i| (i, r))
        });
        let Some((i, row)) = found else {
            self.remember(&relation, Known::Unrelated(through));
            return Ok(None);
        };
        // A partitioned table inside the tree has no rows of its own: it shows up
        // only in a TRUNCATE of its branch, and is never a leaf to remember.
        if row.get::<_, String>(9) == "p" {
            return Ok(Some(i));
        }
        let leaf = Leaf::from_row(row);
        self.judge(&leaf, &self.defs[i].name)?;
        tracing::info!(partition = %leaf.name, table = %self.defs[i].name, "a new partition: its changes are replicated into its partitioned table");
        self.remember(&relation, Known::Table(i));
        Ok(Some(i))
    }
}

fn uncovered(leaf: &TableName, parent: &TableName) -> SourceError {
    SourceError::Refused(format!(
        "partition {leaf} of {parent} is in a schema that held none of its partitions when the stream started, so wal2json may have dropped its changes; copy {parent} afresh (stop the pipeline, `wasmcdc slot drop`, start it again), or create partitions in the schemas that hold the others"
    ))
}

/// Keeps a table's column list current from its changes, since columns are
/// added and dropped while the pipeline runs: an insert carries every column the
/// table has, in order; an update every one but its unchanged TOASTed values.
fn learn_columns(columns: &mut Vec<ColumnDef>, change: &Change) {
    // Its OID unknown, a new column counts as a type that may be stored out of line.
    let new = |c: &crate::change::Column| ColumnDef::named(&c.name, &c.pg_type);
    match change.op {
        Op::Insert => {
            let same = change.columns.len() == columns.len()
                && change.columns.iter().zip(columns.iter()).all(|(c, d)| c.name == d.name);
            if !same {
                let old = std::mem::take(columns);
                *columns = change
                    .columns
                    .iter()
                    .map(|c| old.iter().find(|d| d.name == c.name).cloned().unwrap_or_else(|| new(c)))
                    .collect();
            }
        }
        Op::Update => {
            // The fast path: the update's columns appear in the list, in order.
            let mut listed = columns.iter();
            if !change.columns.iter().all(|c| listed.any(|d| d.name == c.name)) {
                for c in &change.columns {
                    if !columns.iter().any(|d| d.name == c.name) {
                        columns.push(new(c));
                    }
                }
            }
        }
        Op::Delete | Op::Truncate => {}
    }
}

/// The server's WAL position, read before a catalog query so that every
/// transaction committed by then is visible to that query.
async fn current_wal_lsn(pg: &Client) -> Result<Lsn, SourceError> {
    timed(pg.query_one("SELECT pg_current_wal_lsn()::text", &[]))
        .await?
        .get::<_, String>(0)
        .parse()
        .map_err(|e| SourceError::Query(format!("PostgreSQL printed an unreadable position: {e}")))
}

async fn timed<T>(query: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, SourceError> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
        Ok(r) => r.map_err(SourceError::from),
        Err(_) => Err(SourceError::Query(format!(
            "a catalog lookup for partitions took more than {} s",
            LOOKUP_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;

    fn name(schema: &str, table: &str) -> TableName {
        TableName {
            schema: schema.into(),
            name: table.into(),
        }
    }

    fn def(table: TableName, partitions: Option<Vec<TableName>>) -> TableDef {
        TableDef {
            partitions,
            ..TableDef::plain(table, Vec::new(), Vec::new())
        }
    }

    async fn relations() -> Relations {
        Relations::open(
            &[
                def(
                    name("public", "orders"),
                    Some(vec![name("public", "orders_eu"), name("arch ive", "orders_2020")]),
                ),
                def(name("public", "plain"), None),
                def(name("sales", "q1.2026"), None),
            ],
            None,
            "p",
        )
        .await
        .expect("opens without a catalog")
    }

    #[tokio::test]
    async fn leaves_map_to_their_partitioned_table() {
        let mut relations = relations().await;
        let mut change = Change {
            op: Op::Insert,
            schema: "arch ive".into(),
            table: "orders_2020".into(),
            columns: Vec::new(),
            key: Vec::new(),
        };
        let lsn = Lsn(1);
        let table = relations
            .resolve(&mut change, lsn)
            .await
            .expect("resolves")
            .map(|d| d.name.clone());
        assert_eq!(table, Some(name("public", "orders")));
        assert_eq!((change.schema.as_str(), change.table.as_str()), ("public", "orders"));
        change.table = "other".into();
        assert!(relations.resolve(&mut change, lsn).await.expect("resolves").is_none());
    }

    #[test]
    fn column_lists_follow_added_and_dropped_columns() {
        let column = |name: &str| crate::change::Column {
            name: name.into(),
            pg_type: "text".into(),
            value: crate::change::Value::Null,
        };
        let change = |op, names: &[&str]| Change {
            op,
            schema: "public".into(),
            table: "docs".into(),
            columns: names.iter().map(|n| column(n)).collect(),
            key: Vec::new(),
        };
        let names = |columns: &[ColumnDef]| columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let mut columns = vec![
            ColumnDef {
                name: "id".into(),
                pg_type: "integer".into(),
                type_oid: 23,
                not_null: true,
            },
            ColumnDef {
                name: "body".into(),
                pg_type: "text".into(),
                type_oid: 25,
                not_null: false,
            },
        ];
        // An update that leaves `body` out says nothing new.
        learn_columns(&mut columns, &change(Op::Update, &["id"]));
        assert_eq!(names(&columns), ["id", "body"]);
        // A column added: an update that writes it adds it.
        learn_columns(&mut columns, &change(Op::Update, &["id", "extra"]));
        assert_eq!(names(&columns), ["id", "body", "extra"]);
        // A column dropped: an insert carries exactly what the table has; known types stay.
        learn_columns(&mut columns, &change(Op::Insert, &["id", "extra"]));
        assert_eq!(names(&columns), ["id", "extra"]);
        assert_eq!(columns[0].type_oid, 23);
    }

    #[tokio::test]
    async fn the_filter_names_plain_tables_and_the_schemas_of_partitions() {
        // `public.plain` is already covered by `public.*`.
        assert_eq!(
            relations().await.wal2json_filter(),
            r"sales.q1\.2026,arch\ ive.*,public.*"
        );
    }
}
