//! TLS termination: the gateway speaks HTTPS to clients (HTTP/2 or HTTP/1.1, chosen by ALPN), as
//! a load balancer at the edge does. (To the instances behind it, it speaks plain HTTP, or mutual
//! TLS with its workload certificate: `upstream_tls.rs`.)
//!
//! Certificates come from PEM files (`STRATUS_TLS_CERT`, `STRATUS_TLS_KEY`), or, for development,
//! from a self-signed certificate for `localhost`, `127.0.0.1` and `api.stratus` that the gateway
//! generates once into `<data dir>/tls/` (`STRATUS_TLS_DEV=true`), so clients can trust that
//! file. rustls with the ring provider, like everything else in Stratus.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The development certificate's file names under `<data dir>/tls/`.
pub const DEV_CERT: &str = "dev-cert.pem";
pub const DEV_KEY: &str = "dev-key.pem";

pub enum Source {
    Files { cert: PathBuf, key: PathBuf },
    Development { data_dir: PathBuf },
}

pub fn server_config(source: &Source) -> anyhow::Result<Arc<ServerConfig>> {
    let (cert, key) = match source {
        Source::Files { cert, key } => (cert.clone(), key.clone()),
        Source::Development { data_dir } => development_certificate(data_dir)?,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("reading certificates from {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The development certificate, generated on first use and kept so clients can trust it.
fn development_certificate(data_dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join(DEV_CERT), dir.join(DEV_KEY));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "api.stratus".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating a development certificate")?;
    std::fs::write(&cert, generated.cert.pem())?;
    write_private(&key, &generated.signing_key.serialize_pem())?;
    tracing::info!(cert = %cert.display(), "generated a development TLS certificate");
    Ok((cert, key))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())?;
    Ok(())
}
