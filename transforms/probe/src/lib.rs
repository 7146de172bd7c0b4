//! A transform that misbehaves on request, to test the host's sandbox. The
//! change's table name picks the behaviour; any other table passes through.
//!
//! `escape` is the exception: it does not fail, but tries to reach the host's
//! files, environment and network, and reports in the change's `outcome`
//! column what it got, for example `file=denied env=none dir=denied net=denied`.

// The generated bindings flatten a change into many core-wasm parameters.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({ path: "../../wit/v0.1", world: "transformer" });

use std::hint::black_box;

use wasmcdc::transform::types::{Column, Value};

struct Probe;

impl Guest for Probe {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        // `sleep-in-init=yes` waits in `init`, as a guest loading a model from a slow source would.
        if config.iter().any(|(key, _)| key == "sleep-in-init") {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        Ok(())
    }

    fn transform(change: Change, _ctx: TxContext) -> Result<Vec<Change>, String> {
        match change.table.as_str() {
            "panic" => panic!("panicking on request"),
            "spin" => spin(),
            "hog" => hog(),
            "recurse" => {
                let depth = recurse(change.columns.len() as u64);
                Ok(vec![change; usize::from(depth == 1) + 1])
            }
            "escape" => Ok(vec![with_outcome(change, &escape())]),
            // Waits in the host: a clock subscription and a blocking poll, which
            // no epoch deadline interrupts, and a read of stdin.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(vec![change])
            }
            "stdin" => {
                let mut input = String::new();
                let read = std::io::Read::read_to_string(&mut std::io::stdin(), &mut input);
                Ok(vec![with_outcome(change, &format!("stdin={}", read.map_or_else(|e| e.to_string(), |n| n.to_string())))])
            }
            "print" => {
                println!("stdout from probe");
                eprintln!("stderr from probe");
                Ok(vec![change])
            }
            _ => respond(change),
        }
    }
}

export!(Probe);

/// The well-behaved cases: reject, drop, fan out, or pass.
fn respond(change: Change) -> Result<Vec<Change>, String> {
    match change.table.as_str() {
        "reject" => Err("rejected on request".to_owned()),
        "drop" => Ok(Vec::new()),
        "fanout" => {
            let copy = Change {
                table: "fanout_copy".to_owned(),
                ..change.clone()
            };
            Ok(vec![change, copy])
        }
        // Runaway fan-outs of bare changes: just over the host's cap, and a million.
        "wide" | "flood" => {
            let count = if change.table == "wide" { 10_001 } else { 1_000_000 };
            let bare = Change {
                columns: Vec::new(),
                key: Vec::new(),
                ..change
            };
            Ok(vec![bare; count])
        }
        _ => Ok(vec![change]),
    }
}

/// Tries each way out of the sandbox and says what it got, one `name=result` per attempt.
fn escape() -> String {
    let file = match std::fs::read_to_string("/etc/hostname") {
        Ok(text) => format!("read:{}", text.trim()),
        Err(_) => "denied".to_owned(),
    };
    let vars = std::env::vars().count();
    let env = match std::env::var("HOME") {
        Ok(home) => format!("HOME:{home},{vars}vars"),
        Err(_) if vars > 0 => format!("{vars}vars"),
        Err(_) => "none".to_owned(),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(entries) => format!("{}entries", entries.count()),
        Err(_) => "denied".to_owned(),
    };
    let net = match std::net::TcpStream::connect("127.0.0.1:5432") {
        Ok(_) => "connected".to_owned(),
        Err(_) => "denied".to_owned(),
    };
    format!("file={file} env={env} dir={dir} net={net}")
}

/// The change with its `outcome` column set to `outcome` as text, added if missing.
fn with_outcome(mut change: Change, outcome: &str) -> Change {
    let value = Value::Text(outcome.to_owned());
    match change.columns.iter_mut().find(|c| c.name == "outcome") {
        Some(column) => column.value = value,
        None => change.columns.push(Column {
            name: "outcome".to_owned(),
            pg_type: "text".to_owned(),
            value,
        }),
    }
    change
}

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Reserves memory without touching it, so the memory limit, not the time
/// limit, is what stops it.
fn hog() -> ! {
    let mut held = Vec::new();
    loop {
        held.push(black_box(Vec::<u8>::with_capacity(16 << 20)));
    }
}

/// Recurses until the wasm stack runs out. Nothing is kept in linear memory,
/// so it is the host's stack limit, not the guest's own stack, that stops it;
/// the subtraction keeps the compiler from turning it into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    depth.wrapping_sub(recurse(depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmcdc::transform::types::Op;

    fn change(table: &str) -> Change {
        Change {
            op: Op::Insert,
            schema: "public".into(),
            table: table.into(),
            columns: Vec::new(),
            key: Vec::new(),
        }
    }

    #[test]
    fn responds_by_table_name() {
        assert!(respond(change("reject")).is_err());
        assert!(respond(change("drop")).expect("drop").is_empty());
        let fanned = respond(change("fanout")).expect("fanout");
        assert_eq!(fanned.len(), 2);
        assert_eq!(fanned[1].table, "fanout_copy");
        assert_eq!(respond(change("other")).expect("pass").len(), 1);
    }

    #[test]
    fn the_outcome_is_set_or_added() {
        let added = with_outcome(change("escape"), "file=denied");
        assert_eq!(added.columns.len(), 1);
        assert!(matches!(&added.columns[0].value, Value::Text(t) if t == "file=denied"));
        let set = with_outcome(added, "net=denied");
        assert_eq!(set.columns.len(), 1);
        assert!(matches!(&set.columns[0].value, Value::Text(t) if t == "net=denied"));
    }
}
