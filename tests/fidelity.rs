//! Values arrive exactly: every type in the README's mapping table at its
//! edges, through the initial copy and through the stream; unchanged TOASTed
//! values; TRUNCATE; and tables with REPLICA IDENTITY FULL.

use std::collections::BTreeMap;

use crate::support::binary::Running;
use crate::support::{Env, Pipeline, broker, db, row, secs};

/// Every type in the README's mapping table, and the float and numeric specials.
const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'it''s "complicated"');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE types (
    id     integer PRIMARY KEY,
    i2     smallint,
    i4     integer,
    i8     bigint,
    n_wide numeric(65,30),
    n_2    numeric(10,2),
    n_free numeric,
    f4     real,
    f8     double precision,
    b      boolean,
    t      text,
    vc     varchar(20),
    ch     char(5),
    bin    bytea,
    d      date,
    tm     time,
    ts     timestamp,
    tstz   timestamptz,
    j      json,
    jb     jsonb,
    u      uuid,
    arr    integer[],
    m      mood,
    ip     inet,
    pos    posint,
    iv     interval,
    net    cidr,
    n_huge numeric(70,5)
);
CREATE TABLE specials (
    id  integer PRIMARY KEY,
    f4  real,
    f8  double precision,
    n   numeric,
    n_2 numeric(10,2)
);
"#;

