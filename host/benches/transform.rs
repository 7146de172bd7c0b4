//! Per-change cost of the identity component against no transform at all, in
//! each world, batches being one source transaction:
//! - `@0.3.0` (`identity`), whose rows cross unread;
//! - `@0.2.0` (`identity_v2`), which sends every value into the call;
//! - `@0.1.0` (`probe`, which passes other tables through), one call per change.
//!
//! Build the components first (`cargo build --target wasm32-wasip2 --release`
//! in `transforms/`), then: `cargo bench -p wasmcdc --bench transform`.
//!
//! Times on a shared machine drift by tens of percent from run to run.
//! `WASMCDC_BENCH_ONLY=none|identity|sent|per-call` with `WASMCDC_BENCH_CHANGES=N`
//! runs one chain once over N changes, so that instructions can be counted
//! under callgrind: the difference of the counts of two runs, divided by the
//! difference of their N, is the instructions one change costs, nearly the
//! same on every run of one machine.

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

/// Changes per source transaction: what the capture gives the chain at once.
const TRANSACTION: usize = 1_000;

/// One round over every change, in nanoseconds per change.
fn round(chain: &mut TransformChain, changes: &[Change], ctx: &TxContext) -> f64 {
    let transactions: Vec<Vec<Change>> = changes.chunks(TRANSACTION).map(<[Change]>::to_vec).collect();
    let started = Instant::now();
    let mut out = 0usize;
    for transaction in transactions {
        for outcome in chain.apply_batch(transaction, ctx) {
            out += outcome.expect("transform").len();
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / changes.len() as f64;
    assert_eq!(out, changes.len());
    ns
}

/// The best of several rounds of each chain, in nanoseconds per change. The
/// chains take turns, round by round, so that a slow spell of a shared
/// machine falls on all of them rather than on one.
fn measure<const N: usize>(chains: &mut [&mut TransformChain; N], changes: &[Change], ctx: &TxContext) -> [f64; N] {
    let mut best = [f64::MAX; N];
    for _ in 0..ROUNDS {
        for (chain, best) in chains.iter_mut().zip(&mut best) {
            *best = best.min(round(chain, changes, ctx));
        }
    }
    best
}

fn component(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../transforms/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing; build it with `cargo build --target wasm32-wasip2 --release` in transforms/",
        path.display()
    );
    path
}

fn main() {
    let identity = std::env::var_os("WASMCDC_IDENTITY").map_or_else(|| component("identity"), PathBuf::from);
    let changes: Vec<Change> = (0..CHANGES).map(seed_change).collect();
    let ctx = TxContext {
        xid: 1,
        commit_lsn: Lsn(0x16_B374_D848),
        commit_time: "2026-11-26 14:59:09.236558+00".into(),
    };
    let mut none = TransformChain::load(&[], &[]).expect("empty chain");
    let mut with_identity = TransformChain::load(&[identity], &[]).expect("identity loads");
    let mut sent = TransformChain::load(&[component("identity_v2")], &[]).expect("identity_v2 loads");
    let mut per_change = TransformChain::load(&[component("probe")], &[]).expect("probe loads");
    // One chain, one round over the first N changes: for counting instructions
    // under `valgrind --tool=callgrind`, which a shared machine does not disturb.
    let only = std::env::var("WASMCDC_BENCH_ONLY").ok();
    let count = std::env::var("WASMCDC_BENCH_CHANGES").ok();
    assert_eq!(
        only.is_some(),
        count.is_some(),
        "set WASMCDC_BENCH_ONLY and WASMCDC_BENCH_CHANGES together, or neither"
    );
    if let Some((only, n)) = only.zip(count) {
        let n: usize = n.parse().expect("WASMCDC_BENCH_CHANGES is a number of changes");
        assert!(
            (1..=CHANGES).contains(&n),
            "WASMCDC_BENCH_CHANGES is between 1 and {CHANGES}"
        );
        let chain = match only.as_str() {
            "none" => &mut none,
            "identity" => &mut with_identity,
            "sent" => &mut sent,
            "per-call" => &mut per_change,
            other => panic!("WASMCDC_BENCH_ONLY is none, identity, sent or per-call, not {other}"),
        };
        let ns = round(chain, &changes[..n], &ctx);
        println!("{only}: {ns:.1} ns/change over {n} changes, one round");
        return;
    }
    let mut chains = [&mut none, &mut with_identity, &mut sent, &mut per_change];
    // Warm every path once.
    measure(&mut chains, &changes[..1_000], &ctx);
    let [baseline, identity_ns, sent_ns, per_change_ns] = measure(&mut chains, &changes, &ctx);
    println!(
        "changes per round:        {CHANGES} (seed-table updates, {TRANSACTION} per transaction, best of {ROUNDS} rounds, taking turns)"
    );
    println!("no transform:             {baseline:>9.1} ns/change");
    println!("identity, 0.3.0 unread:   {identity_ns:>9.1} ns/change");
    println!("identity, 0.2.0 sent:     {sent_ns:>9.1} ns/change");
    println!("identity, 0.1.0 per call: {per_change_ns:>9.1} ns/change");
    println!(
        "overhead of identity:     {:>9.1} ns/change on 0.3.0 ({:.1}x the baseline), {:.1} on 0.2.0, {:.1} per call on 0.1.0",
        identity_ns - baseline,
        identity_ns / baseline,
        sent_ns - baseline,
        per_change_ns - baseline
    );
    println!(
        "identity throughput:      {:>9.0} changes/s on one thread",
        1e9 / identity_ns
    );
}
