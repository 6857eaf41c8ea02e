//! Real TLS 1.3 handshakes (in memory) between configurations built from `Credentials`: who gets
//! in under each mode, what a client accepts as its server, and that renewal and CA rotation
//! take effect without new configurations.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use stratus_identity::tls::peer_id;
use stratus_identity::{Authority, Credentials, Expect, Mode, SpiffeId};
use time::OffsetDateTime;

const TD: &str = "stratus.local";
const HOUR: Duration = Duration::from_secs(3600);

/// Credentials for `service`, certified by `authority` as of `now`, trusting `authority`.
fn workload(authority: &Authority, service: &str, now: OffsetDateTime) -> Arc<Credentials> {
    let credentials = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    certify(&credentials, authority, service, now);
    credentials
}

fn certify(credentials: &Credentials, authority: &Authority, service: &str, now: OffsetDateTime) {
    let id = SpiffeId::service(TD, service).unwrap();
    let issued = authority.issue_with_key(&id, HOUR, now).unwrap();
    credentials
        .set_certificate(
            &issued.certificate,
            issued.private_key.as_deref().unwrap(),
            Some(&id),
        )
        .unwrap();
}

/// Runs a handshake to its end; the server's view of the client on success.
fn handshake(client: ClientConfig, server: ServerConfig) -> Result<Option<SpiffeId>, String> {
    full_handshake(client, server).map(|seen| seen.id)
}

/// What the server saw of a finished handshake.
struct Seen {
    /// The client's identity.
    id: Option<SpiffeId>,
    /// The client's leaf certificate, as DER.
    leaf: Option<Vec<u8>>,
    /// The cipher suite the two agreed on.
    suite: rustls::CipherSuite,
}

/// Runs a handshake to its end.
fn full_handshake(client: ClientConfig, server: ServerConfig) -> Result<Seen, String> {
    let mut client =
        ClientConnection::new(Arc::new(client), ServerName::try_from("peer").unwrap()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..10 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        server.read_tls(&mut bytes.as_slice()).unwrap();
        server
            .process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        client.read_tls(&mut bytes.as_slice()).unwrap();
        client
            .process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            // Never a resumption: every connection is checked against what is held now.
            assert_eq!(server.handshake_kind(), Some(rustls::HandshakeKind::Full));
            let leaf = server
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref().to_vec());
            let suite = server
                .negotiated_cipher_suite()
                .ok_or("no cipher suite after the handshake")?
                .suite();
            return Ok(Seen {
                id: peer_id(server.peer_certificates(), TD),
                leaf,
                suite,
            });
        }
    }
    Err("the handshake did not finish".into())
}

#[test]
fn both_ends_prove_who_they_are() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create(TD, now).unwrap();
    let registry = workload(&authority, "registry", now);
    let catalog = workload(&authority, "catalog", now);
    let seen = full_handshake(
        catalog.client_config(Expect::Service("registry".into())),
        registry.server_config(Mode::Required),
    )
    .unwrap();
    assert_eq!(seen.id, Some(SpiffeId::service(TD, "catalog").unwrap()));
    // The mesh's own ends agree on its first cipher (tls::mesh_provider).
    assert_eq!(seen.suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    // A client expecting auth does not accept catalog's certificate as its server.
    let error = handshake(
        registry.client_config(Expect::Service("auth".into())),
        catalog.server_config(Mode::Required),
    )
    .unwrap_err();
    assert!(error.contains("expected"), "{error}");
    handshake(
        registry.client_config(Expect::AnyService),
        catalog.server_config(Mode::Required),
    )
    .unwrap();
}

#[test]
fn the_mesh_agrees_on_aes_128_gcm_whatever_the_client_lists_first() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create(TD, now).unwrap();
    let registry = workload(&authority, "registry", now);
    // A client of another make listing AES-256-GCM first (ring's and OpenSSL's own order): the
    // mesh's server picks by its own order.
    let provider = rustls::crypto::ring::default_provider();
    assert_eq!(
        provider.cipher_suites[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let theirs = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    let seen = full_handshake(theirs, registry.server_config(Mode::Optional)).unwrap();
    assert_eq!(seen.suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}

/// A client that takes any server: the test above looks at the cipher, not at who answers.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[test]
fn a_client_without_a_certificate_gets_in_only_when_optional() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create(TD, now).unwrap();
    let registry = workload(&authority, "registry", now);
    let nobody = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    let client = || nobody.client_config(Expect::Service("registry".into()));
    assert!(handshake(client(), registry.server_config(Mode::Required)).is_err());
    assert_eq!(
        handshake(client(), registry.server_config(Mode::Optional)).unwrap(),
        None
    );
}

#[test]
fn certificates_of_another_authority_or_expired_ones_are_refused() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create(TD, now).unwrap();
    let registry = workload(&authority, "registry", now);
    // A certificate from another authority, even for the same trust domain and name.
    let rogue_ca = Authority::create(TD, now).unwrap();
    let rogue = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    certify(&rogue, &rogue_ca, "auth", now);
    let error = handshake(
        rogue.client_config(Expect::Service("registry".into())),
        registry.server_config(Mode::Required),
    )
    .unwrap_err();
    assert!(error.starts_with("server:"), "{error}");
    // An expired one: issued two hours ago for one hour.
    let stale = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    certify(&stale, &authority, "catalog", now - 2 * HOUR);
    assert!(handshake(
        stale.client_config(Expect::Service("registry".into())),
        registry.server_config(Mode::Required),
    )
    .is_err());
    // And as a server, the same: the client refuses it.
    assert!(handshake(
        registry.client_config(Expect::Service("catalog".into())),
        stale.server_config(Mode::Required),
    )
    .unwrap_err()
    .starts_with("client:"));
}

