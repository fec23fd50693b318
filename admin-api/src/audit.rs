//! Append-only, hash-chained audit log. Each entry's hash covers its fields and the
//! previous entry's hash, so editing, deleting or reordering any entry breaks the chain
//! from there on, which [`AdminState::verify_audit`] reports.

use crate::AdminState;
use crate::db::like_escape;
use crate::error::Error;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::Arc;

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

/// An event waiting for the next group commit, and who to tell when it is durable.
pub(crate) type PendingAudit = (AuditEvent, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Entries per multi-row insert (12 values each; SQLite allows 32,766 per statement).
const AUDIT_ROWS_PER_INSERT: usize = 500;

/// Append `events` after the chain's current head in one transaction: one commit (one
/// WAL flush) for the whole group. A racing appender in another process makes the
/// `seq` primary key fail; the group is then re-read and retried on the new head.
async fn append_group(
    db: &crate::db::Db,
    clock: &dyn crate::Clock,
    events: &[AuditEvent],
) -> Result<(), Error> {
    let mut attempts = 0;
    let _gate = db.write_gate().await;
    loop {
        attempts += 1;
        let mut tx = db.pool.begin().await?;
        if db.kind() == crate::db::DbKind::Sqlite {
            // Write first, so the transaction holds SQLite's write lock before it reads
            // the head (a read-first transaction cannot upgrade after another commit).
            crate::db::lock_row(&mut tx, "lock:audit").await?;
        }
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (mut seq, mut prev) = match last {
            Some(r) => (r.try_get::<i64, _>("seq")?, r.try_get::<String, _>("hash")?),
            None => (0, GENESIS.to_owned()),
        };
        let at = clock.now_ms();
        let mut entries = Vec::with_capacity(events.len());
        for ev in events {
            seq += 1;
            let mut e = AuditEntry {
                seq,
                at,
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
            prev.clone_from(&e.hash);
            entries.push(e);
        }
        let mut res = Ok(());
        for chunk in entries.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut sql = format!("INSERT INTO audit_log ({COLS}) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                let b = i * 12;
                sql.push('(');
                sql.push_str(
                    &(1..=12)
                        .map(|k| format!("${}", b + k))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                sql.push(')');
            }
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q
                    .bind(e.seq)
                    .bind(e.at)
                    .bind(e.actor_id)
                    .bind(e.actor_name.clone())
                    .bind(e.ip.clone())
                    .bind(e.action.clone())
                    .bind(e.target.clone())
                    .bind(e.scope_path.clone())
                    .bind(e.result.clone())
                    .bind(e.detail.clone())
                    .bind(e.prev_hash.clone())
                    .bind(e.hash.clone());
            }
            if let Err(e) = q.execute(&mut *tx).await {
                res = Err(e);
                break;
            }
        }
        match res {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() && attempts < 5 => {
                drop(tx);
                continue;
            }
            Err(other) => return Err(other.into()),
        }
    }
}

impl AdminState {
    /// Append one event and return once it is committed (a crash after the return
    /// loses nothing acknowledged). Group commit: every caller queues its event; the
    /// one that takes the append lock writes everything queued so far in one
    /// transaction and tells each waiter, so N concurrent actions cost one commit, not
    /// N serialised ones. The write runs in its own task, so a caller that goes away
    /// (a dropped HTTP request) cannot abandon the others' entries half-written.
    pub async fn audit(&self, ev: AuditEvent) -> Result<(), Error> {
        let (done_tx, mut done) = tokio::sync::oneshot::channel();
        self.inner
            .audit_queue
            .lock()
            .map_err(|_| Error::Audit("audit queue poisoned".into()))?
            .push((ev, done_tx));
        let guard = Arc::clone(&self.inner.audit_lock).lock_owned().await;
        // A group written while we waited for the lock may have carried ours.
        if let Ok(r) = done.try_recv() {
            return r.map_err(Error::Audit);
        }
        let group: Vec<PendingAudit> = std::mem::take(
            &mut *self
                .inner
                .audit_queue
                .lock()
                .map_err(|_| Error::Audit("audit queue poisoned".into()))?,
        );
        let db = self.inner.db.clone();
        let clock = Arc::clone(&self.inner.clock);
        tokio::spawn(async move {
            let (events, waiters): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            let r = append_group(&db, &*clock, &events)
                .await
                .map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(r.clone());
            }
            drop(guard);
        });
        match done.await {
            Ok(r) => r.map_err(Error::Audit),
            Err(_) => Err(Error::Audit("audit writer stopped".into())),
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
