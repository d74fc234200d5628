#!/usr/bin/env bash
# Installs what kubefaas needs to build and run its templates, skipping
# anything already present: a Rust toolchain is expected (rustup); Python 3,
# Node.js with npm, PHP with composer, Ruby with bundler, Go, and
# bubblewrap (the instance sandbox) come from Debian's packages when missing.
# With --bench it also installs nginx and its stream module, the benchmark's
# reference proxy.
set -euo pipefail

missing_packages=()
command -v python3 >/dev/null 2>&1 || missing_packages+=(python3)
command -v node >/dev/null 2>&1 || missing_packages+=(nodejs)
command -v cc >/dev/null 2>&1 || missing_packages+=(gcc)
command -v npm >/dev/null 2>&1 || missing_packages+=(npm)
command -v php >/dev/null 2>&1 || missing_packages+=(php-cli)
command -v composer >/dev/null 2>&1 || missing_packages+=(composer)
command -v ruby >/dev/null 2>&1 || missing_packages+=(ruby)
command -v bundle >/dev/null 2>&1 || missing_packages+=(bundler)
command -v go >/dev/null 2>&1 || missing_packages+=(golang-go)
if [ "${1:-}" = "--tests" ] && ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing_packages+=(python3-venv)
fi
command -v bwrap >/dev/null 2>&1 || missing_packages+=(bubblewrap)
if [ "${1:-}" = "--bench" ]; then
  [ -x /usr/sbin/nginx ] || missing_packages+=(nginx)
  [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing_packages+=(libnginx-mod-stream)
fi

if [ "${#missing_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing_packages[*]}; install them with: sudo apt-get install ${missing_packages[*]}" >&2
    exit 1
  fi
  echo "installing ${missing_packages[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

if [ "${1:-}" = "--tests" ]; then
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
  fi
  # The S3 tests run against moto's S3-compatible server, from PyPI, in
  # its own virtual environment.
  moto_dir="$HOME/.cache/kubefaas/test-tools/moto"
  if [ ! -x "$moto_dir/bin/moto_server" ]; then
    echo "installing moto's S3 server into $moto_dir" >&2
    rm -rf "$moto_dir"
    python3 -m venv "$moto_dir"
    "$moto_dir/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5"
  fi
fi
