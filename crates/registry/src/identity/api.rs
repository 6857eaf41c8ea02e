//! The authority's HTTP routes (see the module above for what each does).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Extension;
use serde::Deserialize;
use stratus_identity::Principal;
use stratus_kit::identity::Peer;
use stratus_kit::openapi::Api;
use stratus_kit::operator_token::OperatorToken;
use stratus_kit::{Json, Problem};

use super::{Ca, IssueError};

/// Paths a caller without a certificate may reach: the roots, and a first certificate by
/// join credential.
pub const OPEN_PATHS: [&str; 2] = ["/v1/identity/bundle", "/v1/identity/certificates"];

/// The authority's routes, recorded against the registry's OpenAPI document.
/// The state is `None` when mTLS is off: the registry then runs no authority, and says so.
pub fn routes() -> Api<Option<Arc<Ca>>> {
    Api::new(crate::api::OPENAPI, "")
        .get("/v1/identity/bundle", bundle)
        .post("/v1/identity/certificates", certificate)
        .post("/v1/identity/rotate", rotate)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A certificate request is a PEM CSR of a few hundred bytes.
const MAX_BODY: usize = 16 * 1024;

#[cfg(test)]
fn router(ca: Arc<Ca>) -> axum::Router {
    routes().with_state(Some(ca)).into_router()
}

/// The authority, or a 404 saying there is none.
fn authority(ca: Option<Arc<Ca>>) -> Result<Arc<Ca>, Problem> {
    ca.ok_or_else(|| {
        Problem::not_found("this registry runs no certificate authority: STRATUS_MTLS is off")
    })
}

async fn bundle(State(ca): State<Option<Arc<Ca>>>) -> Result<impl IntoResponse, Problem> {
    let ca = authority(ca)?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        ca.bundle_pem(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateRequest {
    /// A PKCS#10 request in PEM; without one the key is made here.
    csr: Option<String>,
    /// Only for operators: the service to certify.
    service: Option<String>,
}

/// Who is asking: the certificate on the connection, else a join credential.
fn caller(ca: &Ca, peer: Option<&Peer>, headers: &HeaderMap) -> Result<Principal, Problem> {
    if let Some(Peer(id)) = peer {
        return Ok(id.principal.clone());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Problem::unauthorized(
                "a certificate needs a client certificate or a join credential (Authorization: Bearer)",
            )
        })?;
    ca.join_service(bearer)
        .map(Principal::Service)
        .ok_or_else(|| Problem::unauthorized("the join credential is not valid"))
}

/// An operator made from an admin's access token (not a certificate) may read and administer,
/// but never mint identities or move the root of trust: a password typed on the public port
/// must not become a service's certificate. Said here, by the handlers that do those things,
/// not left to which paths happen to be open.
fn refuse_token_operator(token: Option<&Extension<OperatorToken>>) -> Result<(), Problem> {
    match token {
        Some(_) => Err(Problem::forbidden(
            "an admin's access token cannot get certificates or rotate the authority: that \
             takes an operator certificate (or, for a certificate, a join credential)",
        )),
        None => Ok(()),
    }
}

async fn certificate(
    State(ca): State<Option<Arc<Ca>>>,
    peer: Option<Extension<Peer>>,
    token: Option<Extension<OperatorToken>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<impl IntoResponse, Problem> {
    refuse_token_operator(token.as_ref())?;
    // An object, read as one: serde would also take a struct from a JSON array (`[null, null]`
    // for two optional fields), which is not what the document allows.
    let request: CertificateRequest = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|error| Problem::unprocessable(format!("the request body: {error}")))?;
    let ca = authority(ca)?;
    let caller = caller(&ca, peer.as_ref().map(|Extension(peer)| peer), &headers)?;
    let principal = match (&caller, request.service) {
        (Principal::Operator(_), Some(service)) => Principal::Service(service),
        (Principal::Operator(_), None) => caller.clone(),
        (Principal::Service(own), Some(asked)) if &asked != own => {
            return Err(Problem::forbidden(format!(
                "an instance of `{own}` cannot get a certificate for `{asked}`"
            )))
        }
        (Principal::Service(own), _) => Principal::Service(own.clone()),
    };
    let issued = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || ca.issue(principal, request.csr.as_deref())
    })
    .await
    .map_err(|_| Problem::internal("issuing failed"))?
    .map_err(|error| match error {
        IssueError::BadRequest(detail) => Problem::bad_request(detail),
        IssueError::Forbidden(detail) => Problem::forbidden(detail),
        IssueError::Internal(detail) => {
            tracing::error!(%detail, "issuing a certificate");
            Problem::internal("issuing failed")
        }
    })?;
    metrics::counter!("identity_certificates_issued_total").increment(1);
    Ok(axum::Json(issued))
}

