#!/usr/bin/env bash
# Sets up what the tests need, then runs every test: unit tests and the
# end-to-end tests, which start the real server with real Python and Node.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
cargo build --all-targets --locked
cargo nextest run --locked --no-fail-fast
