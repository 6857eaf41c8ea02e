#!/usr/bin/env bash
# Checks the Prometheus scrape configurations and the Grafana dashboard with promtool (Debian
# package `prometheus`): the configurations load, every dashboard query parses as PromQL, and
# the pods of deploy/base carry the annotations the Kubernetes configuration reads. That the
# queries name only metrics Stratus has is tests/metrics.rs's part.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus" >&2; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --syntax-only: the operator's certificate files exist only where `up` has run.
promtool check config --syntax-only deploy/prometheus/stratus-up.yml
python3 deploy/prometheus/check.py "$scratch"
promtool check config "$scratch/kubernetes.yml"
promtool check rules "$scratch/dashboard.rules.yml"
echo "prometheus and grafana: valid"
