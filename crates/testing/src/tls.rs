//! A certificate authority of a test's own, for backing servers that speak TLS.
//!
//! A server started with TLS gets a certificate for `127.0.0.1` and `localhost` issued by a fresh
//! CA, so the client can verify it exactly as it would verify a production server: the CA's
//! certificate is a file the test hands to the client (`sslrootcert=`, `SSL_CERT_FILE`), and a
//! client that trusts some other CA is refused at the handshake. Every CA is new, so two of them
//! never trust each other's certificates: [`TestCa::new`] twice is "the wrong CA".

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The names every server certificate carries: what tests connect to.
const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A CA: its certificate (PEM) and what it needs to sign more.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A server's certificate and private key, both PEM.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where a server's TLS files were written.
pub struct TlsFiles {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key (mode 0600).
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA, trusted by nothing but the tests that are handed its certificate.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::default();
        // A name of its own: a client that trusts another test CA finds no issuer for this
        // one's certificates (UnknownIssuer), as with a real stranger's CA, rather than a
        // namesake whose signature does not match.
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Stratus test CA {}", unique()));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("the CA's certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA's certificate to `path` and returns it.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.cert_pem).expect("writing the CA's certificate");
        path.to_path_buf()
    }

    /// A server certificate for `127.0.0.1` and `localhost`, signed by this CA.
    pub fn issue_server(&self) -> ServerCert {
        let key = KeyPair::generate().expect("a server key");
        let mut params =
            CertificateParams::new(SERVER_NAMES.map(String::from)).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the server's certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Issues a server certificate and writes it, its key and this CA's certificate into `dir`
    /// (`ca.crt`, `server.crt`, `server.key`).
    pub fn write_server_files(&self, dir: &Path) -> TlsFiles {
        let server = self.issue_server();
        let files = TlsFiles {
            ca: self.write_cert(&dir.join("ca.crt")),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.cert, &server.cert_pem).expect("writing the server's certificate");
        write_private(&files.key, &server.key_pem);
        files
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A number no other CA of this machine's tests has had: the process and a count within it.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes a private key readable by its owner alone (PostgreSQL refuses a key others can read).
fn write_private(path: &Path, pem: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("creating the key file");
    file.write_all(pem.as_bytes())
        .expect("writing the key file");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_a_server_certificate_and_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = TestCa::new().write_server_files(dir.path());
        let ca = std::fs::read_to_string(&files.ca).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
        assert!(std::fs::read_to_string(&files.cert)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Two CAs are two different certificates: one never vouches for the other's servers.
        assert_ne!(TestCa::new().cert_pem(), TestCa::new().cert_pem());
    }
}
