//! What a PostgreSQL URL's `sslmode` gets from sqlx, said at start-up where it is weaker than
//! libpq's same word would make one think.
//!
//! sqlx (rustls) reads `sslmode` like libpq does, with two differences that matter:
//!
//! - `require` encrypts but never checks the server's certificate, even with `sslrootcert` (libpq
//!   then checks it as `verify-ca` does). Anyone on the path can present a certificate of their
//!   own and read the traffic, passwords included.
//! - `verify-ca` / `verify-full` trust `sslrootcert` *and* the Mozilla roots sqlx carries
//!   (webpki-roots), so a server with a publicly trusted certificate passes without it.
//!
//! `verify-full` (certificate and host name) is the mode that keeps a man in the middle out;
//! `prefer`, the default, takes TLS when the server offers it and plaintext when it does not.

/// The `sslmode` (or sqlx's `ssl-mode`) of a PostgreSQL URL, lower-cased; `None` when unset.
pub fn of(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        matches!(name, "sslmode" | "ssl-mode").then(|| value.to_ascii_lowercase())
    })
}

/// A warning for a mode that does not check who the server is, or `None`.
pub fn weakness(mode: Option<&str>) -> Option<&'static str> {
    match mode {
        Some("require") => Some(
            "sslmode=require encrypts the database connection but does not check the server's \
             certificate (sqlx ignores sslrootcert in this mode); use \
             sslmode=verify-full&sslrootcert=<CA file>",
        ),
        Some("verify-ca") => Some(
            "sslmode=verify-ca checks the server's certificate but not its host name; \
             sslmode=verify-full checks both",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mode_from_the_query() {
        assert_eq!(of("postgres://h/db"), None);
        assert_eq!(
            of("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem").as_deref(),
            Some("verify-full")
        );
        assert_eq!(
            of("postgres://h/db?application_name=x&ssl-mode=Require").as_deref(),
            Some("require")
        );
    }

    #[test]
    fn only_modes_that_do_not_check_the_server_fully_are_weak() {
        assert!(weakness(Some("require")).is_some());
        assert!(weakness(Some("verify-ca")).is_some());
        assert!(weakness(Some("verify-full")).is_none());
        assert!(weakness(None).is_none());
    }
}
