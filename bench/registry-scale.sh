#!/usr/bin/env bash
# The registry under many instances and watchers: CPU, bytes and wake-ups per change, and how
# long a watcher takes to see a change (issue 19's table).
#
#   bench/registry-scale.sh                                   # the default rows, 10 s each
#   ROWS="catalog:2000:200:10 service:5000:500:40" bench/registry-scale.sh
#   SECONDS_PER_ROW=20 bench/registry-scale.sh
#   STRATUS_BIN=/tmp/stratus-before bench/registry-scale.sh   # another build (a before and after)
#   STORE=etcd bench/registry-scale.sh                        # on an etcd of its own (`etcd` on PATH)
#   STORE=etcd REGISTRIES=3 bench/registry-scale.sh           # three registries on that one etcd
#
# A row is kind:instances:watchers:changes-per-second, kind `catalog` (every watcher holds a
# blocking query on the whole catalog) or `service` (each on one service), or the incremental
# watch: `deltas` (every watcher on everything) or `deltas-service` (each on one service). Needs python3 and a
# release build (built when missing). Everything listens on loopback only; the work is in
# bench/registry-scale.py, which prints a Markdown table (see bench/README.md, "registry-scale.sh").
#
# A row that cannot be measured (a process died, a phase stalled, a change not seen) is printed
# as FAILED with its reason, also on stderr, and the script exits non-zero.
#
# Machine caveat: the registry and the watchers (one Python process) share this machine's
# cores; the load average is printed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
exec python3 bench/registry-scale.py "$BIN"
