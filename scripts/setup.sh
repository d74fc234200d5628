#!/usr/bin/env bash
# Installs what kubefaas needs to build and run its templates, skipping
# anything already present: a Rust toolchain is expected (rustup); Python 3,
# Node.js, gcc and bubblewrap (the instance sandbox) come from Debian's
# packages when missing.
set -euo pipefail

missing_packages=()
command -v python3 >/dev/null 2>&1 || missing_packages+=(python3)
command -v node >/dev/null 2>&1 || missing_packages+=(nodejs)
command -v cc >/dev/null 2>&1 || missing_packages+=(gcc)
command -v bwrap >/dev/null 2>&1 || missing_packages+=(bubblewrap)

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

if [ "${1:-}" = "--tests" ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
