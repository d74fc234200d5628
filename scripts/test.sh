#!/usr/bin/env bash
# Sets up what the tests need, then runs every test: unit tests, the
# end-to-end tests, which start the real server with real Python and Node,
# and the benchmark harness in quick mode. That last one is a smoke test that
# checks no timing.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast
