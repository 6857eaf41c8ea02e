//! The listener under each `STRATUS_MTLS` mode, over real loopback sockets: who gets in, what a
//! handler learns of its peer, and that a silent client holds up no one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use stratus_identity::{Authority, Credentials, Expect, Mode, SpiffeId};
use stratus_kit::listener::{incoming, Remote};
use time::OffsetDateTime;

const TD: &str = "stratus.local";

fn certified(authority: &Authority, service: Option<&str>) -> Arc<Credentials> {
    let credentials = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    if let Some(service) = service {
        let id = SpiffeId::service(TD, service).unwrap();
        let issued = authority
            .issue_with_key(&id, Duration::from_secs(3600), OffsetDateTime::now_utc())
            .unwrap();
        credentials
            .set_certificate(
                &issued.certificate,
                issued.private_key.as_deref().unwrap(),
                None,
            )
            .unwrap();
    }
    credentials
}

async fn who(ConnectInfo(remote): ConnectInfo<Remote>) -> String {
    remote
        .peer
        .map(|peer| peer.uri())
        .unwrap_or_else(|| "nobody".into())
}

/// Serves `who` on a free port under `mode`; returns its address.
async fn serve(mode: Mode, server: &Arc<Credentials>, tls_mode: Mode) -> SocketAddr {
    stratus_kit::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = Arc::new(server.server_config(tls_mode));
    let incoming = incoming(listener, mode, Some(config), TD).unwrap();
    let app = Router::new().route("/", get(who));
    tokio::spawn(async move {
        axum::serve(
            incoming,
            app.into_make_service_with_connect_info::<Remote>(),
        )
        .await
        .unwrap();
    });
    address
}

fn tls_client(credentials: &Arc<Credentials>) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(credentials.client_config(Expect::Service("registry".into())))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn ask(client: &reqwest::Client, url: String) -> Result<String, reqwest::Error> {
    client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

#[tokio::test]
async fn required_takes_tls_only_and_names_the_peer() {
    let authority = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let registry = certified(&authority, Some("registry"));
    let address = serve(Mode::Required, &registry, Mode::Required).await;
    let catalog = certified(&authority, Some("catalog"));
    let answer = ask(&tls_client(&catalog), format!("https://{address}/"))
        .await
        .unwrap();
    assert_eq!(answer, "spiffe://stratus.local/service/catalog");
    // Plaintext: refused (the bytes fail the TLS handshake and the connection is closed).
    let plain = reqwest::Client::new();
    assert!(ask(&plain, format!("http://{address}/")).await.is_err());
    // TLS without a certificate, against a server that requires one: refused.
    let nobody = certified(&authority, None);
    assert!(ask(&tls_client(&nobody), format!("https://{address}/"))
        .await
        .is_err());
    // A certificate of another authority: refused.
    let rogue = certified(
        &Authority::create(TD, OffsetDateTime::now_utc()).unwrap(),
        Some("auth"),
    );
    let rogue_client = reqwest::Client::builder()
        .tls_backend_preconfigured(rogue.client_config(Expect::AnyService))
        .build()
        .unwrap();
    assert!(ask(&rogue_client, format!("https://{address}/"))
        .await
        .is_err());
}

#[tokio::test]
async fn optional_lets_plaintext_in_as_nobody() {
    let authority = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let registry = certified(&authority, Some("registry"));
    let address = serve(Mode::Optional, &registry, Mode::Optional).await;
    let plain = reqwest::Client::new();
    assert_eq!(
        ask(&plain, format!("http://{address}/")).await.unwrap(),
        "nobody"
    );
    let orders = certified(&authority, Some("orders"));
    assert_eq!(
        ask(&tls_client(&orders), format!("https://{address}/"))
            .await
            .unwrap(),
        "spiffe://stratus.local/service/orders"
    );
    let nobody = certified(&authority, None);
    assert_eq!(
        ask(&tls_client(&nobody), format!("https://{address}/"))
            .await
            .unwrap(),
        "nobody"
    );
}

#[tokio::test]
async fn a_silent_client_holds_up_no_one() {
    let authority = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let registry = certified(&authority, Some("registry"));
    let address = serve(Mode::Required, &registry, Mode::Required).await;
    // Connections that never send a byte, as many as a slow attacker likes.
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let catalog = certified(&authority, Some("catalog"));
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        ask(&tls_client(&catalog), format!("https://{address}/")),
    )
    .await
    .expect("answered while others were silent")
    .unwrap();
    assert_eq!(answer, "spiffe://stratus.local/service/catalog");
}

#[tokio::test]
async fn idle_sockets_from_one_host_cannot_fill_every_handshake_slot() {
    let authority = Authority::create(TD, OffsetDateTime::now_utc()).unwrap();
    let registry = certified(&authority, Some("registry"));
    let address = serve(Mode::Required, &registry, Mode::Required).await;
    // More silent connections than there are handshake slots, all from 127.0.0.2.
    let mut silent = Vec::new();
    for _ in 0..(stratus_kit::listener::MAX_HANDSHAKES + 50) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(address).await.unwrap());
    }
    // A client from another address still gets in at once.
    let catalog = certified(&authority, Some("catalog"));
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        ask(&tls_client(&catalog), format!("https://{address}/")),
    )
    .await
    .expect("answered while one host held idle sockets")
    .unwrap();
    assert_eq!(answer, "spiffe://stratus.local/service/catalog");
    // And a silent socket is closed after the first-byte timeout.
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1];
    let closed = tokio::time::timeout(
        stratus_kit::listener::FIRST_BYTE_TIMEOUT + Duration::from_secs(2),
        silent[0].read(&mut buffer),
    )
    .await
    .expect("a silent socket was kept open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
