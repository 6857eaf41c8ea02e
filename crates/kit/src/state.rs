//! The state most service routers share: the service's database and the token checker.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::auth::Tokens;
use crate::db::Db;

/// A database pool and the token checker, for routers that need no more. The `FromRef` lets
/// the `Caller` extractor find the token checker in it.
#[derive(Clone)]
pub struct PoolAndTokens {
    pub pool: Db,
    pub tokens: Arc<Tokens>,
}

impl FromRef<PoolAndTokens> for Arc<Tokens> {
    fn from_ref(state: &PoolAndTokens) -> Self {
        state.tokens.clone()
    }
}
