//! The registry's documents, shared by the registry, the gateway and every client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// An active health check: `{"http": "/healthz"}` (a GET that must answer 2xx) or
/// `{"tcp": true}` (a TCP connection that must open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    Http(String),
    Tcp(bool),
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

    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority())
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
}
