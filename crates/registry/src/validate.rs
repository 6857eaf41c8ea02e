//! What a registration must look like. Anything else is a 4xx that changes nothing.

use stratus_identity::spiffe::printable;
use stratus_kit::model::Registration;

pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY: usize = 128;
pub const MAX_METADATA_VALUE: usize = 1024;

/// Service names are DNS labels, so they can be looked up as `<name>.service.stratus`; the same
/// rule as a SPIFFE ID's name (one rule, in stratus-identity).
pub fn service_name(name: &str) -> Result<(), String> {
    stratus_identity::spiffe::check_name(name).map_err(|error| format!("service {error}"))
}

pub fn instance_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "instance id `{}` must be 1-128 letters, digits, '-', '_' or '.'",
            printable(id)
        ))
    }
}

pub fn registration(registration: &Registration) -> Result<(), String> {
    let address = &registration.address;
    if address.is_empty() || address.len() > 253 {
        return Err("address must be a host name or IP address of 1-253 characters".into());
    }
    if !address
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
    {
        return Err(format!(
            "address `{}` is not a host name or IP address",
            printable(address)
        ));
    }
    if registration.port == 0 {
        return Err("port must be between 1 and 65535".into());
    }
    if let Some(ttl) = registration.ttl_seconds {
        if !(0.1..=3600.0).contains(&ttl) {
            return Err("ttl_seconds must be between 0.1 and 3600".into());
        }
    }
    crate::checks::CheckSpec::from_registration(registration)?;
    if let Some(version) = &registration.version {
        if version.is_empty() || version.len() > 64 {
            return Err("version must be 1-64 characters".into());
        }
    }
    if registration.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(format!(
            "metadata may have at most {MAX_METADATA_ENTRIES} entries"
        ));
    }
    for (key, value) in &registration.metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY {
            return Err(format!(
                "metadata keys must be 1-{MAX_METADATA_KEY} characters"
            ));
        }
        if value.len() > MAX_METADATA_VALUE {
            return Err(format!(
                "metadata value of `{}` is over {MAX_METADATA_VALUE} bytes",
                printable(key)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(service_name("catalog").is_ok());
        assert!(service_name("order-v2").is_ok());
        for bad in [
            "",
            "Catalog",
            "my service",
            "-x",
            "x-",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registrations() {
        let good = Registration {
            address: "127.0.0.1".into(),
            port: 8080,
            version: None,
            metadata: Default::default(),
            ttl_seconds: Some(3.0),
            check: None,
            interval: None,
            timeout: None,
        };
        assert!(registration(&good).is_ok());
        assert!(registration(&Registration {
            port: 0,
            ..good.clone()
        })
        .is_err());
        assert!(registration(&Registration {
            address: "a b".into(),
            ..good.clone()
        })
        .is_err());
        assert!(registration(&Registration {
            ttl_seconds: Some(0.0),
            ..good.clone()
        })
        .is_err());
        assert!(registration(&Registration {
            check: Some(stratus_kit::model::Check::Http("/healthz".into())),
            interval: Some("1ms".into()),
            ..good.clone()
        })
        .is_err());
        let mut big = good.clone();
        big.metadata.insert("blob".into(), "x".repeat(2000));
        assert!(registration(&big).is_err());
    }
}
