"""An unmodified OAuth 2.0 / OpenID Connect client library (Authlib) against a running Stratus.

Run by tests/oidc.rs, which starts the system, creates the clients through the admin API and
passes everything here in the environment:

  STRATUS_URL         the gateway, e.g. http://127.0.0.1:20001
  SERVICE_CLIENT_ID   a service account (client credentials grant) with catalog:write
  SERVICE_SECRET
  APP_CLIENT_ID       a public app (authorization code + PKCE, no secret)
  REDIRECT_URI        the app's registered redirect URI
  USER_EMAIL          a user who signs in through the login form
  USER_PASSWORD

There is no browser: the script fetches the login form, posts it the way a browser would, and
reads the redirect's Location header instead of following it. Prints one line per step and
exits non-zero on the first failure.
"""

import os
import re
import secrets
import sys
from html.parser import HTMLParser

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, JsonWebToken

BASE = os.environ["STRATUS_URL"].rstrip("/")


def step(message):
    print(f"ok: {message}", flush=True)


def discovery():
    doc = requests.get(f"{BASE}/auth/.well-known/openid-configuration", timeout=10).json()
    assert "authorization_code" in doc["grant_types_supported"], doc
    assert "client_credentials" in doc["grant_types_supported"], doc
    assert doc["code_challenge_methods_supported"] == ["S256"], doc
    assert doc["authorization_endpoint"] == f"{BASE}/auth/authorize", doc
    assert doc["token_endpoint"] == f"{BASE}/auth/token", doc
    step("discovery document")
    return doc


def client_credentials(doc):
    session = OAuth2Session(
        os.environ["SERVICE_CLIENT_ID"],
        os.environ["SERVICE_SECRET"],
        token_endpoint_auth_method="client_secret_basic",
    )
    token = session.fetch_token(doc["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"].lower() == "bearer", token
    assert "refresh_token" not in token, token
    step("client credentials grant")
    # The session sends the token; the service account's permission lets it write.
    created = session.post(
        f"{BASE}/api/catalog/products",
        json={"name": "Authlib tea", "price_cents": 450, "stock": 3},
        timeout=10,
    )
    assert created.status_code == 201, (created.status_code, created.text)
    step("service token accepted by the gateway and the catalog")

    wrong = OAuth2Session(
        os.environ["SERVICE_CLIENT_ID"], "not-the-secret", token_endpoint_auth_method="client_secret_basic"
    )
    try:
        wrong.fetch_token(doc["token_endpoint"], grant_type="client_credentials")
        raise AssertionError("a wrong secret was accepted")
    except OAuthError as error:
        assert error.error == "invalid_client", error
    step("wrong client secret refused with invalid_client")


class Form(HTMLParser):
    """The login form's action and its inputs' names and values."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""


def sign_in(authorization_url, email, password):
    """Plays the browser: the form, the post, the redirect's Location."""
    page = requests.get(authorization_url, timeout=10, allow_redirects=False)
    assert page.status_code == 200, (page.status_code, page.text)
    assert page.headers["content-type"].startswith("text/html"), page.headers
    form = Form()
    form.feed(page.text)
    assert form.action == "/auth/authorize", form.action
    fields = dict(form.fields, email=email, password=password)
    answer = requests.post(f"{BASE}{form.action}", data=fields, timeout=10, allow_redirects=False)
    return answer


def authorization_code(doc):
    app_id = os.environ["APP_CLIENT_ID"]
    redirect_uri = os.environ["REDIRECT_URI"]
    session = OAuth2Session(
        app_id,
        redirect_uri=redirect_uri,
        scope="openid email",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    nonce = secrets.token_urlsafe(16)
    url, state = session.create_authorization_url(
        doc["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    assert "code_challenge=" in url and "code_challenge_method=S256" in url, url

    refused = sign_in(url, os.environ["USER_EMAIL"], "not-the-password")
    assert refused.status_code == 401, refused.status_code
    assert "invalid email or password" in refused.text
    step("login form refuses a wrong password without redirecting")

    answer = sign_in(url, os.environ["USER_EMAIL"], os.environ["USER_PASSWORD"])
    assert answer.status_code in (302, 303), (answer.status_code, answer.text)
    location = answer.headers["location"]
    assert location.startswith(redirect_uri + "?"), location
    assert re.search(r"[?&]code=", location), location
    step("login form redirects back with a code and the state")

    token = session.fetch_token(
        doc["token_endpoint"], authorization_response=location, code_verifier=verifier
    )
    assert token["token_type"].lower() == "bearer", token
    for key in ("access_token", "refresh_token", "id_token"):
        assert key in token, token
    step("authorization code + PKCE exchanged for tokens")

    jwks = requests.get(doc["jwks_uri"], timeout=10).json()
    claims = JsonWebToken(["EdDSA"]).decode(
        token["id_token"],
        JsonWebKey.import_key_set(jwks),
        claims_options={
            "iss": {"essential": True, "value": doc["issuer"]},
            "aud": {"essential": True, "value": app_id},
            "nonce": {"essential": True, "value": nonce},
        },
    )
    claims.validate()
    assert claims["email"] == os.environ["USER_EMAIL"], claims
    step("ID token verified against the JWKS (EdDSA): issuer, audience, nonce")

    products = session.get(f"{BASE}/api/catalog/products", timeout=10)
    assert products.status_code == 200, products.status_code
    denied = session.post(
        f"{BASE}/api/catalog/products",
        json={"name": "Not allowed", "price_cents": 1, "stock": 1},
        timeout=10,
    )
    assert denied.status_code == 403, denied.status_code
    step("the app's access token carries the user's roles, no more")

    try:
        session.fetch_token(
            doc["token_endpoint"], authorization_response=location, code_verifier=verifier
        )
        raise AssertionError("a code was accepted twice")
    except OAuthError as error:
        assert error.error == "invalid_grant", error
    step("a code is single-use")

    # Replaying the code revoked the tokens issued for it (RFC 6749 section 4.1.2), so the
    # refresh grant is shown with a fresh authorization.
    url, state = session.create_authorization_url(
        doc["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    location = sign_in(url, os.environ["USER_EMAIL"], os.environ["USER_PASSWORD"]).headers["location"]
    wrong = OAuth2Session(app_id, redirect_uri=redirect_uri, token_endpoint_auth_method="none")
    try:
        wrong.fetch_token(
            doc["token_endpoint"],
            authorization_response=location,
            code_verifier=generate_token(64),
            state=state,
        )
        raise AssertionError("a wrong code_verifier was accepted")
    except OAuthError as error:
        assert error.error == "invalid_grant", error
    step("a wrong code_verifier is refused")

    url, state = session.create_authorization_url(
        doc["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    location = sign_in(url, os.environ["USER_EMAIL"], os.environ["USER_PASSWORD"]).headers["location"]
    token = session.fetch_token(
        doc["token_endpoint"], authorization_response=location, code_verifier=verifier
    )
    refreshed = session.refresh_token(doc["token_endpoint"], refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"], refreshed
    assert refreshed["refresh_token"] != token["refresh_token"], refreshed
    step("refresh token grant at the token endpoint (rotated)")


def main():
    doc = discovery()
    client_credentials(doc)
    authorization_code(doc)
    print("all flows passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # any failure: say which, exit non-zero
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
