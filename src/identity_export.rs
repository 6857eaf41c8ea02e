//! What a system run by something else than `stratus up` needs to join the mesh, written out:
//! one join credential per service as `.env` lines (compose), or the authority's files, the
//! trust bundle and the credentials as Kubernetes objects.
//!
//! `up` hands each child its credential itself; compose and Kubernetes start the processes,
//! so the credentials must exist before they do. Each credential is bound to one service (an
//! HMAC of its name under the join secret), so each container or pod gets only its own.

use anyhow::Context;
use serde_json::{json, Value};
use stratus_identity::JoinSecret;
use stratus_registry::identity::files::Material;

/// The services that join with a credential: every built-in component but the registry, which
/// holds the authority and certifies itself.
fn default_services() -> Vec<String> {
    crate::manifest::BUILT_IN
        .iter()
        .filter(|name| **name != "registry")
        .map(|name| name.to_string())
        .collect()
}

fn or_default(services: &[String]) -> Vec<String> {
    if services.is_empty() {
        default_services()
    } else {
        services.to_vec()
    }
}

/// The variable compose.yaml reads a service's credential from: `STRATUS_JOIN_<SERVICE>`.
pub fn env_name(service: &str) -> String {
    format!(
        "STRATUS_JOIN_{}",
        service.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// `STRATUS_JOIN_<SERVICE>=<credential>` per service, one a line.
pub fn env_lines(join: &JoinSecret, services: &[String]) -> anyhow::Result<String> {
    let mut out = String::new();
    for service in or_default(services) {
        let credential = join
            .credential(&service)
            .with_context(|| format!("a join credential for `{service}`"))?;
        out.push_str(&format!("{}={credential}\n", env_name(&service)));
    }
    Ok(out)
}

/// The objects, as a YAML stream (each document is JSON, which is YAML): the Secret
/// `stratus-authority` (ca.json, sealed, and join.secret: the registry's files), the ConfigMap
/// `stratus-trust-bundle` (bundle.pem) and a Secret `stratus-join-<service>` (key `token`) per
/// service.
pub fn kubernetes(material: &Material, services: &[String]) -> anyhow::Result<String> {
    let mut objects = vec![
        secret(
            "stratus-authority",
            json!({"ca.json": material.authority, "join.secret": material.join_text}),
        ),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata("stratus-trust-bundle"),
            "data": {"bundle.pem": material.bundle},
        }),
    ];
    for service in or_default(services) {
        let credential = material
            .join
            .credential(&service)
            .with_context(|| format!("a join credential for `{service}`"))?;
        objects.push(secret(
            &format!("stratus-join-{service}"),
            json!({ "token": credential }),
        ));
    }
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&object)?);
        out.push('\n');
    }
    Ok(out)
}

fn metadata(name: &str) -> Value {
    json!({"name": name, "labels": {"app.kubernetes.io/part-of": "stratus"}})
}

fn secret(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(name),
        "type": "Opaque",
        "stringData": data,
    })
}

#[cfg(test)]
mod tests {
    use stratus_registry::identity::files::{self, Paths};

    use super::*;

    #[test]
    fn every_service_but_the_registry_gets_its_own_credential() {
        let join = JoinSecret::parse(&JoinSecret::generate()).unwrap();
        let lines = env_lines(&join, &[]).unwrap();
        let names: Vec<&str> = lines
            .lines()
            .map(|line| line.split_once('=').unwrap().0)
            .collect();
        assert!(names.contains(&"STRATUS_JOIN_CATALOG"));
        assert!(names.contains(&"STRATUS_JOIN_GATEWAY"));
        assert!(!names.contains(&"STRATUS_JOIN_REGISTRY"));
        assert_eq!(names.len(), crate::manifest::BUILT_IN.len() - 1);
        for line in lines.lines() {
            let (name, credential) = line.split_once('=').unwrap();
            let service = join.verify(credential).unwrap();
            assert_eq!(env_name(&service), name);
        }
        assert_eq!(env_name("my-service"), "STRATUS_JOIN_MY_SERVICE");
        assert!(env_lines(&join, &["Not A Name".into()]).is_err());
    }

    #[test]
    fn the_kubernetes_objects_carry_the_authority_bundle_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let material = files::init(&Paths::in_dir(dir.path(), "stratus.local")).unwrap();
        let text = kubernetes(&material, &["catalog".into(), "auth".into()]).unwrap();
        let objects: Vec<Value> = text
            .split("---\n")
            .filter(|part| !part.trim().is_empty())
            .map(|part| serde_json::from_str(part).unwrap())
            .collect();
        let find = |name: &str| {
            objects
                .iter()
                .find(|o| o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let authority = find("stratus-authority");
        assert_eq!(authority["kind"], "Secret");
        assert_eq!(authority["stringData"]["ca.json"], material.authority);
        assert_eq!(authority["stringData"]["join.secret"], material.join_text);
        assert_eq!(
            find("stratus-trust-bundle")["data"]["bundle.pem"],
            material.bundle
        );
        let token = find("stratus-join-catalog")["stringData"]["token"]
            .as_str()
            .unwrap();
        assert_eq!(material.join.verify(token).unwrap(), "catalog");
        assert_eq!(objects.len(), 4);
    }
}
