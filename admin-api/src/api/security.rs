//! Security admin: password/lockout policy, roles and scopes, unlocks, password resets.
//! No business data: the account view carries no phone or e-mail.

use super::{Done, Json, Path, Query, done};
use crate::AdminState;
use crate::auth::PasswordPolicy;
use crate::directory::{UserOrder, clean, page};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::policy::{Action, Actor, Role, Target};
use axum::extract::State;
use serde::{Deserialize, Serialize};

/// The password and lockout policy.
#[utoipa::path(get, path = "/api/v1/security/policy", tag = "security",
    responses((status = 200, body = PasswordPolicy), (status = 403, body = ApiError)))]
pub(crate) async fn get_policy(
    State(state): State<AdminState>,
    actor: Actor,
) -> ApiResult<axum::Json<PasswordPolicy>> {
    state
        .authorize(&actor, Action::SecurityPolicyRead, &Target::Global)
        .await?;
    Ok(axum::Json(state.password_policy().await?))
}

/// Replace the password and lockout policy.
#[utoipa::path(put, path = "/api/v1/security/policy", tag = "security", request_body = PasswordPolicy,
    responses((status = 200, body = PasswordPolicy), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn put_policy(
    State(state): State<AdminState>,
    actor: Actor,
    Json(p): Json<PasswordPolicy>,
) -> ApiResult<axum::Json<PasswordPolicy>> {
    state
        .authorize(&actor, Action::SecurityPolicyWrite, &Target::Global)
        .await?;
    p.validate()?;
    state.set_password_policy(&p).await?;
    let root = state.root_path().to_owned();
    state
        .audit_ok(
            &actor,
            "security_policy_update",
            "password_policy".into(),
            &root,
            serde_json::to_string(&p).unwrap_or_default(),
        )
        .await?;
    Ok(axum::Json(p))
}

/// An account as the security admin sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Account {
    id: i64,
    username: String,
    name: String,
    org_id: i64,
    role: String,
    status: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListAccounts {
    org_id: Option<i64>,
    q: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Accounts in the caller's scope.
#[utoipa::path(get, path = "/api/v1/accounts", tag = "security", params(ListAccounts),
    responses((status = 200, body = [Account]), (status = 403, body = ApiError)))]
pub(crate) async fn list_accounts(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ListAccounts>,
) -> ApiResult<axum::Json<Vec<Account>>> {
    let path = match q.org_id {
        Some(id) => {
            state
                .org(id)
                .await?
                .ok_or_else(|| ApiError::not_found("organisation"))?
                .path
        }
        None => actor
            .scope_path
            .clone()
            .unwrap_or_else(|| actor.org_path.clone()),
    };
    state
        .authorize(&actor, Action::AccountRead, &Target::Org(&path))
        .await?;
    let (limit, offset) = page(q.limit, q.offset);
    let search = q.q.as_deref().map(|s| clean("q", s, 0, 100)).transpose()?;
    // Phone numbers do not take part in this search: they are business data.
    let users = state
        .list_users(
            &path,
            true,
            search.as_deref(),
            true,
            UserOrder::Tree,
            limit,
            offset,
        )
        .await?;
    Ok(axum::Json(
        users
            .into_iter()
            .map(|u| Account {
                id: u.id,
                username: u.username,
                name: u.name,
                org_id: u.org_id,
                role: u.role,
                status: u.status,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetRole {
    role: Role,
    /// The subtree an admin role covers; required for admin roles.
    scope_org_id: Option<i64>,
}

async fn target_user(
    state: &AdminState,
    actor: &Actor,
    id: i64,
) -> ApiResult<crate::directory::AdminUserView> {
    let u = state
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    state
        .authorize(actor, Action::AccountWrite, &Target::Org(&u.org_path))
        .await?;
    Ok(u)
}

/// Grant or remove an admin role (with its scope). Ends the account's sessions.
#[utoipa::path(put, path = "/api/v1/accounts/{id}/role", tag = "security", params(("id" = i64, Path)), request_body = SetRole,
    responses((status = 200, body = Done), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn set_role(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<SetRole>,
) -> ApiResult<axum::Json<Done>> {
    let u = target_user(&state, &actor, id).await?;
    if id == actor.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "an admin cannot change their own role",
        ));
    }
    let scope = match (b.role, b.scope_org_id) {
        (Role::User, _) => None,
        (_, None) => return Err(ApiError::field("scope_org_id", "required for admin roles")),
        (_, Some(s)) => {
            let org = state
                .org(s)
                .await?
                .ok_or_else(|| ApiError::not_found("scope organisation"))?;
            // No one hands out more reach than they have.
            state
                .authorize(&actor, Action::AccountWrite, &Target::Org(&org.path))
                .await?;
            Some(s)
        }
    };
    state.set_role(id, b.role, scope).await?;
    state
        .audit_ok(
            &actor,
            "role_set",
            format!("user:{id}"),
            &u.org_path,
            format!("{} scope {:?}", b.role.as_str(), scope),
        )
        .await?;
    Ok(done())
}

/// Lift a lockout.
#[utoipa::path(post, path = "/api/v1/accounts/{id}/unlock", tag = "security", params(("id" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn unlock(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Done>> {
    let u = target_user(&state, &actor, id).await?;
    state.unlock_user(id).await?;
    state
        .audit_ok(
            &actor,
            "account_unlock",
            format!("user:{id}"),
            &u.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetPassword {
    /// A one-time password the user must change at next login.
    password: String,
}

/// Set a one-time password and end the account's sessions.
#[utoipa::path(post, path = "/api/v1/accounts/{id}/password", tag = "security", params(("id" = i64, Path)), request_body = ResetPassword,
    responses((status = 200, body = Done), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn reset_password(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<ResetPassword>,
) -> ApiResult<axum::Json<Done>> {
    let u = target_user(&state, &actor, id).await?;
    if b.password.len() > 1024 {
        return Err(ApiError::new(
            ErrorCode::PasswordPolicy,
            "password too long",
        ));
    }
    state
        .set_password(id, &u.username, &b.password, true)
        .await?;
    state.revoke_user_sessions(id).await?;
    state
        .audit_ok(
            &actor,
            "password_reset",
            format!("user:{id}"),
            &u.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}
