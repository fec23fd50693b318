//! Audit admin: search the log within scope, verify the hash chain.

use super::Query;
use crate::AdminState;
use crate::audit::{AuditEntry, AuditQuery, AuditVerification};
use crate::directory::{clean, page};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchAudit {
    /// User name of the actor.
    actor: Option<String>,
    /// e.g. `login`, `user_create`, `org_read`.
    action: Option<String>,
    /// `ok` | `denied` | `failed`
    result: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Search the audit log (newest first), confined to the caller's scope.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(SearchAudit),
    responses((status = 200, body = [AuditEntry]), (status = 403, body = ApiError)))]
pub(crate) async fn search_audit(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<SearchAudit>,
) -> ApiResult<axum::Json<Vec<AuditEntry>>> {
    let scope = actor
        .scope_path
        .clone()
        .unwrap_or_else(|| actor.org_path.clone());
    state
        .authorize(&actor, Action::AuditRead, &Target::Org(&scope))
        .await?;
    let (limit, offset) = page(q.limit, q.offset);
    let f = |name: &str, v: Option<String>| v.map(|s| clean(name, &s, 1, 100)).transpose();
    let query = AuditQuery {
        scope_path: scope,
        actor: f("actor", q.actor)?,
        action: f("action", q.action)?,
        result: f("result", q.result)?,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        limit,
        offset,
    };
    Ok(axum::Json(state.search_audit(&query).await?))
}

/// Recompute the hash chain of the whole log.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = 403, body = ApiError)))]
pub(crate) async fn verify_audit(
    State(state): State<AdminState>,
    actor: Actor,
) -> ApiResult<axum::Json<AuditVerification>> {
    let scope = actor
        .scope_path
        .clone()
        .unwrap_or_else(|| actor.org_path.clone());
    state
        .authorize(&actor, Action::AuditRead, &Target::Org(&scope))
        .await?;
    Ok(axum::Json(state.verify_audit().await?))
}
