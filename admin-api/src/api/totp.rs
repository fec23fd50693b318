//! The optional TOTP second factor: enrol, confirm, disable (oneself with a code, or
//! the security admin for an account in scope).

use super::{Done, Json, Path, done};
use crate::AdminState;
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use crate::totp::{TotpEnrolment, TotpStatus};
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TotpCode {
    /// The 6-digit code the authenticator app shows now.
    code: String,
}

fn check_len(code: &str) -> ApiResult<()> {
    if code.len() > 16 {
        return Err(ApiError::field("code", "6 digits"));
    }
    Ok(())
}

/// Whether the caller's account has a second factor.
#[utoipa::path(get, path = "/api/v1/me/totp", tag = "auth",
    responses((status = 200, body = TotpStatus), (status = 401, body = ApiError)))]
pub(crate) async fn totp_status(
    State(state): State<AdminState>,
    actor: Actor,
) -> ApiResult<axum::Json<TotpStatus>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    Ok(axum::Json(state.totp_status(actor.user_id).await?))
}

/// Start enrolment: returns the secret and `otpauth://` URI, this once. Login does not
/// need a code until the enrolment is confirmed.
#[utoipa::path(post, path = "/api/v1/me/totp", tag = "auth",
    responses((status = 200, body = TotpEnrolment), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn totp_enrol(
    State(state): State<AdminState>,
    actor: Actor,
) -> ApiResult<axum::Json<TotpEnrolment>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    Ok(axum::Json(state.totp_enrol(&actor).await?))
}

/// Confirm enrolment with a current code; from then on login requires a code.
#[utoipa::path(post, path = "/api/v1/me/totp/confirm", tag = "auth", request_body = TotpCode,
    responses((status = 200, body = Done), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn totp_confirm(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<TotpCode>,
) -> ApiResult<axum::Json<Done>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    check_len(&b.code)?;
    state.totp_confirm(&actor, &b.code).await?;
    Ok(done())
}

/// Remove one's own second factor, with a current code.
#[utoipa::path(post, path = "/api/v1/me/totp/disable", tag = "auth", request_body = TotpCode,
    responses((status = 200, body = Done), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn totp_disable(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<TotpCode>,
) -> ApiResult<axum::Json<Done>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    check_len(&b.code)?;
    state.totp_disable_self(&actor, &b.code).await?;
    Ok(done())
}

/// Remove an account's second factor (security admin, account in scope), e.g. after a
/// lost phone. The account logs in with its password alone until it enrols again.
#[utoipa::path(post, path = "/api/v1/accounts/{id}/totp/disable", tag = "security", params(("id" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn account_totp_disable(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Done>> {
    let u = state
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    state
        .authorize(&actor, Action::AccountWrite, &Target::Org(&u.org_path))
        .await?;
    let removed = state.totp_remove(id).await?;
    state
        .audit_ok(
            &actor,
            "totp_reset",
            format!("user:{id}"),
            &u.org_path,
            if removed { "" } else { "no factor enrolled" }.to_owned(),
        )
        .await?;
    Ok(done())
}
