//! Checking bearer tokens inside a service (zero trust: the gateway checked, and so do we).
//!
//! [`Tokens`] holds the auth service's public keys, fetched once from its JWKS and fetched again
//! when a token names a key id not seen yet (key rotation). Verification itself is local and
//! cheap. The extractors [`Caller`] and [`MaybeCaller`] give handlers the verified claims.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwapOption;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use stratus_token::{Claims, Jwks, TokenError, Verifier};

use crate::config::TokenArgs;
use crate::problem::Problem;
use crate::registry_client::RegistryClient;

/// Refreshes of the JWKS are at most this frequent, so forged key ids cannot flood auth.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

pub struct Tokens {
    verifier: ArcSwapOption<Verifier>,
    /// Tokens already verified, so a client sending the same token again costs a hash lookup
    /// instead of an Ed25519 verification (about 50 us). Cleared when the keys change.
    verified: VerifiedCache,
    source: Source,
    http: reqwest::Client,
    issuer: String,
    audience: String,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

enum Source {
    Url(String),
    Registry(RegistryClient),
    /// Auth's base URLs from somewhere else than a registry client: the registry itself looks
    /// in its own store rather than asking itself over the network.
    Finder(AuthFinder),
}

/// Finds the base URLs (`https://host:port`) of auth's instances.
pub type AuthFinder = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, anyhow::Result<Vec<String>>> + Send + Sync,
>;

impl Tokens {
    pub fn new(args: &TokenArgs, registry: RegistryClient) -> anyhow::Result<Arc<Self>> {
        Self::from_source(args, Source::Registry(registry))
    }

    /// As [`Tokens::new`], finding auth's instances with `finder` (unless a JWKS URL is set).
    pub fn finding_auth_with(args: &TokenArgs, finder: AuthFinder) -> anyhow::Result<Arc<Self>> {
        Self::from_source(args, Source::Finder(finder))
    }

