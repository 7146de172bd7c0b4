//! End-to-end tests: the real `wasmcdc` binary against real PostgreSQL,
//! RabbitMQ and MariaDB on 127.0.0.1. Build the binary first:
//!
//! ```text
//! cargo build -p wasmcdc && cargo test -p wasmcdc-tests -- --test-threads=2
//! ```

// The harness is shared with the fault suite and the benchmarks; each uses part of it.
#[allow(dead_code)]
mod support;

mod bad_input;
mod compose;
mod config;
mod dead_letters;
mod drift;
mod fidelity;
mod hotswap;
mod huge_transaction;
mod hygiene;
mod identity;
mod keys;
mod languages;
mod large_transaction;
mod metrics;
mod partitions;
mod privileges;
mod progress;
mod refused_publish;
mod reorder;
mod restart;
mod routing;
mod sandbox;
mod seed;
mod shutdown;
mod snapshot;
mod standby;
mod status;
mod tables;
mod toast;
mod transient;
mod types;
