//! In-meeting sign-in (roll call). The host opens a sign-in with a deadline;
//! participants sign in once each (a repeat is a no-op); results are computed live
//! from the invitee list: signed, late or absent, per invitee and per organisation.
//! No phone number is ever part of a result or export.

use crate::AdminState;
use crate::db::{flag, like_escape};
use crate::error::{ApiError, ApiResult, Error, ErrorCode};
use serde::Serialize;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Signin {
    pub id: i64,
    pub meeting_id: i64,
    pub started_by: i64,
    pub started_at_ms: i64,
    pub deadline_ms: i64,
    /// Submissions after the deadline are counted as late (otherwise refused).
    pub accept_late: bool,
    pub ended_at_ms: Option<i64>,
}

impl Signin {
    pub fn is_open(&self, now: i64) -> bool {
        self.ended_at_ms.is_none() && (self.accept_late || now <= self.deadline_ms)
    }
}

/// Who signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Participant {
    User {
        id: i64,
        name: String,
        org_id: i64,
    },
    /// A room system on behalf of everyone in its room.
    Terminal {
        id: i64,
        name: String,
        org_id: i64,
    },
    /// A participant without a directory identity (browser guest), keyed by signalling.
    Guest {
        key: String,
        name: String,
    },
}

impl Participant {
    fn key(&self) -> (&'static str, String) {
        match self {
            Participant::User { id, .. } => ("user", id.to_string()),
            Participant::Terminal { id, .. } => ("terminal", id.to_string()),
            Participant::Guest { key, .. } => ("guest", key.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttendanceStatus {
    Signed,
    Late,
    Absent,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SubmitResult {
    pub status: AttendanceStatus,
    pub signed_at_ms: i64,
    /// False when this participant had already signed in (nothing changed).
    pub newly_recorded: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InviteeAttendance {
    /// `user` | `terminal` | `guest`
    pub kind: String,
    pub id: String,
    pub name: String,
    pub org_id: Option<i64>,
    pub status: AttendanceStatus,
    pub signed_at_ms: Option<i64>,
    pub headcount: i64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub invited: i64,
    pub signed: i64,
    pub late: i64,
    pub absent: i64,
    /// People represented, counting a terminal's headcount.
    pub headcount: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrgAttendance {
    pub org_id: i64,
    pub org_name: String,
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SigninResults {
    pub signin: Signin,
    pub open: bool,
    pub totals: Counts,
    pub by_org: Vec<OrgAttendance>,
    pub invitees: Vec<InviteeAttendance>,
    /// Signed in without being invited (guests, or anyone in an open meeting).
    pub uninvited: Vec<InviteeAttendance>,
}

fn signin_from(r: &sqlx::any::AnyRow) -> Result<Signin, sqlx::Error> {
    Ok(Signin {
        id: r.try_get("id")?,
        meeting_id: r.try_get("meeting_id")?,
        started_by: r.try_get("started_by")?,
        started_at_ms: r.try_get("started_at")?,
        deadline_ms: r.try_get("deadline")?,
        accept_late: r.try_get::<i64, _>("accept_late")? != 0,
        ended_at_ms: r.try_get("ended_at")?,
    })
}

const SIGNIN_COLS: &str = "id, meeting_id, started_by, started_at, deadline, accept_late, ended_at";

impl AdminState {
    /// Open a sign-in; any sign-in of the meeting still open is ended first.
    pub async fn start_signin(
        &self,
        meeting_id: i64,
        by: i64,
        deadline_ms: i64,
        accept_late: bool,
    ) -> ApiResult<Signin> {
        let now = self.now_ms();
        if deadline_ms <= now {
            return Err(ApiError::field("deadline", "must be in the future"));
        }
        let mut tx = self.inner.db.pool.begin().await?;
        sqlx::query("UPDATE signins SET ended_at = $1 WHERE meeting_id = $2 AND ended_at IS NULL")
            .bind(now)
            .bind(meeting_id)
            .execute(&mut *tx)
            .await?;
        let id = self.new_id();
        sqlx::query(
            "INSERT INTO signins (id, meeting_id, started_by, started_at, deadline, accept_late) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(id)
        .bind(meeting_id)
        .bind(by)
        .bind(now)
        .bind(deadline_ms)
        .bind(flag(accept_late))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Signin {
            id,
            meeting_id,
            started_by: by,
            started_at_ms: now,
            deadline_ms,
            accept_late,
            ended_at_ms: None,
        })
    }

    pub async fn end_signin(&self, signin_id: i64) -> ApiResult<()> {
        sqlx::query("UPDATE signins SET ended_at = $1 WHERE id = $2 AND ended_at IS NULL")
            .bind(self.now_ms())
            .bind(signin_id)
            .execute(&self.inner.db.pool)
            .await?;
        Ok(())
    }

    pub async fn signin(&self, signin_id: i64) -> Result<Option<Signin>, Error> {
        let r = sqlx::query(&format!("SELECT {SIGNIN_COLS} FROM signins WHERE id = $1"))
            .bind(signin_id)
            .fetch_optional(&self.inner.db.pool)
            .await?;
        Ok(r.map(|r| signin_from(&r)).transpose()?)
    }

    /// The newest sign-in of a meeting (open or not).
    pub async fn latest_signin(&self, meeting_id: i64) -> Result<Option<Signin>, Error> {
        let r = sqlx::query(&format!(
            "SELECT {SIGNIN_COLS} FROM signins WHERE meeting_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1"
        ))
        .bind(meeting_id)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        Ok(r.map(|r| signin_from(&r)).transpose()?)
    }

    /// Record a sign-in. Idempotent: the first submission wins and later ones return it.
    pub async fn submit_signin(
        &self,
        s: &Signin,
        who: &Participant,
        headcount: i64,
        source: &str,
    ) -> ApiResult<SubmitResult> {
        let now = self.now_ms();
        let (kind, key) = who.key();
        let existing = sqlx::query("SELECT signed_at, late FROM signin_records WHERE signin_id = $1 AND kind = $2 AND participant = $3")
            .bind(s.id)
            .bind(kind)
            .bind(&key)
            .fetch_optional(&self.inner.db.pool)
            .await?;
        let from_row = |r: &sqlx::any::AnyRow, new: bool| -> ApiResult<SubmitResult> {
            let late: i64 = r.try_get("late").map_err(Error::from)?;
            Ok(SubmitResult {
                status: if late != 0 {
                    AttendanceStatus::Late
                } else {
                    AttendanceStatus::Signed
                },
                signed_at_ms: r.try_get("signed_at").map_err(Error::from)?,
                newly_recorded: new,
            })
        };
        if let Some(r) = existing {
            return from_row(&r, false);
        }
        if !s.is_open(now) {
            return Err(ApiError::new(ErrorCode::SigninClosed, "sign-in is closed"));
        }
        let late = now > s.deadline_ms;
        let (name, org) = match who {
            Participant::User { name, org_id, .. } | Participant::Terminal { name, org_id, .. } => {
                (name.clone(), Some(*org_id))
            }
            Participant::Guest { name, .. } => (name.clone(), None),
        };
        let gate = self.inner.db.write_gate().await;
        let inserted = sqlx::query(
            "INSERT INTO signin_records (signin_id, kind, participant, display_name, org_id, signed_at, late, headcount, source) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (signin_id, kind, participant) DO NOTHING",
        )
        .bind(s.id)
        .bind(kind)
        .bind(&key)
        .bind(&name)
        .bind(org)
        .bind(now)
        .bind(flag(late))
        .bind(headcount.clamp(1, 10_000))
        .bind(source)
        .execute(&self.inner.db.pool)
        .await?
        .rows_affected();
        drop(gate);
        if inserted == 1 {
            return Ok(SubmitResult {
                status: if late {
                    AttendanceStatus::Late
                } else {
                    AttendanceStatus::Signed
                },
                signed_at_ms: now,
                newly_recorded: true,
            });
        }
        // A racing duplicate lost the insert: report the winner's record.
        let r = sqlx::query("SELECT signed_at, late FROM signin_records WHERE signin_id = $1 AND kind = $2 AND participant = $3")
            .bind(s.id)
            .bind(kind)
            .bind(&key)
            .fetch_one(&self.inner.db.pool)
            .await?;
        from_row(&r, false)
    }

    /// Live results, computed from the invitee list at the time of the call.
    pub async fn signin_results(&self, s: &Signin) -> ApiResult<SigninResults> {
        let pool = &self.inner.db.pool;
        // Invited people: explicit users plus members of invited orgs (or subtrees).
        let mut people: BTreeMap<(String, String), InviteeAttendance> = BTreeMap::new();
        let users = sqlx::query(
            "SELECT u.id, u.name, u.org_id FROM users u JOIN meeting_invitees i ON i.kind = 'user' AND i.ref_id = u.id \
             WHERE i.meeting_id = $1 AND u.status = 'active'",
        )
        .bind(s.meeting_id)
        .fetch_all(pool)
        .await?;
        let org_invites = sqlx::query(
            "SELECT o.path, i.subtree FROM meeting_invitees i JOIN orgs o ON o.id = i.ref_id WHERE i.meeting_id = $1 AND i.kind = 'org'",
        )
        .bind(s.meeting_id)
        .fetch_all(pool)
        .await?;
        let mut rows = users;
        for oi in org_invites {
            let path: String = oi.try_get("path").map_err(Error::from)?;
            let subtree: i64 = oi.try_get("subtree").map_err(Error::from)?;
            let (cond, arg) = if subtree != 0 {
                (
                    "o.path LIKE $1 ESCAPE '\\'",
                    format!("{}%", like_escape(&path)),
                )
            } else {
                ("o.path = $1", path)
            };
            rows.extend(
                sqlx::query(&format!(
                    "SELECT u.id, u.name, u.org_id FROM users u JOIN orgs o ON o.id = u.org_id WHERE {cond} AND u.status = 'active'"
                ))
                .bind(arg)
                .fetch_all(pool)
                .await?,
            );
        }
        for r in rows {
            let id: i64 = r.try_get("id").map_err(Error::from)?;
            people
                .entry(("user".into(), id.to_string()))
                .or_insert(InviteeAttendance {
                    kind: "user".into(),
                    id: id.to_string(),
                    name: r.try_get("name").map_err(Error::from)?,
                    org_id: Some(r.try_get("org_id").map_err(Error::from)?),
                    status: AttendanceStatus::Absent,
                    signed_at_ms: None,
                    headcount: 1,
                });
        }
        let terms = sqlx::query(
            "SELECT t.id, t.name, t.org_id FROM terminals t JOIN meeting_invitees i ON i.kind = 'terminal' AND i.ref_id = t.id \
             WHERE i.meeting_id = $1",
        )
        .bind(s.meeting_id)
        .fetch_all(pool)
        .await?;
        for r in terms {
            let id: i64 = r.try_get("id").map_err(Error::from)?;
            people.insert(
                ("terminal".into(), id.to_string()),
                InviteeAttendance {
                    kind: "terminal".into(),
                    id: id.to_string(),
                    name: r.try_get("name").map_err(Error::from)?,
                    org_id: Some(r.try_get("org_id").map_err(Error::from)?),
                    status: AttendanceStatus::Absent,
                    signed_at_ms: None,
                    headcount: 0,
                },
            );
        }
        let recs = sqlx::query(
            "SELECT kind, participant, display_name, org_id, signed_at, late, headcount FROM signin_records WHERE signin_id = $1",
        )
        .bind(s.id)
        .fetch_all(pool)
        .await?;
        let mut uninvited = Vec::new();
        for r in recs {
            let kind: String = r.try_get("kind").map_err(Error::from)?;
            let key: String = r.try_get("participant").map_err(Error::from)?;
            let status = if r.try_get::<i64, _>("late").map_err(Error::from)? != 0 {
                AttendanceStatus::Late
            } else {
                AttendanceStatus::Signed
            };
            let at: i64 = r.try_get("signed_at").map_err(Error::from)?;
            let hc: i64 = r.try_get("headcount").map_err(Error::from)?;
            match people.get_mut(&(kind.clone(), key.clone())) {
                Some(p) => {
                    p.status = status;
                    p.signed_at_ms = Some(at);
                    p.headcount = hc;
                }
                None => uninvited.push(InviteeAttendance {
                    kind,
                    id: key,
                    name: r.try_get("display_name").map_err(Error::from)?,
                    org_id: r.try_get("org_id").map_err(Error::from)?,
                    status,
                    signed_at_ms: Some(at),
                    headcount: hc,
                }),
            }
        }
        let mut totals = Counts::default();
        let mut per_org: HashMap<i64, Counts> = HashMap::new();
        for p in people.values() {
            for c in [
                Some(&mut totals),
                p.org_id.map(|o| per_org.entry(o).or_default()),
            ]
            .into_iter()
            .flatten()
            {
                c.invited += 1;
                match p.status {
                    AttendanceStatus::Signed => c.signed += 1,
                    AttendanceStatus::Late => c.late += 1,
                    AttendanceStatus::Absent => c.absent += 1,
                }
                c.headcount += p.headcount.max(0);
            }
        }
        let mut by_org = Vec::with_capacity(per_org.len());
        for (org_id, counts) in per_org {
            let name: Option<String> = sqlx::query_scalar("SELECT name FROM orgs WHERE id = $1")
                .bind(org_id)
                .fetch_optional(pool)
                .await?;
            by_org.push(OrgAttendance {
                org_id,
                org_name: name.unwrap_or_default(),
                counts,
            });
        }
        by_org.sort_by(|a, b| a.org_name.cmp(&b.org_name).then(a.org_id.cmp(&b.org_id)));
        // Users first, then terminals, by name.
        let mut invitees: Vec<InviteeAttendance> = people.into_values().collect();
        invitees.sort_by(|a, b| {
            b.kind
                .cmp(&a.kind)
                .then(a.name.cmp(&b.name))
                .then(a.id.cmp(&b.id))
        });
        Ok(SigninResults {
            open: s.is_open(self.now_ms()),
            signin: s.clone(),
            totals,
            by_org,
            invitees,
            uninvited,
        })
    }
}

/// One CSV field: quoted when needed, and a leading `= + - @` neutralised so a
/// spreadsheet never evaluates a name as a formula.
fn csv_field(s: &str) -> String {
    let mut v = s.to_owned();
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        v.insert(0, '\'');
    }
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// CSV export of sign-in results (UTF-8 with BOM so spreadsheet programs read Chinese).
pub fn results_csv(r: &SigninResults) -> String {
    let mut out =
        String::from("\u{feff}kind,id,name,org_id,status,signed_at_ms,headcount,invited\n");
    let rows = r
        .invitees
        .iter()
        .map(|p| (p, true))
        .chain(r.uninvited.iter().map(|p| (p, false)));
    for (p, invited) in rows {
        let status = match p.status {
            AttendanceStatus::Signed => "signed",
            AttendanceStatus::Late => "late",
            AttendanceStatus::Absent => "absent",
        };
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            csv_field(&p.kind),
            csv_field(&p.id),
            csv_field(&p.name),
            p.org_id.map(|o| o.to_string()).unwrap_or_default(),
            status,
            p.signed_at_ms.map(|o| o.to_string()).unwrap_or_default(),
            p.headcount,
            invited
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(super::csv_field("张三"), "张三");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("=1+1"), "'=1+1");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
