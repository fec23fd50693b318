//! Recording catalogue: list, show, share, delete.

use super::{Done, Json, Path, Query, done};
use crate::AdminState;
use crate::directory::page;
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use crate::recordings::Recording;
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListRecordings {
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Recordings I own or that are shared with me.
#[utoipa::path(get, path = "/api/v1/recordings", tag = "recordings", params(ListRecordings),
    responses((status = 200, body = [Recording]), (status = 401, body = ApiError)))]
pub(crate) async fn list_recordings(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ListRecordings>,
) -> ApiResult<axum::Json<Vec<Recording>>> {
    state
        .authorize(&actor, Action::OwnAccount, &Target::Global)
        .await?;
    let (limit, offset) = page(q.limit, q.offset);
    Ok(axum::Json(
        state.list_recordings(actor.user_id, limit, offset).await?,
    ))
}

async fn load(state: &AdminState, actor: &Actor, id: i64, action: Action) -> ApiResult<Recording> {
    let rec = state
        .recording(id)
        .await?
        .ok_or_else(|| ApiError::not_found("recording"))?;
    let shared = state.recording_shared_with(&rec, actor.user_id);
    state
        .authorize(
            actor,
            action,
            &Target::Recording {
                org_path: &rec.org_path,
                owner_id: rec.owner_id,
                shared,
            },
        )
        .await?;
    Ok(rec)
}

/// One recording with its files and shares.
#[utoipa::path(get, path = "/api/v1/recordings/{id}", tag = "recordings", params(("id" = i64, Path)),
    responses((status = 200, body = Recording), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_recording(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Recording>> {
    Ok(axum::Json(
        load(&state, &actor, id, Action::RecordingRead).await?,
    ))
}

/// Delete a recording from the catalogue (the recorder removes the files).
#[utoipa::path(delete, path = "/api/v1/recordings/{id}", tag = "recordings", params(("id" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn delete_recording(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Done>> {
    let rec = load(&state, &actor, id, Action::RecordingWrite).await?;
    state.delete_recording(id).await?;
    state
        .audit_ok(
            &actor,
            "recording_delete",
            format!("recording:{id}"),
            &rec.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shares {
    /// Replaces the current share list.
    user_ids: Vec<i64>,
    /// When the shares stop working; absent: never.
    expires_at_ms: Option<i64>,
}

/// Share a recording with chosen users (replaces the list).
#[utoipa::path(put, path = "/api/v1/recordings/{id}/shares", tag = "recordings", params(("id" = i64, Path)), request_body = Shares,
    responses((status = 200, body = Recording), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn set_shares(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<Shares>,
) -> ApiResult<axum::Json<Recording>> {
    let rec = load(&state, &actor, id, Action::RecordingWrite).await?;
    state
        .set_recording_shares(id, &b.user_ids, b.expires_at_ms)
        .await?;
    state
        .audit_ok(
            &actor,
            "recording_share",
            format!("recording:{id}"),
            &rec.org_path,
            format!("{} users", b.user_ids.len()),
        )
        .await?;
    Ok(axum::Json(
        state
            .recording(id)
            .await?
            .ok_or_else(|| ApiError::not_found("recording"))?,
    ))
}
