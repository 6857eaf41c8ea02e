#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `fuzz/run.sh [seconds per target] [target...]`
# (default: 60 s each, every target). Needs `cargo install cargo-fuzz`.
#
# New inputs libFuzzer finds go to fuzz/work/<target> (not committed); the committed seed corpus
# in fuzz/corpus/<target> is read but never written. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the run: turn it into a regression test next to the code it
# broke, then add it to the seed corpus.
set -euo pipefail
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(route_table jwt registry_api broker_message event_batch event_summary trace_context)
# FUZZ_DEV=1 builds without optimisations: much quicker to build, slower to run (CI's choice
# for its short runs).
mode=()
[ "${FUZZ_DEV:-0}" = 1 ] && mode=(--dev)
cargo fuzz build --sanitizer none "${mode[@]}"
failed=0
for target in "${targets[@]}"; do
  mkdir -p "work/$target"
  log="work/$target.log"
  echo "fuzz: $target for ${seconds}s"
  if ! cargo fuzz run --sanitizer none "${mode[@]}" "$target" "work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      > "$log" 2>&1; then
    echo "fuzz: $target FAILED (log: fuzz/$log, inputs: fuzz/artifacts/$target/)" >&2
    tail -40 "$log" >&2
    failed=1
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb" "$log" \
    | sed "s/^/  /" || true
done
exit $failed
