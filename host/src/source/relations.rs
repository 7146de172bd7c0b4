//! Which replicated table a decoded change belongs to.
//!
//! wal2json names the relation a change was written to. For a plain table that
//! is the table itself. For a partitioned table it is the leaf partition, so the
//! capture maps each leaf back to the partitioned table named in `--tables`.
//!
//! Partitions can be created or attached while the pipeline runs, and wal2json's
//! `add-tables` is fixed when the stream starts. So for a partitioned table the
//! filter names every schema that holds one of its partitions (`schema.*`), not
//! the partitions themselves: a partition created later in one of those schemas
//! is decoded from its first change, and the capture looks up, in the catalog,
//! each relation it has not seen before. Two cases cannot be covered and stop
//! the pipeline with a sentence that names the partition ([`SourceError::Refused`]):
//! - a partition in a schema the filter does not name, whose changes wal2json
//!   drops before the host sees them (found by a catalog check every 10 s);
//! - a table attached with `ATTACH PARTITION` while it held rows: those rows were
//!   never changes of the partitioned table, so they are not in the stream.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::catalog::{TableDef, TableName};
use crate::change::{Change, Lsn};
use crate::source::SourceError;

/// How often the catalog is checked for partitions outside the filter.
const RECHECK: Duration = Duration::from_secs(10);

/// How long one catalog lookup may take before the capture gives up and restarts.
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

/// The replicated tables, and the relations whose changes belong to each.
pub struct Relations {
    defs: Vec<TableDef>,
    /// `(schema, relation)` as wal2json prints it.
    known: HashMap<(String, String), Known>,
    /// Schemas named by the filter as `schema.*`, for partitioned tables.
    covered: BTreeSet<String>,
    /// A connection for catalog lookups; only when a table is partitioned.
    catalog: Option<Client>,
    checked_at: Instant,
}

impl Relations {
    /// The tables as read at start-up, each with its partitions. `catalog` is
    /// used to look up partitions created later; it is needed only when a
    /// table is partitioned.
    pub fn new(defs: &[TableDef], catalog: Option<Client>) -> Self {
        let mut known = HashMap::new();
        let mut covered = BTreeSet::new();
        for (i, def) in defs.iter().enumerate() {
            known.insert(key(&def.name), Known::Table(i));
            if let Some(leaves) = &def.partitions {
                covered.insert(def.name.schema.clone());
                for leaf in leaves {
                    covered.insert(leaf.schema.clone());
                    known.insert(key(leaf), Known::Table(i));
                }
            }
        }
        Relations {
            defs: defs.to_vec(),
            known,
            covered,
            catalog,
            checked_at: Instant::now(),
        }
    }

