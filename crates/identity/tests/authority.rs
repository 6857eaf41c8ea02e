//! The authority against rustls's own certificate checks: what it issues verifies against its
//! bundle, names exactly the identity asked for, survives rotation for the overlap, and nothing
//! else verifies.

use std::time::Duration;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use stratus_identity::authority::pem_certificate;
use stratus_identity::{peer, Authority, Sealer, SpiffeId};
use time::OffsetDateTime;

const HOUR: Duration = Duration::from_secs(3600);

fn roots(authority: &Authority) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in authority.bundle() {
        roots.add(cert).unwrap();
    }
    roots
}

fn verify(
    cert: &CertificateDer<'_>,
    roots: &RootCertStore,
    at: OffsetDateTime,
) -> Result<(), rustls::Error> {
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let parsed = ParsedCertificate::try_from(cert)?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
    verify_server_cert_signed_by_trust_anchor(&parsed, roots, &[], at, algorithms.all)
}

#[test]
fn an_issued_certificate_verifies_and_names_its_service() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create("stratus.local", now).unwrap();
    let id = SpiffeId::service("stratus.local", "catalog").unwrap();
    let issued = authority.issue_with_key(&id, HOUR, now).unwrap();
    assert!(issued.private_key.is_some());
    let cert = pem_certificate(&issued.certificate).unwrap();
    verify(&cert, &roots(&authority), now).unwrap();
    assert_eq!(peer::spiffe_id_in(&cert, "stratus.local").unwrap(), id);
    assert_eq!(
        peer::spiffe_id_in(&cert, "other.local"),
        Err(peer::PeerError::OtherDomain("stratus.local".into()))
    );
    // Lifetime as asked; the trust bundle comes with it.
    assert!((issued.not_after - (now.unix_timestamp() + 3600)).abs() <= 1);
    assert_eq!(issued.trust_bundle, authority.bundle_pem());
}

#[test]
fn a_signing_request_gets_only_the_identity_it_was_authorised_for() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create("stratus.local", now).unwrap();
    // The request asks for `auth`; the caller was authorised as `catalog`.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["auth".to_string()]).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://stratus.local/service/auth".try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap();
    let id = SpiffeId::service("stratus.local", "catalog").unwrap();
    let issued = authority.sign_request(csr.der(), &id, HOUR, now).unwrap();
    assert!(issued.private_key.is_none());
    let cert = pem_certificate(&issued.certificate).unwrap();
    assert_eq!(peer::spiffe_id(&cert).unwrap(), id);
    verify(&cert, &roots(&authority), now).unwrap();
    // A request whose signature does not verify is refused.
    let mut broken = csr.der().to_vec();
    let last = broken.len() - 1;
    broken[last] ^= 0x55;
    assert!(authority.sign_request(&broken, &id, HOUR, now).is_err());
    assert!(authority
        .sign_request(b"not a request", &id, HOUR, now)
        .is_err());
}

#[test]
fn expired_and_foreign_certificates_do_not_verify() {
    let now = OffsetDateTime::now_utc();
    let authority = Authority::create("stratus.local", now).unwrap();
    let id = SpiffeId::service("stratus.local", "orders").unwrap();
    let issued = authority.issue_with_key(&id, HOUR, now).unwrap();
    let cert = pem_certificate(&issued.certificate).unwrap();
    assert!(
        verify(&cert, &roots(&authority), now + 2 * HOUR).is_err(),
        "expired"
    );
    let other = Authority::create("stratus.local", now).unwrap();
    assert!(
        verify(&cert, &roots(&other), now).is_err(),
        "another authority"
    );
}

