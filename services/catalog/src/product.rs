//! A product, what a client may send for one, and the rules it must meet.

use serde::{Deserialize, Serialize};

pub const MAX_NAME: usize = 200;
pub const MAX_DESCRIPTION: usize = 4000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub stock: i64,
    /// Times the product was read by id, as of the last write-back flush.
    #[serde(default)]
    pub views: i64,
}

/// The body of `POST` and `PUT`. Unknown fields are refused, so a typo is an error, not a no-op.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub price_cents: i64,
    pub stock: i64,
}

impl ProductInput {
    pub fn validate(&self) -> Result<(), String> {
        // Lengths count the text as sent, as the OpenAPI document says.
        if self.name.chars().count() > MAX_NAME {
            return Err(format!("name must be at most {MAX_NAME} characters"));
        }
        let name = self.name.trim();
        if name.is_empty() {
            return Err("name must not be empty".into());
        }
        if name.chars().count() > MAX_NAME {
            return Err(format!("name must be at most {MAX_NAME} characters"));
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return Err(format!(
                "description must be at most {MAX_DESCRIPTION} characters"
            ));
        }
        if self.price_cents < 0 {
            return Err("price_cents must be an integer of at least 0".into());
        }
        if self.stock < 0 {
            return Err("stock must be an integer of at least 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ProductInput {
        ProductInput {
            name: "Tea".into(),
            description: String::new(),
            price_cents: 450,
            stock: 3,
        }
    }

    #[test]
    fn rules() {
        assert!(input().validate().is_ok());
        assert!(ProductInput {
            name: "  ".into(),
            ..input()
        }
        .validate()
        .is_err());
        assert!(ProductInput {
            price_cents: -1,
            ..input()
        }
        .validate()
        .is_err());
        assert!(ProductInput {
            stock: -5,
            ..input()
        }
        .validate()
        .is_err());
        assert!(ProductInput {
            name: format!("x{}", " ".repeat(200)),
            ..input()
        }
        .validate()
        .is_err());
        assert!(ProductInput {
            name: "x".repeat(201),
            ..input()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let parse = |s: &str| serde_json::from_str::<ProductInput>(s);
        assert!(parse(r#"{"name":"a","price_cents":1,"stock":1,"colour":"red"}"#).is_err());
        assert!(parse(r#"{"name":"a","price_cents":1.5,"stock":1}"#).is_err());
        assert!(parse(r#"{"name":"a","price_cents":"1","stock":1}"#).is_err());
        assert!(parse(r#"{"name":"a","stock":1}"#).is_err());
    }
}
