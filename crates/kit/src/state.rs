//! The state most service routers share: the service's database and the token checker.

use std::sync::Arc;

use axum::extract::FromRef;
use sqlx::AnyPool;

use crate::auth::Tokens;

/// A database pool and the token checker, for routers that need no more. The `FromRef` lets
/// the `Caller` extractor find the token checker in it.
#[derive(Clone)]
pub struct PoolAndTokens {
    pub pool: AnyPool,
    pub tokens: Arc<Tokens>,
}

impl FromRef<PoolAndTokens> for Arc<Tokens> {
    fn from_ref(state: &PoolAndTokens) -> Self {
        state.tokens.clone()
    }
}
