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
    full_handshake(client, server).map(|(id, _)| id)
}

/// Runs a handshake to its end; the client's identity and certificate as the server saw them.
fn full_handshake(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<(Option<SpiffeId>, Option<Vec<u8>>), String> {
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
            let seen = server
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref().to_vec());
            return Ok((peer_id(server.peer_certificates(), TD), seen));
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
    let seen = handshake(
        catalog.client_config(Expect::Service("registry".into())),
        registry.server_config(Mode::Required),
    )
    .unwrap();
    assert_eq!(seen, Some(SpiffeId::service(TD, "catalog").unwrap()));
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
    let (_, seen) = full_handshake(client.clone(), server.clone()).unwrap();
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
    .1
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
