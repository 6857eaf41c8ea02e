//! The gateway as curl sees it: HTTP/2 with prior knowledge (h2c) on the plain port, and HTTPS
//! with a generated development certificate, HTTP/2 by ALPN or HTTP/1.1. A client that is not
//! ours checks what our own clients cannot: that the gateway speaks the protocols as others do.

mod support;

use std::process::Command;

use serde_json::json;
use stratus_testing::{Need, Test};
use support::{backend, System};

fn write(path: &std::path::Path, text: &str) {
    // Write then rename, as editors and config tools do, so the gateway never reads half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn http2_prior_knowledge_with_curl() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"echo\"\nauth = \"none\"\n",
    );
    let system = runtime.block_on(async {
        let system = System::start_edge(Some(&routes)).await;
        system
            .register(
                "echo",
                "echo-1",
                backend::start_echo("echo").await,
                json!({}),
            )
            .await;
        system.wait_gateway_sees("echo", 1).await;
        system
    });
    let output = Command::new(Need::Curl.path())
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "-",
            "-w",
            "\n%{http_version}",
        ])
        .arg(system.url("/over/h2?x=1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(text, "/over/h2?x=1\n2", "curl said: {text}");
    drop(system);
}

fn https_with_a_generated_development_certificate() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    write(
        &routes,
        "[[routes]]\nprefix = \"/\"\nservice = \"proto\"\nauth = \"none\"\n",
    );
    let tls_port = support::free_port();
    let tls_port_text = tls_port.to_string();
    let system = runtime.block_on(async {
        let system = System::start_edge_with(
            Some(&routes),
            &[
                ("STRATUS_TLS_DEV", "true"),
                ("STRATUS_TLS_PORT", tls_port_text.as_str()),
            ],
        )
        .await;
        system
            .register(
                "proto",
                "p1",
                backend::start_header_echo("proto", "x-forwarded-proto").await,
                json!({}),
            )
            .await;
        system.wait_gateway_sees("proto", 1).await;
        system
    });
    let cert = system.dir.path().join("tls").join("dev-cert.pem");
    assert!(
        cert.exists(),
        "the development certificate is kept for clients to trust"
    );
    let curl = |extra: &[&str]| {
        let output = Command::new(Need::Curl.path())
            .args(["-s", "--cacert"])
            .arg(&cert)
            .args(["--resolve", &format!("api.stratus:{tls_port}:127.0.0.1")])
            .args(["-w", " %{http_version}"])
            .args(extra)
            .arg(format!("https://api.stratus:{tls_port}/whoami"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    // Verified against the generated certificate, HTTP/2 by ALPN; the instance hears https.
    assert_eq!(curl(&["--http2"]), "https 2");
    assert_eq!(curl(&["--http1.1"]), "https 1.1");
    // Plain HTTP keeps working on its own port.
    let plain = runtime.block_on(async {
        system
            .http
            .get(system.url("/whoami"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert_eq!(plain, "http");
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::sync(
            "http2_prior_knowledge_with_curl",
            http2_prior_knowledge_with_curl,
        )
        .needs(&[Need::Curl]),
        Test::sync(
            "https_with_a_generated_development_certificate",
            https_with_a_generated_development_certificate,
        )
        .needs(&[Need::Curl]),
    ])
}
