#!/usr/bin/env bash
# Validates every Kubernetes manifest against the Kubernetes schemas (offline, with
# kubernetes-validate from PyPI), and checks that deploy/base and stratus.toml describe the same
# components.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate

status=0
for file in deploy/base/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] && continue
  if ! kubernetes-validate --strict --quiet "$file"; then
    echo "invalid: $file" >&2
    status=1
  fi
done

# The components of the local desired state and of the cluster must be the same set.
local_components=$(awk '/^\[\[components\]\]/ {getline; if ($1 == "name") {gsub(/"/, "", $3); print $3}}' stratus.toml | sort)
cluster_components=$(grep -h -A3 '^kind: Deployment' deploy/base/*.yaml | awk '$1 == "name:" {print $2}' | sort)
if [ "$local_components" != "$cluster_components" ]; then
  echo "stratus.toml and deploy/base describe different components:" >&2
  diff <(echo "$local_components") <(echo "$cluster_components") >&2 || true
  status=1
fi
# Every manifest file is listed in the kustomization.
for file in deploy/base/*.yaml; do
  name=$(basename "$file")
  [ "$name" = kustomization.yaml ] && continue
  grep -q -- "- $name" deploy/base/kustomization.yaml || { echo "$name is not in deploy/base/kustomization.yaml" >&2; status=1; }
done
[ $status = 0 ] && echo "manifests: valid; components match stratus.toml ($(echo $local_components | tr '\n' ' '))"
exit $status
