#!/usr/bin/env bash
# The whole test suite: prepares the local services, builds the transforms and
# the binary, then runs every unit and end-to-end test against the real servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/services.sh
rustup target add wasm32-wasip2 >/dev/null
(cd transforms && cargo build --target wasm32-wasip2 --release)
cargo build -p wasmcdc
cargo test --workspace -- --test-threads="${WASMCDC_TEST_THREADS:-2}"
