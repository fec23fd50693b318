//! Terminals: room systems over SIP, H.323 (through the bridge) or WebRTC.

use super::{Done, Json, Path, Query, done};
use crate::AdminState;
use crate::directory::{Terminal, TerminalProtocol, UserStatus, clean, join_tags, page};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListTerminals {
    /// Default: the caller's scope root; always includes the subtree.
    org_id: Option<i64>,
    q: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Terminals of an organisation subtree.
#[utoipa::path(get, path = "/api/v1/terminals", tag = "terminals", params(ListTerminals),
    responses((status = 200, body = [Terminal]), (status = 403, body = ApiError)))]
pub(crate) async fn list_terminals(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ListTerminals>,
) -> ApiResult<axum::Json<Vec<Terminal>>> {
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
        .authorize(&actor, Action::TerminalRead, &Target::Org(&path))
        .await?;
    let (limit, offset) = page(q.limit, q.offset);
    let search = q.q.as_deref().map(|s| clean("q", s, 0, 100)).transpose()?;
    Ok(axum::Json(
        state
            .list_terminals(&path, search.as_deref(), limit, offset)
            .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTerminal {
    name: String,
    org_id: i64,
    protocol: TerminalProtocol,
    /// SIP URI, H.323 alias/IP, or WebRTC device id.
    address: String,
    /// e.g. `["h264", "h265", "1080p", "dual_stream"]`
    #[serde(default)]
    capabilities: Vec<String>,
}

/// Register a terminal.
#[utoipa::path(post, path = "/api/v1/terminals", tag = "terminals", request_body = CreateTerminal,
    responses((status = 200, body = Terminal), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn create_terminal(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<CreateTerminal>,
) -> ApiResult<axum::Json<Terminal>> {
    let org = state
        .org(b.org_id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::TerminalWrite, &Target::Org(&org.path))
        .await?;
    let name = clean("name", &b.name, 1, 100)?;
    let address = clean("address", &b.address, 1, 256)?;
    let caps = join_tags(&b.capabilities)?;
    let t = state
        .create_terminal(&name, b.org_id, b.protocol, &address, &caps)
        .await?;
    state
        .audit_ok(
            &actor,
            "terminal_create",
            format!("terminal:{}", t.id),
            &t.org_path,
            name,
        )
        .await?;
    Ok(axum::Json(t))
}

/// One terminal.
#[utoipa::path(get, path = "/api/v1/terminals/{id}", tag = "terminals", params(("id" = i64, Path)),
    responses((status = 200, body = Terminal), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_terminal(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Terminal>> {
    let t = state
        .terminal(id)
        .await?
        .ok_or_else(|| ApiError::not_found("terminal"))?;
    state
        .authorize(&actor, Action::TerminalRead, &Target::Org(&t.org_path))
        .await?;
    Ok(axum::Json(t))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTerminal {
    name: Option<String>,
    org_id: Option<i64>,
    protocol: Option<TerminalProtocol>,
    address: Option<String>,
    capabilities: Option<Vec<String>>,
    status: Option<UserStatus>,
}

/// Change a terminal.
#[utoipa::path(patch, path = "/api/v1/terminals/{id}", tag = "terminals", params(("id" = i64, Path)), request_body = UpdateTerminal,
    responses((status = 200, body = Terminal), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn update_terminal(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<UpdateTerminal>,
) -> ApiResult<axum::Json<Terminal>> {
    let t = state
        .terminal(id)
        .await?
        .ok_or_else(|| ApiError::not_found("terminal"))?;
    state
        .authorize(&actor, Action::TerminalWrite, &Target::Org(&t.org_path))
        .await?;
    if let Some(o) = b.org_id {
        let org = state
            .org(o)
            .await?
            .ok_or_else(|| ApiError::not_found("organisation"))?;
        state
            .authorize(&actor, Action::TerminalWrite, &Target::Org(&org.path))
            .await?;
    }
    state
        .update_terminal(
            id,
            b.name
                .as_deref()
                .map(|n| clean("name", n, 1, 100))
                .transpose()?,
            b.org_id,
            b.protocol,
            b.address
                .as_deref()
                .map(|a| clean("address", a, 1, 256))
                .transpose()?,
            b.capabilities.as_deref().map(join_tags).transpose()?,
            b.status,
        )
        .await?;
    let after = state
        .terminal(id)
        .await?
        .ok_or_else(|| ApiError::not_found("terminal"))?;
    state
        .audit_ok(
            &actor,
            "terminal_update",
            format!("terminal:{id}"),
            &after.org_path,
            String::new(),
        )
        .await?;
    Ok(axum::Json(after))
}

/// Remove a terminal (one that was ever booked is disabled instead, keeping history).
#[utoipa::path(delete, path = "/api/v1/terminals/{id}", tag = "terminals", params(("id" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn delete_terminal(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Done>> {
    let t = state
        .terminal(id)
        .await?
        .ok_or_else(|| ApiError::not_found("terminal"))?;
    state
        .authorize(&actor, Action::TerminalWrite, &Target::Org(&t.org_path))
        .await?;
    state.delete_terminal(id).await?;
    state
        .audit_ok(
            &actor,
            "terminal_delete",
            format!("terminal:{id}"),
            &t.org_path,
            t.name,
        )
        .await?;
    Ok(done())
}
