//! The registry's documents, shared by the registry, the gateway and every client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Registration metadata: the path of the instance's Prometheus metrics (`/metrics` for every
/// kit service and the gateway). The registry's `GET /v1/prometheus/targets` lists exactly the
/// instances that name one.
pub const METRICS_PATH: &str = "metrics_path";
/// Registration metadata: the port of the instance's metrics when it is not the registered one
/// (the gateway registers its client port; its metrics are on the admin port).
pub const METRICS_PORT: &str = "metrics_port";

/// The body of `PUT /v1/services/{name}/instances/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Lease length: without a heartbeat for this long the instance is dropped.
    #[serde(default)]
    pub ttl_seconds: Option<f64>,
    /// An active health check the registry runs against the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// How often the check runs, as a duration like `500ms` (default 500ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long one probe may take before it counts as failed, like `300ms` (default 300ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// An active health check: `{"http": "/healthz"}` (a GET that must answer 2xx),
/// `{"tcp": true}` (a TCP connection that must open) or `{"grpc": ""}` (gRPC's standard health
/// service over h2c must answer SERVING; the string names the service, "" the whole server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Http(String),
    Tcp(bool),
    Grpc(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    pub version: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub health: Health,
    pub ttl_seconds: f64,
    pub registered_at: String,
}

impl Instance {
    /// `host:port`, with IPv6 addresses bracketed.
    pub fn authority(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// `http://host:port`, or `https://` when the mesh is on.
    pub fn base_url(&self) -> String {
        format!("{}://{}", crate::mesh::current().scheme(), self.authority())
    }
}

/// `GET /v1/services/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInstances {
    pub index: u64,
    pub name: String,
    pub instances: Vec<Instance>,
}

/// `GET /v1/services`: every service and its instances, at one registry index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub index: u64,
    pub services: BTreeMap<String, Vec<Instance>>,
    /// The registry started recently and instances are still re-registering with it: the view
    /// may be missing live instances. Watchers keep what they knew until this turns false
    /// (see [`Catalog::merged_with`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warming: bool,
    /// Which run of the registry this view comes from (a new id each time a memory registry
    /// starts; empty for etcd, whose view survives restarts). A watcher merges a warming view
    /// only into one from an earlier run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
}

impl Catalog {
    /// The view a watcher should adopt when this catalog arrives after `previous`.
    ///
    /// A settled catalog is the truth and is taken as it is. A warming one from a restarted
    /// memory registry may lack instances that are alive but have not heartbeated since the
    /// restart, so when `previous` came from an earlier run of the registry it is merged:
    /// everything it lists, plus every instance of `previous` it does not list (by id). The
    /// merged view keeps the earlier run's epoch, so the next warming answers merge too;
    /// instances that really left disappear when warming ends. A watcher that knew nothing
    /// before, or whose view is from this same run, takes the catalog as it is (so removals
    /// during a first start's warm-up are seen at once).
    pub fn merged_with(&self, previous: &Catalog) -> Catalog {
        if !self.warming || previous.epoch.is_empty() || previous.epoch == self.epoch {
            return self.clone();
        }
        let mut merged = self.clone();
        merged.epoch = previous.epoch.clone();
        for (service, old) in &previous.services {
            let instances = merged.services.entry(service.clone()).or_default();
            for instance in old {
                if !instances.iter().any(|i| i.id == instance.id) {
                    instances.push(instance.clone());
                }
            }
        }
        merged
    }
}

/// What happened to one service's instances at one index, as the registry's incremental watch
/// (`/v1/watch?deltas=true`) sends it: the instances added or changed (whole, as a watcher now
/// lists them) and the ids no longer listed (deregistered, expired, or critical).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceChange {
    pub index: u64,
    pub service: String,
    #[serde(default)]
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub removed: Vec<String>,
}

impl ServiceChange {
    pub fn new(index: u64, service: &str) -> Self {
        Self {
            index,
            service: service.to_string(),
            ..Self::default()
        }
    }

    /// Records that `instance` is now `listed` (added or changed) or not (removed), replacing
    /// anything said of the same id earlier in this change.
    pub fn set(&mut self, instance: &Instance, listed: bool) {
        if listed {
            self.removed.retain(|id| *id != instance.id);
            self.instances.retain(|i| i.id != instance.id);
            self.instances.push(instance.clone());
        } else {
            self.remove(&instance.id);
        }
    }

