//! Transforms written in Python (componentize-py) and JavaScript
//! (componentize-js) run in the pipeline like Rust ones: each `mask-email`
//! component masks the e-mail column through the initial copy and the stream,
//! and leaves the key, the other columns, NULL and unchanged TOAST values as
//! they are. `scripts/languages.sh` builds them.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::support::binary::{Running, assert_clean_error, repo_root};
use crate::support::{Deadline, Env, Pipeline, row, secs};

/// How long a command that loads one of these components may take.
const LOADING: Duration = secs(300);

/// A component built by `scripts/languages.sh`, by its file name without `.wasm`.
fn language_module(name: &str) -> PathBuf {
    let path = repo_root().join(format!("transforms/target/languages/{name}.wasm"));
    assert!(
        path.is_file(),
        "the {name} component is missing at {}; build it with `bash scripts/languages.sh`",
        path.display()
    );
    path
}

/// Rows 1, 2, 3 and 5 are copied, the rest streamed. Row 5's e-mail is stored
/// out of line, so an update of its name leaves the e-mail out as unchanged TOAST.
const SOURCE: &str = "
    CREATE TABLE people (id integer PRIMARY KEY, name text NOT NULL, email text, contact text);
    ALTER TABLE people ALTER COLUMN email SET STORAGE EXTERNAL;
    INSERT INTO people VALUES
        (1, 'Alice', 'alice@example.com', 'alice@example.com'),
        (2, 'Bob', NULL, NULL),
        (3, 'Carol', 'carol', 'carol'),
        (5, 'Eve', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g) || '@long.example', NULL);";

const STREAM: &str = "
    INSERT INTO people VALUES (4, 'Dora', 'dora.d@mail.example.org', 'dora@example.net'), (6, 'Fay', '', NULL);
    UPDATE people SET email = 'b@b.example' WHERE id = 2;
    UPDATE people SET name = 'Alice A.' WHERE id = 1;
    UPDATE people SET name = 'Eve E.' WHERE id = 5;
    DELETE FROM people WHERE id = 3;";

/// `Env::start` with a longer wait: compiling a component of 10-20 MB takes
/// seconds, and tens of seconds in a debug build on a busy machine.
async fn start_loading(env: &Env, pipeline: &Pipeline) -> Running {
    let mut running = pipeline.spawn_run();
    let streaming = format!(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = '{}' AND active AND confirmed_flush_lsn IS NOT NULL",
        pipeline.slot
    );
    let deadline = Deadline::new(format!("pipeline '{}' to load and stream", pipeline.slot), LOADING);
    while env.pg_rows(&streaming).await.is_empty() {
        running.assert_alive();
        deadline.tick(&running.log_tail()).await;
    }
    running
}

