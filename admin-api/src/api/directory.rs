//! The participant-facing directory: any signed-in account may look people up to
//! invite them. Hidden phone numbers are neither shown nor searchable here.

use super::{Query, path_leaf};
use crate::AdminState;
use crate::directory::{DirectoryEntry, Org, UserOrder, clean, page};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchDirectory {
    /// Default: the whole tree.
    org_id: Option<i64>,
    q: Option<String>,
    /// `tree` (default): grouped by organisation; `name`: by name.
    #[param(inline)]
    order: Option<UserOrder>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Search people (name, pinyin initials, visible phone numbers).
#[utoipa::path(get, path = "/api/v1/directory/users", tag = "directory", params(SearchDirectory),
    responses((status = 200, body = [DirectoryEntry]), (status = 401, body = ApiError)))]
pub(crate) async fn search_directory(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<SearchDirectory>,
) -> ApiResult<axum::Json<Vec<DirectoryEntry>>> {
    let path = match q.org_id {
        Some(id) => {
            state
                .org(id)
                .await?
                .ok_or_else(|| ApiError::not_found("organisation"))?
                .path
        }
        None => state.root_path().to_owned(),
    };
    state
        .authorize(&actor, Action::DirectoryBrowse, &Target::Org(&path))
        .await?;
    let (limit, offset) = page(q.limit, q.offset);
    let search = q.q.as_deref().map(|s| clean("q", s, 0, 100)).transpose()?;
    let users = state
        .list_users(
            &path,
            true,
            search.as_deref(),
            true,
            q.order.unwrap_or_default(),
            limit,
            offset,
        )
        .await?
        .into_iter()
        .filter(|u| u.status == "active")
        .map(DirectoryEntry::from)
        .collect();
    Ok(axum::Json(users))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectoryOrgs {
    /// Default: the root organisation itself.
    parent_id: Option<i64>,
}

/// Browse the organisation tree (for choosing invitees).
#[utoipa::path(get, path = "/api/v1/directory/orgs", tag = "directory", params(DirectoryOrgs),
    responses((status = 200, body = [Org]), (status = 401, body = ApiError)))]
pub(crate) async fn directory_orgs(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<DirectoryOrgs>,
) -> ApiResult<axum::Json<Vec<Org>>> {
    state
        .authorize(
            &actor,
            Action::DirectoryBrowse,
            &Target::Org(state.root_path()),
        )
        .await?;
    match q.parent_id {
        Some(p) => Ok(axum::Json(state.org_children(p).await?)),
        None => Ok(axum::Json(
            state
                .org(path_leaf(state.root_path()))
                .await?
                .into_iter()
                .collect(),
        )),
    }
}
