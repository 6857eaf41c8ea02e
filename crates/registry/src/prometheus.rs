//! `GET /v1/prometheus/targets`: the instances that serve metrics, in Prometheus's HTTP service
//! discovery format (`http_sd_configs`).
//!
//! A replica's port is chosen when it starts, so no static scrape configuration can name it; the
//! registry already knows every live instance, so Prometheus asks it, as the gateway does. An
//! instance is a target when its registration's metadata says where its metrics are
//! (`metrics_path`, and `metrics_port` when they are not on the registered port: the gateway's
//! are on its admin port). Every kit service and the gateway say so; a component that serves no
//! `/metrics` (the Python example) says nothing and is not listed, so it never shows as a target
//! that is down.

use std::collections::BTreeMap;

use serde::Serialize;
use stratus_kit::model::{Catalog, Instance, METRICS_PATH, METRICS_PORT};

/// One target group: Prometheus scrapes each of `targets` with `labels` attached.
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<&'static str, String>,
}

/// One group per instance that names its metrics path, in the catalog's order.
///
/// Labels: `component` (the service name) and `version`; `__metrics_path__` tells Prometheus
/// where to scrape. The service is `component`, not `service`, because the gateway's own
/// series carry a `service` label (the upstream) that a target label of that name would push
/// aside into `exported_service`.
pub fn targets(catalog: &Catalog) -> Vec<TargetGroup> {
    catalog
        .services
        .values()
        .flatten()
        .filter_map(target)
        .collect()
}

fn target(instance: &Instance) -> Option<TargetGroup> {
    let path = instance.metadata.get(METRICS_PATH)?;
    if !path.starts_with('/') {
        return None;
    }
    let port = match instance.metadata.get(METRICS_PORT) {
        Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0)?,
        None => instance.port,
    };
    let address = Instance {
        port,
        ..instance.clone()
    }
    .authority();
    let labels = BTreeMap::from([
        ("__metrics_path__", path.clone()),
        ("component", instance.service.clone()),
        ("version", instance.version.clone()),
    ]);
    Some(TargetGroup {
        targets: vec![address],
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_kit::model::Health;

    fn instance(service: &str, port: u16, metadata: &[(&str, &str)]) -> Instance {
        Instance {
            id: format!("{service}-{port}"),
            service: service.into(),
            address: "10.0.0.7".into(),
            port,
            version: "1.2".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            health: Health::Passing,
            ttl_seconds: 3.0,
            registered_at: String::new(),
        }
    }

    #[test]
    fn an_instance_is_a_target_where_it_says_its_metrics_are() {
        let mut catalog = Catalog::default();
        catalog.services.insert(
            "catalog".into(),
            vec![instance("catalog", 4100, &[(METRICS_PATH, "/metrics")])],
        );
        catalog.services.insert(
            "gateway".into(),
            vec![instance(
                "gateway",
                8080,
                &[(METRICS_PATH, "/metrics"), (METRICS_PORT, "8081")],
            )],
        );
        // Says nothing about metrics, or nonsense: not scraped.
        catalog.services.insert(
            "hello".into(),
            vec![
                instance("hello", 5000, &[("language", "python")]),
                instance("hello", 5001, &[(METRICS_PATH, "metrics")]),
                instance("hello", 5002, &[(METRICS_PATH, "/m"), (METRICS_PORT, "x")]),
            ],
        );
        let groups = targets(&catalog);
        let json = serde_json::to_value(&groups).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["10.0.0.7:4100"], "labels": {
                    "__metrics_path__": "/metrics", "component": "catalog", "version": "1.2"}},
                {"targets": ["10.0.0.7:8081"], "labels": {
                    "__metrics_path__": "/metrics", "component": "gateway", "version": "1.2"}},
            ])
        );
    }

    #[test]
    fn an_ipv6_address_is_bracketed() {
        let mut one = instance("catalog", 4100, &[(METRICS_PATH, "/metrics")]);
        one.address = "fd00::7".into();
        assert_eq!(target(&one).unwrap().targets, ["[fd00::7]:4100"]);
    }
}