    /// Whether any table is partitioned, so that lookups need a catalog connection.
    pub fn needs_catalog(defs: &[TableDef]) -> bool {
        defs.iter().any(|d| d.partitions.is_some())
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
    /// committed after the lookup, since it may have been attached meanwhile;
    /// a capture that is behind reuses one lookup for its whole backlog.
    pub async fn resolve(&mut self, change: &mut Change, commit_lsn: Lsn) -> Result<Option<&TableDef>, SourceError> {
        let relation = (change.schema.clone(), change.table.clone());
        let index = match self.known.get(&relation) {
            Some(Known::Table(i)) => Some(*i),
            Some(Known::Unrelated(through)) if commit_lsn <= *through => None,
            _ => self.look_up(&relation).await?,
        };
        let Some(i) = index else {
            return Ok(None);
        };
        let def = &self.defs[i];
        if def.name.schema != change.schema || def.name.name != change.table {
            change.schema.clone_from(&def.name.schema);
            change.table.clone_from(&def.name.name);
        }
        Ok(Some(def))
    }

    /// Checks, at most every [`RECHECK`], that every partition of the partitioned
    /// tables lies in a schema the filter covers.
    pub async fn check(&mut self) -> Result<(), SourceError> {
        if self.checked_at.elapsed() < RECHECK {
            return Ok(());
        }
        self.checked_at = Instant::now();
        let Some(pg) = &self.catalog else {
            return Ok(());
        };
        for def in self.defs.iter().filter(|d| d.partitions.is_some()) {
            let rows = timed(pg.query(
                "SELECT n.nspname::text, c.relname::text \
                 FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace, \
                      pg_partition_tree(p.oid) t JOIN pg_class c ON c.oid = t.relid \
                      JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE pn.nspname = $1 AND p.relname = $2 AND t.isleaf",
                &[&def.name.schema, &def.name.name],
            ))
            .await?;
            for r in rows {
                let leaf = TableName {
                    schema: r.get(0),
                    name: r.get(1),
                };
                if !self.covered.contains(&leaf.schema) {
                    return Err(uncovered(&leaf, &def.name));
                }
            }
        }
        Ok(())
    }

    /// Finds in the catalog whether a relation is a partition of a replicated
    /// table, and remembers the answer.
    async fn look_up(&mut self, relation: &(String, String)) -> Result<Option<usize>, SourceError> {
        let Some(pg) = &self.catalog else {
            self.known.insert(relation.clone(), Known::Unrelated(Lsn(u64::MAX)));
            return Ok(None);
        };
        // Read before the catalog, so that every transaction committed by then is
        // visible to the catalog query that follows.
        let through: Lsn = timed(pg.query_one("SELECT pg_current_wal_lsn()::text", &[]))
            .await?
            .get::<_, String>(0)
            .parse()
            .map_err(|e| SourceError::Query(format!("PostgreSQL printed an unreadable position: {e}")))?;
        // Every partitioned table above the relation, with the transaction that
        // linked each level, and the one that created the relation's row type
        // (which ATTACH PARTITION does not touch).
        let rows = timed(pg.query(
            "SELECT an.nspname::text, ac.relname::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                    (SELECT min(age(ih.xmin)) FROM pg_partition_ancestors(c.oid) p(relid) \
                       JOIN pg_inherits ih ON ih.inhrelid = p.relid), \
                    age(ty.xmin) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type ty ON ty.oid = c.reltype \
             CROSS JOIN LATERAL pg_partition_ancestors(c.oid) a(relid) \
             JOIN pg_class ac ON ac.oid = a.relid JOIN pg_namespace an ON an.oid = ac.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r' AND a.relid <> c.oid",
            &[&relation.0, &relation.1],
        ))
        .await?;
        let leaf = TableName {
            schema: relation.0.clone(),
            name: relation.1.clone(),
        };
        let found = rows.iter().find_map(|r| {
            let ancestor = TableName {
                schema: r.get(0),
                name: r.get(1),
            };
            self.defs
                .iter()
                .position(|d| d.partitions.is_some() && d.name == ancestor)
                .map(|i| (i, r))
        });
        let Some((i, row)) = found else {
            self.known.insert(relation.clone(), Known::Unrelated(through));
            return Ok(None);
        };
        let parent = &self.defs[i].name;
        let identity: String = row.get(2);
        let has_key: bool = row.get(3);
        if !(identity == "f" || identity == "i" || (identity == "d" && has_key)) {
            return Err(SourceError::NoKey(leaf));
        }
        // The newest link above the relation is younger than the relation itself:
        // it was attached, not created as a partition. Rows written before that link
        // are not in the stream as changes of the partitioned table.
        let (newest_link, created): (Option<i32>, i32) = (row.get(4), row.get(5));
        if let Some(newest) = newest_link.filter(|&n| n < created) {
            let held = timed(pg.query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM {} WHERE age(xmin) > $1)",
                    leaf.pg_quoted()
                ),
                &[&newest],
            ))
            .await?;
            if held.get::<_, bool>(0) {
                return Err(SourceError::Refused(format!(
                    "{leaf} was attached to {parent} while it held rows, and those rows were never changes of {parent}, so the target would miss them; re-copy {parent} (stop the pipeline, `wasmcdc slot drop`, start it again), or attach only empty tables"
                )));
            }
        }
        if !self.covered.contains(&leaf.schema) {
            return Err(uncovered(&leaf, parent));
        }
        tracing::info!(partition = %leaf, table = %parent, "a new partition: its changes are replicated into its partitioned table");
        self.known.insert(relation.clone(), Known::Table(i));
        Ok(Some(i))
    }
}

/// The TRUNCATEs of leaf partitions read so far in a row: PostgreSQL logs
/// `TRUNCATE orders` as one truncate per leaf, and the target holds all leaves
/// in one table, so it is emptied only when every leaf it holds rows of was.
#[derive(Default)]
pub struct Truncates {
    table: Option<usize>,
    leaves: BTreeSet<(String, String)>,
    changes: Vec<Change>,
}

