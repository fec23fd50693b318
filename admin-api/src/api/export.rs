//! Exports: users (CSV or XLSX, never with hidden phone numbers) and sign-in results
//! as XLSX (the CSV is in `signins.rs`).

use super::Query;
use super::meetings::load_meeting;
use crate::AdminState;
use crate::error::{ApiError, ApiResult};
use crate::export::ExportFormat;
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportQuery {
    /// Export this organisation's subtree (default: the caller's scope root).
    org_id: Option<i64>,
    /// `csv` (default) or `xlsx`.
    format: Option<ExportFormat>,
}

/// Export the users of a subtree in the import's columns (`org` relative to `org_id`).
/// Hidden phone numbers are left out: such a user's `phone` is empty.
#[utoipa::path(get, path = "/api/v1/users/export", tag = "users", params(ExportQuery),
    responses((status = 200, content((String = "text/csv"), (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn export_users(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ExportQuery>,
) -> ApiResult<axum::response::Response> {
    let org = match q.org_id {
        Some(id) => state.org(id).await?,
        None => {
            let path = actor
                .scope_path
                .clone()
                .unwrap_or_else(|| actor.org_path.clone());
            state.org(super::path_leaf(&path)).await?
        }
    }
    .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::UserRead, &Target::Org(&org.path))
        .await?;
    let format = q.format.unwrap_or(ExportFormat::Csv);
    let out = state.export_users(org.id, format).await?;
    state
        .audit_ok(
            &actor,
            "user_export",
            format!("org:{}", org.id),
            &org.path,
            format!("{} users as {}", out.users, format.extension()),
        )
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE, format.media_type().to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"users-{}.{}\"",
                    org.id,
                    format.extension()
                ),
            ),
        ],
        out.bytes,
    )
        .into_response())
}

/// Sign-in results as XLSX: a sheet per participant and one per organisation. Contains
/// no phone numbers.
#[utoipa::path(get, path = "/api/v1/meetings/{id}/signins/{sid}/xlsx", tag = "signin", params(("id" = i64, Path), ("sid" = i64, Path)),
    responses((status = 200, content((Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn export_signin_xlsx(
    State(state): State<AdminState>,
    actor: Actor,
    super::Path((id, sid)): super::Path<(i64, i64)>,
) -> ApiResult<axum::response::Response> {
    let m = load_meeting(&state, &actor, id, Action::SigninManage).await?;
    let s = state
        .signin(sid)
        .await?
        .filter(|s| s.meeting_id == id)
        .ok_or_else(|| ApiError::not_found("sign-in"))?;
    let r = state.signin_results(&s).await?;
    let bytes = crate::xlsx::signin_results_xlsx(&r, state.now_ms())?;
    state
        .audit_ok(
            &actor,
            "signin_export",
            format!("meeting:{id} signin:{sid}"),
            &m.org_path,
            "xlsx".into(),
        )
        .await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                crate::xlsx::XLSX_MEDIA_TYPE.to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"signin-{}-{sid}.xlsx\"", m.number),
            ),
        ],
        bytes,
    )
        .into_response())
}
