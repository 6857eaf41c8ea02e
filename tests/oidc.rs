//! A real OAuth 2.0 / OpenID Connect client library against Stratus: Python's Authlib runs the
//! client credentials flow and the authorization code + PKCE flow (`tests/oidc/flows.py`)
//! against a running system, unchanged. Needs python3 with authlib and requests: reported
//! ignored where they are missing, a failure under CI (`.ci/run` installs them).

mod support;

use serde_json::{json, Value};
use stratus_testing::{Need, Test};
use support::{FormBody, System};

/// What the flows need: python3 with these packages.
const AUTHLIB: Need = Need::Python(&["authlib", "requests"]);

async fn authlib_runs_client_credentials_and_authorization_code_with_pkce() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let create = |body: Value| {
        system
            .http
            .post(system.url("/auth/clients"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let service: Value =
        create(json!({"name": "authlib-service", "permissions": ["catalog:write"]}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let redirect_uri = "http://127.0.0.1:8765/callback";
    let app =
        create(json!({"name": "authlib-app", "kind": "public", "redirect_uris": [redirect_uri]}))
            .await
            .unwrap();
    assert_eq!(app.status(), 201);
    let app: Value = app.json().await.unwrap();
    assert!(
        app.get("client_secret").is_none(),
        "a public client has no secret"
    );
    system.customer_token("authlib@example.com").await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/flows.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .env("STRATUS_URL", system.url(""))
        .env("SERVICE_CLIENT_ID", service["client_id"].as_str().unwrap())
        .env("SERVICE_SECRET", service["client_secret"].as_str().unwrap())
        .env("APP_CLIENT_ID", app["client_id"].as_str().unwrap())
        .env("REDIRECT_URI", redirect_uri)
        .env("USER_EMAIL", "authlib@example.com")
        .env("USER_PASSWORD", "customer-password")
        .output()
        .await
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Authlib flows failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nlogs in {}",
        system.dir.path().display()
    );
    for step in [
        "client credentials grant",
        "authorization code + PKCE exchanged for tokens",
        "ID token verified",
        "a code is single-use",
        "a wrong code_verifier is refused",
        "refresh token grant",
    ] {
        assert!(stdout.contains(step), "missing step `{step}`:\n{stdout}");
    }
    assert!(stdout.contains("all flows passed"), "{stdout}");
}

/// Requests the authorization endpoint must refuse without redirecting anywhere (an unknown
/// client, an unregistered redirect URI) and those it answers on the redirect (no PKCE).
async fn the_authorization_endpoint_never_redirects_to_an_unregistered_uri() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let app: Value = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(
            &json!({"name": "app", "kind": "public", "redirect_uris": ["https://app.example/cb"]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = app["client_id"].as_str().unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let challenge = "SW3dTxOhCLudvPhY-uiJGWW-6Xn9g-DhimAnBOeKZTo";
    let get = |query: String| {
        no_redirects
            .get(system.url(&format!("/auth/authorize?{query}")))
            .send()
    };
    // Unknown client, or a redirect URI that is not registered exactly: 400, no Location.
    for query in [
        format!("response_type=code&client_id=nobody&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&code_challenge={challenge}&code_challenge_method=S256"),
        format!("response_type=code&client_id={id}&redirect_uri=https%3A%2F%2Fevil.example%2Fcb&code_challenge={challenge}&code_challenge_method=S256"),
        format!("response_type=code&client_id={id}&redirect_uri=https%3A%2F%2Fapp.example%2Fcb%2Fextra&code_challenge={challenge}&code_challenge_method=S256"),
    ] {
        let response = get(query).await.unwrap();
        assert_eq!(response.status(), 400);
        assert!(response.headers().get("location").is_none());
    }
    // A good client without PKCE (or with plain): the error goes back to the app, with state.
    for method in ["", "&code_challenge_method=plain"] {
        let response = get(format!(
            "response_type=code&client_id={id}&redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=xyz&code_challenge={challenge}{method}"
        ))
        .await
        .unwrap();
        assert_eq!(response.status(), 302);
        let location = response.headers()["location"].to_str().unwrap();
        assert!(
            location.starts_with("https://app.example/cb?error=invalid_request"),
            "{location}"
        );
        assert!(location.ends_with("&state=xyz"), "{location}");
    }
    // With a bearer token the code comes at once.
    let customer = system.customer_token("direct@example.com").await;
    let response = no_redirects
        .get(system.url(&format!("/auth/authorize?response_type=code&client_id={id}&state=s1&code_challenge={challenge}&code_challenge_method=S256")))
        .bearer_auth(&customer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://app.example/cb?code="),
        "{location}"
    );
    let code = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .unwrap();
    // The verifier matches the challenge above; another client cannot use it.
    let exchange = |client_id: &str| {
        system
            .http
            .post(system.url("/auth/token"))
            .form_body(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("client_id", client_id),
                ("redirect_uri", "https://app.example/cb"),
                (
                    "code_verifier",
                    "stratus-test-verifier-0123456789abcdefghijklmnop",
                ),
            ])
            .send()
    };
    let granted = exchange(id).await.unwrap();
    let status = granted.status();
    let tokens: Value = granted.json().await.unwrap();
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["access_token"].is_string() && tokens["refresh_token"].is_string());
    assert!(
        tokens.get("id_token").is_none(),
        "no openid scope, no ID token"
    );
    // App clients cannot use the client credentials grant, nor be created with roles.
    let with_roles = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(&json!({"name": "x", "kind": "public", "redirect_uris": ["https://a.example/cb"], "roles": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_roles.status(), 422);
    let plain_http = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(&json!({"name": "x", "kind": "public", "redirect_uris": ["http://app.example/cb"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(plain_http.status(), 422, "http only on loopback hosts");
}

fn main() -> std::process::ExitCode {
    stratus_testing::run(vec![
        Test::new(
            "authlib_runs_client_credentials_and_authorization_code_with_pkce",
            authlib_runs_client_credentials_and_authorization_code_with_pkce,
        )
        .needs(&[AUTHLIB]),
        Test::new(
            "the_authorization_endpoint_never_redirects_to_an_unregistered_uri",
            the_authorization_endpoint_never_redirects_to_an_unregistered_uri,
        ),
    ])
}
