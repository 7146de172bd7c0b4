//! Every key and value type a PostgreSQL user has: wide composite text keys,
//! keys that differ only in trailing spaces, arrays as JSON, ±infinity dates,
//! negative numeric scales and wide char(n), through the copy and the stream.

use crate::support::{Deadline, Env, Pipeline, db, secs};

/// Each column of a target table as `name type collation`, sorted.
async fn column_types(env: &Env, pipeline: &Pipeline, table: &str) -> Vec<String> {
    let my = env.my(pipeline).await;
    db::my_rows(
        &my,
        &format!(
            "SELECT CAST(CONCAT(column_name, ' ', column_type, ' ', COALESCE(collation_name, '-')) AS CHAR) \
             FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}'"
        ),
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_text_keys_replicate() {
    let env = Env::new("typkeys").await;
    env.pg_exec(
        "CREATE TABLE pages (tenant text, slug text, body text, PRIMARY KEY (tenant, slug));
         CREATE TABLE sites (id integer, region text, note text, PRIMARY KEY (id, region));
         CREATE TABLE names (tenant text, slug text, PRIMARY KEY (tenant, slug));",
    )
    .await;
    // Copied rows, one with key parts of 384 characters each (1 536 bytes each in utf8mb4).
    env.pg_exec(
        "INSERT INTO pages VALUES ('acme', 'home', 'v1'), (repeat('ü', 384), repeat('☃', 384), 'widest');
         INSERT INTO sites VALUES (1, 'eu-west', 'a'), (2, repeat('r', 767), 'widest');",
    )
    .await;
    let pipeline = env.pipeline().tables("public.pages,public.sites,public.names");
    let mut running = env.start(&pipeline).await;

    env.pg_exec(
        "INSERT INTO pages VALUES ('acme', 'about', 'v1'), ('globex', 'home', 'g1');
         INSERT INTO sites VALUES (3, 'us-east', 'b'), (3, 'us-west', 'c');",
    )
    .await;
    env.pg_exec("UPDATE pages SET body = 'v2' WHERE tenant = 'acme' AND slug = 'home'")
        .await;
    env.pg_exec("UPDATE pages SET slug = 'contact' WHERE tenant = 'acme' AND slug = 'about'")
        .await;
    env.pg_exec("UPDATE pages SET tenant = 'initech', body = 'moved' WHERE tenant = 'globex'")
        .await;
    env.pg_exec("DELETE FROM pages WHERE body = 'widest'").await;
    env.pg_exec("UPDATE sites SET note = 'changed' WHERE id = 1").await;
    env.pg_exec("UPDATE sites SET region = 'ap-south' WHERE id = 3 AND region = 'us-west'")
        .await;
    env.pg_exec("UPDATE sites SET id = 4 WHERE id = 2").await;
    env.pg_exec("DELETE FROM sites WHERE region = 'us-east'").await;
    // Longer than its key part (384 characters): MariaDB refuses it, and it is dead-lettered.
    env.pg_exec("INSERT INTO names VALUES ('acme', repeat('x', 385))").await;
    env.pg_exec("INSERT INTO names VALUES ('acme', repeat('x', 384))").await;

    let pages = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT tenant, slug, body FROM pages",
            "SELECT tenant, slug, body FROM pages",
            secs(60),
        )
        .await;
    assert_eq!(pages.len(), 3, "{pages:?}");
    let sites = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT id::text, region, note FROM sites",
            "SELECT CAST(id AS CHAR), region, note FROM sites",
            secs(60),
        )
        .await;
    let keys: Vec<String> = sites
        .iter()
        .map(|r| format!("{}/{}", r[0].as_deref().unwrap_or(""), r[2].as_deref().unwrap_or("")))
        .collect();
    assert_eq!(keys, ["1/changed", "3/c", "4/widest"], "{sites:?}");

    let letters = pipeline.wait_dead_letters(&mut running, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].table, "public.names");
    assert!(letters[0].reason.contains("too long"), "{letters:?}");
    assert_eq!(
        column_types(&env, &pipeline, "pages").await,
        [
            "body longtext utf8mb4_nopad_bin",
            "slug varchar(384) utf8mb4_nopad_bin",
            "tenant varchar(384) utf8mb4_nopad_bin"
        ]
    );
    assert_eq!(
        column_types(&env, &pipeline, "sites").await,
        [
            "id int(11) -",
            "note longtext utf8mb4_nopad_bin",
            "region varchar(767) utf8mb4_nopad_bin"
        ]
    );
    pipeline.tables("public.pages,public.sites").assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_differ_in_trailing_spaces_are_distinct() {
    let env = Env::new("typspace").await;
    env.pg_exec(
        "CREATE TABLE codes (code varchar(10) PRIMARY KEY, n integer);
         CREATE TABLE flags (c char(3) PRIMARY KEY, v integer);
         INSERT INTO codes VALUES ('b', 1), ('b ', 2);
         INSERT INTO flags VALUES ('x', 1);",
    )
    .await;
    let pipeline = env.pipeline().tables("public.codes,public.flags");
    let mut running = env.start(&pipeline).await;
    env.pg_exec("BEGIN; INSERT INTO codes VALUES ('a', 1), ('a ', 2), ('a  ', 3); COMMIT")
        .await;
    env.pg_exec("UPDATE codes SET n = 20 WHERE code = 'a '").await;
    env.pg_exec("DELETE FROM codes WHERE code = 'b'").await;
    // char(n) ignores trailing spaces, as in PostgreSQL: its padded value finds the row.
    env.pg_exec("INSERT INTO flags VALUES ('y', 2); UPDATE flags SET v = 10 WHERE c = 'x'")
        .await;
    env.pg_exec("DELETE FROM flags WHERE c = 'y'").await;

    let codes = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT '[' || code || ']', n::text FROM codes",
            "SELECT CONCAT('[', code, ']'), CAST(n AS CHAR) FROM codes",
            secs(60),
        )
        .await;
    let got: Vec<(String, String)> = codes
        .iter()
        .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
        .collect();
    let want = [("[a  ]", "3"), ("[a ]", "20"), ("[a]", "1"), ("[b ]", "2")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(got, want);
    env.wait_replicated(
        &pipeline,
        &mut running,
        "SELECT c::text, v::text FROM flags",
        "SELECT c, CAST(v AS CHAR) FROM flags",
        secs(60),
    )
    .await;
    assert!(pipeline.dead_letters().await.is_empty(), "nothing is dead-lettered");
    pipeline.assert_verified().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_pads_its_keys_is_refused_with_the_fix() {
    let env = Env::new("typpad").await;
    env.pg_exec("CREATE TABLE codes (code text PRIMARY KEY, label text, fixed char(2))")
        .await;
    let pipeline = env.pipeline().tables("public.codes");
    // A table made before text keys compared trailing spaces.
    let my = env.my(&pipeline).await;
    db::my_exec(
        &my,
        "CREATE TABLE codes (code VARCHAR(768) NOT NULL PRIMARY KEY, label LONGTEXT NULL, fixed CHAR(2) NULL) \
         DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    )
    .await;
    let line = pipeline
        .expect_error(&["run"], &["`codes`", "code (utf8mb4_bin)", "ALTER TABLE"], secs(60))
        .await;
    let alter = line
        .split_once("fix it with: ")
        .map(|(_, sql)| sql.trim().to_owned())
        .unwrap_or_else(|| panic!("no statement in {line}"));
    assert_eq!(
        alter,
        "ALTER TABLE `codes` MODIFY `code` varchar(768) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL"
    );
    // The statement it gives fixes the table: the pipeline then starts and keeps 'a' and 'a ' apart.
    db::my_exec(&my, &alter).await;
    let mut running = env.start(&pipeline).await;
    env.pg_exec("INSERT INTO codes VALUES ('a', 'one', 'x'), ('a ', 'two', 'y')")
        .await;
    let rows = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT '[' || code || ']', label FROM codes",
            "SELECT CONCAT('[', code, ']'), label FROM codes",
            secs(60),
        )
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    pipeline.assert_verified().await;
    running.stop().await;
}

const ARRAYS: &str = "CREATE TABLE arrs (
    id     integer PRIMARY KEY,
    ints   integer[],
    texts  text[],
    grid   integer[][],
    nums   numeric[],
    floats double precision[],
    flags  boolean[],
    days   date[],
    stamps timestamptz[],
    codes  char(3)[],
    docs   jsonb[],
    pts    point[]
)";

