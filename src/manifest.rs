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
}

#[derive(Debug, Clone, Deserialize)]
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

impl Manifest {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = toml::from_str(text).context("parsing stratus.toml")?;
        for component in &manifest.components {
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
    fn unknown_components_need_a_command() {
        assert!(Manifest::parse("[[components]]\nname = \"mystery\"").is_err());
        assert!(Manifest::parse(
            "[[components]]\nname = \"py\"\ncommand = [\"python3\", \"app.py\"]"
        )
        .is_ok());
    }
}
