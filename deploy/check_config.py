#!/usr/bin/env python3
"""Checks that stratus.toml, deploy/base and compose.yaml describe the same system.

- Every built-in component of stratus.toml (one without `command = [...]`) has a Deployment in
  deploy/base and a service in compose.yaml running `serve <component>`, and nothing else runs
  there. Components with their own `command` (programs in other languages) are listed apart:
  they are not part of the `stratus` image.
- Every Deployment has a Service, liveness and readiness probes (HTTP ones on /healthz and
  /readyz), a preStop hook, CPU and memory requests; every one with two or more replicas has a
  PodDisruptionBudget and no Service reaching outside the cluster publishes anything but
  http/https (rules.py, which check.sh also runs on every rendered overlay); every autoscaler
  and budget points at a Deployment; there is a NetworkPolicy, and config comes from the
  stratus-config ConfigMap.
- Every environment variable compose.yaml sets for a component is one that
  `stratus serve <component> --help` lists, so a typo cannot pass silently (but
  STRATUS_JOIN_TOKEN, which the kit reads from the environment only, never as an argument).
- The mesh (mesh_rules.py): every compose service and every Deployment runs with
  STRATUS_MTLS=required and the trust bundle; each one but the registry takes its own join
  credential (compose: `${STRATUS_JOIN_<SERVICE>...}`, the names `stratus identity env`
  prints; Kubernetes: the Secret stratus-join-<service>); the registry alone has the
  authority's files; and each `[[intentions]]` of stratus.toml is in the callee's
  STRATUS_ALLOWED_CALLERS.

Usage: check_config.py <path to the stratus binary>
"""

import glob
import re
import subprocess
import sys
import tomllib

import yaml

import mesh_rules
import rules

stratus = sys.argv[1]
problems = []

with open("stratus.toml", "rb") as f:
    manifest = tomllib.load(f)
built_in = sorted(c["name"] for c in manifest.get("components", []) if "command" not in c)
external = sorted(c["name"] for c in manifest.get("components", []) if "command" in c)

documents = []
for path in sorted(glob.glob("deploy/base/*.yaml")):
    if path.endswith("kustomization.yaml"):
        continue
    with open(path) as f:
        documents += [d for d in yaml.safe_load_all(f) if d]
by_kind = {}
for document in documents:
    by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
deployments = by_kind.get("Deployment", {})
if sorted(deployments) != built_in:
    problems.append(
        f"stratus.toml components {built_in} but deploy/base Deployments {sorted(deployments)}"
    )
problems += rules.problems(documents)
intentions = manifest.get("intentions", [])
problems += mesh_rules.intention_problems(
    "deploy/base",
    {name: mesh_rules.deployment_env(d) for name, d in deployments.items()},
    intentions,
)
for name, deployment in sorted(deployments.items()):
    if name not in by_kind.get("Service", {}):
        problems.append(f"Deployment {name} has no Service")
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            check = container.get(probe)
            if not check:
                problems.append(f"{name}: no {probe}")
            elif "httpGet" in check and check["httpGet"]["path"] != path:
                problems.append(f"{name}: {probe} asks {check['httpGet']['path']}, not {path}")
        if not (container.get("lifecycle") or {}).get("preStop"):
            problems.append(f"{name}: no preStop hook (the drain)")
        requests = (container.get("resources") or {}).get("requests") or {}
        if not {"cpu", "memory"} <= set(requests):
            problems.append(f"{name}: no cpu and memory requests")
        sources = [e.get("configMapRef", {}).get("name") for e in container.get("envFrom") or []]
        if "stratus-config" not in sources:
            problems.append(f"{name}: not configured from the stratus-config ConfigMap")
for kind in ["HorizontalPodAutoscaler"]:
    for name, document in by_kind.get(kind, {}).items():
        if document["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(f"{kind} {name} scales no Deployment")
if not by_kind.get("NetworkPolicy"):
    problems.append("no NetworkPolicy in deploy/base")
if "stratus-config" not in by_kind.get("ConfigMap", {}):
    problems.append("no stratus-config ConfigMap in deploy/base")

with open("compose.yaml") as f:
    compose = yaml.safe_load(f)
components = {}
for name, service in compose["services"].items():
    command = service.get("command") or []
    if len(command) == 2 and command[0] == "serve":
        components[command[1]] = (name, service)
        if service.get("image") != "stratus:latest":
            problems.append(f"compose service {name} does not run the stratus image")
        if not (service.get("healthcheck") or {}).get("test"):
            problems.append(f"compose service {name} has no healthcheck")
if sorted(components) != built_in:
    problems.append(
        f"stratus.toml components {built_in} but compose.yaml runs {sorted(components)}"
    )

# Set for the kit's sake, outside clap on purpose: a credential never becomes an argument.
NOT_IN_HELP = {"STRATUS_JOIN_TOKEN"}
env_names = subprocess.run(
    [stratus, "identity", "env"],
    capture_output=True,
    text=True,
    check=True,
    # Any valid secret: only the variable names are compared.
    env={"STRATUS_JOIN_SECRET": "c3RyYXR1cy1jaGVjay1jb25maWctb25seS0xMjM0NTY3OA=="},
).stdout
join_names = {line.split("=", 1)[0] for line in env_names.splitlines() if "=" in line}
problems += mesh_rules.compose_problems(components, join_names)
problems += mesh_rules.intention_problems(
    "compose.yaml",
    {c: (s.get("environment") or {}) for c, (_, s) in components.items()},
    intentions,
)

help_env = {}
for component, (name, service) in sorted(components.items()):
    if component not in help_env:
        text = subprocess.run(
            [stratus, "serve", component, "--help"], capture_output=True, text=True, check=True
        ).stdout
        help_env[component] = set(re.findall(r"\[env: ([A-Z0-9_]+)", text))
    for variable in service.get("environment") or {}:
        if variable not in help_env[component] and variable not in NOT_IN_HELP:
            problems.append(
                f"compose.yaml sets {variable} for {component}, which "
                f"`stratus serve {component} --help` does not list"
            )

for problem in problems:
    print(problem, file=sys.stderr)
if problems:
    sys.exit(1)
extra = f"; not built in, skipped: {' '.join(external)}" if external else ""
print(
    f"components match in stratus.toml, deploy/base and compose.yaml ({' '.join(built_in)}){extra}; "
    f"every compose env var is a known setting"
)
