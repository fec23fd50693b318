//! Organisation tree, users and terminals.
//!
//! The tree is stored with a materialised path (`/root/…/id/`): a subtree is a prefix
//! match, so "everything this admin may see" is one indexed condition at any depth,
//! and moving a subtree rewrites the prefix of its paths in one statement.

use crate::AdminState;
use crate::db::{Arg, Sql, flag, like_escape, lock_row};
use crate::error::{ApiError, ApiResult, Error, ErrorCode};
use crate::pinyin_index::initials;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Trim, and refuse control characters (NUL breaks PostgreSQL text) and bad lengths.
pub(crate) fn clean(field: &str, v: &str, min: usize, max: usize) -> ApiResult<String> {
    let t = v.trim();
    let n = t.chars().count();
    if n < min || n > max {
        return Err(ApiError::field(
            field,
            &format!("length must be {min}..={max} characters"),
        ));
    }
    if t.chars().any(|c| c.is_control()) {
        return Err(ApiError::field(
            field,
            "must not contain control characters",
        ));
    }
    Ok(t.to_owned())
}

pub(crate) fn clean_opt(field: &str, v: Option<&str>, max: usize) -> ApiResult<Option<String>> {
    match v {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => clean(field, s, 1, max).map(Some),
    }
}

pub(crate) fn clean_phone(v: Option<&str>) -> ApiResult<Option<String>> {
    let Some(p) = clean_opt("phone", v, 32)? else {
        return Ok(None);
    };
    if !p
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' '))
    {
        return Err(ApiError::field("phone", "digits, '+', '-' and spaces only"));
    }
    Ok(Some(p))
}

pub(crate) fn check_username(u: &str) -> ApiResult<String> {
    let u = clean("username", u, 2, 64)?;
    if !u
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(ApiError::field(
            "username",
            "letters, digits, '.', '_', '-', '@' only",
        ));
    }
    Ok(u)
}

pub(crate) fn check_email(e: Option<&str>) -> ApiResult<Option<String>> {
    let e = clean_opt("email", e, 254)?;
    if let Some(v) = &e
        && (!v.contains('@') || v.contains(' '))
    {
        return Err(ApiError::field("email", "not an e-mail address"));
    }
    Ok(e)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Org {
    pub id: i64,
    pub parent_id: Option<i64>,
    pub name: String,
    pub path: String,
    pub depth: i64,
    pub sort: i64,
}

fn org_from(r: &AnyRow) -> Result<Org, sqlx::Error> {
    Ok(Org {
        id: r.try_get("id")?,
        parent_id: r.try_get("parent_id")?,
        name: r.try_get("name")?,
        path: r.try_get("path")?,
        depth: r.try_get("depth")?,
        sort: r.try_get("sort")?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }
}

/// A user as an admin whose scope covers them sees it (the only view with hidden
/// phone numbers).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AdminUserView {
    pub id: i64,
    pub username: String,
    pub name: String,
    pub org_id: i64,
    pub org_path: String,
    pub title: String,
    pub tags: Vec<String>,
    pub phone: Option<String>,
    pub phone_hidden: bool,
    pub email: Option<String>,
    pub status: String,
    pub role: String,
}

/// A user as participants and terminals see them: a hidden phone is absent, always.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DirectoryEntry {
    pub id: i64,
    pub name: String,
    pub org_id: i64,
    pub title: String,
    /// Absent when the number is hidden.
    pub phone: Option<String>,
}

const USER_COLS: &str = "u.id, u.username, u.name, u.org_id, u.org_path, u.title, u.tags, \
     u.phone, u.phone_hidden, u.email, u.status, u.role";

/// The least string above every path that starts with `path` (paths are ASCII: digits
/// and `/`): `/1/5/` → `/1/50`, so `path <= p < upper` is the subtree as an index range.
pub(crate) fn subtree_upper(path: &str) -> String {
    let mut b = path.as_bytes().to_vec();
    match b.last_mut() {
        Some(last) if *last < 0x7f => {
            *last += 1;
            String::from_utf8(b).unwrap_or_else(|_| "\u{7f}".to_owned())
        }
        _ => format!("{path}\u{7f}"),
    }
}

