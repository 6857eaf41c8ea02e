"""The mesh's rules for what Stratus ships to run it (README "Zero trust inside"): every
internal hop mutual TLS, each service with its own join credential and nobody else's, the
authority's files with the registry alone, and stratus.toml's intentions kept.

rules.py runs kubernetes_problems on deploy/base and on every rendered overlay; check_config.py
runs compose_problems on compose.yaml and intention_problems on both.
"""

# Where Kubernetes objects keep what `stratus identity kubernetes` makes.
AUTHORITY_SECRET = "stratus-authority"
BUNDLE_CONFIGMAP = "stratus-trust-bundle"


def join_secret(service):
    return f"stratus-join-{service}"


def join_variable(service):
    """The .env variable compose reads a service's credential from (`stratus identity env`)."""
    return "STRATUS_JOIN_" + service.upper().replace("-", "_").replace(".", "_")


def stratus_component(container):
    """The component a container runs (`serve <component>` of the stratus image), or None."""
    args = container.get("args") or []
    image = container.get("image", "")
    if len(args) == 2 and args[0] == "serve" and image.split(":")[0].endswith("stratus"):
        return args[1]
    return None


def deployment_env(deployment):
    """name -> value (or the valueFrom object) of the Deployment's first container."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def kubernetes_problems(documents):
    found = []
    deployments = [d for d in documents if d.get("kind") == "Deployment"]
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for container in pod["containers"]:
            component = stratus_component(container)
            if component is None:
                continue
            where = f"Deployment {name}"
            env = {e["name"]: e for e in container.get("env") or []}
            if (env.get("STRATUS_MTLS") or {}).get("value") != "required":
                found.append(f"{where} does not set STRATUS_MTLS=required")
            mounted = {
                m["name"]: m for m in container.get("volumeMounts") or [] if m["name"] in volumes
            }
            sources = {
                n: volumes[n].get("configMap", {}).get("name")
                or volumes[n].get("secret", {}).get("secretName")
                for n in mounted
            }
            if BUNDLE_CONFIGMAP not in sources.values() and component != "registry":
                found.append(f"{where} does not mount the {BUNDLE_CONFIGMAP} ConfigMap")
            if AUTHORITY_SECRET in sources.values() and component != "registry":
                found.append(f"{where} mounts {AUTHORITY_SECRET}: only the registry may")
            token = (env.get("STRATUS_JOIN_TOKEN") or {}).get("valueFrom", {}).get("secretKeyRef")
            if component == "registry":
                if AUTHORITY_SECRET not in sources.values():
                    found.append(f"{where} does not mount the {AUTHORITY_SECRET} Secret")
                if token:
                    found.append(f"{where} takes a join credential: the registry certifies itself")
            elif not token or token.get("name") != join_secret(component):
                found.append(
                    f"{where} does not take STRATUS_JOIN_TOKEN from its own Secret "
                    f"{join_secret(component)}"
                )
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                get = (container.get(probe) or {}).get("httpGet")
                if get and get.get("scheme") != "HTTPS":
                    found.append(f"{where}: {probe} is not HTTPS (the port speaks only TLS)")
    return found


def compose_problems(components, join_names):
    """`components`: component -> (compose service name, service) for the stratus image."""
    found = []
    for component, (name, service) in sorted(components.items()):
        env = service.get("environment") or {}
        volumes = [str(v) for v in service.get("volumes") or []]
        where = f"compose service {name}"
        if env.get("STRATUS_MTLS") != "required":
            found.append(f"{where} does not set STRATUS_MTLS: required")
        if not env.get("STRATUS_TRUST_BUNDLE", "").startswith("/trust/"):
            found.append(f"{where}: STRATUS_TRUST_BUNDLE is not in the trust volume")
        if any(v.startswith("authority:") for v in volumes) != (component == "registry"):
            found.append(f"{where}: only the registry mounts the authority volume")
        expected_trust = "trust:/trust" if component == "registry" else "trust:/trust:ro"
        if expected_trust not in volumes:
            found.append(f"{where} does not mount {expected_trust}")
        token = str(env.get("STRATUS_JOIN_TOKEN", ""))
        if component == "registry":
            for variable in ("STRATUS_JOIN_SECRET", "STRATUS_SEAL_KEY"):
                if not str(env.get(variable, "")).startswith(f"${{{variable}:?"):
                    found.append(f"{where} does not take {variable} from .env (required)")
            if token:
                found.append(f"{where} takes a join credential: the registry certifies itself")
            continue
        variable = join_variable(component)
        if not token.startswith(f"${{{variable}:?"):
            found.append(f"{where}: STRATUS_JOIN_TOKEN is not ${{{variable}:?...}}")
        if variable not in join_names:
            found.append(f"{where}: `stratus identity env` makes no {variable}")
    return found


def intention_problems(where, envs, intentions):
    """Each intention's caller is in the callee's STRATUS_ALLOWED_CALLERS (default: gateway)."""
    found = []
    for intention in intentions:
        callee, caller = intention["to"], intention["from"]
        if callee not in envs:
            continue
        allowed = envs[callee].get("STRATUS_ALLOWED_CALLERS") or "gateway"
        names = {n.strip() for n in str(allowed).split(",")}
        if caller not in names and "*" not in names:
            found.append(
                f"{where}: {callee}'s STRATUS_ALLOWED_CALLERS ({allowed}) leaves out {caller}, "
                f"which stratus.toml's [[intentions]] let call it"
            )
    return found
