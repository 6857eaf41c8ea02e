//! For `bench/mtls.sh` only: an instance as a Stratus service is one, answering `/small`
//! (13 bytes) and `/big` (16 KiB), also under `/close/`, so the gateway's mutual TLS is measured against the server
//! side the mesh really has (kit's listener: tokio-rustls, client certificates required; axum
//! and hyper) as well as against nginx's OpenSSL.
//!
//! `PORT` is the port; `BENCH_INSTANCE_TLS_DIR`, when set, names a folder with `cert.pem`,
//! `key.pem` and `bundle.pem` (`stratus identity issue --out <folder>`), and the listener is
//! then mutual TLS only; unset, plaintext. `BENCH_INSTANCE_CLOSE=1` answers every request with
//! `Connection: close`, so each request through it is a new connection. `BENCH_INSTANCE_WORKERS`
//! (default 1, as the benchmark's nginx) is the runtime's worker threads.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use stratus_identity::{Credentials, Mode};

const SMALL: &str = "hello, world\n";

fn main() -> anyhow::Result<()> {
    stratus_kit::install_crypto_provider();
    let workers = std::env::var("BENCH_INSTANCE_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set")?
        .parse()
        .context("PORT is not a port")?;
    let close = std::env::var("BENCH_INSTANCE_CLOSE").is_ok_and(|v| v == "1");
    let big: Arc<[u8]> = vec![b'x'; 16 * 1024].into();
    let answer = move |body: axum::body::Bytes| {
        let connection = if close { "close" } else { "keep-alive" };
        ([(header::CONNECTION, connection)], body).into_response()
    };
    let small =
        get(move || async move { answer(axum::body::Bytes::from_static(SMALL.as_bytes())) });
    let big = get(move || async move { answer(axum::body::Bytes::copy_from_slice(&big)) });
    let app = Router::new()
        .route("/small", small.clone())
        .route("/close/small", small)
        .route("/big", big.clone())
        .route("/close/big", big);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let trust_domain =
        std::env::var("STRATUS_TRUST_DOMAIN").unwrap_or_else(|_| "stratus.local".to_string());
    let (mode, tls) = match std::env::var_os("BENCH_INSTANCE_TLS_DIR") {
        Some(dir) => {
            let credentials = credentials(Path::new(&dir), &trust_domain)?;
            (
                Mode::Required,
                Some(Arc::new(credentials.server_config(Mode::Required))),
            )
        }
        None => (Mode::Off, None),
    };
    let incoming = stratus_kit::listener::incoming(listener, mode, tls, &trust_domain)?;
    axum::serve(incoming, app).await?;
    Ok(())
}

fn credentials(dir: &Path, trust_domain: &str) -> anyhow::Result<Arc<Credentials>> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let credentials = Credentials::new(trust_domain, &read("bundle.pem")?)?;
    credentials.set_certificate(&read("cert.pem")?, &read("key.pem")?, None)?;
    Ok(credentials)
}