/// How a user listing is ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserOrder {
    /// Grouped by organisation, depth first (an organisation's own members before its
    /// sub-organisations'), by name within each: what a directory tree shows, and a
    /// page costs the same at any subtree size.
    #[default]
    Tree,
    /// By name across the whole subtree: costs a sort of the subtree per page.
    Name,
}

fn admin_user_from(r: &AnyRow) -> Result<AdminUserView, sqlx::Error> {
    let tags: String = r.try_get("tags")?;
    Ok(AdminUserView {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        name: r.try_get("name")?,
        org_id: r.try_get("org_id")?,
        org_path: r.try_get("org_path")?,
        title: r.try_get("title")?,
        tags: split_tags(&tags),
        phone: r.try_get("phone")?,
        phone_hidden: r.try_get::<i64, _>("phone_hidden")? != 0,
        email: r.try_get("email")?,
        status: r.try_get("status")?,
        role: r.try_get("role")?,
    })
}

impl From<AdminUserView> for DirectoryEntry {
    fn from(u: AdminUserView) -> Self {
        DirectoryEntry {
            id: u.id,
            name: u.name,
            org_id: u.org_id,
            title: u.title,
            phone: if u.phone_hidden { None } else { u.phone },
        }
    }
}

fn split_tags(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn join_tags(tags: &[String]) -> ApiResult<String> {
    if tags.len() > 32 {
        return Err(ApiError::field("tags", "at most 32 tags"));
    }
    let mut out = Vec::with_capacity(tags.len());
    for t in tags {
        let t = clean("tags", t, 1, 32)?;
        if t.contains(',') {
            return Err(ApiError::field("tags", "a tag must not contain ','"));
        }
        out.push(t);
    }
    Ok(out.join(","))
}

/// A new user, already validated.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub name: String,
    pub org_id: i64,
    pub title: String,
    pub tags: String,
    pub phone: Option<String>,
    pub phone_hidden: bool,
    pub email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TerminalProtocol {
    #[serde(rename = "sip")]
    Sip,
    #[serde(rename = "h323")]
    H323,
    #[serde(rename = "webrtc")]
    WebRtc,
}

impl TerminalProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalProtocol::Sip => "sip",
            TerminalProtocol::H323 => "h323",
            TerminalProtocol::WebRtc => "webrtc",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "h323" => TerminalProtocol::H323,
            "webrtc" => TerminalProtocol::WebRtc,
            _ => TerminalProtocol::Sip,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Terminal {
    pub id: i64,
    pub name: String,
    pub org_id: i64,
    pub org_path: String,
    pub protocol: TerminalProtocol,
    pub address: String,
    pub capabilities: Vec<String>,
    pub status: String,
}

fn terminal_from(r: &AnyRow) -> Result<Terminal, sqlx::Error> {
    let p: String = r.try_get("protocol")?;
    let caps: String = r.try_get("capabilities")?;
    Ok(Terminal {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        org_id: r.try_get("org_id")?,
        org_path: r.try_get("org_path")?,
        protocol: TerminalProtocol::parse(&p),
        address: r.try_get("address")?,
        capabilities: split_tags(&caps),
        status: r.try_get("status")?,
    })
}

/// Paging bounds, clamped so no input makes a query misbehave.
pub(crate) fn page(limit: Option<i64>, offset: Option<i64>) -> (i64, i64) {
    (
        limit.unwrap_or(50).clamp(1, 500),
        offset.unwrap_or(0).clamp(0, 10_000_000),
    )
}

impl AdminState {
    pub async fn org(&self, id: i64) -> Result<Option<Org>, Error> {
        let r =
            sqlx::query("SELECT id, parent_id, name, path, depth, sort FROM orgs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.inner.db.pool)
                .await?;
        Ok(r.map(|r| org_from(&r)).transpose()?)
    }

    pub async fn org_children(&self, parent: i64) -> Result<Vec<Org>, Error> {
        let rows = sqlx::query(
            "SELECT id, parent_id, name, path, depth, sort FROM orgs WHERE parent_id = $1 ORDER BY sort, name",
        )
        .bind(parent)
        .fetch_all(&self.inner.db.pool)
        .await?;
        Ok(rows.iter().map(org_from).collect::<Result<_, _>>()?)
    }

    pub fn root_path(&self) -> &str {
        &self.inner.root_path
    }

    pub async fn create_org(&self, parent_id: i64, name: &str, sort: i64) -> ApiResult<Org> {
        let mut tx = self.inner.db.pool.begin().await?;
        lock_row(&mut tx, "lock:tree").await?;
        let parent = sqlx::query("SELECT path, depth FROM orgs WHERE id = $1")
            .bind(parent_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::not_found("parent organisation"))?;
        let ppath: String = parent.try_get("path").map_err(Error::from)?;
        let pdepth: i64 = parent.try_get("depth").map_err(Error::from)?;
        let dup: Option<i64> =
            sqlx::query_scalar("SELECT id FROM orgs WHERE parent_id = $1 AND name = $2")
                .bind(parent_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if dup.is_some() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a sibling organisation has this name",
            ));
        }
        let id = self.new_id();
        let path = format!("{ppath}{id}/");
        let now = self.now_ms();
        sqlx::query(
            "INSERT INTO orgs (id, parent_id, name, path, depth, sort, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(id)
        .bind(parent_id)
        .bind(name)
        .bind(&path)
        .bind(pdepth + 1)
        .bind(sort)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Org {
            id,
            parent_id: Some(parent_id),
            name: name.to_owned(),
            path,
            depth: pdepth + 1,
            sort,
        })
    }

    pub async fn update_org(
        &self,
        id: i64,
        name: Option<&str>,
        sort: Option<i64>,
    ) -> ApiResult<()> {
        let mut tx = self.inner.db.pool.begin().await?;
        lock_row(&mut tx, "lock:tree").await?;
        if let Some(name) = name {
            let dup: Option<i64> = sqlx::query_scalar(
                "SELECT o.id FROM orgs o JOIN orgs me ON me.id = $1 \
                 WHERE o.parent_id = me.parent_id AND o.name = $2 AND o.id <> $1",
            )
            .bind(id)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            if dup.is_some() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "a sibling organisation has this name",
                ));
            }
            sqlx::query("UPDATE orgs SET name = $1, updated_at = $2 WHERE id = $3")
                .bind(name)
                .bind(self.now_ms())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(sort) = sort {
            sqlx::query("UPDATE orgs SET sort = $1 WHERE id = $2")
                .bind(sort)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Move `id` (and everything below it) under `new_parent`. Refuses a move into its
    /// own subtree, which would make a cycle.
    pub async fn move_org(&self, id: i64, new_parent: i64) -> ApiResult<Org> {
        let mut tx = self.inner.db.pool.begin().await?;
        lock_row(&mut tx, "lock:tree").await?;
        let get = |id: i64| {
            sqlx::query("SELECT id, parent_id, name, path, depth, sort FROM orgs WHERE id = $1")
                .bind(id)
        };
        let node = org_from(
            &get(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::not_found("organisation"))?,
        )
        .map_err(Error::from)?;
        let parent = org_from(
            &get(new_parent)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| ApiError::not_found("new parent organisation"))?,
        )
        .map_err(Error::from)?;
        if node.parent_id.is_none() {
            return Err(ApiError::new(
                ErrorCode::OrgCycle,
                "the root organisation cannot move",
            ));
        }
        if parent.path.starts_with(&node.path) {
            return Err(ApiError::new(
                ErrorCode::OrgCycle,
                "cannot move an organisation into its own subtree",
            ));
        }
        let dup: Option<i64> =
            sqlx::query_scalar("SELECT id FROM orgs WHERE parent_id = $1 AND name = $2")
                .bind(new_parent)
                .bind(&node.name)
                .fetch_optional(&mut *tx)
                .await?;
        if dup.is_some() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the new parent already has an organisation of this name",
            ));
        }
        let new_path = format!("{}{}/", parent.path, id);
        let delta = parent.depth + 1 - node.depth;
        let old_len = i64::try_from(node.path.chars().count()).unwrap_or(i64::MAX);
        sqlx::query(
            "UPDATE orgs SET path = $1 || substr(path, CAST($2 AS INTEGER)), depth = depth + $3, updated_at = $4 \
             WHERE path LIKE $5 ESCAPE '\\'",
        )
        .bind(&new_path)
        .bind(old_len + 1)
        .bind(delta)
        .bind(self.now_ms())
        .bind(format!("{}%", like_escape(&node.path)))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE orgs SET parent_id = $1 WHERE id = $2")
            .bind(new_parent)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE users SET org_path = $1 || substr(org_path, CAST($2 AS INTEGER)) \
             WHERE org_path >= $3 AND org_path < $4",
        )
        .bind(&new_path)
        .bind(old_len + 1)
        .bind(&node.path)
        .bind(subtree_upper(&node.path))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Org {
            parent_id: Some(new_parent),
            path: new_path,
            depth: node.depth + delta,
            ..node
        })
    }

    /// Delete an empty organisation (no children, users, terminals or meetings).
    pub async fn delete_org(&self, id: i64) -> ApiResult<()> {
        let mut tx = self.inner.db.pool.begin().await?;
        lock_row(&mut tx, "lock:tree").await?;
        for (table, col) in [
            ("orgs", "parent_id"),
            ("users", "org_id"),
            ("users", "scope_org_id"),
            ("terminals", "org_id"),
            ("meetings", "org_id"),
        ] {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {col} = $1"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if n > 0 {
                return Err(ApiError::new(
                    ErrorCode::OrgNotEmpty,
                    format!("organisation still has {table}"),
                ));
            }
        }
        sqlx::query("DELETE FROM orgs WHERE id = $1 AND parent_id IS NOT NULL")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_user(&self, u: &NewUser) -> ApiResult<AdminUserView> {
        let id = self.new_id();
        let now = self.now_ms();
        let mut tx = self.inner.db.pool.begin().await?;
        // The org's path is copied into the row: no subtree move may run in between.
        lock_row(&mut tx, "lock:tree").await?;
        sqlx::query(
            "INSERT INTO users (id, username, name, name_initials, org_id, org_path, title, tags, \
             phone, phone_hidden, email, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,\
             COALESCE((SELECT path FROM orgs WHERE id = $5), ''),$6,$7,$8,$9,$10,$11,$11)",
        )
        .bind(id)
        .bind(&u.username)
        .bind(&u.name)
        .bind(initials(&u.name))
        .bind(u.org_id)
        .bind(&u.title)
        .bind(&u.tags)
        .bind(&u.phone)
        .bind(flag(u.phone_hidden))
        .bind(&u.email)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.user(id)
            .await?
            .ok_or_else(|| ApiError::not_found("user"))
    }

    pub async fn user(&self, id: i64) -> Result<Option<AdminUserView>, Error> {
        let r = sqlx::query(&format!("SELECT {USER_COLS} FROM users u WHERE u.id = $1"))
            .bind(id)
            .fetch_optional(&self.inner.db.pool)
            .await?;
        Ok(r.map(|r| admin_user_from(&r)).transpose()?)
    }

    /// Users in the subtree at `org_path` (or only that org), filtered by `q`: a
    /// substring of the name or user name, a prefix of the pinyin initials, or a part of
    /// the phone number. `phone_visible_only` excludes hidden numbers from matching, so
    /// participant searches cannot probe them.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_users(
        &self,
        org_path: &str,
        subtree: bool,
        q: Option<&str>,
        phone_visible_only: bool,
        order: UserOrder,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<AdminUserView>, Error> {
        // Every user row carries its organisation's path, and `users_tree` indexes
        // (org_path, name, id): a subtree is one contiguous range of it (paths are ASCII
        // digits and `/`, compared bytewise, so `/1/5/` ..< `/1/50` is exactly the
        // subtree) already in tree order, so a page reads offset + limit entries and
        // nothing else, at any depth. Name order over a large subtree must gather and
        // sort the whole range (a county: 30,000 entries, ~15 ms on PostgreSQL), which is
        // why tree order is the default. Only the root in name order walks the name index.
        let everyone = subtree && !org_path.is_empty() && org_path == self.inner.root_path;
        let mut s = Sql::new(&format!("SELECT {USER_COLS} FROM users u WHERE "));
        let by_name = order == UserOrder::Name && !everyone;
        if by_name {
            s.push("u.id IN (SELECT u.id FROM users u WHERE ");
        }
        if order == UserOrder::Name && everyone {
            s.push("1 = 1");
        } else if subtree {
            s.push("u.org_path >= ")
                .arg(Arg::S(org_path.to_owned()))
                .push(" AND u.org_path < ")
                .arg(Arg::S(subtree_upper(org_path)));
        } else {
            s.push("u.org_path = ").arg(Arg::S(org_path.to_owned()));
        }
        if let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) {
            let esc = like_escape(&q.to_lowercase());
            s.push(" AND (lower(u.name) LIKE ")
                .arg(Arg::S(format!("%{esc}%")))
                .push(" ESCAPE '\\'");
            s.push(" OR lower(u.username) LIKE ")
                .arg(Arg::S(format!("%{esc}%")))
                .push(" ESCAPE '\\'");
            s.push(" OR u.name_initials LIKE ")
                .arg(Arg::S(format!("{esc}%")))
                .push(" ESCAPE '\\'");
            s.push(" OR (u.phone LIKE ")
                .arg(Arg::S(format!("%{esc}%")))
                .push(" ESCAPE '\\'");
            if phone_visible_only {
                s.push(" AND u.phone_hidden = 0");
            }
            s.push("))");
        }
        s.push(match order {
            UserOrder::Tree => " ORDER BY u.org_path, u.name, u.id LIMIT ",
            UserOrder::Name => " ORDER BY u.name, u.id LIMIT ",
        })
        .arg(Arg::I(limit))
        .push(" OFFSET ")
        .arg(Arg::I(offset));
        if by_name {
            s.push(") ORDER BY u.name, u.id");
        }
        let rows = s.query().fetch_all(&self.inner.db.pool).await?;
        Ok(rows.iter().map(admin_user_from).collect::<Result<_, _>>()?)
    }

    /// Apply a validated change to a user; `None` fields stay as they are.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_user(
        &self,
        id: i64,
        name: Option<String>,
        org_id: Option<i64>,
        title: Option<String>,
        tags: Option<String>,
        phone: Option<Option<String>>,
        phone_hidden: Option<bool>,
        email: Option<Option<String>>,
        status: Option<UserStatus>,
    ) -> ApiResult<()> {
        let mut s = Sql::new("UPDATE users SET updated_at = ");
        s.arg(Arg::I(self.now_ms()));
        if let Some(n) = name {
            s.push(", name_initials = ").arg(Arg::S(initials(&n)));
            s.push(", name = ").arg(Arg::S(n));
        }
        if let Some(o) = org_id {
            s.push(", org_id = ").arg(Arg::I(o));
            // COALESCE: an unknown org fails on the foreign key, as before.
            s.push(", org_path = COALESCE((SELECT path FROM orgs WHERE id = ")
                .arg(Arg::I(o))
                .push("), '')");
        }
        if let Some(t) = title {
            s.push(", title = ").arg(Arg::S(t));
        }
        if let Some(t) = tags {
            s.push(", tags = ").arg(Arg::S(t));
        }
        if let Some(p) = phone {
            s.push(", phone = ").arg(Arg::OptS(p));
        }
        if let Some(h) = phone_hidden {
            s.push(", phone_hidden = ").arg(Arg::I(flag(h)));
        }
        if let Some(e) = email {
            s.push(", email = ").arg(Arg::OptS(e));
        }
        if let Some(st) = status {
            s.push(", status = ").arg(Arg::S(st.as_str().to_owned()));
        }
        s.push(" WHERE id = ").arg(Arg::I(id));
        let mut tx = self.inner.db.pool.begin().await?;
        if org_id.is_some() {
            // The path read must not be one a concurrent subtree move is rewriting.
            lock_row(&mut tx, "lock:tree").await?;
        }
        s.query().execute(&mut *tx).await?;
        tx.commit().await?;
        if status == Some(UserStatus::Disabled) {
            self.revoke_user_sessions(id).await?;
        }
        Ok(())
    }

    pub(crate) async fn set_role(
        &self,
        id: i64,
        role: crate::policy::Role,
        scope_org: Option<i64>,
    ) -> ApiResult<()> {
        sqlx::query("UPDATE users SET role = $1, scope_org_id = $2, updated_at = $3 WHERE id = $4")
            .bind(role.as_str())
            .bind(scope_org)
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.inner.db.pool)
            .await?;
        // New rights take effect at once: tokens carry no role, but sessions opened
        // under the old role are ended so the change is unambiguous in the audit trail.
        self.revoke_user_sessions(id).await?;
        Ok(())
    }

    pub(crate) async fn unlock_user(&self, id: i64) -> ApiResult<()> {
        sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.inner.db.pool)
            .await?;
        Ok(())
    }

    pub async fn create_terminal(
        &self,
        name: &str,
        org_id: i64,
        protocol: TerminalProtocol,
        address: &str,
        capabilities: &str,
    ) -> ApiResult<Terminal> {
        let id = self.new_id();
        let now = self.now_ms();
        sqlx::query(
            "INSERT INTO terminals (id, name, org_id, protocol, address, capabilities, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$7)",
        )
        .bind(id)
        .bind(name)
        .bind(org_id)
        .bind(protocol.as_str())
        .bind(address)
        .bind(capabilities)
        .bind(now)
        .execute(&self.inner.db.pool)
        .await?;
        self.terminal(id)
            .await?
            .ok_or_else(|| ApiError::not_found("terminal"))
    }

    pub async fn terminal(&self, id: i64) -> Result<Option<Terminal>, Error> {
        let r = sqlx::query(
            "SELECT t.id, t.name, t.org_id, o.path AS org_path, t.protocol, t.address, t.capabilities, t.status \
             FROM terminals t JOIN orgs o ON o.id = t.org_id WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        Ok(r.map(|r| terminal_from(&r)).transpose()?)
    }

    pub async fn list_terminals(
        &self,
        org_path: &str,
        q: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Terminal>, Error> {
        let mut s = Sql::new(
            "SELECT t.id, t.name, t.org_id, o.path AS org_path, t.protocol, t.address, t.capabilities, t.status \
             FROM terminals t JOIN orgs o ON o.id = t.org_id WHERE o.path LIKE ",
        );
        s.arg(Arg::S(format!("{}%", like_escape(org_path))))
            .push(" ESCAPE '\\'");
        if let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) {
            s.push(" AND lower(t.name) LIKE ")
                .arg(Arg::S(format!("%{}%", like_escape(&q.to_lowercase()))))
                .push(" ESCAPE '\\'");
        }
        s.push(" ORDER BY t.name, t.id LIMIT ")
            .arg(Arg::I(limit))
            .push(" OFFSET ")
            .arg(Arg::I(offset));
        let rows = s.query().fetch_all(&self.inner.db.pool).await?;
        Ok(rows.iter().map(terminal_from).collect::<Result<_, _>>()?)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn update_terminal(
        &self,
        id: i64,
        name: Option<String>,
        org_id: Option<i64>,
        protocol: Option<TerminalProtocol>,
        address: Option<String>,
        capabilities: Option<String>,
        status: Option<UserStatus>,
    ) -> ApiResult<()> {
        let mut s = Sql::new("UPDATE terminals SET updated_at = ");
        s.arg(Arg::I(self.now_ms()));
        if let Some(v) = name {
            s.push(", name = ").arg(Arg::S(v));
        }
        if let Some(v) = org_id {
            s.push(", org_id = ").arg(Arg::I(v));
        }
        if let Some(v) = protocol {
            s.push(", protocol = ").arg(Arg::S(v.as_str().to_owned()));
        }
        if let Some(v) = address {
            s.push(", address = ").arg(Arg::S(v));
        }
        if let Some(v) = capabilities {
            s.push(", capabilities = ").arg(Arg::S(v));
        }
        if let Some(v) = status {
            s.push(", status = ").arg(Arg::S(v.as_str().to_owned()));
        }
        s.push(" WHERE id = ").arg(Arg::I(id));
        s.query().execute(&self.inner.db.pool).await?;
        Ok(())
    }

    pub(crate) async fn delete_terminal(&self, id: i64) -> ApiResult<()> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM meeting_invitees WHERE kind = 'terminal' AND ref_id = $1",
        )
        .bind(id)
        .fetch_one(&self.inner.db.pool)
        .await?;
        if n > 0 {
            // Keep meeting history intact: a terminal that was ever booked is disabled.
            sqlx::query("UPDATE terminals SET status = 'disabled' WHERE id = $1")
                .bind(id)
                .execute(&self.inner.db.pool)
                .await?;
        } else {
            sqlx::query("DELETE FROM terminals WHERE id = $1")
                .bind(id)
                .execute(&self.inner.db.pool)
                .await?;
        }
        Ok(())
    }
}
