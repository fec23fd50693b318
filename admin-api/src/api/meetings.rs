//! Meeting scheduling: the REST API other systems integrate with.

use super::{Done, Json, Path, Query, done};
use crate::AdminState;
use crate::directory::{clean, page};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::meetings::{Invitees, Meeting, MeetingDraft, MeetingQuery, Recurrence};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListMeetings {
    /// `mine` (default): meetings I own, host, co-host or am invited to.
    /// `scope`: every meeting of my admin subtree (system admins).
    view: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    include_cancelled: Option<bool>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// List meetings.
#[utoipa::path(get, path = "/api/v1/meetings", tag = "meetings", params(ListMeetings),
    responses((status = 200, body = [Meeting]), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn list_meetings(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ListMeetings>,
) -> ApiResult<axum::Json<Vec<Meeting>>> {
    let (limit, offset) = page(q.limit, q.offset);
    let org_scope = match q.view.as_deref() {
        None | Some("mine") => {
            state
                .authorize(&actor, Action::OwnAccount, &Target::Global)
                .await?;
            None
        }
        Some("scope") => {
            let scope = actor
                .scope_path
                .clone()
                .unwrap_or_else(|| actor.org_path.clone());
            // Reading every meeting of a subtree is the system admin's business.
            state
                .authorize(&actor, Action::OrgRead, &Target::Org(&scope))
                .await?;
            Some(scope)
        }
        Some(_) => return Err(ApiError::field("view", "mine or scope")),
    };
    let mq = MeetingQuery {
        org_scope,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        include_cancelled: q.include_cancelled.unwrap_or(false),
        limit,
        offset,
    };
    Ok(axum::Json(state.list_meetings(&actor, &mq).await?))
}

fn default_layout() -> String {
    "auto".into()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateMeeting {
    title: String,
    starts_at_ms: i64,
    /// `null` or absent: no time limit.
    duration_minutes: Option<i64>,
    recurrence: Option<Recurrence>,
    /// Default: the caller's own organisation.
    org_id: Option<i64>,
    /// Default: the caller.
    host_id: Option<i64>,
    #[serde(default)]
    cohost_ids: Vec<i64>,
    #[serde(default)]
    invitees: Invitees,
    /// 4..=12 digits.
    passcode: Option<String>,
    #[serde(default)]
    directory_only: bool,
    #[serde(default)]
    locked: bool,
    #[serde(default = "default_layout")]
    layout: String,
    #[serde(default)]
    recording: bool,
}

async fn meeting_org_path(
    state: &AdminState,
    actor: &Actor,
    org_id: Option<i64>,
) -> ApiResult<(i64, String)> {
    match org_id {
        None => Ok((actor.org_id, actor.org_path.clone())),
        Some(id) => Ok((
            id,
            state
                .org(id)
                .await?
                .ok_or_else(|| ApiError::not_found("organisation"))?
                .path,
        )),
    }
}

/// Schedule a meeting; the caller owns it. A dialable number is allocated.
#[utoipa::path(post, path = "/api/v1/meetings", tag = "meetings", request_body = CreateMeeting,
    responses((status = 200, body = Meeting), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn create_meeting(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<CreateMeeting>,
) -> ApiResult<axum::Json<Meeting>> {
    let (org_id, org_path) = meeting_org_path(&state, &actor, b.org_id).await?;
    state
        .authorize(&actor, Action::MeetingCreate, &Target::Org(&org_path))
        .await?;
    let draft = MeetingDraft {
        title: clean("title", &b.title, 1, 200)?,
        org_id,
        host_id: b.host_id.unwrap_or(actor.user_id),
        cohost_ids: b.cohost_ids,
        starts_at_ms: b.starts_at_ms,
        duration_minutes: b.duration_minutes,
        recurrence: b.recurrence,
        passcode: b.passcode,
        directory_only: b.directory_only,
        locked: b.locked,
        layout: clean("layout", &b.layout, 1, 32)?,
        recording: b.recording,
        invitees: b.invitees,
    };
    let m = state.create_meeting(actor.user_id, &draft).await?;
    state
        .audit_ok(
            &actor,
            "meeting_create",
            format!("meeting:{}", m.id),
            &m.org_path,
            format!("number {}", m.number),
        )
        .await?;
    Ok(axum::Json(m))
}

pub(crate) async fn load_meeting(
    state: &AdminState,
    actor: &Actor,
    id: i64,
    action: Action,
) -> ApiResult<Meeting> {
    let m = state
        .meeting(id)
        .await?
        .ok_or_else(|| ApiError::not_found("meeting"))?;
    let invited = match action {
        Action::MeetingRead | Action::SigninSubmit => state.is_invited(id, actor.user_id).await?,
        _ => false,
    };
    state
        .authorize(actor, action, &Target::Meeting(m.as_target(invited)))
        .await?;
    Ok(m)
}

/// One meeting.
#[utoipa::path(get, path = "/api/v1/meetings/{id}", tag = "meetings", params(("id" = i64, Path)),
    responses((status = 200, body = Meeting), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_meeting(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Meeting>> {
    Ok(axum::Json(
        load_meeting(&state, &actor, id, Action::MeetingRead).await?,
    ))
}

fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateMeeting {
    title: Option<String>,
    starts_at_ms: Option<i64>,
    /// `null`: no time limit.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    duration_minutes: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Recurrence>)]
    recurrence: Option<Option<Recurrence>>,
    org_id: Option<i64>,
    host_id: Option<i64>,
    cohost_ids: Option<Vec<i64>>,
    invitees: Option<Invitees>,
    /// `null` removes the passcode.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    passcode: Option<Option<String>>,
    directory_only: Option<bool>,
    locked: Option<bool>,
    layout: Option<String>,
    recording: Option<bool>,
}

/// Modify a meeting; absent fields keep their value.
#[utoipa::path(patch, path = "/api/v1/meetings/{id}", tag = "meetings", params(("id" = i64, Path)), request_body = UpdateMeeting,
    responses((status = 200, body = Meeting), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn update_meeting(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<UpdateMeeting>,
) -> ApiResult<axum::Json<Meeting>> {
    let m = load_meeting(&state, &actor, id, Action::MeetingWrite).await?;
    if m.status == "cancelled" {
        return Err(ApiError::new(
            ErrorCode::MeetingCancelled,
            "meeting is cancelled",
        ));
    }
    let org_id = match b.org_id {
        Some(o) if o != m.org_id => {
            let (o, path) = meeting_org_path(&state, &actor, Some(o)).await?;
            state
                .authorize(&actor, Action::MeetingCreate, &Target::Org(&path))
                .await?;
            o
        }
        _ => m.org_id,
    };
    let draft = MeetingDraft {
        title: match &b.title {
            Some(t) => clean("title", t, 1, 200)?,
            None => m.title.clone(),
        },
        org_id,
        host_id: b.host_id.unwrap_or(m.host_id),
        cohost_ids: b.cohost_ids.unwrap_or_else(|| m.cohost_ids.clone()),
        starts_at_ms: b.starts_at_ms.unwrap_or(m.starts_at_ms),
        duration_minutes: b.duration_minutes.unwrap_or(m.duration_minutes),
        recurrence: b.recurrence.unwrap_or_else(|| m.recurrence.clone()),
        passcode: b.passcode.unwrap_or_else(|| m.passcode.clone()),
        directory_only: b.directory_only.unwrap_or(m.directory_only),
        locked: b.locked.unwrap_or(m.locked),
        layout: match &b.layout {
            Some(l) => clean("layout", l, 1, 32)?,
            None => m.layout.clone(),
        },
        recording: b.recording.unwrap_or(m.recording),
        invitees: b.invitees.unwrap_or_else(|| m.invitees.clone()),
    };
    let after = state.update_meeting(id, &draft).await?;
    state
        .audit_ok(
            &actor,
            "meeting_update",
            format!("meeting:{id}"),
            &after.org_path,
            String::new(),
        )
        .await?;
    Ok(axum::Json(after))
}

/// Cancel a meeting (its number stops admitting joiners).
#[utoipa::path(post, path = "/api/v1/meetings/{id}/cancel", tag = "meetings", params(("id" = i64, Path)),
    responses((status = 200, body = Done), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn cancel_meeting(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Done>> {
    let m = load_meeting(&state, &actor, id, Action::MeetingWrite).await?;
    state.cancel_meeting(id).await?;
    state
        .audit_ok(
            &actor,
            "meeting_cancel",
            format!("meeting:{id}"),
            &m.org_path,
            String::new(),
        )
        .await?;
    Ok(done())
}
