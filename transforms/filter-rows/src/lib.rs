//! Keeps the rows that satisfy a predicate on one column, so that the target
//! holds exactly the matching rows, and drops the rest.
//!
//! Configuration:
//! - `column=NAME`: the column to test (required).
//! - `op=eq|ne|lt|gt|is-null|not-null`: the comparison (required).
//! - `value=TEXT`: what to compare with; required by `eq`, `ne`, `lt` and `gt`.
//!
//! What happens to each change:
//! - insert: kept if its new row matches, dropped otherwise.
//! - update whose new row matches: becomes a delete of the old key followed by
//!   an insert of the new row, so that a row which starts to match through an
//!   update reaches the target too. If the update carries `unchanged-toast`
//!   (a TOASTed value it left unchanged, which the source did not send), the
//!   whole row is not known: a delete would drop the target's value, so the
//!   update passes as it is and the target keeps it. A row that starts to match
//!   that way is not in the target, and the apply dead-letters the update with
//!   the reason. Under REPLICA IDENTITY FULL the host fills such values in from
//!   the old row, so the rewrite always happens there.
//! - update whose new row does not match: becomes a delete of the old key, so
//!   that a row which stops matching leaves the target.
//! - delete: dropped when its key holds the column and does not match, kept
//!   otherwise (deleting a row the target never had changes nothing).
//! - truncate: always kept.
//!
//! Comparisons follow SQL: NULL satisfies only `is-null`. Integers, floats and
//! numerics compare as numbers (numerics as 64-bit floats); booleans take
//! `true`/`false` (or `t`/`f`); `bytea` compares its lower-case hex form; any
//! other value compares its text byte by byte, which orders ISO dates and
//! times correctly but follows no collation. A change whose new row lacks the
//! column is rejected (and dead-lettered), since the predicate cannot be
//! decided: scope the module to the tables that have the column.

use std::cmp::Ordering;

use wasmcdc_guest::{Change, ColumnDef, Config, Op, Transform, TxContext, Value};

impl Transform for Predicate {
    fn init(config: Config) -> Result<Self, String> {
        Predicate::parse(&config)
    }

    fn transform(&self, change: Change, _ctx: &TxContext) -> Result<Vec<Change>, String> {
        self.filter(change)
    }
}

wasmcdc_guest::export!(Predicate);

/// A comparison with the configured value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Test {
    Eq,
    Ne,
    Lt,
    Gt,
    IsNull,
    NotNull,
}

/// `column op value`.
#[derive(Debug, PartialEq)]
struct Predicate {
    column: String,
    test: Test,
    value: String,
}

/// Whether a row satisfies the predicate, or cannot tell.
#[derive(Debug, PartialEq)]
enum Verdict {
    Match,
    NoMatch,
    /// The column is not among the row's values, or its value was left out.
    Unknown,
}

impl Predicate {
    /// Reads `column`, `op` and `value`; anything else is refused.
    fn parse(config: &Config) -> Result<Self, String> {
        config.only(&["column", "op", "value"])?;
        let (column, op, value) = (config.get("column"), config.get("op"), config.get("value"));
        let column = column
            .filter(|c| !c.is_empty())
            .ok_or("set column to the column to test, for example column=fulfilled")?
            .to_owned();
        let op = op.ok_or("set op to eq, ne, lt, gt, is-null or not-null")?;
        let test = match op {
            "eq" => Test::Eq,
            "ne" => Test::Ne,
            "lt" => Test::Lt,
            "gt" => Test::Gt,
            "is-null" => Test::IsNull,
            "not-null" => Test::NotNull,
            other => {
                return Err(format!("op '{other}' is not eq, ne, lt, gt, is-null or not-null"));
            }
        };
        let value = match (test, value) {
            (Test::IsNull | Test::NotNull, None) => String::new(),
            (Test::IsNull | Test::NotNull, Some(_)) => {
                return Err(format!("op {op} takes no value; remove the value setting"));
            }
            (_, Some(value)) => value.to_owned(),
            (_, None) => return Err(format!("op {op} needs a value; set value=TEXT")),
        };
        Ok(Self { column, test, value })
    }

    /// Keeps, drops or rewrites one change; see the module documentation.
    fn filter(&self, change: Change) -> Result<Vec<Change>, String> {
        let new_value = || change.columns().find(|(c, _)| c.name == self.column);
        match change.op() {
            Op::Truncate => Ok(vec![change]),
            Op::Insert => match self.verdict(new_value())? {
                Verdict::Match => Ok(vec![change]),
                Verdict::NoMatch => Ok(Vec::new()),
                Verdict::Unknown => Err(self.missing(&change)),
            },
            Op::Update => {
                let verdict = self.verdict(new_value())?;
                let toasted = change.has_unchanged_toast();
                match verdict {
                    Verdict::Unknown if change.get(&self.column).is_none() => Err(self.missing(&change)),
                    Verdict::Unknown => Ok(vec![change]),
                    Verdict::Match if toasted => Ok(vec![change]),
                    Verdict::Match => Ok(vec![change.with_op(Op::Delete), change.with_op(Op::Insert)]),
                    Verdict::NoMatch => Ok(vec![change.with_op(Op::Delete)]),
                }
            }
            Op::Delete => {
                let verdict = self.verdict(change.key().find(|(c, _)| c.name == self.column))?;
                match verdict {
                    Verdict::NoMatch => Ok(Vec::new()),
                    Verdict::Match | Verdict::Unknown => Ok(vec![change]),
                }
            }
        }
    }

