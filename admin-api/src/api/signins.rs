//! In-meeting sign-in: start, live results, submit, end, CSV export.

use super::meetings::load_meeting;
use super::{Done, Json, Path, done};
use crate::AdminState;
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor};
use crate::signin::{Participant, Signin, SigninResults, SubmitResult, results_csv};
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartSignin {
    deadline_ms: i64,
    /// Count submissions after the deadline as late instead of refusing them (default true).
    accept_late: Option<bool>,
}

/// Start a sign-in (host, co-host, owner, or a system admin of the meeting's org).
#[utoipa::path(post, path = "/api/v1/meetings/{id}/signins", tag = "signin", params(("id" = i64, Path)), request_body = StartSignin,
    responses((status = 200, body = Signin), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn start_signin(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<StartSignin>,
) -> ApiResult<axum::Json<Signin>> {
    let m = load_meeting(&state, &actor, id, Action::SigninManage).await?;
    if m.status == "cancelled" {
        return Err(ApiError::new(
            crate::ErrorCode::MeetingCancelled,
            "meeting is cancelled",
        ));
    }
    let s = state
        .start_signin(
            id,
            actor.user_id,
            b.deadline_ms,
            b.accept_late.unwrap_or(true),
        )
        .await?;
    state
        .audit_ok(
            &actor,
            "signin_start",
            format!("meeting:{id} signin:{}", s.id),
            &m.org_path,
            String::new(),
        )
        .await?;
    Ok(axum::Json(s))
}

async fn load_signin(state: &AdminState, meeting_id: i64, sid: i64) -> ApiResult<Signin> {
    state
        .signin(sid)
        .await?
        .filter(|s| s.meeting_id == meeting_id)
        .ok_or_else(|| ApiError::not_found("sign-in"))
}

/// Live results: signed, late and absent per invitee and per organisation.
#[utoipa::path(get, path = "/api/v1/meetings/{id}/signins/{sid}", tag = "signin", params(("id" = i64, Path), ("sid" = i64, Path)),
    responses((status = 200, body = SigninResults), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_signin(
    State(state): State<AdminState>,
    actor: Actor,
    Path((id, sid)): Path<(i64, i64)>,
) -> ApiResult<axum::Json<SigninResults>> {
    load_meeting(&state, &actor, id, Action::SigninManage).await?;
    let s = load_signin(&state, id, sid).await?;
    Ok(axum::Json(state.signin_results(&s).await?))
}

/// End a sign-in; later submissions are refused.
#[utoipa::path(post, path = "/api/v1/meetings/{id}/signins/{sid}/end", tag = "signin", params(("id" = i64, Path), ("sid" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn end_signin(
    State(state): State<AdminState>,
    actor: Actor,
    Path((id, sid)): Path<(i64, i64)>,
) -> ApiResult<axum::Json<Done>> {
    let m = load_meeting(&state, &actor, id, Action::SigninManage).await?;
    load_signin(&state, id, sid).await?;
    state.end_signin(sid).await?;
    state
        .audit_ok(
            &actor,
            "signin_end",
            format!("meeting:{id} signin:{sid}"),
            &m.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}

/// Sign oneself in (idempotent: a repeat returns the first record).
#[utoipa::path(post, path = "/api/v1/meetings/{id}/signins/{sid}/submit", tag = "signin", params(("id" = i64, Path), ("sid" = i64, Path)),
    responses((status = 200, body = SubmitResult), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn submit_signin(
    State(state): State<AdminState>,
    actor: Actor,
    Path((id, sid)): Path<(i64, i64)>,
) -> ApiResult<axum::Json<SubmitResult>> {
    load_meeting(&state, &actor, id, Action::SigninSubmit).await?;
    let s = load_signin(&state, id, sid).await?;
    let who = Participant::User {
        id: actor.user_id,
        name: actor.name.clone(),
        org_id: actor.org_id,
    };
    Ok(axum::Json(state.submit_signin(&s, &who, 1, "api").await?))
}

/// Results as CSV (UTF-8 with BOM). Contains no phone numbers.
#[utoipa::path(get, path = "/api/v1/meetings/{id}/signins/{sid}/csv", tag = "signin", params(("id" = i64, Path), ("sid" = i64, Path)),
    responses((status = 200, content_type = "text/csv", body = String), (status = 403, body = ApiError)))]
pub(crate) async fn export_signin(
    State(state): State<AdminState>,
    actor: Actor,
    Path((id, sid)): Path<(i64, i64)>,
) -> ApiResult<axum::response::Response> {
    let m = load_meeting(&state, &actor, id, Action::SigninManage).await?;
    let s = load_signin(&state, id, sid).await?;
    let r = state.signin_results(&s).await?;
    state
        .audit_ok(
            &actor,
            "signin_export",
            format!("meeting:{id} signin:{sid}"),
            &m.org_path,
            String::new(),
        )
        .await?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/csv; charset=utf-8".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"signin-{}-{sid}.csv\"", m.number),
            ),
        ],
        results_csv(&r),
    )
        .into_response())
}