/// What to do with a run of leaf truncates.
#[derive(Debug, PartialEq)]
pub enum Truncated {
    /// More may follow.
    Pending,
    /// Every leaf was truncated: apply this one truncate of the partitioned table.
    Whole(Change),
}

impl Relations {
    /// Takes the TRUNCATE of a leaf, by the leaf's own name. What was pending
    /// for another table is returned in `unfinished`, for the caller to
    /// dead-letter under the leaves' names, so that a replay cannot empty the
    /// whole table.
    pub fn truncate(&self, pending: &mut Truncates, mut change: Change, unfinished: &mut Vec<Change>) -> Truncated {
        let leaf = (change.schema.clone(), change.table.clone());
        let Some(Known::Table(table)) = self.known.get(&leaf).copied() else {
            unfinished.push(change);
            return Truncated::Pending;
        };
        if pending.table.is_some_and(|t| t != table) {
            unfinished.append(&mut pending.finish());
        }
        pending.table = Some(table);
        pending.leaves.insert(leaf);
        pending.changes.push(change.clone());
        let name = &self.defs[table].name;
        let every_leaf = self
            .known
            .iter()
            .filter(|(k, v)| matches!(v, Known::Table(i) if *i == table) && (k.0 != name.schema || k.1 != name.name))
            .all(|(k, _)| pending.leaves.contains(k));
        if every_leaf {
            pending.finish();
            change.schema.clone_from(&name.schema);
            change.table.clone_from(&name.name);
            Truncated::Whole(change)
        } else {
            Truncated::Pending
        }
    }
}

impl Truncates {
    /// Ends the run: what is left was a TRUNCATE of some leaves only.
    pub fn finish(&mut self) -> Vec<Change> {
        self.table = None;
        self.leaves.clear();
        std::mem::take(&mut self.changes)
    }
}

fn key(name: &TableName) -> (String, String) {
    (name.schema.clone(), name.name.clone())
}

fn uncovered(leaf: &TableName, parent: &TableName) -> SourceError {
    SourceError::Refused(format!(
        "partition {leaf} of {parent} is in schema {}, which the change stream did not name when it started, so its changes may be missing; restart the pipeline (it then names the schema) and re-copy {parent} (`wasmcdc slot drop`, then start again), or keep partitions in the schemas that hold the others",
        crate::catalog::pg_ident(&leaf.schema)
    ))
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
            name: table,
            columns: Vec::new(),
            primary_key: Vec::new(),
            partitions,
        }
    }

    fn relations() -> Relations {
        Relations::new(
            &[
                def(
                    name("public", "orders"),
                    Some(vec![name("public", "orders_eu"), name("arch ive", "orders_2020")]),
                ),
                def(name("public", "plain"), None),
                def(name("sales", "q1.2026"), None),
            ],
            None,
        )
    }

    #[tokio::test]
    async fn leaves_map_to_their_partitioned_table() {
        let mut relations = relations();
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
    fn only_a_truncate_of_every_leaf_empties_the_table() {
        let relations = relations();
        let truncate = |schema: &str, table: &str| Change {
            op: Op::Truncate,
            schema: schema.into(),
            table: table.into(),
            columns: Vec::new(),
            key: Vec::new(),
        };
        let mut pending = Truncates::default();
        let mut unfinished = Vec::new();
        assert_eq!(
            relations.truncate(&mut pending, truncate("public", "orders_eu"), &mut unfinished),
            Truncated::Pending
        );
        assert_eq!(
            relations.truncate(&mut pending, truncate("arch ive", "orders_2020"), &mut unfinished),
            Truncated::Whole(truncate("public", "orders"))
        );
        assert!(unfinished.is_empty() && pending.finish().is_empty());
        // One leaf alone is left pending, under its own name, and its caller dead-letters it.
        relations.truncate(&mut pending, truncate("public", "orders_eu"), &mut unfinished);
        assert_eq!(pending.finish(), vec![truncate("public", "orders_eu")]);
    }

    #[test]
    fn the_filter_names_plain_tables_and_the_schemas_of_partitions() {
        // `public.plain` is already covered by `public.*`.
        assert_eq!(relations().wal2json_filter(), r"sales.q1\.2026,arch\ ive.*,public.*");
    }
}
