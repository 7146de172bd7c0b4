//! Per-change cost of the identity component against no transform at all.
//!
//! Build the component first (`cargo build --target wasm32-wasip2 --release`
//! in `transforms/`), then: `cargo bench -p wasmcdc --bench transform`.

use std::path::PathBuf;
use std::time::Instant;

use wasmcdc::change::{Change, Column, Lsn, Op, TxContext, Value};
use wasmcdc::transform::TransformChain;

const CHANGES: usize = 200_000;
const ROUNDS: usize = 5;

fn seed_change(i: usize) -> Change {
    let column = |name: &str, pg_type: &str, value: Value| Column {
        name: name.into(),
        pg_type: pg_type.into(),
        value,
    };
    Change {
        op: Op::Update,
        schema: "public".into(),
        table: "itrequests".into(),
        columns: vec![
            column("requestid", "integer", Value::Int(i as i64)),
            column(
                "details",
                "character varying(60)",
                Value::Text(format!("Repair laptop {i}")),
            ),
            column("duedate", "date", Value::Date("2026-12-02".into())),
            column("fulfilled", "boolean", Value::Bool(true)),
        ],
        key: vec![column("requestid", "integer", Value::Int(i as i64))],
    }
}

/// Best of several rounds, in nanoseconds per change.
fn measure(chain: &mut TransformChain, changes: &[Change], ctx: &TxContext) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let batch = changes.to_vec();
        let started = Instant::now();
        let mut out = 0usize;
        for change in batch {
            out += chain.apply(change, ctx).expect("transform").len();
        }
        let ns = started.elapsed().as_nanos() as f64 / changes.len() as f64;
        assert_eq!(out, changes.len());
        best = best.min(ns);
    }
    best
}

fn main() {
    let identity = std::env::var_os("WASMCDC_IDENTITY").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../transforms/target/wasm32-wasip2/release/identity.wasm"),
        PathBuf::from,
    );
    assert!(
        identity.exists(),
        "{} is missing; build it with `cargo build --target wasm32-wasip2 --release` in transforms/",
        identity.display()
    );
    let changes: Vec<Change> = (0..CHANGES).map(seed_change).collect();
    let ctx = TxContext {
        xid: 1,
        commit_lsn: Lsn(0x16_B374_D848),
        commit_time: "2026-11-26 14:59:09.236558+00".into(),
    };
    let mut none = TransformChain::load(&[], &[]).expect("empty chain");
    let mut with_identity = TransformChain::load(&[identity], &[]).expect("identity loads");
    // Warm both paths once.
    measure(&mut none, &changes[..1_000], &ctx);
    measure(&mut with_identity, &changes[..1_000], &ctx);
    let baseline = measure(&mut none, &changes, &ctx);
    let identity_ns = measure(&mut with_identity, &changes, &ctx);
    println!("changes per round:        {CHANGES} (seed-table updates, best of {ROUNDS} rounds)");
    println!("no transform:             {baseline:>9.1} ns/change");
    println!("identity component:       {identity_ns:>9.1} ns/change");
    println!(
        "overhead of identity:     {:>9.1} ns/change ({:.1}x the baseline)",
        identity_ns - baseline,
        identity_ns / baseline
    );
    println!(
        "identity throughput:      {:>9.0} changes/s on one thread",
        1e9 / identity_ns
    );
}
