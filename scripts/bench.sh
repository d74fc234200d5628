#!/usr/bin/env bash
# Builds the server and the benchmark harness in release mode and runs the
# harness, which prints one Markdown table. Arguments go to the harness:
# --quick (tiny counts), --runs N, --only warm,cold,builds,scale,upload,burst.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --bench
cargo build --release --locked -p kubefaas -p kubefaas-bench
exec target/release/kubefaas-bench "$@"
