"""Prepares what promtool checks, and checks what promtool cannot (run by check.sh).

Usage: check.py <scratch dir>. Writes into it:
- kubernetes.yml: deploy/prometheus/kubernetes.yml with each pod discovery replaced by a static
  target, because Debian's promtool is built without Kubernetes discovery and refuses the field;
  everything else (relabelling regexes, actions, labels) is then checked by `promtool check
  config` as written. The discovery blocks themselves are checked here.
- dashboard.rules.yml: every query of deploy/grafana/stratus.json as a recording rule, with
  Grafana's interval variables replaced by a duration, for `promtool check rules` to parse.
And checks here that every Deployment of deploy/base but dns carries the prometheus.io
annotations the scrape configuration reads, with a port the pod has.
"""

import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
scratch = pathlib.Path(sys.argv[1])
problems = []

# Kubernetes scrape configuration: pod discovery in the stratus namespace, made static.
config = yaml.safe_load((ROOT / "deploy/prometheus/kubernetes.yml").read_text())
for job in config["scrape_configs"]:
    discovery = job.pop("kubernetes_sd_configs", None)
    if not discovery:
        problems.append(f"job {job['job_name']}: no kubernetes_sd_configs")
        continue
    for block in discovery:
        if set(block) - {"role", "namespaces"} or block.get("role") != "pod":
            problems.append(f"job {job['job_name']}: expected role pod: {block}")
        if block.get("namespaces", {}).get("names") != ["stratus"]:
            problems.append(f"job {job['job_name']}: expected the stratus namespace: {block}")
    job["static_configs"] = [{"targets": ["pod.stratus:8080"]}]
(scratch / "kubernetes.yml").write_text(yaml.safe_dump(config))

# The annotations on deploy/base's pods.
for path in sorted((ROOT / "deploy/base").glob("*.yaml")):
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "Deployment":
            continue
        name = document["metadata"]["name"]
        template = document["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        ports = {
            str(port["containerPort"])
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        if name == "dns":
            if "prometheus.io/scrape" in annotations:
                problems.append(f"{path.name}: dns serves no /metrics but is annotated for scraping")
            continue
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append(f'{path.name}: no prometheus.io/scrape: "true"')
        if annotations.get("prometheus.io/port") not in ports:
            problems.append(f"{path.name}: prometheus.io/port is not one of its ports {sorted(ports)}")
        if annotations.get("prometheus.io/path") != "/metrics":
            problems.append(f"{path.name}: prometheus.io/path is not /metrics")

# The dashboard's queries as recording rules.
def expressions(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "expr" and isinstance(item, str):
                yield item
            else:
                yield from expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from expressions(item)

dashboard = json.loads((ROOT / "deploy/grafana/stratus.json").read_text())
rules = []
for number, expr in enumerate(expressions(dashboard)):
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, "5m")
    rules.append({"record": f"dashboard:query_{number}", "expr": expr})
if not rules:
    problems.append("deploy/grafana/stratus.json has no queries")
(scratch / "dashboard.rules.yml").write_text(
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
)

for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