/// Four rows, keys `first`..`first + 3`: upper edges, lower edges and empty
/// values, all NULL, and ordinary values with awkward text.
fn type_rows(first: i32) -> String {
    let (a, b, c, d) = (first, first + 1, first + 2, first + 3);
    format!(
        r#"INSERT INTO types VALUES
  ({a}, 32767, 2147483647, 9223372036854775807,
   99999999999999999999999999999999999.999999999999999999999999999999, 99999999.99,
   12345678901234567890123456789012345.123456789012345678901234567891,
   '3.4028235e+38', '1.7976931348623157e+308', true,
   E'quote '' double " backslash \\ newline \n tab \t cr \r emoji 😀 clef 𝄞 ü €',
   '😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀', E'''\\😀"x', '\x00ff00fe0a0d5c27',
   '9999-12-31', '23:59:59.999999', '9999-12-31 23:59:59.999999', '2024-02-29 23:30:00.123456-05:30',
   '{{"b": [1, 2.5, {{"c": null}}], "a": "q\"b\\ 😀", "e": "\u00e9"}}',
   '{{"z": 1, "a": [true, false, null], "nested": {{"k": "v\nline"}}}}',
   'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{{1,NULL,-2147483648,2147483647}}',
   'it''s "complicated"', '2001:db8::1/64', 2147483647,
   '1 year 2 mons 3 days 04:05:06.789', '10.0.0.0/8',
   '12345678901234567890123456789012345678901234567890123456789012345.12345'),
  ({b}, -32768, -2147483648, -9223372036854775808,
   -99999999999999999999999999999999999.999999999999999999999999999999, -99999999.99,
   -0.000000000000000000000000000001,
   '-1.17549435e-38', '2.2250738585072014e-308', false,
   '', '', '', '', '1000-01-01', '00:00:00', '1000-01-01 00:00:00', '1970-01-01 00:00:00.000001+14',
   'null', '{{}}', '00000000-0000-0000-0000-000000000000', '{{}}', 'sad', '0.0.0.0/0', 1,
   '-1 days -00:00:00.000001', '::/0', -0.00001),
  ({c}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  ({d}, 0, 0, 0, 0, 0.01, 3.14159265358979323846264338327, 0.1, 0.1, true,
   E'line1\r\nline2 \\n is not a newline, \\t is not a tab', 'trailing spaces   ', 'ab', '\x00',
   '2024-02-29', '24:00:00', '2024-02-29 12:34:56.5', '2024-06-30 23:59:59.999999+02',
   '[1, "two", 3.0e2, {{"x": []}}]', '{{"emoji": "😀", "num": 1.50, "neg": -0}}',
   'ffffffff-ffff-ffff-ffff-ffffffffffff', '{{{{1,2}},{{3,4}}}}', 'ok', '192.168.0.1/24', 42,
   '00:00:00', '192.168.1.0/24', 0)"#
    )
}

/// NaN and ±Infinity, which the README says become NULL, and one ordinary row.
fn special_rows(first: i32) -> String {
    let (a, b, c, d) = (first, first + 1, first + 2, first + 3);
    format!(
        "INSERT INTO specials VALUES
           ({a}, 'NaN', 'NaN', 'NaN', 'NaN'),
           ({b}, 'Infinity', 'Infinity', 'Infinity', NULL),
           ({c}, '-Infinity', '-Infinity', '-Infinity', NULL),
           ({d}, 1.5, 2.5, 3.5, 4.5)"
    )
}

/// How a column's two texts are compared.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Equal text.
    Exact,
    /// The same binary64 value, whatever the notation.
    Float,
    /// The same JSON value.
    Json,
}

/// A column, with the SQL that prints it in PostgreSQL and in MariaDB.
struct Col {
    name: &'static str,
    pg: String,
    my: String,
    kind: Kind,
}

fn col(name: &'static str, pg: &str, my: &str, kind: Kind) -> Col {
    Col {
        name,
        pg: pg.replace('$', name),
        my: my.replace('$', name),
        kind,
    }
}

fn type_columns() -> Vec<Col> {
    use Kind::*;
    let plain = |name| col(name, "$::text", "CAST($ AS CHAR)", Exact);
    vec![
        plain("i2"),
        plain("i4"),
        plain("i8"),
        plain("n_wide"),
        plain("n_2"),
        // Unbounded numeric is DECIMAL(65,30) in MariaDB: the same number with 30 decimals.
        col("n_free", "$::numeric(65,30)::text", "CAST($ AS CHAR)", Exact),
        // A real is compared as the binary32 value each side holds.
        col("f4", "$::float8::text", "CAST(CAST($ AS DOUBLE) AS CHAR)", Float),
        col("f8", "$::text", "CAST($ AS CHAR)", Float),
        col(
            "b",
            "CASE WHEN $ THEN '1' WHEN NOT $ THEN '0' END",
            "CAST($ AS CHAR)",
            Exact,
        ),
        col("t", "$", "$", Exact),
        col("vc", "$", "$", Exact),
        col("ch", "$::text", "$", Exact),
        col("bin", "encode($, 'hex')", "LOWER(HEX($))", Exact),
        plain("d"),
        col(
            "tm",
            "to_char($, 'HH24:MI:SS.US')",
            "TIME_FORMAT($, '%H:%i:%s.%f')",
            Exact,
        ),
        col(
            "ts",
            "to_char($, 'YYYY-MM-DD HH24:MI:SS.US')",
            "DATE_FORMAT($, '%Y-%m-%d %H:%i:%s.%f')",
            Exact,
        ),
        col(
            "tstz",
            "to_char($ AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
            "DATE_FORMAT($, '%Y-%m-%d %H:%i:%s.%f')",
            Exact,
        ),
        col("j", "$::text", "CAST($ AS CHAR)", Json),
        col("jb", "$::text", "CAST($ AS CHAR)", Json),
        col("u", "$::text", "$", Exact),
        // Arrays of scalars land as JSON arrays.
        col("arr", "to_jsonb($)::text", "CAST($ AS CHAR)", Json),
        plain("m"),
        plain("ip"),
        plain("pos"),
        // Stored as PostgreSQL prints them.
        plain("iv"),
        plain("net"),
        // Beyond DECIMAL's 65 digits: kept exact as text.
        plain("n_huge"),
    ]
}

/// What MariaDB must hold where the text differs from PostgreSQL's own, or
/// where an empty value must not turn into NULL. Keys are offsets from the first row.
const TYPE_EXPECTED: &[(i32, &str, Option<&str>)] = &[
    (0, "i8", Some("9223372036854775807")),
    (
        0,
        "n_wide",
        Some("99999999999999999999999999999999999.999999999999999999999999999999"),
    ),
    (
        0,
        "n_free",
        Some("12345678901234567890123456789012345.123456789012345678901234567891"),
    ),
    (0, "f4", Some("3.4028234663852886e38")),
    (0, "f8", Some("1.7976931348623157e308")),
    (
        0,
        "t",
        Some("quote ' double \" backslash \\ newline \n tab \t cr \r emoji 😀 clef 𝄞 ü €"),
    ),
    (0, "vc", Some("😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀")),
    (0, "ch", Some("'\\😀\"x")),
    (0, "bin", Some("00ff00fe0a0d5c27")),
    (0, "tstz", Some("2024-03-01 05:00:00.123456")),
    (0, "u", Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
    (0, "arr", Some("[1,null,-2147483648,2147483647]")),
    (0, "m", Some("it's \"complicated\"")),
    (0, "ip", Some("2001:db8::1/64")),
    (1, "i8", Some("-9223372036854775808")),
    (1, "n_free", Some("-0.000000000000000000000000000001")),
    (1, "b", Some("0")),
    (1, "t", Some("")),
    (1, "vc", Some("")),
    (1, "ch", Some("")),
    (1, "bin", Some("")),
    (1, "tm", Some("00:00:00.000000")),
    (1, "tstz", Some("1969-12-31 10:00:00.000001")),
    (1, "j", Some("null")),
    (1, "arr", Some("[]")),
    (2, "t", None),
    (2, "bin", None),
    (2, "j", None),
    (3, "n_free", Some("3.141592653589793238462643383270")),
    (3, "t", Some("line1\r\nline2 \\n is not a newline, \\t is not a tab")),
    (3, "vc", Some("trailing spaces   ")),
    (3, "ch", Some("ab")),
    (3, "bin", Some("00")),
    (3, "tm", Some("24:00:00.000000")),
    (3, "ts", Some("2024-02-29 12:34:56.500000")),
    (3, "tstz", Some("2024-06-30 21:59:59.999999")),
    (3, "arr", Some("[[1,2],[3,4]]")),
];

/// Rows keyed by the first cell (an integer key).
fn by_key(rows: db::Rows) -> BTreeMap<i64, Vec<Option<String>>> {
    rows.into_iter()
        .map(|mut r| {
            let key = r.remove(0).and_then(|k| k.parse().ok()).expect("an integer key");
            (key, r)
        })
        .collect()
}

fn same(kind: Kind, pg: &Option<String>, my: &Option<String>) -> bool {
    match (kind, pg, my) {
        (_, None, None) => true,
        (Kind::Exact, Some(a), Some(b)) => a == b,
        (Kind::Float, Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => x.to_bits() == y.to_bits(),
            _ => false,
        },
        (Kind::Json, Some(a), Some(b)) => {
            match (
                serde_json::from_str::<serde_json::Value>(a),
                serde_json::from_str::<serde_json::Value>(b),
            ) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Waits until `table` in the target has `n` rows.
async fn wait_count(env: &Env, pipeline: &Pipeline, running: &mut Running, table: &str, n: usize) {
    let sql = format!("SELECT CAST(COUNT(*) AS CHAR) FROM `{table}`");
    env.wait_target(pipeline, running, &sql, &vec![row(&[Some(&n.to_string())])], secs(90))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_round_trips_through_copy_and_stream() {
    const COPIED: i32 = 1;
    const STREAMED: i32 = 101;
    let env = Env::new("fidelity").await;
    // Sessions default to a zone that is not UTC: a timestamptz the pipeline
    // does not convert shows up with the wrong hour.
    env.pg_exec(&format!(
        "ALTER DATABASE {} SET TimeZone = 'America/St_Johns'",
        env.pg_db
    ))
    .await;
    env.pg_exec(SCHEMA).await;
    env.pg_exec(&type_rows(COPIED)).await;
    env.pg_exec(&special_rows(COPIED)).await;
    let pipeline = env.pipeline().tables("public.types,public.specials");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&type_rows(STREAMED)).await;
    env.pg_exec(&special_rows(STREAMED)).await;
    wait_count(&env, &pipeline, &mut running, "types", 8).await;
    wait_count(&env, &pipeline, &mut running, "specials", 8).await;

    let columns = type_columns();
    let pg_sql = format!(
        "SELECT id::text, {} FROM types",
        columns.iter().map(|c| c.pg.as_str()).collect::<Vec<_>>().join(", ")
    );
    let my_sql = format!(
        "SELECT CAST(id AS CHAR), {} FROM types",
        columns.iter().map(|c| c.my.as_str()).collect::<Vec<_>>().join(", ")
    );
    let source = by_key(env.pg_rows(&pg_sql).await);
    let my = env.my(&pipeline).await;
    let target = by_key(db::my_rows(&my, &my_sql).await);
    assert_eq!(
        source.keys().collect::<Vec<_>>(),
        target.keys().collect::<Vec<_>>(),
        "the target holds other keys than the source"
    );

    let mut problems = Vec::new();
    for (key, pg_row) in &source {
        let my_row = &target[key];
        let path = if *key < i64::from(STREAMED) { "copy" } else { "stream" };
        for (i, c) in columns.iter().enumerate() {
            if !same(c.kind, &pg_row[i], &my_row[i]) {
                problems.push(format!(
                    "{path}, id {key}, {}: PostgreSQL {:?}, MariaDB {:?}",
                    c.name, pg_row[i], my_row[i]
                ));
            }
        }
    }
    for first in [COPIED, STREAMED] {
        let path = if first == COPIED { "copy" } else { "stream" };
        for (offset, name, want) in TYPE_EXPECTED {
            let i = columns.iter().position(|c| c.name == *name).expect("a known column");
            let got = &target[&i64::from(first + offset)][i];
            if !same(columns[i].kind, &want.map(str::to_owned), got) {
                problems.push(format!(
                    "{path}, id {}, {name}: MariaDB holds {got:?}, expected {want:?}",
                    first + offset
                ));
            }
        }
        // The row that is NULL everywhere.
        for (i, c) in columns.iter().enumerate() {
            let got = &target[&i64::from(first + 2)][i];
            if got.is_some() {
                problems.push(format!(
                    "{path}, id {}, {}: MariaDB holds {got:?}, expected NULL",
                    first + 2,
                    c.name
                ));
            }
        }
    }

    // NaN and ±Infinity become NULL; ordinary values stay.
    let specials = by_key(
        db::my_rows(
            &my,
            "SELECT CAST(id AS CHAR), CAST(CAST(f4 AS DOUBLE) AS CHAR), CAST(f8 AS CHAR), CAST(n AS CHAR), CAST(n_2 AS CHAR) FROM specials",
        )
        .await,
    );
    for first in [COPIED, STREAMED] {
        let path = if first == COPIED { "copy" } else { "stream" };
        let want = [
            (first, row(&[None, None, None, None])),
            (first + 1, row(&[None, None, None, None])),
            (first + 2, row(&[None, None, None, None])),
            (
                first + 3,
                row(&[
                    Some("1.5"),
                    Some("2.5"),
                    Some("3.500000000000000000000000000000"),
                    Some("4.50"),
                ]),
            ),
        ];
        for (key, want) in want {
            let got = specials.get(&i64::from(key));
            if got != Some(&want) {
                problems.push(format!(
                    "{path}, specials id {key}: MariaDB holds {got:?}, expected {want:?}"
                ));
            }
        }
    }
    my.close().await;
    assert!(
        problems.is_empty(),
        "values that did not round-trip:\n{}",
        problems.join("\n")
    );

    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    // `verify` agrees that these faithfully copied values are equal.
    pipeline.tables("public.types").assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toasted_value_survives_an_update_of_another_column() {
    let env = Env::new("toast").await;
    env.pg_exec("CREATE TABLE docs (id integer PRIMARY KEY, body text NOT NULL, n integer NOT NULL, note text)")
        .await;
    // About 100 kB of hex digits: stored out of line, in the TOAST table.
    let big = |id: i32| {
        format!(
            "INSERT INTO docs SELECT {id}, string_agg(md5(random()::text), ''), 0, NULL FROM generate_series(1, 3200)"
        )
    };
    env.pg_exec(&big(1)).await;
    let pipeline = env.pipeline().tables("public.docs");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&big(2)).await;
    let toasted = env
        .pg_rows("SELECT (pg_relation_size(reltoastrelid) > 0)::text FROM pg_class WHERE relname = 'docs'")
        .await;
    assert_eq!(
        toasted,
        vec![row(&[Some("true")])],
        "the large values are not in a TOAST table"
    );

    let pg_sql = "SELECT id::text, n::text, note, length(body)::text, md5(body) FROM docs";
    let my_sql = "SELECT CAST(id AS CHAR), CAST(n AS CHAR), note, CAST(CHAR_LENGTH(body) AS CHAR), MD5(body) FROM docs";
    env.wait_replicated(&pipeline, &mut running, pg_sql, my_sql, secs(60))
        .await;

    // Updates that leave the large value alone, each in its own transaction.
    env.pg_exec("UPDATE docs SET n = n + 1").await;
    env.pg_exec("UPDATE docs SET note = 'noted' WHERE id = 1").await;
    env.pg_exec("BEGIN; UPDATE docs SET n = n + 10 WHERE id = 2; UPDATE docs SET note = 'both' WHERE id = 2; COMMIT;")
        .await;
    let rows = env
        .wait_replicated(&pipeline, &mut running, pg_sql, my_sql, secs(60))
        .await;
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r[3].as_deref(), Some("102400"), "the large value was cut: {r:?}");
    }
    assert_eq!(
        rows.iter().map(|r| (r[1].clone(), r[2].clone())).collect::<Vec<_>>(),
        vec![
            (Some("1".into()), Some("noted".into())),
            (Some("11".into()), Some("both".into()))
        ]
    );
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_the_target_and_later_inserts_arrive() {
    let env = Env::new("truncate").await;
    env.pg_exec("CREATE TABLE trunc (id integer PRIMARY KEY, v text NOT NULL)")
        .await;
    env.pg_exec("INSERT INTO trunc VALUES (1, 'copied'), (2, 'copied'), (3, 'copied')")
        .await;
    let pipeline = env.pipeline().tables("public.trunc");
    let mut running = env.start(&pipeline).await;
    let my_sql = "SELECT CAST(id AS CHAR), v FROM trunc";

    env.pg_exec("INSERT INTO trunc VALUES (4, 'streamed'), (5, 'streamed')")
        .await;
    wait_count(&env, &pipeline, &mut running, "trunc", 5).await;

    env.pg_exec("TRUNCATE trunc").await;
    env.wait_target(&pipeline, &mut running, my_sql, &Vec::new(), secs(60))
        .await;

    env.pg_exec("INSERT INTO trunc VALUES (1, 'after truncate'), (6, 'after truncate')")
        .await;
    let want = vec![
        row(&[Some("1"), Some("after truncate")]),
        row(&[Some("6"), Some("after truncate")]),
    ];
    env.wait_target(&pipeline, &mut running, my_sql, &want, secs(60)).await;

    // Inside one transaction: what came before the TRUNCATE goes, what came after stays.
    env.pg_exec(
        "BEGIN; INSERT INTO trunc VALUES (7, 'gone'); TRUNCATE trunc; INSERT INTO trunc VALUES (7, 'kept'); COMMIT;",
    )
    .await;
    env.wait_target(
        &pipeline,
        &mut running,
        my_sql,
        &vec![row(&[Some("7"), Some("kept")])],
        secs(60),
    )
    .await;
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_updates_find_their_row_by_key() {
    let env = Env::new("fullid").await;
    env.pg_exec(
        "CREATE TABLE acct (id integer PRIMARY KEY, owner text NOT NULL, balance numeric(12,2), ratio double precision, note text);
         ALTER TABLE acct REPLICA IDENTITY FULL;
         INSERT INTO acct VALUES (1, 'ann', 10.50, 0.1, NULL), (2, 'bob', NULL, 1e-300, 'x'), (3, 'cy', 3, NULL, NULL);",
    )
    .await;
    let pipeline = env.pipeline().tables("public.acct");
    let mut running = env.start(&pipeline).await;

    env.pg_exec("INSERT INTO acct VALUES (4, 'dee', 4.44, 0.3, NULL)").await;
    env.pg_exec("UPDATE acct SET balance = balance + 1 WHERE id = 1").await;
    // The key changes: the row moves.
    env.pg_exec("UPDATE acct SET id = 20 WHERE id = 2").await;
    env.pg_exec("UPDATE acct SET note = 'now set', ratio = 2.5 WHERE id = 3")
        .await;
    env.pg_exec(
        "BEGIN; UPDATE acct SET id = 40, owner = 'dee moved' WHERE id = 4; DELETE FROM acct WHERE id = 1; COMMIT;",
    )
    .await;
    env.pg_exec("BEGIN; INSERT INTO acct VALUES (1, 'ann again', NULL, NULL, NULL); UPDATE acct SET id = 30 WHERE id = 3; COMMIT;")
        .await;

    let pg_sql = "SELECT id::text, owner, balance::text, ratio::text, note FROM acct";
    let my_sql = "SELECT CAST(id AS CHAR), owner, CAST(balance AS CHAR), CAST(ratio AS CHAR), note FROM acct";
    let rows = env
        .wait_replicated(&pipeline, &mut running, pg_sql, my_sql, secs(60))
        .await;
    let keys: Vec<_> = rows.iter().map(|r| r[0].clone().unwrap_or_default()).collect();
    assert_eq!(keys, ["1", "20", "30", "40"], "unexpected keys in the target: {rows:?}");
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_using_index_finds_rows_by_that_index() {
    let env = Env::new("idxid").await;
    env.pg_exec(
        "CREATE TABLE parts (id integer PRIMARY KEY, code text NOT NULL, qty integer);
         CREATE UNIQUE INDEX parts_code ON parts (code);
         ALTER TABLE parts REPLICA IDENTITY USING INDEX parts_code;
         INSERT INTO parts VALUES (1, 'A-1', 5), (2, 'B-2', 7), (3, 'C-3', NULL);",
    )
    .await;
    let pipeline = env.pipeline().tables("public.parts");
    let mut running = env.start(&pipeline).await;
    env.pg_exec("UPDATE parts SET qty = 6 WHERE id = 1").await;
    // The identity column itself changes: the row is found by its old code.
    env.pg_exec("UPDATE parts SET code = 'B-2b', qty = 8 WHERE id = 2")
        .await;
    env.pg_exec("DELETE FROM parts WHERE id = 3").await;
    env.pg_exec("INSERT INTO parts VALUES (4, 'D-4', 1)").await;
    let rows = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT id::text, code, qty::text FROM parts",
            "SELECT CAST(id AS CHAR), code, CAST(qty AS CHAR) FROM parts",
            secs(60),
        )
        .await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_key_replicates_with_replica_identity_full() {
    let env = Env::new("nokey").await;
    env.pg_exec(
        "CREATE TABLE readings (sensor text NOT NULL, value double precision, note text);
         ALTER TABLE readings REPLICA IDENTITY FULL;
         INSERT INTO readings VALUES ('a', 0.1, NULL), ('a', 0.1, NULL), ('b', NULL, 'x');",
    )
    .await;
    let pipeline = env.pipeline().tables("public.readings");
    let mut running = env.start(&pipeline).await;
    // One of two identical rows changes; NULLs and floats identify rows too.
    env.pg_exec("UPDATE readings SET note = 'first' WHERE ctid = (SELECT min(ctid) FROM readings WHERE sensor = 'a')")
        .await;
    env.pg_exec("UPDATE readings SET value = 2.5 WHERE sensor = 'b'").await;
    env.pg_exec("INSERT INTO readings VALUES ('c', 1e-300, 'tiny'), ('c', 1e-300, 'tiny')")
        .await;
    env.pg_exec("DELETE FROM readings WHERE ctid = (SELECT min(ctid) FROM readings WHERE sensor = 'c')")
        .await;
    let rows = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT sensor, value::text, note FROM readings",
            "SELECT sensor, CAST(value AS CHAR), note FROM readings",
            secs(60),
        )
        .await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytea_survives_a_database_that_prints_it_as_escape() {
    let env = Env::new("byteaesc").await;
    env.pg_exec(&format!("ALTER DATABASE {} SET bytea_output = 'escape'", env.pg_db))
        .await;
    env.pg_exec("CREATE TABLE blobs (id integer PRIMARY KEY, b bytea)")
        .await;
    env.pg_exec("INSERT INTO blobs VALUES (1, '\\x00ff5c27'::bytea)").await;
    let pipeline = env.pipeline().tables("public.blobs");
    let mut running = env.start(&pipeline).await;
    // Streamed rows go through wal2json, which prints with the session's bytea_output.
    env.pg_exec("INSERT INTO blobs VALUES (2, '\\xdeadbeef00'::bytea), (3, convert_to('héllo\\', 'UTF8'))")
        .await;
    env.wait_replicated(
        &pipeline,
        &mut running,
        "SELECT id::text, encode(b, 'hex') FROM blobs",
        "SELECT CAST(id AS CHAR), LOWER(HEX(b)) FROM blobs",
        secs(60),
    )
    .await;
    broker::assert_no_dead_letters(&pipeline.slot, &running).await;
    pipeline.assert_verified().await;
    running.stop().await;
}
