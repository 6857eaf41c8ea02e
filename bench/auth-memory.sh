#!/usr/bin/env bash
# Resident memory of one auth process under a stream of logins; see bench/auth-memory.py.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
exec python3 bench/auth-memory.py "$BIN"