    fn from_source(args: &TokenArgs, source: Source) -> anyhow::Result<Arc<Self>> {
        crate::install_crypto_provider();
        let source = match &args.jwks_url {
            Some(url) => Source::Url(url.clone()),
            None => source,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .context("building the JWKS client")?;
        Ok(Arc::new(Self {
            verifier: ArcSwapOption::empty(),
            verified: VerifiedCache::default(),
            source,
            http,
            issuer: args.token_issuer.clone(),
            audience: args.token_audience.clone(),
            last_refresh: tokio::sync::Mutex::new(None),
        }))
    }

    /// Starts with `jwks` already known (still fetching again on an unknown key id).
    pub fn with_keys(
        args: &TokenArgs,
        registry: RegistryClient,
        jwks: &Jwks,
    ) -> anyhow::Result<Arc<Self>> {
        let tokens = Self::new(args, registry)?;
        tokens.verifier.store(Some(Arc::new(Verifier::new(
            jwks,
            &args.token_issuer,
            &args.token_audience,
        ))));
        Ok(tokens)
    }

    /// Verifies `token`, fetching keys first if none are known or the token names a new key.
    pub async fn verify(&self, token: &str) -> Result<Claims, Problem> {
        self.verify_shared(token).await.map(Arc::unwrap_or_clone)
    }

    /// [`Tokens::verify`], with the claims shared with the verified-token cache rather than
    /// copied: a cache hit allocates nothing (the gateway checks a token on every request).
    pub async fn verify_shared(&self, token: &str) -> Result<Arc<Claims>, Problem> {
        let now = stratus_token::now_unix();
        if let Some(claims) = self.verified.get(token, now) {
            return Ok(claims);
        }
        if let Some(verifier) = self.verifier.load_full() {
            match verifier.verify(token) {
                Err(TokenError::UnknownKey) => {}
                Ok(claims) => {
                    let claims = Arc::new(claims);
                    self.verified.insert(token, &claims);
                    return Ok(claims);
                }
                Err(error) => return Err(reject(error)),
            }
        } else {
            // Nothing to check with yet: reject what is not even a well-formed EdDSA token before
            // asking the auth service for keys.
            Verifier::key_id_of(token).map_err(reject)?;
        }
        self.refresh().await;
        match self.verifier.load_full() {
            Some(verifier) => verifier.verify(token).map(Arc::new).map_err(reject),
            None => Err(Problem::unavailable("token keys are not available yet", 1)),
        }
    }

    /// Fetches the JWKS again, at most once per [`MIN_REFRESH_INTERVAL`].
    ///
    /// A caller arriving within a second of the last fetch waits out the rest of that second
    /// rather than giving up: that fetch may predate the key its token names (a token signed
    /// just after a rotation), so skipping would refuse a good token. While it waits it holds
    /// no lock, so forged key ids only delay their own requests. If another caller fetched after
    /// this one arrived, that fetch already covers it.
    pub async fn refresh(&self) {
        let arrived = Instant::now();
        loop {
            let mut last = self.last_refresh.lock().await;
            match *last {
                Some(at) if at >= arrived => return,
                Some(at) if at.elapsed() < MIN_REFRESH_INTERVAL => {
                    let wait = MIN_REFRESH_INTERVAL.saturating_sub(at.elapsed());
                    drop(last);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                _ => {}
            }
            *last = Some(Instant::now());
            match self.fetch().await {
                Ok(jwks) => {
                    let verifier = Verifier::new(&jwks, &self.issuer, &self.audience);
                    tracing::debug!(keys = verifier.key_count(), "token keys refreshed");
                    self.verifier.store(Some(Arc::new(verifier)));
                    self.verified.clear();
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "could not fetch token keys")
                }
            }
            return;
        }
    }

    async fn fetch(&self) -> anyhow::Result<Jwks> {
        let jwks = |base: String| format!("{base}/auth/.well-known/jwks.json");
        let urls = match &self.source {
            Source::Url(url) => vec![url.clone()],
            Source::Registry(registry) => registry
                .service("auth")
                .await?
                .instances
                .iter()
                .map(|i| jwks(i.base_url()))
                .collect(),
            Source::Finder(finder) => finder().await?.into_iter().map(jwks).collect(),
        };
        let mut last_error = anyhow::anyhow!("no auth instance is registered");
        for url in urls {
            match self.fetch_from(&url).await {
                Ok(jwks) => return Ok(jwks),
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn fetch_from(&self, url: &str) -> anyhow::Result<Jwks> {
        // Keys found through the registry come from an auth instance, over the mesh; a
        // configured JWKS URL is anyone's (an outside identity provider), over public TLS.
        let http = match &self.source {
            Source::Registry(_) | Source::Finder(_) if crate::mesh::current().is_on() => {
                crate::mesh::current().client("auth")?
            }
            _ => self.http.clone(),
        };
        let response = http
            .get(url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        response
            .error_for_status()?
            .json()
            .await
            .context("decoding the JWKS")
    }
}

const CACHE_SHARDS: usize = 16;
const CACHE_SHARD_CAPACITY: usize = 4096;

/// Verified tokens and their claims, in shards so worker threads rarely meet on one lock. A full
/// shard is simply emptied: re-verifying is cheap enough that nothing cleverer is needed.
struct VerifiedCache {
    shards: Vec<std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<Claims>>>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        Self {
            shards: (0..CACHE_SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

impl VerifiedCache {
    fn shard(
        &self,
        token: &str,
    ) -> &std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<Claims>>> {
        // The last characters are signature bytes: already uniformly random.
        let last = token.as_bytes().last().copied().unwrap_or(0) as usize;
        &self.shards[last % CACHE_SHARDS]
    }

    fn get(&self, token: &str, now: u64) -> Option<Arc<Claims>> {
        let shard = self.shard(token).lock().ok()?;
        // Expiry is checked on every hit: a cached token stops working the moment it expires.
        shard.get(token).filter(|claims| claims.exp > now).cloned()
    }

    fn insert(&self, token: &str, claims: &Arc<Claims>) {
        if let Ok(mut shard) = self.shard(token).lock() {
            if shard.len() >= CACHE_SHARD_CAPACITY {
                shard.clear();
            }
            shard.insert(token.into(), claims.clone());
        }
    }

    fn clear(&self) {
        for shard in &self.shards {
            if let Ok(mut shard) = shard.lock() {
                shard.clear();
            }
        }
    }
}

fn reject(error: TokenError) -> Problem {
    Problem::unauthorized(format!("invalid bearer token: {error}"))
}

/// The bearer token of a request, if it has an `Authorization: Bearer` header.
/// `Err` when the header is present but not a bearer token.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, Problem> {
    bearer_in(&parts.headers)
}

/// [`bearer`], from a request's headers.
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(Problem::unauthorized(
            "expected an `Authorization: Bearer <token>` header",
        )),
    }
}

/// A verified caller. Rejects with 401 when there is no valid bearer token.
pub struct Caller(pub Claims);

impl<S> FromRequestParts<S> for Caller
where
    Arc<Tokens>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens = Arc::<Tokens>::from_ref(state);
        let token =
            bearer(parts)?.ok_or_else(|| Problem::unauthorized("a bearer token is required"))?;
        tokens.verify(token).await.map(Caller)
    }
}

impl Caller {
    /// 403 unless the caller has `role` (admins have every role).
    pub fn require_role(&self, role: &str) -> Result<(), Problem> {
        if self.0.has_role(role) || self.0.has_role("admin") {
            Ok(())
        } else {
            Err(Problem::forbidden(format!("this needs the role `{role}`")))
        }
    }

    /// 403 unless the caller has `role` or `permission`.
    pub fn require_role_or_permission(&self, role: &str, permission: &str) -> Result<(), Problem> {
        if self.0.has_role(role) || self.0.has_permission(permission) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this needs the role `{role}` or the permission `{permission}`"
            )))
        }
    }
}

/// A caller who may be anonymous; a token that is present must still be valid.
pub struct MaybeCaller(pub Option<Claims>);

impl<S> FromRequestParts<S> for MaybeCaller
where
    Arc<Tokens>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let tokens = Arc::<Tokens>::from_ref(state);
        match bearer(parts)? {
            None => Ok(MaybeCaller(None)),
            Some(token) => tokens.verify(token).await.map(|c| MaybeCaller(Some(c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "s".into(),
            exp,
            iat: 0,
            jti: "j".into(),
            email: None,
            roles: vec![],
            permissions: vec![],
        }
    }

    #[test]
    fn cached_claims_expire_with_the_token() {
        let cache = VerifiedCache::default();
        let cached = Arc::new(claims(100));
        cache.insert("a.b.c", &cached);
        // A hit shares the cached claims; nothing is copied.
        assert!(cache
            .get("a.b.c", 99)
            .is_some_and(|hit| Arc::ptr_eq(&hit, &cached)));
        assert!(cache.get("a.b.c", 100).is_none());
        assert!(cache.get("a.b.d", 50).is_none());
        cache.clear();
        assert!(cache.get("a.b.c", 99).is_none());
    }
}
