#!/usr/bin/env bash
# The whole test suite: prepares the local services, builds the transforms and
# the binary, then runs the unit tests (host and guests) and the end-to-end
# tests against the real servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/services.sh
rustup target add wasm32-wasip2 >/dev/null
(cd transforms && cargo build --target wasm32-wasip2 --release && cargo test)
bash scripts/languages.sh
cargo build -p wasmcdc
cargo test -p wasmcdc --lib --bins
cargo test -p wasmcdc-tests -- --test-threads="${WASMCDC_TEST_THREADS:-2}"
cargo test -p wasmcdc-tests --test faults -- --test-threads=1 --nocapture