#[test]
fn renewal_and_rotation_take_effect_in_the_same_configurations() {
    let now = OffsetDateTime::now_utc();
    let mut authority = Authority::create(TD, now).unwrap();
    let registry = workload(&authority, "registry", now);
    let catalog = workload(&authority, "catalog", now);
    let server = registry.server_config(Mode::Required);
    let client = catalog.client_config(Expect::Service("registry".into()));
    handshake(client.clone(), server.clone()).unwrap();

    // Rotation: the new root joins both bundles first, then catalog renews under it.
    authority.rotate(now, Duration::ZERO, 2 * HOUR).unwrap();
    registry.set_bundle(&authority.bundle_pem()).unwrap();
    catalog.set_bundle(&authority.bundle_pem()).unwrap();
    certify(&catalog, &authority, "catalog", now);
    let seen = full_handshake(client.clone(), server.clone()).unwrap().leaf;
    let renewed = catalog_leaf(&catalog, &authority);
    assert_eq!(
        seen.as_deref(),
        Some(renewed.as_slice()),
        "the renewed certificate is shown"
    );
    // The registry still holds a certificate from the old root: still trusted in the overlap.
    handshake(
        registry.client_config(Expect::Service("catalog".into())),
        catalog.server_config(Mode::Required),
    )
    .unwrap();

    // After the overlap the old root is gone: the registry's old certificate no longer works,
    // and its renewal does.
    authority.prune(now + 3 * HOUR);
    catalog.set_bundle(&authority.bundle_pem()).unwrap();
    assert!(handshake(
        registry.client_config(Expect::Service("catalog".into())),
        catalog.server_config(Mode::Required),
    )
    .is_err());
    certify(&registry, &authority, "registry", now);
    registry.set_bundle(&authority.bundle_pem()).unwrap();
    handshake(client, server).unwrap();
}

#[test]
fn a_certificate_for_another_identity_is_not_put_in() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create(TD, now).unwrap();
    let credentials = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    let auth = SpiffeId::service(TD, "auth").unwrap();
    let issued = authority
        .issue_with_key(&SpiffeId::service(TD, "catalog").unwrap(), HOUR, now)
        .unwrap();
    assert!(credentials
        .set_certificate(
            &issued.certificate,
            issued.private_key.as_deref().unwrap(),
            Some(&auth)
        )
        .is_err());
    assert!(credentials.id().is_none());
    assert!("maybe".parse::<Mode>().is_err());
    assert_eq!("required".parse::<Mode>().unwrap(), Mode::Required);
}

/// The leaf `credentials` present now, as DER, found by a handshake with a fresh server.
fn catalog_leaf(credentials: &Arc<Credentials>, authority: &Authority) -> Vec<u8> {
    let probe = workload(authority, "registry", OffsetDateTime::now_utc());
    full_handshake(
        credentials.client_config(Expect::Service("registry".into())),
        probe.server_config(Mode::Required),
    )
    .unwrap()
    .leaf
    .unwrap()
}

#[test]
fn an_expired_certificate_is_not_offered() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create(TD, now).unwrap();
    let registry = workload(&authority, "registry", now);
    let stale = Credentials::new(TD, &authority.bundle_pem()).unwrap();
    certify(&stale, &authority, "catalog", now - 2 * HOUR);
    // Where a client certificate is optional, the client gets in as nobody (and can then show a
    // join credential) instead of failing every handshake with a certificate it cannot renew.
    let seen = handshake(
        stale.client_config(Expect::Service("registry".into())),
        registry.server_config(Mode::Optional),
    )
    .unwrap();
    assert_eq!(seen, None);
}
