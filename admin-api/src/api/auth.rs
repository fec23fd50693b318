//! Login, token refresh, logout, own profile and own password.

use super::{ClientIp, Done, Json, done};
use crate::AdminState;
use crate::audit::{AuditEvent, Outcome};
use crate::auth::TokenPair;
use crate::directory::AdminUserView;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    username: String,
    password: String,
    /// The current 6-digit code, for accounts with a second factor.
    #[serde(default)]
    totp_code: Option<String>,
}

/// Log in with user name and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()), request_body = LoginBody,
    responses((status = 200, body = TokenPair), (status = 401, body = ApiError, description = "`invalid_credentials`, or `totp_required`: repeat with `totp_code`"), (status = 403, body = ApiError)))]
pub(crate) async fn login(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    Json(b): Json<LoginBody>,
) -> ApiResult<axum::Json<TokenPair>> {
    if b.username.len() > 128
        || b.password.len() > 1024
        || b.totp_code.as_ref().is_some_and(|c| c.len() > 16)
    {
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "wrong user name or password",
        ));
    }
    state
        .login_with_totp(&b.username, &b.password, b.totp_code.as_deref(), &ip)
        .await
        .map(axum::Json)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshBody {
    refresh_token: String,
}

/// Exchange a refresh token (single use) for a new token pair.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", security(()), request_body = RefreshBody,
    responses((status = 200, body = TokenPair), (status = 401, body = ApiError)))]
pub(crate) async fn refresh(
    State(state): State<AdminState>,
    ClientIp(ip): ClientIp,
    Json(b): Json<RefreshBody>,
) -> ApiResult<axum::Json<TokenPair>> {
    state.refresh(&b.refresh_token, &ip).await.map(axum::Json)
}

/// End the current session (its access and refresh tokens stop working).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 200, body = Done), (status = 401, body = ApiError)))]
pub(crate) async fn logout(
    State(state): State<AdminState>,
    actor: Actor,
) -> ApiResult<axum::Json<Done>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    state.revoke_session(&actor.session_id).await?;
    state
        .audit_ok(
            &actor,
            "logout",
            format!("user:{}", actor.user_id),
            &actor.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}

/// The caller's own account (the admin view of oneself).
#[utoipa::path(get, path = "/api/v1/me", tag = "auth",
    responses((status = 200, body = AdminUserView), (status = 401, body = ApiError)))]
pub(crate) async fn me(
    State(state): State<AdminState>,
    actor: Actor,
) -> ApiResult<axum::Json<AdminUserView>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    state
        .user(actor.user_id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("user"))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangePasswordBody {
    old_password: String,
    new_password: String,
}

/// Change one's own password (required after a one-time or expired password).
#[utoipa::path(post, path = "/api/v1/me/password", tag = "auth", request_body = ChangePasswordBody,
    responses((status = 200, body = Done), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(crate) async fn change_password(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<ChangePasswordBody>,
) -> ApiResult<axum::Json<Done>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    if b.old_password.len() > 1024 || b.new_password.len() > 1024 {
        return Err(ApiError::new(
            ErrorCode::PasswordPolicy,
            "password too long",
        ));
    }
    let hash: Option<String> = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(actor.user_id)
        .fetch_one(&state.inner.db.pool)
        .await?;
    let ok = match hash {
        Some(h) => state.verify_password(&b.old_password, &h).await?,
        None => false,
    };
    if !ok {
        state
            .audit(AuditEvent {
                actor_id: Some(actor.user_id),
                actor_name: actor.username.clone(),
                ip: actor.ip.clone(),
                action: "password_change".into(),
                target: format!("user:{}", actor.user_id),
                scope_path: actor.org_path.clone(),
                outcome: Outcome::Failed,
                detail: "wrong current password".into(),
            })
            .await?;
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "current password is wrong",
        ));
    }
    if b.old_password == b.new_password {
        return Err(ApiError::new(
            ErrorCode::PasswordPolicy,
            "the new password must differ",
        ));
    }
    state
        .set_password(actor.user_id, &actor.username, &b.new_password, false)
        .await?;
    state
        .audit_ok(
            &actor,
            "password_change",
            format!("user:{}", actor.user_id),
            &actor.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}
