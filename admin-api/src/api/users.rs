//! Users (system admin, within scope). The only routes that show hidden phone numbers.

use super::{Json, Path, Query};
use crate::AdminState;
use crate::directory::{
    AdminUserView, NewUser, UserOrder, UserStatus, check_email, check_username, clean, clean_phone,
    join_tags, page,
};
use crate::error::{ApiError, ApiResult};
use crate::policy::{Action, Actor, Target};
use axum::extract::State;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListUsers {
    /// Default: the caller's scope root.
    org_id: Option<i64>,
    /// Include every org below `org_id` (default true).
    subtree: Option<bool>,
    /// Name, user name, pinyin initials or phone fragment.
    q: Option<String>,
    /// `tree` (default): grouped by organisation, depth first, by name within each;
    /// `name`: by name across the subtree (slower on large subtrees).
    #[param(inline)]
    order: Option<UserOrder>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Users of an organisation (and its subtree), with search and paging.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(ListUsers),
    responses((status = 200, body = [AdminUserView]), (status = 403, body = ApiError)))]
pub(crate) async fn list_users(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ListUsers>,
) -> ApiResult<axum::Json<Vec<AdminUserView>>> {
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
        .authorize(&actor, Action::UserRead, &Target::Org(&path))
        .await?;
    let (limit, offset) = page(q.limit, q.offset);
    let search = q.q.as_deref().map(|s| clean("q", s, 0, 100)).transpose()?;
    let users = state
        .list_users(
            &path,
            q.subtree.unwrap_or(true),
            search.as_deref(),
            false,
            q.order.unwrap_or_default(),
            limit,
            offset,
        )
        .await?;
    Ok(axum::Json(users))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUser {
    /// Login name: 2..=64 of letters, digits, `.`, `_`, `-`, `@`.
    username: String,
    name: String,
    org_id: i64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    tags: Vec<String>,
    phone: Option<String>,
    #[serde(default)]
    phone_hidden: bool,
    email: Option<String>,
    /// Initial one-time password (must be changed at first login). Without it the
    /// account cannot log in until the security admin sets one.
    password: Option<String>,
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 200, body = AdminUserView), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn create_user(
    State(state): State<AdminState>,
    actor: Actor,
    Json(b): Json<CreateUser>,
) -> ApiResult<axum::Json<AdminUserView>> {
    let org = state
        .org(b.org_id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::UserWrite, &Target::Org(&org.path))
        .await?;
    let nu = NewUser {
        username: check_username(&b.username)?,
        name: clean("name", &b.name, 1, 100)?,
        org_id: b.org_id,
        title: clean("title", &b.title, 0, 100)?,
        tags: join_tags(&b.tags)?,
        phone: clean_phone(b.phone.as_deref())?,
        phone_hidden: b.phone_hidden,
        email: check_email(b.email.as_deref())?,
    };
    if let Some(pw) = &b.password {
        // Check the policy before creating, so a weak password creates nothing.
        state
            .password_policy()
            .await?
            .check(pw, &nu.username)
            .map_err(|m| ApiError::new(crate::ErrorCode::PasswordPolicy, m))?;
    }
    let u = state.create_user(&nu).await?;
    if let Some(pw) = &b.password {
        state.set_password(u.id, &u.username, pw, true).await?;
    }
    // The audit detail names the account, never its phone or e-mail.
    state
        .audit_ok(
            &actor,
            "user_create",
            format!("user:{}", u.id),
            &u.org_path,
            u.username.clone(),
        )
        .await?;
    Ok(axum::Json(u))
}

/// One user (admin view).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = AdminUserView), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn get_user(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<AdminUserView>> {
    let u = state
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    state
        .authorize(&actor, Action::UserRead, &Target::Org(&u.org_path))
        .await?;
    Ok(axum::Json(u))
}

/// `Some(None)` when the field is present as `null`, `None` when absent.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    name: Option<String>,
    org_id: Option<i64>,
    title: Option<String>,
    tags: Option<Vec<String>>,
    /// `null` removes the number.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    phone: Option<Option<String>>,
    phone_hidden: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    status: Option<UserStatus>,
}

