"""Rules every set of Kubernetes objects Stratus ships must keep: deploy/base as written, and
each overlay as `kubectl kustomize` renders it (an overlay can add replicas or Services, or
change a Deployment's environment). The mesh's rules are mesh_rules.py's.

Usage: rules.py <rendered.yaml>...   (check_config.py imports it for deploy/base)
"""

import sys

import yaml

import mesh_rules

# Only these ports may be on a Service that reaches outside the cluster: an admin or control
# API there would let anyone move traffic.
PUBLIC_PORTS = {"http", "https"}


def problems(documents):
    found = []
    by_kind = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    budgets = {
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
        for d in by_kind.get("PodDisruptionBudget", {}).values()
    }
    for name, deployment in sorted(by_kind.get("Deployment", {}).items()):
        labels = tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items()))
        if deployment["spec"].get("replicas", 1) >= 2 and labels not in budgets:
            found.append(f"Deployment {name} has replicas but no PodDisruptionBudget")
    for name, service in sorted(by_kind.get("Service", {}).items()):
        if service["spec"].get("type", "ClusterIP") in ("LoadBalancer", "NodePort"):
            for port in service["spec"].get("ports") or []:
                if port.get("name") not in PUBLIC_PORTS:
                    found.append(
                        f"Service {name} publishes port {port.get('name') or port.get('port')} "
                        f"outside the cluster (only {', '.join(sorted(PUBLIC_PORTS))} may be)"
                    )
    # Every Stratus Deployment: mutual TLS required, its own join Secret, HTTPS probes.
    found += mesh_rules.kubernetes_problems(documents)
    return found


if __name__ == "__main__":
    failed = False
    for path in sys.argv[1:]:
        with open(path) as f:
            documents = [d for d in yaml.safe_load_all(f) if d]
        for problem in problems(documents):
            print(f"{path}: {problem}", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)