#[test]
fn rotation_keeps_old_certificates_valid_for_the_overlap_then_drops_the_old_root() {
    let now = OffsetDateTime::now_utc();
    let mut authority = Authority::create("stratus.local", now).unwrap();
    let id = SpiffeId::service("stratus.local", "payments").unwrap();
    let before = pem_certificate(
        &authority
            .issue_with_key(&id, HOUR, now)
            .unwrap()
            .certificate,
    )
    .unwrap();
    authority.rotate(now, Duration::ZERO, 2 * HOUR).unwrap();
    let after = pem_certificate(
        &authority
            .issue_with_key(&id, HOUR, now)
            .unwrap()
            .certificate,
    )
    .unwrap();
    let bundle = roots(&authority);
    assert_eq!(authority.bundle().len(), 2);
    verify(&before, &bundle, now).unwrap();
    verify(&after, &bundle, now).unwrap();
    // The old root alone does not vouch for the new certificate: the new root signed it.
    let mut old_only = RootCertStore::empty();
    old_only.add(authority.bundle()[1].clone()).unwrap();
    assert!(verify(&after, &old_only, now).is_err());
    assert!(!authority.prune(now + HOUR));
    assert!(authority.prune(now + 3 * HOUR));
    assert_eq!(authority.bundle().len(), 1);
    verify(&after, &roots(&authority), now).unwrap();
}

#[test]
fn the_stored_form_hides_the_keys_and_reads_back() {
    let now = OffsetDateTime::now_utc();
    let mut authority = Authority::create("stratus.local", now).unwrap();
    authority.rotate(now, Duration::ZERO, HOUR).unwrap();
    let k1 = Sealer::generate_key_line("k1");
    let sealer = Sealer::parse(&k1).unwrap();
    let stored = authority.to_stored(&sealer);
    assert!(!stored.contains("PRIVATE KEY"));
    let read = Authority::from_stored(&stored, &sealer).unwrap();
    assert_eq!(read.bundle_pem(), authority.bundle_pem());
    // The read authority still signs with the newest root (checked against that root alone).
    let id = SpiffeId::service("stratus.local", "auth").unwrap();
    let cert = pem_certificate(&read.issue_with_key(&id, HOUR, now).unwrap().certificate).unwrap();
    let mut newest = RootCertStore::empty();
    newest.add(authority.bundle()[0].clone()).unwrap();
    verify(&cert, &newest, now).unwrap();
    // And only for its own trust domain.
    let foreign = SpiffeId::service("other.local", "auth").unwrap();
    assert!(read.issue_with_key(&foreign, HOUR, now).is_err());

    // Another seal key cannot open it; a rotated seal key can, and reports it stale.
    let other = Sealer::parse(&Sealer::generate_key_line("k2")).unwrap();
    assert!(Authority::from_stored(&stored, &other).is_err());
    let rotated = Sealer::parse(&format!("{}\n{k1}", Sealer::generate_key_line("k3"))).unwrap();
    assert!(!Authority::stored_is_current(&stored, &rotated));
    assert_eq!(
        Authority::from_stored(&stored, &rotated)
            .unwrap()
            .bundle_pem(),
        authority.bundle_pem()
    );
}

#[test]
fn a_rotated_in_root_is_trusted_before_it_signs() {
    let now = OffsetDateTime::now_utc();
    let mut authority = Authority::create("stratus.local", now).unwrap();
    authority
        .rotate(now, Duration::from_secs(60), HOUR)
        .unwrap();
    let id = SpiffeId::service("stratus.local", "auth").unwrap();
    // During propagation the old root still signs: a peer with only the old bundle checks it.
    let during = pem_certificate(
        &authority
            .issue_with_key(&id, HOUR, now)
            .unwrap()
            .certificate,
    )
    .unwrap();
    let mut old_only = RootCertStore::empty();
    old_only.add(authority.bundle()[1].clone()).unwrap();
    verify(&during, &old_only, now).unwrap();
    // Afterwards the new one signs.
    let later = now + Duration::from_secs(61);
    let after = pem_certificate(
        &authority
            .issue_with_key(&id, HOUR, later)
            .unwrap()
            .certificate,
    )
    .unwrap();
    assert!(verify(&after, &old_only, later).is_err());
    verify(&after, &roots(&authority), later).unwrap();
    // The old root leaves propagate + overlap after the rotation.
    assert!(!authority.prune(now + HOUR));
    assert!(authority.prune(now + HOUR + Duration::from_secs(61)));
}