/// Two rows with keys `first` and `first + 1`.
fn array_rows(first: i32) -> String {
    let (a, b) = (first, first + 1);
    format!(
        r#"INSERT INTO arrs VALUES
  ({a}, '{{1,NULL,-2147483648,2147483647}}',
   ARRAY['plain', NULL, 'NULL', 'a "quoted" b', 'back\slash', 'x,y', '{{br}}', '', ' lead', 'ünï😀', E'tab\there'],
   '{{{{1,2}},{{3,4}}}}', '{{1.50,NaN,-0.000001,123456789012345678901234567890}}', '{{1e300,-0.5,Infinity}}',
   '{{t,f,NULL}}', '{{2024-02-29,infinity}}', '{{"2024-01-01 10:00:00+02",NULL}}', '{{ab,"a b"}}',
   ARRAY['{{"k": [1, 2.50]}}'::jsonb, 'null', '"s"'], '{{"(1,2)","(3.5,-4)"}}'),
  ({b}, '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}')"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_land_as_json() {
    let env = Env::new("typarr").await;
    env.pg_exec(ARRAYS).await;
    env.pg_exec(&array_rows(1)).await;
    env.pg_exec("INSERT INTO arrs (id, ints) VALUES (3, '[0:2]={7,8,9}')")
        .await;
    let pipeline = env.pipeline().tables("public.arrs");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&array_rows(11)).await;
    env.pg_exec("UPDATE arrs SET ints = '{5,NULL}', texts = ARRAY[NULL, 'NULL'] WHERE id = 2")
        .await;
    env.pg_exec("UPDATE arrs SET grid = '{{{1},{2}},{{3},{4}}}' WHERE id = 11")
        .await;

    let my = env.my(&pipeline).await;
    let deadline = Deadline::new("five array rows and both updates in MariaDB", secs(60));
    let done = "SELECT CAST((SELECT COUNT(*) FROM arrs) * 100 \
                + (SELECT COUNT(*) FROM arrs WHERE id = 2 AND JSON_LENGTH(ints) = 2) * 10 \
                + (SELECT COUNT(*) FROM arrs WHERE id = 11 AND JSON_DEPTH(grid) = 4) AS UNSIGNED)";
    loop {
        running.assert_alive();
        let seen = db::my_u64(&my, done).await;
        if seen == Some(511) {
            break;
        }
        deadline.tick(&seen).await;
    }
    let json = |v: Option<String>| -> serde_json::Value {
        serde_json::from_str(&v.unwrap_or_default()).expect("JSON in MariaDB")
    };
    for id in [1, 11] {
        let row = &db::my_rows(
            &my,
            &format!(
                "SELECT CAST(ints AS CHAR), CAST(texts AS CHAR), CAST(grid AS CHAR), CAST(flags AS CHAR), \
                 CAST(days AS CHAR), CAST(stamps AS CHAR), CAST(codes AS CHAR), CAST(docs AS CHAR), pts, \
                 CAST(nums AS CHAR) FROM arrs WHERE id = {id}"
            ),
        )
        .await[0];
        assert_eq!(
            json(row[0].clone()),
            serde_json::json!([1, null, -2147483648i64, 2147483647])
        );
        assert_eq!(
            json(row[1].clone()),
            serde_json::json!([
                "plain",
                null,
                "NULL",
                "a \"quoted\" b",
                "back\\slash",
                "x,y",
                "{br}",
                "",
                " lead",
                "ünï😀",
                "tab\there"
            ])
        );
        if id == 1 {
            assert_eq!(json(row[2].clone()), serde_json::json!([[1, 2], [3, 4]]));
        } else {
            assert_eq!(json(row[2].clone()), serde_json::json!([[[1], [2]], [[3], [4]]]));
        }
        assert_eq!(json(row[3].clone()), serde_json::json!([true, false, null]));
        assert_eq!(json(row[4].clone()), serde_json::json!(["2024-02-29", "infinity"]));
        assert_eq!(
            json(row[5].clone()),
            serde_json::json!(["2024-01-01 08:00:00+00", null])
        );
        assert_eq!(json(row[6].clone()), serde_json::json!(["ab ", "a b"]));
        assert_eq!(json(row[7].clone()), serde_json::json!([{"k": [1, 2.5]}, null, "s"]));
        // point[] has no JSON form: it stays PostgreSQL's text.
        assert_eq!(row[8].as_deref(), Some(r#"{"(1,2)","(3.5,-4)"}"#));
        // Numbers keep every digit; NaN, which JSON lacks, is a string.
        let nums = row[9].clone().unwrap_or_default();
        assert!(
            nums.contains("123456789012345678901234567890") && nums.contains("\"NaN\""),
            "{nums}"
        );
    }
    let row = &db::my_rows(
        &my,
        "SELECT CAST(ints AS CHAR), CAST(texts AS CHAR), CAST(grid AS CHAR) FROM arrs WHERE id = 2",
    )
    .await[0];
    assert_eq!(json(row[0].clone()), serde_json::json!([5, null]));
    assert_eq!(json(row[1].clone()), serde_json::json!([null, "NULL"]));
    assert_eq!(json(row[2].clone()), serde_json::json!([]));
    let row = &db::my_rows(&my, "SELECT CAST(ints AS CHAR) FROM arrs WHERE id = 3").await[0];
    assert_eq!(
        json(row[0].clone()),
        serde_json::json!([7, 8, 9]),
        "explicit bounds are dropped"
    );
    let types = column_types(&env, &pipeline, "arrs").await;
    assert!(types.contains(&"ints longtext utf8mb4_bin".to_owned()), "{types:?}");
    assert!(
        types.contains(&"pts longtext utf8mb4_nopad_bin".to_owned()),
        "{types:?}"
    );
    pipeline.assert_verified().await;

    // verify sees a changed element.
    db::my_exec(&my, "UPDATE arrs SET texts = JSON_ARRAY('plain') WHERE id = 11").await;
    let (status, report) = pipeline.verify().await;
    assert!(!status.success() && report.contains("id=11"), "{report}");
    running.stop().await;
}

const ODD: &str = "CREATE TABLE odd (
    id    integer PRIMARY KEY,
    d     date,
    ts    timestamp,
    tstz  timestamptz,
    hund  numeric(5,-2),
    tiny  numeric(3,5),
    wide  char(300),
    small char(4)
);
CREATE TABLE ancient (id integer PRIMARY KEY, d date, ts timestamp)";

fn odd_rows(first: i32) -> String {
    let (a, b, c) = (first, first + 1, first + 2);
    format!(
        "INSERT INTO odd VALUES
           ({a}, 'infinity', 'infinity', 'infinity', 9999949, 0.00999, 'padded', 'ab'),
           ({b}, '-infinity', '-infinity', '-infinity', -12345, -0.00123, repeat('w', 300), 'abcd'),
           ({c}, '0001-01-01', '0001-01-01 00:00:00', '2024-06-30 23:59:59.999999+02', 50, 0, '', '')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinity_negative_scale_and_wide_char() {
    let env = Env::new("typodd").await;
    env.pg_exec(ODD).await;
    env.pg_exec(&odd_rows(1)).await;
    env.pg_exec("INSERT INTO ancient VALUES (1, '0044-03-15 BC', NULL), (2, '2024-01-01', '2024-01-01 00:00:00')")
        .await;
    // Twenty varchar(1000) columns pass MariaDB's row limit as VARCHARs: the widest become LONGTEXT.
    let roomy: Vec<String> = (0..20).map(|i| format!("c{i} varchar(1000)")).collect();
    env.pg_exec(&format!(
        "CREATE TABLE roomy (id integer PRIMARY KEY, {})",
        roomy.join(", ")
    ))
    .await;
    env.pg_exec("INSERT INTO roomy (id, c0, c19) VALUES (1, repeat('é', 1000), 'last')")
        .await;
    let pipeline = env.pipeline().tables("public.odd,public.ancient,public.roomy");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(&odd_rows(11)).await;
    env.pg_exec("UPDATE odd SET d = '-infinity', ts = '2024-01-01', wide = 'changed' WHERE id = 11")
        .await;
    env.pg_exec("DELETE FROM odd WHERE d = '-infinity' AND id = 12").await;
    env.pg_exec("INSERT INTO ancient VALUES (3, '2024-01-02', '0100-01-01 00:00:00 BC')")
        .await;
    env.pg_exec("INSERT INTO roomy (id, c5, c10) VALUES (2, repeat('x', 1000), repeat('😀', 1000))")
        .await;
    env.wait_replicated(
        &pipeline,
        &mut running,
        "SELECT id::text, c0, c5, c10, c19 FROM roomy",
        "SELECT CAST(id AS CHAR), c0, c5, c10, c19 FROM roomy",
        secs(60),
    )
    .await;

    let rows = env
        .wait_replicated(
            &pipeline,
            &mut running,
            "SELECT id::text, hund::text, tiny::text, length(wide::text)::text, small::text FROM odd",
            "SELECT CAST(id AS CHAR), CAST(hund AS CHAR), CAST(tiny AS CHAR), CAST(CHAR_LENGTH(TRIM(TRAILING ' ' FROM wide)) AS CHAR), small FROM odd",
            secs(60),
        )
        .await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    let my = env.my(&pipeline).await;
    let row = &db::my_rows(
        &my,
        "SELECT CAST(d AS CHAR), CAST(ts AS CHAR), CAST(tstz AS CHAR), CAST(hund AS CHAR) FROM odd WHERE id = 1",
    )
    .await[0];
    assert_eq!(
        row,
        &crate::support::row(&[
            Some("9999-12-31"),
            Some("9999-12-31 23:59:59.999999"),
            Some("9999-12-31 23:59:59.999999"),
            Some("9999900")
        ])
    );
    let row = &db::my_rows(&my, "SELECT CAST(d AS CHAR), CAST(ts AS CHAR) FROM odd WHERE id = 2").await[0];
    assert_eq!(
        row,
        &crate::support::row(&[Some("0000-01-01"), Some("0000-01-01 00:00:00.000000")])
    );
    let types = column_types(&env, &pipeline, "odd").await;
    for want in [
        "hund decimal(7,0) -",
        "tiny decimal(5,5) -",
        "wide varchar(300) utf8mb4_bin",
        "small char(4) utf8mb4_bin",
    ] {
        assert!(types.contains(&want.to_owned()), "{want} in {types:?}");
    }

    // Dates before year 1 do not fit MariaDB: the copied row and the streamed one are dead-lettered.
    let letters = pipeline.wait_dead_letters(&mut running, 2).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.table, "public.ancient");
        assert!(letter.reason.contains("before year 1"), "{letter:?}");
    }
    pipeline.tables("public.odd,public.roomy").assert_verified().await;
    // verify maps infinity as the pipeline does: a changed sentinel is a difference.
    db::my_exec(&my, "UPDATE odd SET d = '9999-12-30' WHERE id = 1").await;
    let (status, report) = pipeline.tables("public.odd").verify().await;
    assert!(!status.success() && report.contains("id=1"), "{report}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_with_json_and_arrays_replicates() {
    let env = Env::new("keylessjson").await;
    env.pg_exec(
        "CREATE TABLE events (kind text, body jsonb, tags int[]);
         ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO events VALUES ('copied', '{\"a\": 1}', '{1,2}');",
    )
    .await;
    let pipeline = env.pipeline().tables("public.events");
    let mut running = env.start(&pipeline).await;
    env.pg_exec(
        "INSERT INTO events VALUES ('streamed', '{\"b\": [true, null]}', '{3,NULL}'), ('gone', 'null', '{}');
         UPDATE events SET tags = '{9}' WHERE kind = 'copied';
         DELETE FROM events WHERE kind = 'gone';",
    )
    .await;
    env.wait_replicated(
        &pipeline,
        &mut running,
        "SELECT kind, replace(body::text, ' ', ''), array_to_json(tags)::text FROM events",
        "SELECT kind, CAST(JSON_COMPACT(body) AS CHAR), CAST(JSON_COMPACT(tags) AS CHAR) FROM events",
        secs(60),
    )
    .await;
    pipeline.assert_verified().await;
    running.stop().await;
}

/// `transform test` over wal2json lines without type OIDs, with `--pg-url`:
/// each type name is looked up in the catalog, and the values come out typed
/// exactly as the stream, which carries the OIDs, types them. A name the
/// catalog does not know is an error that names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_test_types_by_the_catalog_with_pg_url() {
    let env = Env::new("trialtypes").await;
    env.pg_exec(
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0); CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE TABLE t (a integer[], d posint, m mood, n numeric(10,2), z timestamptz, j jsonb)",
    )
    .await;
    let oids = env
        .pg_rows(
            "SELECT attname::text, format_type(atttypid, atttypmod), atttypid::text FROM pg_attribute \
             WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum",
        )
        .await;
    let values = [
        r#""{1,2,NULL}""#,
        "5",
        r#""happy""#,
        "12.50",
        r#""2026-01-02 03:04:05+00""#,
        r#""{\"k\": [1]}""#,
    ];
    let line = |with_oids: bool| -> String {
        let columns: Vec<String> = oids
            .iter()
            .zip(values)
            .map(|(row, value)| {
                let (name, pg_type, oid) = (row[0].as_deref(), row[1].as_deref(), row[2].as_deref());
                let (name, pg_type, oid) = (name.unwrap_or(""), pg_type.unwrap_or(""), oid.unwrap_or("0"));
                let oid = if with_oids {
                    format!(r#","typeoid":{oid}"#)
                } else {
                    String::new()
                };
                format!(r#"{{"name":"{name}","type":"{pg_type}"{oid},"value":{value}}}"#)
            })
            .collect();
        format!(
            r#"{{"action":"I","schema":"public","table":"t","columns":[{}]}}"#,
            columns.join(",")
        )
    };
    let identity = crate::support::binary::guest("identity").display().to_string();
    let pipeline = env.pipeline();
    let trial = async |input: String| -> String {
        // The harness passes --pg-url.
        let out = pipeline
            .output_with_input(&["transform", "test", "--module", &identity], &input, secs(60))
            .await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let as_streamed = trial(line(true)).await;
    assert!(
        as_streamed.contains(r#""type":"json","value":"[1,2,null]""#),
        "{as_streamed}"
    );
    assert_eq!(
        trial(line(false)).await,
        as_streamed,
        "typed by the catalog as by the OIDs"
    );
    let unknown =
        r#"{"action":"I","schema":"public","table":"t","columns":[{"name":"n","type":"no_such_type","value":5}]}"#;
    let out = pipeline
        .output_with_input(&["transform", "test", "--module", &identity], unknown, secs(60))
        .await;
    assert!(!out.status.success());
    crate::support::binary::assert_clean_error(
        &String::from_utf8_lossy(&out.stderr),
        &["line 1", "no_such_type", "--pg-url"],
    );
}