/// Change a user's directory data or status (disabling ends their sessions).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), request_body = UpdateUser,
    responses((status = 200, body = AdminUserView), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
pub(crate) async fn update_user(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<i64>,
    Json(b): Json<UpdateUser>,
) -> ApiResult<axum::Json<AdminUserView>> {
    let u = state
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    state
        .authorize(&actor, Action::UserWrite, &Target::Org(&u.org_path))
        .await?;
    if let Some(o) = b.org_id {
        let org = state
            .org(o)
            .await?
            .ok_or_else(|| ApiError::not_found("organisation"))?;
        state
            .authorize(&actor, Action::UserWrite, &Target::Org(&org.path))
            .await?;
    }
    // An admin's own account and other admins' accounts belong to the security admin
    // where their rights are concerned; directory data of them the system admin keeps,
    // but nobody disables their own account by accident.
    if b.status == Some(UserStatus::Disabled) && id == actor.user_id {
        return Err(ApiError::field(
            "status",
            "you cannot disable your own account",
        ));
    }
    state
        .update_user(
            id,
            b.name
                .as_deref()
                .map(|n| clean("name", n, 1, 100))
                .transpose()?,
            b.org_id,
            b.title
                .as_deref()
                .map(|t| clean("title", t, 0, 100))
                .transpose()?,
            b.tags.as_deref().map(join_tags).transpose()?,
            b.phone
                .as_ref()
                .map(|p| clean_phone(p.as_deref()))
                .transpose()?,
            b.phone_hidden,
            b.email
                .as_ref()
                .map(|e| check_email(e.as_deref()))
                .transpose()?,
            b.status,
        )
        .await?;
    let after = state
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let mut changed = Vec::new();
    for (f, present) in [
        ("name", b.name.is_some()),
        ("org", b.org_id.is_some()),
        ("title", b.title.is_some()),
        ("tags", b.tags.is_some()),
        ("phone", b.phone.is_some()),
        ("phone_hidden", b.phone_hidden.is_some()),
        ("email", b.email.is_some()),
        ("status", b.status.is_some()),
    ] {
        if present {
            changed.push(f);
        }
    }
    state
        .audit_ok(
            &actor,
            "user_update",
            format!("user:{id}"),
            &after.org_path,
            format!("changed: {}", changed.join(",")),
        )
        .await?;
    Ok(axum::Json(after))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportQuery {
    /// Organisation the CSV's `org` column is relative to.
    org_id: i64,
    /// Create missing organisations (default false).
    create_orgs: Option<bool>,
}

/// Bulk import users from CSV (`Content-Type: text/csv`) or the first sheet of an XLSX
/// workbook (its media type): columns `username`, `name`,
/// `org` (path of names below `org_id`, `/`-separated), optional `title`, `phone`,
/// `phone_hidden`, `email`, `tags` (`;`-separated). Bad rows are reported, not fatal.
#[utoipa::path(post, path = "/api/v1/users/import", tag = "users", params(ImportQuery),
    request_body(content((String = "text/csv"), (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"))),
    responses((status = 200, body = crate::import::ImportReport), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 413, body = ApiError), (status = 415, body = ApiError)))]
pub(crate) async fn import_users(
    State(state): State<AdminState>,
    actor: Actor,
    Query(q): Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<axum::Json<crate::import::ImportReport>> {
    let org = state
        .org(q.org_id)
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    state
        .authorize(&actor, Action::UserWrite, &Target::Org(&org.path))
        .await?;
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let xlsx = ct.starts_with(crate::xlsx::XLSX_MEDIA_TYPE);
    if !ct.starts_with("text/csv") && !xlsx {
        return Err(ApiError::new(
            crate::ErrorCode::UnsupportedMediaType,
            "expected Content-Type: text/csv or application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ));
    }
    let data = axum::body::to_bytes(body, state.config().max_import_bytes)
        .await
        .map_err(|_| ApiError::new(crate::ErrorCode::PayloadTooLarge, "import file too large"))?;
    let opts = crate::import::ImportOptions {
        root_org_id: q.org_id,
        create_orgs: q.create_orgs.unwrap_or(false),
    };
    let report = if xlsx {
        state.import_users_xlsx(&data, opts, &|_| {}).await?
    } else {
        state.import_users_csv(&data, opts, &|_| {}).await?
    };
    state
        .audit_ok(
            &actor,
            "user_import",
            format!("org:{}", q.org_id),
            &org.path,
            format!(
                "rows {} created {} failed {} orgs {}",
                report.rows, report.created, report.failed, report.orgs_created
            ),
        )
        .await?;
    Ok(axum::Json(report))
}
