//! Fault injection: a sustained mixed workload runs while one fault is
//! injected, then the target must equal the source row by row, with nothing
//! lost and nothing applied twice.
//!
//! These tests kill wasmcdc processes and stop, restart or throttle the
//! machine's shared PostgreSQL, RabbitMQ and MariaDB, so they live in a test
//! binary of their own and must run one at a time:
//!
//! ```text
//! cargo build -p wasmcdc && cargo test -p wasmcdc-tests --test faults -- --test-threads=1 --nocapture
//! ```
//!
//! Every scenario puts the servers back as it found them, even when it fails.

#[allow(dead_code)]
#[path = "../support/mod.rs"]
mod support;

mod broker;
mod keyless;
mod kills;
mod mariadb;
mod random;
mod scenario;
mod servers;
mod source;
mod workload;
