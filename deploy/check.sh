#!/usr/bin/env bash
# Validates every Kubernetes manifest against the Kubernetes schemas (offline, with
# kubernetes-validate from PyPI), and checks that deploy/base and stratus.toml describe the same
# components (and so does compose.yaml, see check_config.py).
#
# Under CI every check runs: a tool that is missing is a failure, never a skip. Outside CI the
# kustomizations are rendered only where kubectl is installed, and the run says when they were not.
set -euo pipefail
cd "$(dirname "$0")/.."
# Under CI: CI set, and not empty, 0 or false (the rule the tests follow: crates/testing/src/ci.rs).
ci=$(printf %s "${CI:-}" | tr -d '[:space:]' | tr '[:upper:]' '[:lower:]')
case "$ci" in "" | 0 | false) under_ci=false ;; *) under_ci=true ;; esac

command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate
command -v kubernetes-validate >/dev/null || { echo "kubernetes-validate is missing (pip install kubernetes-validate)" >&2; exit 1; }

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
    if ! kubectl kustomize "$dir" >"$rendered" || ! kubernetes-validate --strict --quiet "$rendered" \
      || ! python3 deploy/rules.py "$rendered"; then
      echo "invalid kustomization: $dir" >&2
      status=1
    fi
    rm -f "$rendered"
  done
elif $under_ci; then
  echo "kubectl is missing, and CI renders every kustomization (.ci/run installs kubectl)" >&2
  status=1
else
  echo "kubectl not found: the kustomizations were NOT rendered or validated (install kubectl)" >&2
fi
# Every manifest file is listed in the kustomization.
for file in deploy/base/*.yaml; do
  name=$(basename "$file")
  [ "$name" = kustomization.yaml ] && continue
  grep -q -- "- $name" deploy/base/kustomization.yaml || { echo "$name is not in deploy/base/kustomization.yaml" >&2; status=1; }
done
[ $status = 0 ] && echo "manifests: valid"
exit $status
