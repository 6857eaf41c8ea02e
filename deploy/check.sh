#!/usr/bin/env bash
# Validates every Kubernetes manifest against the Kubernetes schemas (offline, with
# kubernetes-validate from PyPI), and checks that deploy/base and stratus.toml describe the same
# components (and so does compose.yaml, see check_config.py).
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

# The components of stratus.toml, deploy/base and compose.yaml are the same set, and every
# env var compose.yaml sets is one `stratus serve <component> --help` lists (needs the binary).
stratus=${STRATUS_BIN:-target/debug/stratus}
[ -x "$stratus" ] || cargo build -q --bin stratus
python3 deploy/check_config.py "$stratus" || status=1
# The kustomizations render (base and every overlay), and what they render is valid too.
if command -v kubectl >/dev/null; then
  for dir in deploy/base deploy/overlays/*/; do
    rendered=$(mktemp)
    if ! kubectl kustomize "$dir" >"$rendered" || ! kubernetes-validate --strict --quiet "$rendered"; then
      echo "invalid kustomization: $dir" >&2
      status=1
    fi
    rm -f "$rendered"
  done
else
  echo "kubectl not found: the kustomizations were not rendered" >&2
fi
# Every manifest file is listed in the kustomization.
for file in deploy/base/*.yaml; do
  name=$(basename "$file")
  [ "$name" = kustomization.yaml ] && continue
  grep -q -- "- $name" deploy/base/kustomization.yaml || { echo "$name is not in deploy/base/kustomization.yaml" >&2; status=1; }
done
[ $status = 0 ] && echo "manifests: valid"
exit $status
