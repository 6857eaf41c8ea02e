//! The security suite: attacks on tokens, refresh tokens and the second factor, each made end to
//! end against real processes through the gateway, each of which must be refused.
//!
//! Forged tokens that need the genuine signing key (expired, wrong audience, wrong issuer) are
//! signed with the key read from the auth service's own database and opened with the seal key of
//! its data dir, as an insider with a copy of both would: they prove the claim checks, not just
//! the signature check, run at the edge.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use stratus_token::{now_unix, Claims, SigningKey};
use support::{FormBody, System};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn admin_claims(exp: u64) -> Claims {
    Claims {
        iss: "stratus".into(),
        aud: "stratus-api".into(),
        sub: "forged-admin".into(),
        exp,
        iat: now_unix(),
        jti: "forged".into(),
        email: None,
        roles: vec!["admin".into()],
        permissions: vec![],
    }
}

/// POST a product (admin only) with `token`; the status the gateway answers.
async fn create_product(system: &System, token: &str) -> u16 {
    system
        .http
        .post(system.url("/api/catalog/products"))
        .bearer_auth(token)
        .json(&json!({"name": "Forged", "price_cents": 1, "stock": 1}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn forged_and_misused_access_tokens_are_refused_at_the_gateway() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    // The control: a genuine admin token passes.
    assert_eq!(create_product(&system, &admin).await, 201);

    let real_kid = header_of(&admin)["kid"].as_str().unwrap().to_string();
    let payload = admin.split('.').nth(1).unwrap();
    let now = now_unix();
    let forged_payload = b64(&serde_json::to_vec(&admin_claims(now + 600)).unwrap());

    // alg: none, with and without a signature part.
    let none = b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{real_kid}"}}"#).as_bytes());
    for token in [
        format!("{none}.{forged_payload}."),
        format!("{none}.{payload}."),
    ] {
        assert_eq!(create_product(&system, &token).await, 401, "alg none");
    }

    // HS256 with the public key as the HMAC secret (the classic algorithm confusion), keyed
    // both by the raw key bytes and by the JWK as published.
    let jwks: Value = system
        .http
        .get(system.url("/auth/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == real_kid.as_str())
        .unwrap()
        .clone();
    let public = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let hs256 = b64(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{real_kid}"}}"#).as_bytes());
    for secret in [public.clone(), serde_json::to_vec(&jwk).unwrap()] {
        let signed = format!("{hs256}.{forged_payload}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mac = ring::hmac::sign(&key, signed.as_bytes());
        let token = format!("{signed}.{}", b64(mac.as_ref()));
        assert_eq!(create_product(&system, &token).await, 401, "HS256");
    }

    // Signed with the genuine key, but expired, for another audience, or from another issuer.
    let key = support::auth_signing_key(&system).await;
    assert_eq!(key.kid(), real_kid);
    let mut expired = admin_claims(now - 120);
    expired.iat = now - 1000;
    let mut wrong_aud = admin_claims(now + 600);
    wrong_aud.aud = "another-api".into();
    let mut wrong_iss = admin_claims(now + 600);
    wrong_iss.iss = "https://evil.example".into();
    for (what, claims) in [
        ("expired", expired),
        ("wrong aud", wrong_aud),
        ("wrong iss", wrong_iss),
    ] {
        assert_eq!(
            create_product(&system, &key.sign(&claims)).await,
            401,
            "{what}"
        );
    }
    // The same key with good claims passes: the refusals above are the claims, not the key.
    assert_eq!(
        create_product(&system, &key.sign(&admin_claims(now + 600))).await,
        201
    );

    // A key the auth service never published, under a new kid and under the real one.
    let rogue = SigningKey::generate("rogue-key").unwrap();
    assert_eq!(
        create_product(&system, &rogue.sign(&admin_claims(now + 600))).await,
        401,
        "unknown key"
    );
    let impostor = SigningKey::generate(real_kid.clone()).unwrap();
    assert_eq!(
        create_product(&system, &impostor.sign(&admin_claims(now + 600))).await,
        401,
        "unknown key under a known kid"
    );

    // A kid with path characters.
    for kid in ["../../etc/passwd", "/dev/null", "k1\\..\\x", "%2e%2e%2f"] {
        let header = b64(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid})
            .to_string()
            .as_bytes());
        let signature = admin.split('.').nth(2).unwrap();
        let token = format!("{header}.{payload}.{signature}");
        assert_eq!(create_product(&system, &token).await, 401, "kid {kid}");
    }

    // A genuine customer token with its payload edited to say admin.
    let customer = system.customer_token("mallory@example.com").await;
    let mut claims = claims_of(&customer);
    claims["roles"] = json!(["admin"]);
    let parts: Vec<&str> = customer.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(create_product(&system, &tampered).await, 401, "tampered");
    assert_eq!(
        create_product(&system, &customer).await,
        403,
        "the real one"
    );

    // Every refusal carries a problem document, never a 5xx.
    let response = system
        .http
        .get(system.url("/api/catalog/products"))
        .bearer_auth(&tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

async fn refresh(system: &System, token: &str) -> reqwest::Response {
    system
        .http
        .post(system.url("/auth/refresh"))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_family() {
    let system = System::start(1).await;
    system.customer_token("reuse@example.com").await;
    let login: Value = system
        .http
        .post(system.url("/auth/login"))
        .json(&json!({"email": "reuse@example.com", "password": "customer-password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = login["refresh_token"].as_str().unwrap().to_string();
    let second: Value = refresh(&system, &first).await.json().await.unwrap();
    let second = second["refresh_token"].as_str().unwrap().to_string();
    let third: Value = refresh(&system, &second).await.json().await.unwrap();
    let newest = third["refresh_token"].as_str().unwrap().to_string();

    // The thief replays the first token: refused, and the family is burnt...
    assert_eq!(refresh(&system, &first).await.status(), 401);
    // ...so the newest token, which the legitimate user holds, fails too.
    assert_eq!(refresh(&system, &newest).await.status(), 401);
    // The OAuth token endpoint agrees.
    let via_token = system
        .http
        .post(system.url("/auth/token"))
        .form_body(&[("grant_type", "refresh_token"), ("refresh_token", &newest)])
        .send()
        .await
        .unwrap();
    assert_eq!(via_token.status(), 400);
    assert_eq!(
        via_token.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn a_revoked_access_token_is_inactive_at_introspection() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let client: Value = system
        .http
        .post(system.url("/auth/clients"))
        .bearer_auth(&admin)
        .json(&json!({"name": "checker"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        client["client_id"].as_str().unwrap().to_string(),
        client["client_secret"].as_str().unwrap().to_string(),
    );
    let customer = system.customer_token("revoked@example.com").await;
    let introspect = |token: String| {
        system
            .http
            .post(system.url("/auth/introspect"))
            .basic_auth(&id, Some(&secret))
            .form_body(&[("token", token.as_str())])
            .send()
    };
    let before: Value = introspect(customer.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["active"], true);
    let revoked = system
        .http
        .post(system.url("/auth/revoke"))
        .form_body(&[("token", customer.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let after: Value = introspect(customer.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after, json!({"active": false}));
    // Without the client's credentials, nothing is said at all.
    let anonymous = system
        .http
        .post(system.url("/auth/introspect"))
        .form_body(&[("token", customer.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

async fn login_with(
    system: &System,
    email: &str,
    password: &str,
    totp: Option<&str>,
) -> (u16, Value) {
    let mut body = json!({"email": email, "password": password});
    if let Some(code) = totp {
        body["totp"] = json!(code);
    }
    let response = system
        .http
        .post(system.url("/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn totp_codes_are_required_checked_and_never_accepted_twice() {
    use stratus_auth::mfa::{base32_decode, code_at, STEP};
    let system = System::start(1).await;
    let email = "mfa@example.com";
    let token = system.customer_token(email).await;

    let enrolled: Value = system
        .http
        .post(system.url("/auth/mfa/totp/enroll"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = enrolled["secret"].as_str().unwrap();
    assert!(enrolled["otpauth_uri"]
        .as_str()
        .unwrap()
        .starts_with("otpauth://totp/Stratus%3Amfa%40example.com?secret="));
    let key = base32_decode(secret).unwrap();
    let code = |step: u64| format!("{:06}", code_at(&key, step));
    // Not active until confirmed.
    assert_eq!(
        login_with(&system, email, "customer-password", None)
            .await
            .0,
        200
    );

    let step = now_unix() / STEP;
    let wrong_code = (0..)
        .map(|n| {
            format!(
                "{:06}",
                (code_at(&key, step).wrapping_add(n * 7919 + 1)) % 1_000_000
            )
        })
        .find(|c| (step - 2..=step + 2).all(|s| code(s) != *c))
        .unwrap();
    let confirm = |body: Value| {
        system
            .http
            .post(system.url("/auth/mfa/totp/confirm"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    assert_eq!(
        confirm(json!({"code": wrong_code})).await.unwrap().status(),
        401
    );
    let confirmed = confirm(json!({"code": code(step)})).await.unwrap();
    assert_eq!(confirmed.status(), 200);
    let confirmed: Value = confirmed.json().await.unwrap();
    let recovery: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    // The secret is never handed out again.
    let again = system
        .http
        .post(system.url("/auth/mfa/totp/enroll"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    // Right password, no code: MFA required. Wrong password, no code: nothing about MFA.
    let (status, body) = login_with(&system, email, "customer-password", None).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (401, Some("urn:stratus:problem:mfa-required"))
    );
    let (status, body) = login_with(&system, email, "wrong-password", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["detail"], "invalid email or password");
    // A wrong password with a right code is still just a wrong password.
    let (status, body) = login_with(&system, email, "wrong-password", Some(&code(step + 1))).await;
    assert_eq!((status, body["type"].as_str()), (401, Some("about:blank")));

    // (The throttle allows 5 failures per account; a success resets the count. So far: the
    // wrong confirmation code and two wrong passwords.)
    // The next step's code (within the window) works once, and only once.
    let next = code(step + 1);
    let (status, body) = login_with(&system, email, "customer-password", Some(&next)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    let (status, body) = login_with(&system, email, "customer-password", Some(&next)).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (401, Some("urn:stratus:problem:mfa-invalid")),
        "a replayed code"
    );
    // The code used to confirm is spent too (an earlier step than the last one accepted).
    let (status, body) = login_with(&system, email, "customer-password", Some(&code(step))).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (401, Some("urn:stratus:problem:mfa-invalid"))
    );
    // A wrong code.
    let (status, body) = login_with(&system, email, "customer-password", Some(&wrong_code)).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (401, Some("urn:stratus:problem:mfa-invalid"))
    );

    // A recovery code works once.
    let (status, _) = login_with(&system, email, "customer-password", Some(&recovery[0])).await;
    assert_eq!(status, 200);
    let (status, _) = login_with(&system, email, "customer-password", Some(&recovery[0])).await;
    assert_eq!(status, 401);

    // Disabling needs a valid code; afterwards the password alone is enough again.
    let disable = |code: String| {
        system
            .http
            .delete(system.url("/auth/mfa/totp"))
            .bearer_auth(&token)
            .json(&json!({ "code": code }))
            .send()
    };
    assert_eq!(disable(wrong_code.clone()).await.unwrap().status(), 401);
    assert_eq!(disable(recovery[1].clone()).await.unwrap().status(), 204);
    assert_eq!(
        login_with(&system, email, "customer-password", None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn after_a_key_rotation_old_tokens_still_pass_and_new_ones_carry_the_new_kid() {
    let system = System::start(1).await;
    let admin = system.admin_token().await;
    let customer = system.customer_token("rotation@example.com").await;
    let old_kid = header_of(&admin)["kid"].as_str().unwrap().to_string();
    // The gateway has seen (and cached) the old key.
    assert_eq!(create_product(&system, &admin).await, 201);

    let rotate = |token: String| {
        system
            .http
            .post(system.url("/auth/admin/keys/rotate"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(rotate(customer.clone()).await.unwrap().status(), 403);
    let rotated = rotate(admin.clone()).await.unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let new_kid = rotated["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    assert_eq!(rotated["retiring"][0]["kid"], old_kid.as_str());
    // The old key leaves only after every token it signed has expired (15 min TTL + margin).
    let retire_at = rotated["retiring"][0]["retire_at"].as_u64().unwrap();
    assert!(retire_at >= now_unix() + 15 * 60);

    let jwks: Value = system
        .http
        .get(system.url("/auth/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );

    // New tokens carry the new kid, and the gateway (which has not seen it yet) accepts them.
    let fresh = system.admin_token().await;
    assert_eq!(header_of(&fresh)["kid"], new_kid.as_str());
    assert_eq!(create_product(&system, &fresh).await, 201);
    // The old token still passes, at the gateway and in the catalog behind it.
    assert_eq!(create_product(&system, &admin).await, 201);
    // Still admin at the auth service itself.
    let users = system
        .http
        .get(system.url("/auth/users"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
}