async fn masks_through_copy_and_stream(name: &str) {
    let env = Env::new(&name.replace('-', "_")).await;
    env.pg_exec(SOURCE).await;
    let pipeline = env
        .pipeline()
        .tables("public.people")
        .transform(&language_module(name))
        .transform_config(&format!("{name}.column=email"));
    let mut running = start_loading(&env, &pipeline).await;
    env.wait_target(
        &pipeline,
        &mut running,
        "SELECT CAST(id AS CHAR), name, email, contact FROM people",
        &vec![
            row(&[
                Some("1"),
                Some("Alice"),
                Some("a***@example.com"),
                Some("alice@example.com"),
            ]),
            row(&[Some("2"), Some("Bob"), None, None]),
            row(&[Some("3"), Some("Carol"), Some("***"), Some("carol")]),
            row(&[Some("5"), Some("Eve"), Some("c***@long.example"), None]),
        ],
        LOADING,
    )
    .await;

    env.pg_exec(STREAM).await;
    env.wait_target(
        &pipeline,
        &mut running,
        "SELECT CAST(id AS CHAR), name, email, contact FROM people",
        &vec![
            row(&[
                Some("1"),
                Some("Alice A."),
                Some("a***@example.com"),
                Some("alice@example.com"),
            ]),
            row(&[Some("2"), Some("Bob"), Some("***@b.example"), None]),
            row(&[
                Some("4"),
                Some("Dora"),
                Some("d***@mail.example.org"),
                Some("dora@example.net"),
            ]),
            row(&[Some("5"), Some("Eve E."), Some("c***@long.example"), None]),
            row(&[Some("6"), Some("Fay"), Some(""), None]),
        ],
        secs(60),
    )
    .await;
    let letters = pipeline.dead_letters().await;
    assert!(letters.is_empty(), "nothing was dead-lettered: {letters:#?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_masks_emails_through_copy_and_stream() {
    masks_through_copy_and_stream("mask-email-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_masks_emails_through_copy_and_stream() {
    masks_through_copy_and_stream("mask-email-js").await;
}

/// `transform check` accepts the component and names the batched world;
/// `transform test` masks with the configured mode and `init` refuses an unknown key.
async fn checks_and_tests_offline(name: &str) {
    let module = language_module(name);
    let module = module.to_str().expect("a UTF-8 path");
    let env = Env::new(&format!("{}_offline", name.replace('-', "_"))).await;
    let pipeline = env.pipeline();

    let checked = pipeline.output(&["transform", "check", module], LOADING).await;
    let stdout = stdout_of_success(&checked, "transform check");
    assert!(
        stdout.contains("world: wasmcdc:transform@0.2.0 transformer"),
        "transform check does not name the world 0.2.0:\n{stdout}"
    );

    let line = r#"{"op":"insert","schema":"public","table":"people","columns":[{"name":"id","type":"integer","value":{"type":"int","value":1}},{"name":"email","type":"text","value":{"type":"text","value":"alice@example.com"}},{"name":"contact","type":"text","value":{"type":"text","value":"alice@example.com"}}],"key":[{"name":"id","type":"integer","value":{"type":"int","value":1}}]}"#;
    let null = r#"{"op":"insert","schema":"public","table":"people","columns":[{"name":"id","type":"integer","value":{"type":"int","value":2}},{"name":"email","type":"text","value":{"type":"null"}}],"key":[{"name":"id","type":"integer","value":{"type":"int","value":2}}]}"#;
    // `transform test` over `input`, with one more setting for the module.
    let transform_test = |setting: &str, input: String| {
        let pipeline = pipeline.transform_config(&format!("{name}.{setting}"));
        async move {
            pipeline
                .output_with_input(&["transform", "test", "--module", module], &input, LOADING)
                .await
        }
    };
    let hashed = transform_test("mode=hash", format!("{line}\n{null}\n")).await;
    let stdout = stdout_of_success(&hashed, "transform test");
    let digest: String = Sha256::digest(b"alice@example.com")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one change out per change in:\n{stdout}");
    assert!(
        lines[0].contains(&format!(r#""{}@example.com""#, &digest[..12])),
        "the e-mail is not hashed: {}",
        lines[0]
    );
    assert_eq!(
        lines[0].matches("alice@example.com").count(),
        1,
        "only the contact column keeps the address: {}",
        lines[0]
    );
    assert!(lines[1].contains(r#"{"type":"null"}"#), "NULL stays NULL: {}", lines[1]);

    let refused = transform_test("colum=email", format!("{line}\n")).await;
    assert!(!refused.status.success(), "init accepted the unknown key colum");
    assert_clean_error(&String::from_utf8_lossy(&refused.stderr), &["unknown setting 'colum'"]);
}

/// The standard output of a command that must have succeeded.
fn stdout_of_success(out: &Output, command: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wasmcdc {command} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_component_checks_and_tests_offline() {
    checks_and_tests_offline("mask-email-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_component_checks_and_tests_offline() {
    checks_and_tests_offline("mask-email-js").await;
}
