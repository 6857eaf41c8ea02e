#!/usr/bin/env bash
# Token verification per second per core (full Ed25519 check and the repeated-token cache the
# gateway and services use), and logins per second (bound by argon2id). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -j2 -q -p stratus-kit --example token_cost
cargo run --release -j2 -q -p stratus-auth --example login_cost
