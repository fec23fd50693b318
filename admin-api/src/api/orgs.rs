//! Organisation tree (system admin, within scope).

use super::{Done, Json, Path, Query, done, path_leaf};
use crate::AdminState;
use crate::directory::{Org, clean};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListOrgs {
    /// Parent whose children to list; default: the caller's scope root (which is
    /// returned itself when `parent_id` is absent).
    parent_id: Option<i64>,
}

/// List the children of an organisation (default: the caller's scope root itself).
#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs", params(ListOrgs),
    responses((status = 200, body = [Org]), (status = 403, body = ApiError)))]
pub(crate) async fn list_orgs(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ListOrgs>,
) -> ApiResult<axum::Json<Vec<Org>>> {
    match q.parent_id {
        Some(pid) => {
            let parent = state
                .org(pid)
                .await?
                .ok_or_else(|| ApiError::not_found("organisation"))?;
            state
                .authorize(&actor, Action::OrgRead, &Target::Org(&parent.path))
                .await?;
            Ok(axum::Json(state.org_children(pid).await?))
        }
        None => {
            let scope = actor
                .scope_path
                .clone()
                .unwrap_or_else(|| actor.org_path.clone());
            state
                .authorize(&actor, Action::OrgRead, &Target::Org(&scope))
                .await?;
            let root = state
                .org(path_leaf(&scope))
                .await?
                .ok_or_else(|| ApiError::not_found("organisation"))?;
            Ok(axum::Json(vec![root]))
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrg {
    parent_id: i64,
    /// 1..=100 characters, any script.
    name: String,
    #[serde(default)]
    sort: i64,
}

/// Create an organisation under `parent_id`.
#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = CreateOrg,
    responses((status = 200, body = Org), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn create_org(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<CreateOrg>,
) -> ApiResult<axum::Json<Org>> {
    let parent = state
        .org(b.parent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("parent organisation"))?;
    state
        .authorize(&actor, Action::OrgWrite, &Target::Org(&parent.path))
        .await?;
    let name = clean("name", &b.name, 1, 100)?;
    let org = state.create_org(b.parent_id, &name, b.sort).await?;
    state
        .audit_ok(
            &actor,
            "org_create",
            format!("org:{}", org.id),
            &org.path,
            name,
        )
        .await?;
    Ok(axum::Json(org))
}

/// One organisation.
#[utoipa::path(get, path = "/api/v1/orgs/{id}", tag = "orgs", params(("id" = i64, Path)),
    responses((status = 200, body = Org), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_org(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Org>> {
    let org = state
        .org(id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::OrgRead, &Target::Org(&org.path))
        .await?;
    Ok(axum::Json(org))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateOrg {
    name: Option<String>,
    sort: Option<i64>,
}

/// Rename or re-sort an organisation (not the caller's own scope root).
#[utoipa::path(patch, path = "/api/v1/orgs/{id}", tag = "orgs", params(("id" = i64, Path)), request_body = UpdateOrg,
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn update_org(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<UpdateOrg>,
) -> ApiResult<axum::Json<Done>> {
    let org = state
        .org(id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::OrgWrite, &Target::OrgItself(&org.path))
        .await?;
    let name = b
        .name
        .as_deref()
        .map(|n| clean("name", n, 1, 100))
        .transpose()?;
    state.update_org(id, name.as_deref(), b.sort).await?;
    state
        .audit_ok(
            &actor,
            "org_update",
            format!("org:{id}"),
            &org.path,
            name.unwrap_or_default(),
        )
        .await?;
    Ok(done())
}

/// Delete an empty organisation.
#[utoipa::path(delete, path = "/api/v1/orgs/{id}", tag = "orgs", params(("id" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn delete_org(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Done>> {
    let org = state
        .org(id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::OrgWrite, &Target::OrgItself(&org.path))
        .await?;
    state.delete_org(id).await?;
    state
        .audit_ok(
            &actor,
            "org_delete",
            format!("org:{id}"),
            &org.path,
            org.name,
        )
        .await?;
    Ok(done())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveOrg {
    new_parent_id: i64,
}

/// Move an organisation and its whole subtree under another parent.
#[utoipa::path(post, path = "/api/v1/orgs/{id}/move", tag = "orgs", params(("id" = i64, Path)), request_body = MoveOrg,
    responses((status = 200, body = Org), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn move_org(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<MoveOrg>,
) -> ApiResult<axum::Json<Org>> {
    let org = state
        .org(id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    let parent = state
        .org(b.new_parent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("new parent organisation"))?;
    state
        .authorize(&actor, Action::OrgWrite, &Target::OrgItself(&org.path))
        .await?;
    state
        .authorize(&actor, Action::OrgWrite, &Target::Org(&parent.path))
        .await?;
    let moved = state.move_org(id, b.new_parent_id).await?;
    state
        .audit_ok(
            &actor,
            "org_move",
            format!("org:{id}"),
            &moved.path,
            format!("from {} to {}", org.path, moved.path),
        )
        .await?;
    Ok(axum::Json(moved))
}
