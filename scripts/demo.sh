#!/usr/bin/env bash
# Sets up kubefaas, starts the server with a fresh data dir, deploys every
# script in examples/, invokes each with its payload and variables, checks
# the output against expected-output.json, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked
kubefaas="$PWD/target/release/kubefaas"

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$kubefaas" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$work/server.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/^kubefaas listening on //p' "$work/server.out")
if [ -z "$url" ]; then
  echo "the server did not start; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
export KUBEFAAS_URL="$url"
echo "server: $url"
"$kubefaas" templates

failed=0
for dir in examples/*/; do
  name=$(basename "$dir")
  echo
  echo "== $name"
  "$kubefaas" deploy "$dir"
  payload=$(ls "$dir"payload.* | head -n 1)
  args=()
  while IFS= read -r pair; do
    [ -n "$pair" ] && args+=(--var "$pair")
  done <"$dir/vars"
  output=$("$kubefaas" invoke "$name" --data "@$payload" "${args[@]}")
  echo "$output"
  if [ "$output" = "$(cat "$dir/expected-output.json")" ]; then
    echo "-> matches expected-output.json"
  else
    echo "-> DIFFERS from expected-output.json" >&2
    failed=1
  fi
done

echo
"$kubefaas" ls
exit "$failed"
