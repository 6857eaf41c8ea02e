//! `stratus.toml`: the desired state of a local system (components and their replicas; the
//! gateway reads the routes from the same file).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// The file used when there is no `stratus.toml` in the working directory.
pub const DEFAULT: &str = include_str!("../stratus.toml");

/// Components that are built into the `stratus` binary.
pub const BUILT_IN: &[&str] = &[
    "registry",
    "events",
    "gateway",
    "dns",
    "auth",
    "catalog",
    "profile",
    "orders",
    "payments",
    "notifications",
];

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub components: Vec<ComponentSpec>,
    /// The gateway reads the routes in full; `up` needs only which services they send to (a
    /// rollout waits until the gateway routes to a new instance of those).
    #[serde(default)]
    pub routes: Vec<RouteRef>,
    /// Which service may call which, besides the gateway calling what its routes name.
    #[serde(default)]
    pub intentions: Vec<Intention>,
}

/// `[[intentions]] from = "orders"  to = "catalog"`: instances of `from` may call `to`
/// (default deny between services; `from = "*"` lets every service in).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intention {
    pub from: String,
    pub to: String,
}

impl Manifest {
    /// The services that may call `service`: the gateway if a route names it, and every
    /// intention's `from` whose `to` is it (`STRATUS_ALLOWED_CALLERS`).
    pub fn allowed_callers(&self, service: &str) -> Vec<String> {
        let mut callers: Vec<String> = Vec::new();
        if self
            .routes
            .iter()
            .any(|route| route.service.as_deref() == Some(service))
        {
            callers.push("gateway".into());
        }
        for intention in self.intentions.iter().filter(|i| i.to == service) {
            if !callers.contains(&intention.from) {
                callers.push(intention.from.clone());
            }
        }
        callers
    }
}

/// The part of a `[[routes]]` entry that `up` looks at; every other field is the gateway's.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteRef {
    #[serde(default)]
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    pub name: String,
    #[serde(default = "one")]
    pub replicas: usize,
    /// A program to run instead of a built-in component; it must bind $PORT and answer /healthz.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn one() -> usize {
    1
}

/// Components that listen on a port `up` assigns (so at most one replica, restarted in place).
pub const FIXED_PORT: &[&str] = &["registry", "events", "gateway", "dns"];

/// The most replicas one component may have.
pub const MAX_REPLICAS: usize = 32;

impl ComponentSpec {
    pub fn fixed_port(&self) -> bool {
        self.command.is_none() && FIXED_PORT.contains(&self.name.as_str())
    }
}

impl Manifest {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = toml::from_str(text).context("parsing stratus.toml")?;
        let mut seen = std::collections::HashSet::new();
        for component in &manifest.components {
            if !seen.insert(component.name.as_str()) {
                anyhow::bail!("component `{}` is listed twice", component.name);
            }
            if component.replicas > MAX_REPLICAS {
                anyhow::bail!(
                    "component `{}`: at most {MAX_REPLICAS} replicas",
                    component.name
                );
            }
            if component.fixed_port() && component.replicas > 1 {
                anyhow::bail!(
                    "component `{}` listens on a fixed port: one replica only",
                    component.name
                );
            }
            let known = BUILT_IN.contains(&component.name.as_str());
            if !known && component.command.as_ref().is_none_or(|c| c.is_empty()) {
                anyhow::bail!(
                    "component `{}` is not built in ({}); give it a command",
                    component.name,
                    BUILT_IN.join(", ")
                );
            }
        }
        Ok(manifest)
    }

    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name == name)
    }

    /// Whether some route sends requests to `service`.
    pub fn routed(&self, service: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.service.as_deref() == Some(service))
    }

    pub fn load(path: &Path) -> anyhow::Result<(Self, String)> {
        let text = if path.exists() {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        } else {
            DEFAULT.to_string()
        };
        Ok((Self::parse(&text)?, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_the_gateway_for_routed_services_and_each_intention() {
        let manifest = Manifest::parse(DEFAULT).unwrap();
        assert_eq!(manifest.allowed_callers("catalog"), ["gateway", "orders"]);
        assert_eq!(manifest.allowed_callers("orders"), ["gateway"]);
        assert!(manifest.allowed_callers("nothing-routed").is_empty());
    }

    #[test]
    fn the_default_file_parses() {
        let manifest = Manifest::parse(DEFAULT).unwrap();
        let names: Vec<_> = manifest
            .components
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "registry",
                "events",
                "auth",
                "catalog",
                "orders",
                "payments",
                "notifications",
                "profile",
                "gateway",
                "dns"
            ]
        );
        assert_eq!(manifest.components[3].replicas, 2);
    }

    #[test]
    fn replicas_are_bounded_and_names_unique() {
        assert!(Manifest::parse("[[components]]\nname = \"gateway\"\nreplicas = 2").is_err());
        assert!(Manifest::parse("[[components]]\nname = \"catalog\"\nreplicas = 99").is_err());
        assert!(Manifest::parse(
            "[[components]]\nname = \"catalog\"\n[[components]]\nname = \"catalog\""
        )
        .is_err());
        let manifest = Manifest::parse(DEFAULT).unwrap();
        assert!(manifest.routed("catalog"));
        assert!(!manifest.routed("registry"));
    }

    #[test]
    fn unknown_components_need_a_command() {
        assert!(Manifest::parse("[[components]]\nname = \"mystery\"").is_err());
        assert!(Manifest::parse(
            "[[components]]\nname = \"py\"\ncommand = [\"python3\", \"app.py\"]"
        )
        .is_ok());
    }
}