    /// Tests the row's value of the column, with the column's name and type.
    fn verdict(&self, column: Option<(&ColumnDef, &Value)>) -> Result<Verdict, String> {
        let Some((def, value)) = column else {
            return Ok(Verdict::Unknown);
        };
        let matched = match (value, self.test) {
            (Value::UnchangedToast, _) => return Ok(Verdict::Unknown),
            (Value::Null, test) => test == Test::IsNull,
            (_, Test::IsNull) => false,
            (_, Test::NotNull) => true,
            (value, test) => {
                let order = compare(value, &self.value)
                    .map_err(|reason| format!("column {} ({}): {reason}", def.name, def.pg_type))?;
                match test {
                    Test::Eq => order == Ordering::Equal,
                    Test::Ne => order != Ordering::Equal,
                    Test::Lt => order == Ordering::Less,
                    _ => order == Ordering::Greater,
                }
            }
        };
        Ok(if matched { Verdict::Match } else { Verdict::NoMatch })
    }

    fn missing(&self, change: &Change) -> String {
        format!(
            "{}.{} has no column {}; apply filter-rows only to tables that have it",
            change.schema(),
            change.table(),
            self.column
        )
    }
}

/// Orders a non-null value against the configured text.
fn compare(value: &Value, operand: &str) -> Result<Ordering, String> {
    let number = || {
        operand
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("the value '{operand}' is not a number"))
    };
    let unordered = || format!("it cannot be compared with '{operand}'");
    match value {
        Value::Int(i) => match operand.trim().parse::<i64>() {
            Ok(other) => Ok(i.cmp(&other)),
            Err(_) => (*i as f64).partial_cmp(&number()?).ok_or_else(unordered),
        },
        Value::Float(f) => f.partial_cmp(&number()?).ok_or_else(unordered),
        Value::Numeric(s) => {
            let own: f64 = s.parse().map_err(|_| unordered())?;
            own.partial_cmp(&number()?).ok_or_else(unordered)
        }
        Value::Bool(b) => {
            let other = match operand.trim().to_ascii_lowercase().as_str() {
                "true" | "t" => true,
                "false" | "f" => false,
                _ => return Err(format!("the value '{operand}' is not true or false")),
            };
            Ok(b.cmp(&other))
        }
        Value::Bytes(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let other = operand.trim().trim_start_matches("\\x").to_ascii_lowercase();
            Ok(hex.cmp(&other))
        }
        Value::Text(s)
        | Value::Json(s)
        | Value::Date(s)
        | Value::Time(s)
        | Value::Timestamp(s)
        | Value::Timestamptz(s) => Ok(s.as_str().cmp(operand)),
        Value::Null | Value::UnchangedToast => Err(unordered()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcdc_guest::Column;

    fn predicate(pairs: &[(&str, &str)]) -> Result<Predicate, String> {
        Predicate::parse(&pairs.iter().copied().collect())
    }

    fn column(name: &str, value: Value) -> Column {
        Column::new(name, "integer", value)
    }

    fn change(op: Op, columns: Vec<Column>, key: Vec<Column>) -> Change {
        match op {
            Op::Insert => Change::insert("public", "orders", columns),
            Op::Update => Change::update("public", "orders", columns, key),
            Op::Delete => Change::delete("public", "orders", key),
            Op::Truncate => Change::truncate("public", "orders"),
        }
    }

    fn ops(changes: &[Change]) -> Vec<Op> {
        changes.iter().map(Change::op).collect()
    }

    #[test]
    fn inserts_are_kept_only_when_they_match() {
        let p = predicate(&[("column", "amount"), ("op", "gt"), ("value", "100")]).expect("p");
        let big = change(Op::Insert, vec![column("amount", Value::Int(150))], vec![]);
        let small = change(Op::Insert, vec![column("amount", Value::Int(50))], vec![]);
        let null = change(Op::Insert, vec![column("amount", Value::Null)], vec![]);
        assert_eq!(ops(&p.filter(big).expect("big")), [Op::Insert]);
        assert!(p.filter(small).expect("small").is_empty());
        assert!(p.filter(null).expect("null").is_empty());
    }

    #[test]
    fn updates_move_rows_into_and_out_of_the_target() {
        let p = predicate(&[("column", "status"), ("op", "eq"), ("value", "open")]).expect("p");
        let key = vec![column("id", Value::Int(1))];
        let status = |s: &str| column("status", Value::Text(s.into()));
        let opened = p
            .filter(change(Op::Update, vec![status("open")], key.clone()))
            .expect("opened");
        assert_eq!(ops(&opened), [Op::Delete, Op::Insert]);
        assert_eq!(opened[0].key().count(), 1);
        assert_eq!(opened[0].columns().count(), 0);
        assert_eq!(opened[1].key().count(), 0);
        assert_eq!(opened[1].columns().count(), 1);
        let closed = p
            .filter(change(Op::Update, vec![status("closed")], key.clone()))
            .expect("closed");
        assert_eq!(ops(&closed), [Op::Delete]);
        let toasted = p
            .filter(change(
                Op::Update,
                vec![status("open"), column("notes", Value::UnchangedToast)],
                key,
            ))
            .expect("toasted");
        assert_eq!(ops(&toasted), [Op::Update]);
        assert_eq!(toasted[0].key().count(), 1, "the update still names its row");
        assert_eq!(
            toasted[0].get("notes"),
            Some(&Value::UnchangedToast),
            "the target keeps the value"
        );
        // The tested column itself left unchanged: the verdict cannot change, so the update passes.
        let p = predicate(&[("column", "notes"), ("op", "not-null")]).expect("p");
        let unknown = p
            .filter(change(
                Op::Update,
                vec![column("notes", Value::UnchangedToast)],
                vec![column("id", Value::Int(1))],
            ))
            .expect("unknown");
        assert_eq!(ops(&unknown), [Op::Update]);
    }

    #[test]
    fn deletes_are_dropped_only_when_their_key_proves_no_match() {
        let p = predicate(&[("column", "id"), ("op", "lt"), ("value", "10")]).expect("p");
        let delete = |id| change(Op::Delete, vec![], vec![column("id", Value::Int(id))]);
        assert_eq!(ops(&p.filter(delete(3)).expect("3")), [Op::Delete]);
        assert!(p.filter(delete(30)).expect("30").is_empty());
        let other = change(Op::Delete, vec![], vec![column("code", Value::Int(3))]);
        assert_eq!(ops(&p.filter(other).expect("other key")), [Op::Delete]);
        let truncate = change(Op::Truncate, vec![], vec![]);
        assert_eq!(ops(&p.filter(truncate).expect("truncate")), [Op::Truncate]);
    }

    #[test]
    fn compares_by_type() {
        let less = Ordering::Less;
        assert_eq!(compare(&Value::Int(9), "10"), Ok(less));
        assert_eq!(compare(&Value::Int(9), "9.5"), Ok(less));
        assert_eq!(compare(&Value::Float(1.5), "1.5"), Ok(Ordering::Equal));
        assert_eq!(compare(&Value::Numeric("2.50".into()), "2.5"), Ok(Ordering::Equal));
        assert_eq!(compare(&Value::Bool(true), "t"), Ok(Ordering::Equal));
        assert_eq!(compare(&Value::Bytes(vec![0xAB]), "\\xAB"), Ok(Ordering::Equal));
        assert_eq!(compare(&Value::Date("2024-01-31".into()), "2024-02-01"), Ok(less));
        assert!(compare(&Value::Int(1), "one").is_err());
        assert!(compare(&Value::Bool(true), "yes").is_err());
    }

    #[test]
    fn null_tests_and_a_missing_column() {
        let p = predicate(&[("column", "shipped"), ("op", "is-null")]).expect("p");
        let row = |v| change(Op::Insert, vec![column("shipped", v)], vec![]);
        assert_eq!(p.filter(row(Value::Null)).expect("null").len(), 1);
        assert!(p.filter(row(Value::Int(1))).expect("set").is_empty());
        let other = change(Op::Insert, vec![column("id", Value::Int(1))], vec![]);
        let err = p.filter(other).expect_err("missing column");
        assert!(err.contains("public.orders has no column shipped"), "{err}");
    }

    #[test]
    fn refuses_a_configuration_it_cannot_follow() {
        assert!(predicate(&[]).is_err());
        assert!(predicate(&[("column", "a")]).is_err());
        assert!(predicate(&[("column", "a"), ("op", "like"), ("value", "x")]).is_err());
        assert!(predicate(&[("column", "a"), ("op", "eq")]).is_err());
        assert!(predicate(&[("column", "a"), ("op", "is-null"), ("value", "x")]).is_err());
        assert!(predicate(&[("column", "a"), ("op", "eq"), ("value", "x"), ("extra", "")]).is_err());
        assert_eq!(
            predicate(&[("column", "a"), ("op", "not-null")]),
            Ok(Predicate {
                column: "a".into(),
                test: Test::NotNull,
                value: String::new()
            })
        );
    }
}
