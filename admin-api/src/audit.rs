//! Append-only, hash-chained audit log. Each entry's hash covers its fields and the
//! previous entry's hash, so editing, deleting or reordering any entry breaks the chain
//! from there on, which [`AdminState::verify_audit`] reports.

use crate::AdminState;
use crate::db::like_escape;
use crate::error::Error;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// Genesis value of the chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Denied,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One event to record. Never put secrets or hidden phone numbers in `detail`.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor_id: Option<i64>,
    pub actor_name: String,
    pub ip: String,
    pub action: String,
    pub target: String,
    pub scope_path: String,
    pub outcome: Outcome,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub actor_id: Option<i64>,
    pub actor_name: String,
    pub ip: String,
    pub action: String,
    pub target: String,
    pub scope_path: String,
    pub result: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

fn chain_hash(prev: &str, e: &AuditEntry) -> String {
    // JSON of a tuple is an unambiguous encoding of the fields (strings are quoted
    // and escaped), so no two different entries hash the same input.
    let body = serde_json::json!([
        e.seq,
        e.at,
        e.actor_id,
        e.actor_name,
        e.ip,
        e.action,
        e.target,
        e.scope_path,
        e.result,
        e.detail
    ]);
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body.to_string().as_bytes());
    hex::encode(h.finalize())
}

fn row_to_entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        actor_id: r.try_get("actor_id")?,
        actor_name: r.try_get("actor_name")?,
        ip: r.try_get("ip")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        scope_path: r.try_get("scope_path")?,
        result: r.try_get("result")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

const COLS: &str = "seq, at, actor_id, actor_name, ip, action, target, scope_path, result, detail, prev_hash, hash";

/// Filters of an audit search; `scope_path` is always set (the searcher's subtree).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub scope_path: String,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub result: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditVerification {
    pub ok: bool,
    pub entries: i64,
    /// First entry whose hash does not match, if any.
    pub broken_at: Option<i64>,
}

impl AdminState {
    /// Append one event. Appends are serialised in-process; across processes sharing
    /// one database the `seq` primary key makes a racing append fail and retry.
    pub async fn audit(&self, ev: AuditEvent) -> Result<(), Error> {
        let _guard = self.inner.audit_lock.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.inner.db.pool)
                .await?;
            let (seq, prev) = match last {
                Some(r) => (
                    r.try_get::<i64, _>("seq")? + 1,
                    r.try_get::<String, _>("hash")?,
                ),
                None => (1, GENESIS.to_owned()),
            };
            let mut e = AuditEntry {
                seq,
                at: self.now_ms(),
                actor_id: ev.actor_id,
                actor_name: ev.actor_name.clone(),
                ip: ev.ip.clone(),
                action: ev.action.clone(),
                target: ev.target.clone(),
                scope_path: ev.scope_path.clone(),
                result: ev.outcome.as_str().to_owned(),
                detail: ev.detail.clone(),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            e.hash = chain_hash(&prev, &e);
            let res = sqlx::query(
                "INSERT INTO audit_log (seq, at, actor_id, actor_name, ip, action, target, scope_path, \
                 result, detail, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)",
            )
            .bind(e.seq)
            .bind(e.at)
            .bind(e.actor_id)
            .bind(&e.actor_name)
            .bind(&e.ip)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.scope_path)
            .bind(&e.result)
            .bind(&e.detail)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&self.inner.db.pool)
            .await;
            match res {
                Ok(_) => return Ok(()),
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() && attempts < 5 => {
                    continue;
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    pub async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        let mut sql = format!("SELECT {COLS} FROM audit_log WHERE scope_path LIKE $1 ESCAPE '\\'");
        let mut n = 1;
        let mut strs: Vec<String> = vec![format!("{}%", like_escape(&q.scope_path))];
        let mut push = |sql: &mut String, cond: &str, v: String| {
            n += 1;
            sql.push_str(&format!(" AND {cond} ${n}"));
            strs.push(v);
        };
        if let Some(a) = &q.actor {
            push(&mut sql, "actor_name =", a.clone());
        }
        if let Some(a) = &q.action {
            push(&mut sql, "action =", a.clone());
        }
        if let Some(a) = &q.result {
            push(&mut sql, "result =", a.clone());
        }
        let mut ints = vec![];
        if let Some(f) = q.from_ms {
            n += 1;
            sql.push_str(&format!(" AND at >= ${n}"));
            ints.push(f);
        }
        if let Some(t) = q.to_ms {
            n += 1;
            sql.push_str(&format!(" AND at < ${n}"));
            ints.push(t);
        }
        sql.push_str(&format!(
            " ORDER BY seq DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ));
        let mut query = sqlx::query(&sql);
        for s in &strs {
            query = query.bind(s);
        }
        for i in ints {
            query = query.bind(i);
        }
        let rows = query
            .bind(q.limit)
            .bind(q.offset)
            .fetch_all(&self.inner.db.pool)
            .await?;
        rows.iter()
            .map(|r| row_to_entry(r).map_err(Error::from))
            .collect()
    }

    /// Recompute the whole chain. Entries pruned by retention are gone; the chain is
    /// checked from the oldest kept entry, whose `prev_hash` is taken as given.
    pub async fn verify_audit(&self) -> Result<AuditVerification, Error> {
        let mut last_seq = 0i64;
        let mut prev: Option<String> = None;
        let mut count = 0i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {COLS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000"
            ))
            .bind(last_seq)
            .fetch_all(&self.inner.db.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let e = row_to_entry(r)?;
                let expected_prev = prev.clone().unwrap_or_else(|| e.prev_hash.clone());
                let gap = prev.is_some() && e.seq != last_seq + 1;
                if gap || e.prev_hash != expected_prev || chain_hash(&expected_prev, &e) != e.hash {
                    return Ok(AuditVerification {
                        ok: false,
                        entries: count,
                        broken_at: Some(e.seq),
                    });
                }
                count += 1;
                last_seq = e.seq;
                prev = Some(e.hash);
            }
        }
        Ok(AuditVerification {
            ok: true,
            entries: count,
            broken_at: None,
        })
    }

    /// Delete entries older than the retention period (oldest first, so the remaining
    /// chain stays contiguous). Returns how many were removed. The server calls this
    /// periodically; the pruning itself is audited.
    pub async fn prune_audit(&self) -> Result<u64, Error> {
        let days = i64::from(self.inner.config.audit_retention_days);
        if days == 0 {
            return Ok(0);
        }
        let cutoff = self
            .now_ms()
            .saturating_sub(days.saturating_mul(86_400_000));
        let _guard = self.inner.audit_lock.lock().await;
        let removed = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(cutoff)
            .execute(&self.inner.db.pool)
            .await?
            .rows_affected();
        drop(_guard);
        if removed > 0 {
            self.audit(AuditEvent {
                actor_id: None,
                actor_name: "system".into(),
                ip: String::new(),
                action: "audit_prune".into(),
                target: format!("before {cutoff}"),
                scope_path: self.inner.root_path.clone(),
                outcome: Outcome::Ok,
                detail: format!("{removed} entries older than {days} days removed"),
            })
            .await?;
        }
        Ok(removed)
    }
}
