//! A profile, what a client may send for one, and the rules it must meet.

use serde::{Deserialize, Serialize};

pub const MAX_DISPLAY_NAME: usize = 100;
pub const MAX_ADDRESS: usize = 500;
pub const MAX_PHONE: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The account (the token's `sub`).
    pub sub: String,
    pub display_name: String,
    pub address: Option<String>,
    pub phone: Option<String>,
    pub updated_at: String,
}

/// The body of `PUT /api/profile/me`: the whole profile (absent optional fields are cleared).
/// Unknown fields are refused, so a typo is an error, not a no-op.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    pub display_name: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

impl ProfileInput {
    /// The input trimmed, with empty optional fields as absent, or what is wrong with it.
    ///
    /// Lengths count the text as sent, white space included, as the OpenAPI document says.
    pub fn validate(self) -> Result<ProfileInput, String> {
        if self.display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(format!(
                "display_name must be 1 to {MAX_DISPLAY_NAME} characters"
            ));
        }
        for (field, value, max) in [
            ("address", &self.address, MAX_ADDRESS),
            ("phone", &self.phone, MAX_PHONE),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > max) {
                return Err(format!("{field} must be at most {max} characters"));
            }
        }
        let display_name = self.display_name.trim().to_string();
        let length = display_name.chars().count();
        if !(1..=MAX_DISPLAY_NAME).contains(&length) {
            return Err(format!(
                "display_name must be 1 to {MAX_DISPLAY_NAME} characters (got {length})"
            ));
        }
        if display_name.chars().any(char::is_control) {
            return Err("display_name must not contain control characters".into());
        }
        let address = non_empty(self.address);
        if let Some(address) = &address {
            if address.chars().count() > MAX_ADDRESS {
                return Err(format!("address must be at most {MAX_ADDRESS} characters"));
            }
            if address.chars().any(|c| c.is_control() && c != '\n') {
                return Err(
                    "address must not contain control characters other than newlines".into(),
                );
            }
        }
        let phone = non_empty(self.phone);
        if let Some(phone) = &phone {
            let digits = phone.chars().filter(char::is_ascii_digit).count();
            let allowed = phone
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'));
            if !allowed || digits < 3 || phone.chars().count() > MAX_PHONE {
                return Err(format!(
                    "phone must be digits (at least 3) with optional + - ( ) . and spaces, at most {MAX_PHONE} characters"
                ));
            }
        }
        Ok(ProfileInput {
            display_name,
            address,
            phone,
        })
    }
}

fn non_empty(field: Option<String>) -> Option<String> {
    field
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str) -> ProfileInput {
        ProfileInput {
            display_name: name.into(),
            address: None,
            phone: None,
        }
    }

    #[test]
    fn display_names_are_one_to_a_hundred_characters() {
        assert!(input("").validate().is_err());
        assert!(input("   ").validate().is_err());
        assert!(input("A").validate().is_ok());
        assert!(input(&"é".repeat(100)).validate().is_ok());
        assert!(input(&"é".repeat(101)).validate().is_err());
        assert!(input("bell\u{7}").validate().is_err());
        assert_eq!(input("  Ann  ").validate().unwrap().display_name, "Ann");
    }

    #[test]
    fn phones_and_addresses() {
        let with = |phone: &str| ProfileInput {
            phone: Some(phone.into()),
            ..input("Ann")
        };
        assert!(with("+44 20 7946-0958").validate().is_ok());
        assert!(with("12").validate().is_err());
        assert!(with("call me").validate().is_err());
        assert!(with(&"1".repeat(33)).validate().is_err());
        assert_eq!(with("  ").validate().unwrap().phone, None);
        let long = ProfileInput {
            address: Some("x".repeat(501)),
            ..input("Ann")
        };
        assert!(long.validate().is_err());
        let padded = ProfileInput {
            phone: Some(format!("{}123", " ".repeat(30))),
            ..input("Ann")
        };
        assert!(padded.validate().is_err(), "33 characters as sent");
        assert!(input(&format!("Ann{}", " ".repeat(98))).validate().is_err());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let parse = |s: &str| serde_json::from_str::<ProfileInput>(s);
        assert!(parse(r#"{"display_name":"a","email":"x@y"}"#).is_err());
        assert!(parse(r#"{"display_name":5}"#).is_err());
        assert!(parse(r#"{"address":"x"}"#).is_err());
        assert!(parse(r#"{"display_name":"a","phone":null}"#).is_ok());
    }
}
