//! Meeting scheduling: dialable numbers, hosts, invitees (users, terminals, whole org
//! subtrees), passcodes, recurrence and terminal booking conflicts.

use crate::AdminState;
use crate::db::{Arg, DbKind, Sql, flag, lock_row};
use crate::error::{ApiError, ApiResult, Error, ErrorCode};
use crate::policy::{Actor, MeetingRef};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

/// For conflict checks, a meeting without a time limit occupies its terminals this long.
pub const OPEN_ENDED_BOOKING_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Frequency {
    Daily,
    Weekly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    pub frequency: Frequency,
    /// Every `interval` days or weeks (1..=52).
    pub interval: u32,
    /// Number of occurrences including the first (1..=366).
    pub count: u32,
}

impl Recurrence {
    pub fn validate(&self) -> ApiResult<()> {
        if !(1..=52).contains(&self.interval) {
            return Err(ApiError::field("recurrence.interval", "must be 1..=52"));
        }
        if !(1..=366).contains(&self.count) {
            return Err(ApiError::field("recurrence.count", "must be 1..=366"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgInvite {
    pub id: i64,
    /// Invite every organisation below it too.
    #[serde(default)]
    pub subtree: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Invitees {
    pub users: Vec<i64>,
    pub terminals: Vec<i64>,
    pub orgs: Vec<OrgInvite>,
}

impl Invitees {
    fn validate(&self) -> ApiResult<()> {
        if self.users.len() + self.terminals.len() + self.orgs.len() > 10_000 {
            return Err(ApiError::field(
                "invitees",
                "at most 10000 entries; invite organisations instead",
            ));
        }
        Ok(())
    }
}

/// A meeting as the API shows it. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Meeting {
    pub id: i64,
    /// Dialable meeting number (9 digits).
    pub number: String,
    pub title: String,
    pub org_id: i64,
    pub owner_id: i64,
    pub host_id: i64,
    pub cohost_ids: Vec<i64>,
    pub starts_at_ms: i64,
    /// `None`: no time limit.
    pub duration_minutes: Option<i64>,
    pub recurrence: Option<Recurrence>,
    pub passcode: Option<String>,
    pub directory_only: bool,
    pub locked: bool,
    pub layout: String,
    pub recording: bool,
    /// `scheduled` | `cancelled`
    pub status: String,
    pub invitees: Invitees,
    #[serde(skip)]
    pub org_path: String,
}

impl Meeting {
    pub fn as_target(&self, invited: bool) -> MeetingRef<'_> {
        MeetingRef {
            org_path: &self.org_path,
            owner_id: self.owner_id,
            host_id: self.host_id,
            cohost_ids: &self.cohost_ids,
            invited,
        }
    }

    /// Every [start, end) interval the meeting occupies.
    pub fn intervals(&self) -> Vec<(i64, i64)> {
        intervals(
            self.starts_at_ms,
            self.duration_minutes,
            self.recurrence.as_ref(),
        )
    }
}

fn intervals(start: i64, duration_min: Option<i64>, rec: Option<&Recurrence>) -> Vec<(i64, i64)> {
    let len = duration_min.map_or(OPEN_ENDED_BOOKING_MS, |d| d.saturating_mul(60_000));
    let (count, step) = match rec {
        None => (1, 0),
        Some(r) => {
            let day = 86_400_000i64;
            let unit = if r.frequency == Frequency::Daily {
                day
            } else {
                7 * day
            };
            (r.count, unit * i64::from(r.interval))
        }
    };
    (0..i64::from(count))
        .map(|k| {
            let s = start.saturating_add(step.saturating_mul(k));
            (s, s.saturating_add(len))
        })
        .collect()
}

fn overlaps(a: &[(i64, i64)], b: &[(i64, i64)]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.0 < y.1 && y.0 < x.1))
}

/// Everything needed to create or fully replace a meeting, validated.
#[derive(Debug, Clone)]
pub struct MeetingDraft {
    pub title: String,
    pub org_id: i64,
    pub host_id: i64,
    pub cohost_ids: Vec<i64>,
    pub starts_at_ms: i64,
    pub duration_minutes: Option<i64>,
    pub recurrence: Option<Recurrence>,
    pub passcode: Option<String>,
    pub directory_only: bool,
    pub locked: bool,
    pub layout: String,
    pub recording: bool,
    pub invitees: Invitees,
}

impl MeetingDraft {
    pub(crate) fn validate(&self) -> ApiResult<()> {
        if let Some(d) = self.duration_minutes
            && !(1..=7 * 24 * 60).contains(&d)
        {
            return Err(ApiError::field(
                "duration_minutes",
                "must be 1..=10080, or null for no time limit",
            ));
        }
        if let Some(r) = &self.recurrence {
            r.validate()?;
        }
        if let Some(p) = &self.passcode
            && (!(4..=12).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(ApiError::field("passcode", "4 to 12 digits"));
        }
        if self.cohost_ids.len() > 32 {
            return Err(ApiError::field("cohost_ids", "at most 32"));
        }
        // Year 1970..=9999 keeps every derived time comfortably inside i64.
        if !(0..=253_402_300_799_000).contains(&self.starts_at_ms) {
            return Err(ApiError::field("starts_at_ms", "out of range"));
        }
        self.invitees.validate()
    }
}

const MEETING_COLS: &str = "m.id, m.number, m.title, m.org_id, o.path AS org_path, m.owner_id, m.host_id, \
     m.starts_at, m.duration_min, m.recurrence, m.passcode, m.directory_only, m.locked, m.layout, \
     m.recording, m.status";

fn meeting_from(r: &AnyRow) -> Result<Meeting, sqlx::Error> {
    let rec: String = r.try_get("recurrence")?;
    Ok(Meeting {
        id: r.try_get("id")?,
        number: r.try_get("number")?,
        title: r.try_get("title")?,
        org_id: r.try_get("org_id")?,
        org_path: r.try_get("org_path")?,
        owner_id: r.try_get("owner_id")?,
        host_id: r.try_get("host_id")?,
        cohost_ids: Vec::new(),
        starts_at_ms: r.try_get("starts_at")?,
        duration_minutes: r.try_get("duration_min")?,
        recurrence: serde_json::from_str(&rec).ok(),
        passcode: r.try_get("passcode")?,
        directory_only: r.try_get::<i64, _>("directory_only")? != 0,
        locked: r.try_get::<i64, _>("locked")? != 0,
        layout: r.try_get("layout")?,
        recording: r.try_get::<i64, _>("recording")? != 0,
        status: r.try_get("status")?,
        invitees: Invitees::default(),
    })
}

/// Query filter for meeting lists.
#[derive(Debug, Clone, Default)]
pub struct MeetingQuery {
    /// Admin view: every meeting whose org lies in this subtree.
    pub org_scope: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub include_cancelled: bool,
    pub limit: i64,
    pub offset: i64,
}

impl AdminState {
    async fn ensure_exist(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        table: &str,
        ids: &[i64],
        what: &str,
    ) -> ApiResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // One query per list, not one per id.
        let mut sql = Sql::new(&format!("SELECT id FROM {table} WHERE id IN ("));
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(",");
            }
            sql.arg(Arg::I(*id));
        }
        sql.push(")");
        let found: std::collections::HashSet<i64> = sql
            .query()
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(Error::from)?;
        if let Some(id) = ids.iter().find(|id| !found.contains(id)) {
            return Err(ApiError::field(what, &format!("{id} does not exist")));
        }
        Ok(())
    }

    async fn check_terminal_conflicts(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        draft: &MeetingDraft,
        exclude: i64,
    ) -> ApiResult<()> {
        if draft.invitees.terminals.is_empty() {
            return Ok(());
        }
        let mine = intervals(
            draft.starts_at_ms,
            draft.duration_minutes,
            draft.recurrence.as_ref(),
        );
        let mut s = Sql::new(&format!(
            "SELECT DISTINCT {MEETING_COLS}, i.ref_id AS terminal FROM meetings m JOIN orgs o ON o.id = m.org_id \
             JOIN meeting_invitees i ON i.meeting_id = m.id WHERE m.status = 'scheduled' AND i.kind = 'terminal' \
             AND m.id <> "
        ));
        s.arg(Arg::I(exclude)).push(" AND i.ref_id IN (");
        for (k, t) in draft.invitees.terminals.iter().enumerate() {
            if k > 0 {
                s.push(",");
            }
            s.arg(Arg::I(*t));
        }
        s.push(")");
        let rows = s.query().fetch_all(&mut **tx).await?;
        for r in &rows {
            let other = meeting_from(r).map_err(Error::from)?;
            if overlaps(&mine, &other.intervals()) {
                let t: i64 = r.try_get("terminal").map_err(Error::from)?;
                return Err(ApiError::new(
                    ErrorCode::TerminalBusy,
                    format!(
                        "terminal {t} is booked by meeting {} at that time",
                        other.number
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Everything `d` refers to exists and its terminals are free; `exclude`: the meeting
    /// being updated (0 for a new one), whose own bookings are no conflict.
    async fn validate_refs(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        d: &MeetingDraft,
        exclude: i64,
    ) -> ApiResult<()> {
        self.ensure_exist(tx, "orgs", &[d.org_id], "org_id").await?;
        self.ensure_exist(tx, "users", &[d.host_id], "host_id")
            .await?;
        self.ensure_exist(tx, "users", &d.cohost_ids, "cohost_ids")
            .await?;
        self.ensure_exist(tx, "users", &d.invitees.users, "invitees.users")
            .await?;
        self.ensure_exist(tx, "terminals", &d.invitees.terminals, "invitees.terminals")
            .await?;
        let org_ids: Vec<i64> = d.invitees.orgs.iter().map(|o| o.id).collect();
        self.ensure_exist(tx, "orgs", &org_ids, "invitees.orgs")
            .await?;
        self.check_terminal_conflicts(tx, d, exclude).await
    }

    /// Store the co-hosts and invitees of meeting `id`; `fresh`: a new meeting, with
    /// nothing to replace.
    async fn write_members(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: i64,
        d: &MeetingDraft,
        fresh: bool,
    ) -> ApiResult<()> {
        if !fresh {
            sqlx::query("DELETE FROM meeting_cohosts WHERE meeting_id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM meeting_invitees WHERE meeting_id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        let mut cohosts = d.cohost_ids.clone();
        cohosts.sort_unstable();
        cohosts.dedup();
        // Multi-row inserts: one round trip per table however many members.
        if !cohosts.is_empty() {
            let mut s = Sql::new("INSERT INTO meeting_cohosts (meeting_id, user_id) VALUES ");
            for (i, c) in cohosts.iter().enumerate() {
                s.push(if i > 0 { ",(" } else { "(" })
                    .arg(Arg::I(id))
                    .push(",")
                    .arg(Arg::I(*c))
                    .push(")");
            }
            s.query().execute(&mut **tx).await?;
        }
        let members: Vec<(&str, i64, bool)> = d
            .invitees
            .users
            .iter()
            .map(|u| ("user", *u, false))
            .chain(d.invitees.terminals.iter().map(|t| ("terminal", *t, false)))
            .chain(d.invitees.orgs.iter().map(|o| ("org", o.id, o.subtree)))
            .collect();
        // 4 values a row; 1,000 rows stay far below either database's limit.
        for chunk in members.chunks(1000) {
            let mut s = Sql::new(
                "INSERT INTO meeting_invitees (meeting_id, kind, ref_id, subtree) VALUES ",
            );
            for (i, (kind, ref_id, subtree)) in chunk.iter().enumerate() {
                s.push(if i > 0 { ",(" } else { "(" })
                    .arg(Arg::I(id))
                    .push(",")
                    .arg(Arg::S((*kind).to_owned()))
                    .push(",")
                    .arg(Arg::I(*ref_id))
                    .push(",")
                    .arg(Arg::I(flag(*subtree)))
                    .push(")");
            }
            s.push(" ON CONFLICT (meeting_id, kind, ref_id) DO NOTHING");
            s.query().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Create a meeting owned by `owner`, allocating a free dialable number.
    pub async fn create_meeting(&self, owner: i64, d: &MeetingDraft) -> ApiResult<Meeting> {
        d.validate()?;
        // SQLite has one writer: queue here, in order, rather than in SQLite's busy
        // handler, whose sleeps (up to 100 ms each) made the tail.
        let _gate = self.inner.db.write_gate().await;
        let mut tx = self.inner.db.pool.begin().await?;
        // The meetings lock serialises terminal bookings (the conflict check and the
        // insert must not interleave across nodes). A meeting without terminals books
        // nothing, so on PostgreSQL it skips the lock; the number is kept unique by
        // its UNIQUE index. On SQLite the lock row is the first write, which takes the
        // database's write lock before the reads below (a deferred transaction that
        // read first could not upgrade once another writer had committed).
        if self.inner.db.kind() == DbKind::Sqlite || !d.invitees.terminals.is_empty() {
            lock_row(&mut tx, "lock:meetings").await?;
        }
        self.validate_refs(&mut tx, d, 0).await?;
        let id = self.new_id();
        let now = self.now_ms();
        let mut number = None;
        for _ in 0..32 {
            let n = 100_000_000 + crate::clock::random_u64(&*self.inner.entropy) % 900_000_000;
            let candidate = n.to_string();
            // A taken number inserts nothing (no error, so the transaction goes on).
            let inserted = sqlx::query(
                "INSERT INTO meetings (id, number, title, org_id, owner_id, host_id, starts_at, duration_min, recurrence, \
                 passcode, directory_only, locked, layout, recording, status, created_at, updated_at) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,'scheduled',$15,$15) \
                 ON CONFLICT (number) DO NOTHING",
            )
            .bind(id)
            .bind(&candidate)
            .bind(&d.title)
            .bind(d.org_id)
            .bind(owner)
            .bind(d.host_id)
            .bind(d.starts_at_ms)
            .bind(d.duration_minutes)
            .bind(d.recurrence.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default()).unwrap_or_default())
            .bind(&d.passcode)
            .bind(flag(d.directory_only))
            .bind(flag(d.locked))
            .bind(&d.layout)
            .bind(flag(d.recording))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                number = Some(candidate);
                break;
            }
        }
        number.ok_or(Error::NumberSpaceExhausted)?;
        self.write_members(&mut tx, id, d, true).await?;
        tx.commit().await?;
        self.meeting(id)
            .await?
            .ok_or_else(|| ApiError::not_found("meeting"))
    }

    /// Replace a meeting's settings and members (the route merges a patch into the
    /// current draft first).
    pub async fn update_meeting(&self, id: i64, d: &MeetingDraft) -> ApiResult<Meeting> {
        d.validate()?;
        let mut tx = self.inner.db.pool.begin().await?;
        lock_row(&mut tx, "lock:meetings").await?;
        self.validate_refs(&mut tx, d, id).await?;
        sqlx::query(
            "UPDATE meetings SET title = $1, org_id = $2, host_id = $3, starts_at = $4, duration_min = $5, \
             recurrence = $6, passcode = $7, directory_only = $8, locked = $9, layout = $10, recording = $11, \
             updated_at = $12 WHERE id = $13",
        )
        .bind(&d.title)
        .bind(d.org_id)
        .bind(d.host_id)
        .bind(d.starts_at_ms)
        .bind(d.duration_minutes)
        .bind(d.recurrence.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default()).unwrap_or_default())
        .bind(&d.passcode)
        .bind(flag(d.directory_only))
        .bind(flag(d.locked))
        .bind(&d.layout)
        .bind(flag(d.recording))
        .bind(self.now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.write_members(&mut tx, id, d, false).await?;
        tx.commit().await?;
        self.meeting(id)
            .await?
            .ok_or_else(|| ApiError::not_found("meeting"))
    }

    pub async fn cancel_meeting(&self, id: i64) -> ApiResult<()> {
        sqlx::query("UPDATE meetings SET status = 'cancelled', updated_at = $1 WHERE id = $2")
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.inner.db.pool)
            .await?;
        Ok(())
    }

    async fn fill_members(&self, m: &mut Meeting) -> Result<(), Error> {
        m.cohost_ids = sqlx::query_scalar(
            "SELECT user_id FROM meeting_cohosts WHERE meeting_id = $1 ORDER BY user_id",
        )
        .bind(m.id)
        .fetch_all(&self.inner.db.pool)
        .await?;
        let rows = sqlx::query("SELECT kind, ref_id, subtree FROM meeting_invitees WHERE meeting_id = $1 ORDER BY kind, ref_id")
            .bind(m.id)
            .fetch_all(&self.inner.db.pool)
            .await?;
        let mut inv = Invitees::default();
        for r in rows {
            let kind: String = r.try_get("kind")?;
            let id: i64 = r.try_get("ref_id")?;
            match kind.as_str() {
                "user" => inv.users.push(id),
                "terminal" => inv.terminals.push(id),
                _ => inv.orgs.push(OrgInvite {
                    id,
                    subtree: r.try_get::<i64, _>("subtree")? != 0,
                }),
            }
        }
        m.invitees = inv;
        Ok(())
    }

    pub async fn meeting(&self, id: i64) -> Result<Option<Meeting>, Error> {
        self.meeting_where("m.id = ", Arg::I(id)).await
    }

    pub async fn meeting_by_number(&self, number: &str) -> Result<Option<Meeting>, Error> {
        self.meeting_where("m.number = ", Arg::S(number.to_owned()))
            .await
    }

    async fn meeting_where(&self, cond: &str, a: Arg) -> Result<Option<Meeting>, Error> {
        let mut s = Sql::new(&format!(
            "SELECT {MEETING_COLS} FROM meetings m JOIN orgs o ON o.id = m.org_id WHERE "
        ));
        s.push(cond).arg(a);
        let Some(r) = s.query().fetch_optional(&self.inner.db.pool).await? else {
            return Ok(None);
        };
        let mut m = meeting_from(&r)?;
        self.fill_members(&mut m).await?;
        Ok(Some(m))
    }

    /// Is the user invited, directly or through an invited organisation?
    pub async fn is_invited(&self, meeting_id: i64, user_id: i64) -> Result<bool, Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM meeting_invitees i JOIN users u ON u.id = $2 JOIN orgs uo ON uo.id = u.org_id \
             LEFT JOIN orgs io ON i.kind = 'org' AND io.id = i.ref_id \
             WHERE i.meeting_id = $1 AND ((i.kind = 'user' AND i.ref_id = $2) \
             OR (i.kind = 'org' AND (io.id = uo.id OR (i.subtree = 1 AND uo.path LIKE (io.path || '%')))))",
        )
        .bind(meeting_id)
        .bind(user_id)
        .fetch_one(&self.inner.db.pool)
        .await?;
        Ok(n > 0)
    }

    /// Meetings the actor takes part in (owner, host, co-host, invitee), or with
    /// `q.org_scope`, every meeting of that subtree (admin view).
    pub async fn list_meetings(
        &self,
        actor: &Actor,
        q: &MeetingQuery,
    ) -> Result<Vec<Meeting>, Error> {
        let mut s = Sql::new(&format!(
            "SELECT {MEETING_COLS} FROM meetings m JOIN orgs o ON o.id = m.org_id WHERE "
        ));
        if let Some(scope) = &q.org_scope {
            s.push("o.path LIKE ")
                .arg(Arg::S(format!("{}%", crate::db::like_escape(scope))))
                .push(" ESCAPE '\\'");
        } else {
            s.push("(m.owner_id = ").arg(Arg::I(actor.user_id));
            s.push(" OR m.host_id = ").arg(Arg::I(actor.user_id));
            s.push(" OR EXISTS (SELECT 1 FROM meeting_cohosts c WHERE c.meeting_id = m.id AND c.user_id = ")
                .arg(Arg::I(actor.user_id))
                .push(")");
            s.push(" OR EXISTS (SELECT 1 FROM meeting_invitees i WHERE i.meeting_id = m.id AND i.kind = 'user' AND i.ref_id = ")
                .arg(Arg::I(actor.user_id))
                .push(")");
            s.push(" OR EXISTS (SELECT 1 FROM meeting_invitees i JOIN orgs io ON io.id = i.ref_id WHERE i.meeting_id = m.id AND i.kind = 'org' AND (io.id = ")
                .arg(Arg::I(actor.org_id))
                .push(" OR (i.subtree = 1 AND ")
                .arg(Arg::S(actor.org_path.clone()))
                .push(" LIKE (io.path || '%')))))");
        }
        if !q.include_cancelled {
            s.push(" AND m.status <> 'cancelled'");
        }
        if let Some(f) = q.from_ms {
            s.push(" AND m.starts_at >= ").arg(Arg::I(f));
        }
        if let Some(t) = q.to_ms {
            s.push(" AND m.starts_at < ").arg(Arg::I(t));
        }
        s.push(" ORDER BY m.starts_at, m.id LIMIT ")
            .arg(Arg::I(q.limit))
            .push(" OFFSET ")
            .arg(Arg::I(q.offset));
        let rows = s.query().fetch_all(&self.inner.db.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut m = meeting_from(r)?;
            self.fill_members(&mut m).await?;
            out.push(m);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recurrence_intervals_overlap() {
        let weekly = Recurrence {
            frequency: Frequency::Weekly,
            interval: 1,
            count: 3,
        };
        let a = intervals(0, Some(60), Some(&weekly));
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].0, 14 * 86_400_000);
        // A one-off meeting in week 3 collides; one between occurrences does not.
        assert!(overlaps(
            &a,
            &intervals(14 * 86_400_000 + 30 * 60_000, Some(60), None)
        ));
        assert!(!overlaps(&a, &intervals(86_400_000, Some(60), None)));
        // Open-ended meetings book a day.
        assert!(overlaps(
            &intervals(0, None, None),
            &intervals(23 * 3_600_000, Some(10), None)
        ));
    }
}
