//! Roles and the permissions they grant (RBAC).
//!
//! A user holds roles; a role names a set of permissions (`catalog:write`, `orders:read:any`).
//! Tokens carry both: the gateway checks a route's roles or permissions, and services apply
//! finer rules (kit::policy) with the permissions. Keeping the mapping here, in auth, means a
//! change to a role reaches every holder at their next token (15 minutes at most), without
//! touching users one by one.
//!
//! Two names are built in and cannot be defined here: `admin` may do everything (every service
//! treats it so), and `customer` is what a new account gets, with no extra permission.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use stratus_kit::db::Db;
use stratus_kit::{Json, Problem};

use crate::admin::{check_names, require_admin};
use crate::api::Shared;

/// Roles whose meaning is fixed in code.
const BUILT_IN: [&str; 2] = ["admin", "customer"];

/// The permissions `roles` grant together, sorted and without repeats.
pub async fn permissions_of(pool: &Db, roles: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let mut permissions = Vec::new();
    // A user holds a handful of roles at most (admin::MAX_ROLES), so one indexed lookup each
    // costs less than building an IN list the two SQL dialects agree on.
    for role in roles.iter().filter(|r| !BUILT_IN.contains(&r.as_str())) {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT permissions FROM roles WHERE name = $1")
                .bind(role)
                .fetch_optional(pool)
                .await?;
        if let Some((granted,)) = row {
            permissions.extend(
                granted
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(String::from),
            );
        }
    }
    permissions.sort();
    permissions.dedup();
    Ok(permissions)
}

/// `GET /auth/roles`: every role and what it grants.
pub async fn list(State(state): Shared, headers: HeaderMap) -> Result<impl IntoResponse, Problem> {
    require_admin(&state, &headers).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, permissions FROM roles ORDER BY name")
            .fetch_all(&state.pool)
            .await?;
    let mut roles = vec![
        json!({"name": "admin", "permissions": ["*"], "built_in": true}),
        json!({"name": "customer", "permissions": [], "built_in": true}),
    ];
    roles.extend(rows.into_iter().map(|(name, permissions)| {
        let permissions: Vec<&str> = permissions.split(',').filter(|p| !p.is_empty()).collect();
        json!({"name": name, "permissions": permissions, "built_in": false})
    }));
    Ok(axum::Json(roles))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    permissions: Vec<String>,
}

fn check_role_name(name: &str) -> Result<(), Problem> {
    check_names("role", &[name.to_string()])?;
    if BUILT_IN.contains(&name) {
        return Err(Problem::unprocessable(format!(
            "`{name}` is built in; its permissions cannot be changed"
        )));
    }
    Ok(())
}

/// `PUT /auth/roles/{name}`: defines a role or replaces its permissions.
pub async fn put(
    State(state): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<RoleBody>,
) -> Result<impl IntoResponse, Problem> {
    let admin = require_admin(&state, &headers).await?;
    check_role_name(&name)?;
    check_names("permissions", &body.permissions)?;
    let mut permissions = body.permissions;
    permissions.sort();
    permissions.dedup();
    sqlx::query(
        "INSERT INTO roles (name, permissions, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET permissions = excluded.permissions, updated_at = excluded.updated_at",
    )
    .bind(&name)
    .bind(permissions.join(","))
    .bind(stratus_kit::now_rfc3339())
    .execute(&state.pool)
    .await?;
    tracing::info!(role = %name, by = %admin.sub, permissions = %permissions.join(","), "role defined");
    Ok(axum::Json(
        json!({"name": name, "permissions": permissions, "built_in": false}),
    ))
}

/// `DELETE /auth/roles/{name}`: the role grants nothing from now on (users keep the name, which
/// no longer means anything until it is defined again).
pub async fn delete(
    State(state): Shared,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let admin = require_admin(&state, &headers).await?;
    check_role_name(&name)?;
    let result = sqlx::query("DELETE FROM roles WHERE name = $1")
        .bind(&name)
        .execute(&state.pool)
        .await?;
    if !stratus_kit::db::changed(&result) {
        return Err(Problem::not_found(format!("no role {name}")));
    }
    tracing::info!(role = %name, by = %admin.sub, "role deleted");
    Ok(StatusCode::NO_CONTENT)
}