    /// Records that `id` is no longer listed.
    pub fn remove(&mut self, id: &str) {
        self.instances.retain(|i| i.id != id);
        self.removed.retain(|known| known != id);
        self.removed.push(id.to_string());
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.removed.is_empty()
    }

    /// Applies this change to `catalog` (a snapshot with the changes before this one applied):
    /// the result is the registry's view at this change's index. A service left with no
    /// instance is dropped, as the registry's answers leave it out.
    pub fn apply_to(&self, catalog: &mut Catalog) {
        let instances = catalog.services.entry(self.service.clone()).or_default();
        instances.retain(|i| !self.removed.contains(&i.id));
        for changed in &self.instances {
            match instances.iter_mut().find(|i| i.id == changed.id) {
                Some(kept) => *kept = changed.clone(),
                None => instances.push(changed.clone()),
            }
        }
        if instances.is_empty() {
            catalog.services.remove(&self.service);
        }
        catalog.index = catalog.index.max(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(service: &str, id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 1,
            version: "1".into(),
            metadata: BTreeMap::new(),
            health: Health::Passing,
            ttl_seconds: 3.0,
            registered_at: String::new(),
        }
    }

    fn catalog(warming: bool, epoch: &str, instances: &[(&str, &str)]) -> Catalog {
        let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for (service, id) in instances {
            services
                .entry(service.to_string())
                .or_default()
                .push(instance(service, id));
        }
        Catalog {
            index: 1,
            services,
            warming,
            epoch: epoch.into(),
        }
    }

    fn ids(catalog: &Catalog, service: &str) -> Vec<String> {
        let mut ids: Vec<String> = catalog.services[service]
            .iter()
            .map(|i| i.id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_warming_view_keeps_what_it_does_not_list_yet() {
        let before = catalog(false, "old", &[("a", "1"), ("a", "2"), ("b", "3")]);
        let warming = catalog(true, "new", &[("a", "2"), ("a", "4")]);
        let merged = warming.merged_with(&before);
        assert_eq!(ids(&merged, "a"), ["1", "2", "4"]);
        assert_eq!(ids(&merged, "b"), ["3"]);
        // The next warming answer still merges (the kept instances are from the old run).
        let later = catalog(true, "new", &[("a", "1")]);
        assert_eq!(ids(&later.merged_with(&merged), "a"), ["1", "2", "4"]);
        // Once settled, the registry's view is the truth.
        let settled = catalog(false, "new", &[("a", "4")]);
        let view = settled.merged_with(&merged);
        assert_eq!(ids(&view, "a"), ["4"]);
        assert!(!view.services.contains_key("b"));
    }

    #[test]
    fn a_first_view_or_one_from_the_same_run_is_not_merged() {
        let warming = catalog(true, "new", &[("a", "2")]);
        assert_eq!(warming.merged_with(&Catalog::default()), warming);
        let same_run = catalog(true, "new", &[("a", "1"), ("a", "2")]);
        assert_eq!(ids(&warming.merged_with(&same_run), "a"), ["2"]);
    }

    #[test]
    fn warming_is_left_out_of_the_json_when_false() {
        let json = serde_json::to_value(catalog(false, "", &[])).unwrap();
        assert!(json.get("warming").is_none());
        assert!(json.get("epoch").is_none());
        let json = serde_json::to_value(catalog(true, "x", &[])).unwrap();
        assert_eq!(json["warming"], true);
        let back: Catalog = serde_json::from_str(r#"{"index":3,"services":{}}"#).unwrap();
        assert!(!back.warming);
    }

    #[test]
    fn a_change_applied_gives_the_view_at_its_index() {
        let mut view = catalog(false, "", &[("a", "1"), ("a", "2"), ("b", "1")]);
        let mut change = ServiceChange::new(9, "a");
        let mut moved = instance("a", "2");
        moved.port = 2;
        change.set(&moved, true);
        change.set(&instance("a", "3"), true);
        change.remove("1");
        change.apply_to(&mut view);
        let ports: Vec<(String, u16)> = view.services["a"]
            .iter()
            .map(|i| (i.id.clone(), i.port))
            .collect();
        assert_eq!(ports, [("2".into(), 2), ("3".into(), 1)]);
        assert_eq!(view.index, 9);
        let mut gone = ServiceChange::new(10, "b");
        gone.set(&instance("b", "1"), false);
        gone.apply_to(&mut view);
        assert!(
            !view.services.contains_key("b"),
            "an empty service is left out"
        );
    }
}
