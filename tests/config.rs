//! One configuration model: `config print` shows what flags, environment and
//! file resolve to, reads back through `--config`, refuses unknown keys by
//! name, and the tuning keys reach the code that uses them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::binary::{assert_clean_error, binary, guest, log_dir};

/// `wasmcdc <args>` with no `WASMCDC_*` variable but `env`, and `input` on stdin.
fn wasmcdc(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    use std::io::Write as _;
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("WASMCDC_") || name == "RUST_BACKTRACE" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("wasmcdc starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A command that fails early closes its end; what it says matters, not the write.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    child.wait_with_output().expect("wasmcdc finishes")
}

/// `wasmcdc config print <args>`: its standard output; fails the test if it fails.
fn print(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["config", "print"];
    all.extend_from_slice(args);
    let out = wasmcdc(&all, env, "");
    assert!(
        out.status.success(),
        "wasmcdc config print failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file under `target/e2e-logs/` holding `text`.
fn file(name: &str, text: &str) -> PathBuf {
    let path = log_dir().join(format!("config-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn printed_settings_read_back_the_same_and_mask_passwords() {
    let conf = file(
        "layers.toml",
        "slot = \"from_file\"\nbatch-changes = 77\ngroup-changes = 78\nprefetch = 79\ntables = \"public.a, public.\\\"Order Items\\\"\"\ntransform-config = [\"mask.columns=a,b\"]\n",
    );
    let first = print(
        &[
            "--config",
            arg(&conf),
            "--pg-url",
            "postgres://me:s3cret@db.example:5432/shop",
        ],
        &[("WASMCDC_PREFETCH", "80"), ("WASMCDC_SLOT", "from_env")],
    );
    for line in [
        "pg-url = \"postgres://me:***@db.example:5432/shop\"",
        "slot = \"from_env\"",
        "batch-changes = 77",
        "group-changes = 78",
        "prefetch = 80",
        "transform-config = [\"mask.columns=a,b\"]",
    ] {
        assert!(first.lines().any(|l| l == line), "no line {line:?} in:\n{first}");
    }
    assert!(!first.contains("s3cret"), "a password is printed:\n{first}");
    let printed = file("printed.toml", &first);
    assert_eq!(print(&["--config", arg(&printed)], &[]), first);
}

#[test]
fn the_example_file_gives_the_defaults() {
    let example = crate::support::binary::repo_root().join("wasmcdc.example.toml");
    assert_eq!(print(&["--config", arg(&example)], &[]), print(&[], &[]));
}

#[test]
fn an_unknown_key_is_named_and_refused() {
    let conf = file("unknown.toml", "slot = \"s\"\nbatch-size = 10\n");
    for command in [&["config", "print"][..], &["run"][..]] {
        let mut args = command.to_vec();
        args.extend(["--config", arg(&conf)]);
        let out = wasmcdc(&args, &[], "");
        assert!(!out.status.success(), "{command:?} accepted an unknown key");
        assert_clean_error(
            &String::from_utf8_lossy(&out.stderr),
            &["cannot use config file", "unknown key 'batch-size'"],
        );
    }
    let out = wasmcdc(&["config", "print"], &[("WASMCDC_PREFETCH", "0")], "");
    assert!(!out.status.success(), "prefetch 0 was accepted");
    assert_clean_error(
        &String::from_utf8_lossy(&out.stderr),
        &["prefetch = 0 is out of range", "1 to 65535"],
    );
}

/// The transform limits reach the guests: a guest that waits in a host call is
/// abandoned at `transform-call-ms`, and a fan-out over `transform-result-changes` fails.
#[test]
fn transform_limits_take_effect() {
    let probe = guest("probe");
    let line =
        |table: &str| format!("{{\"op\":\"insert\",\"schema\":\"public\",\"table\":\"{table}\",\"columns\":[]}}\n");
    let conf = file("limits.toml", "transform-call-ms = 250\n");
    let out = wasmcdc(
        &["transform", "test", "--module", arg(&probe), "--config", arg(&conf)],
        &[],
        &line("sleep"),
    );
    assert!(!out.status.success(), "the sleeping guest was not abandoned");
    assert_clean_error(
        &String::from_utf8_lossy(&out.stderr),
        &["took more than 250 ms, waiting in a host call"],
    );
    let out = wasmcdc(
        &["transform", "test", "--module", arg(&probe)],
        &[("WASMCDC_TRANSFORM_RESULT_CHANGES", "20")],
        &line("wide"),
    );
    assert!(!out.status.success(), "the fan-out was not refused");
    assert_clean_error(
        &String::from_utf8_lossy(&out.stderr),
        &["returned 10001 changes", "at most 20 changes"],
    );
}