async fn rotate(
    State(ca): State<Option<Arc<Ca>>>,
    peer: Option<Extension<Peer>>,
    token: Option<Extension<OperatorToken>>,
) -> Result<impl IntoResponse, Problem> {
    let ca = authority(ca)?;
    refuse_token_operator(token.as_ref())?;
    match peer.as_ref().map(|Extension(Peer(id))| &id.principal) {
        Some(Principal::Operator(_)) => {}
        Some(_) => {
            return Err(Problem::forbidden(
                "only an operator may rotate the authority",
            ))
        }
        None => {
            return Err(Problem::unauthorized(
                "rotating needs an operator certificate",
            ))
        }
    }
    ca.rotate().map_err(|error| {
        tracing::error!(error = %format!("{error:#}"), "rotating the authority");
        Problem::internal("rotating failed")
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        ca.bundle_pem(),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use stratus_identity::authority::pem_certificate;
    use stratus_identity::{peer, SpiffeId};
    use tower::ServiceExt;

    use super::*;
    use crate::identity::files::{self, Paths};

    struct Fixture {
        ca: Arc<Ca>,
        join: stratus_identity::JoinSecret,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::in_dir(dir.path(), "stratus.local");
        let ca = Arc::new(Ca::load(&paths, Duration::from_secs(3600)).unwrap());
        let join = files::init(&paths).unwrap().join;
        Fixture {
            ca,
            join,
            _dir: dir,
        }
    }

    async fn ask(
        ca: &Arc<Ca>,
        peer: Option<SpiffeId>,
        bearer: Option<&str>,
        body: &str,
    ) -> (StatusCode, String) {
        let mut request =
            Request::post("/v1/identity/certificates").header("content-type", "application/json");
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        let mut request = request.body(Body::from(body.to_string())).unwrap();
        if let Some(id) = peer {
            request.extensions_mut().insert(Peer(Arc::new(id)));
        }
        let response = router(ca.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn issued_id(body: &str) -> SpiffeId {
        let issued: stratus_identity::Issued = serde_json::from_str(body).unwrap();
        peer::spiffe_id(&pem_certificate(&issued.certificate).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_join_credential_gets_a_certificate_for_its_own_service_only() {
        let f = fixture();
        let catalog = f.join.credential("catalog").unwrap();
        let (status, body) = ask(&f.ca, None, Some(&catalog), "{}").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            issued_id(&body).uri(),
            "spiffe://stratus.local/service/catalog"
        );
        assert!(
            body.contains("PRIVATE KEY"),
            "no request sent: the key is made here"
        );

        let (status, body) = ask(&f.ca, None, Some(&catalog), r#"{"service":"auth"}"#).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body.contains("cannot get a certificate for `auth`"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn without_a_valid_credential_or_certificate_nothing_is_issued() {
        let f = fixture();
        let (status, _) = ask(&f.ca, None, None, "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = ask(&f.ca, None, Some("sjc1.auth.AAAA"), "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let other = stratus_identity::JoinSecret::parse(&stratus_identity::JoinSecret::generate())
            .unwrap()
            .credential("auth")
            .unwrap();
        let (status, _) = ask(&f.ca, None, Some(&other), "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A malformed request changes nothing and says what is wrong.
        let catalog = f.join.credential("catalog").unwrap();
        let (status, body) = ask(&f.ca, None, Some(&catalog), r#"{"csr":"nonsense"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = ask(&f.ca, None, Some(&catalog), r#"{"unknown":1}"#).await;
        assert!(status.is_client_error());
        // The fields as an array are not the object the document describes.
        let (status, body) = ask(&f.ca, None, Some(&catalog), "[null, null]").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }

    #[tokio::test]
    async fn an_instance_renews_with_its_certificate_and_an_operator_certifies_anyone() {
        let f = fixture();
        let catalog = SpiffeId::service("stratus.local", "catalog").unwrap();
        let (status, body) = ask(&f.ca, Some(catalog.clone()), None, "{}").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(issued_id(&body), catalog);
        let (status, _) = ask(&f.ca, Some(catalog), None, r#"{"service":"auth"}"#).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let operator = SpiffeId::operator("stratus.local", "admin").unwrap();
        let (status, body) = ask(&f.ca, Some(operator), None, r#"{"service":"auth"}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            issued_id(&body).uri(),
            "spiffe://stratus.local/service/auth"
        );
    }

    #[tokio::test]
    async fn only_an_operator_rotates_and_the_bundle_then_holds_both_roots() {
        let f = fixture();
        let rotate = |peer: Option<SpiffeId>| {
            let mut request = Request::post("/v1/identity/rotate")
                .body(Body::empty())
                .unwrap();
            if let Some(id) = peer {
                request.extensions_mut().insert(Peer(Arc::new(id)));
            }
            router(f.ca.clone()).oneshot(request)
        };
        assert_eq!(
            rotate(None).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        let catalog = SpiffeId::service("stratus.local", "catalog").unwrap();
        assert_eq!(
            rotate(Some(catalog)).await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
        let operator = SpiffeId::operator("stratus.local", "admin").unwrap();
        let response = rotate(Some(operator)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bundle = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&bundle)
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );
        // The bundle file new instances start from has both roots too.
        let file = std::fs::read_to_string(f._dir.path().join("bundle.pem")).unwrap();
        assert_eq!(file.matches("BEGIN CERTIFICATE").count(), 2);
    }

    /// An operator made from an admin's access token (the `identify` layer adds the marker)
    /// gets no certificate, for any service, and cannot rotate the authority; the same operator
    /// with a certificate can.
    #[tokio::test]
    async fn an_operator_made_from_an_access_token_mints_nothing_and_rotates_nothing() {
        let f = fixture();
        let operator = SpiffeId::operator("stratus.local", "admin").unwrap();
        let send = |path: &'static str, body: &'static str, token: bool| {
            let ca = f.ca.clone();
            let operator = operator.clone();
            async move {
                let mut request = Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap();
                request.extensions_mut().insert(Peer(Arc::new(operator)));
                if token {
                    request.extensions_mut().insert(OperatorToken {
                        subject: "admin".into(),
                        email: None,
                    });
                }
                router(ca).oneshot(request).await.unwrap().status()
            }
        };
        for service in [r#"{"service":"auth"}"#, "{}"] {
            assert_eq!(
                send("/v1/identity/certificates", service, true).await,
                StatusCode::FORBIDDEN,
                "{service}"
            );
        }
        assert_eq!(
            send("/v1/identity/rotate", "", true).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            send("/v1/identity/certificates", r#"{"service":"auth"}"#, false).await,
            StatusCode::OK
        );
    }
}
