//! Recording catalogue (data only). The recorder registers a recording when it starts,
//! appends fragment files as it writes them and finishes it; owners share recordings
//! with chosen users until an expiry. Editing and playback belong to the recorder.

use crate::AdminState;
use crate::error::{ApiError, ApiResult, Error};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordingFile {
    pub seq: i64,
    pub path: String,
    pub bytes: i64,
    pub duration_ms: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordingShare {
    pub user_id: i64,
    pub expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Recording {
    pub id: i64,
    pub meeting_id: i64,
    pub owner_id: i64,
    pub org_id: i64,
    pub title: String,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    /// `recording` | `ready` | `failed` | `deleted`
    pub status: String,
    pub files: Vec<RecordingFile>,
    pub shares: Vec<RecordingShare>,
    #[serde(skip)]
    pub org_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingStatus {
    Ready,
    Failed,
}

const COLS: &str = "r.id, r.meeting_id, r.owner_id, r.org_id, o.path AS org_path, r.title, r.started_at, \
     r.duration_ms, r.status";

fn from_row(r: &AnyRow) -> Result<Recording, sqlx::Error> {
    Ok(Recording {
        id: r.try_get("id")?,
        meeting_id: r.try_get("meeting_id")?,
        owner_id: r.try_get("owner_id")?,
        org_id: r.try_get("org_id")?,
        org_path: r.try_get("org_path")?,
        title: r.try_get("title")?,
        started_at_ms: r.try_get("started_at")?,
        duration_ms: r.try_get("duration_ms")?,
        status: r.try_get("status")?,
        files: Vec::new(),
        shares: Vec::new(),
    })
}

impl AdminState {
    /// Called by the recorder when it starts recording meeting `meeting_id`; the
    /// meeting's owner owns the recording.
    pub async fn register_recording(
        &self,
        meeting_id: i64,
        title: &str,
    ) -> Result<Recording, Error> {
        let m = self
            .meeting(meeting_id)
            .await?
            .ok_or_else(|| Error::Api(ApiError::not_found("meeting")))?;
        let id = self.new_id();
        let now = self.now_ms();
        sqlx::query(
            "INSERT INTO recordings (id, meeting_id, owner_id, org_id, title, started_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6)",
        )
        .bind(id)
        .bind(meeting_id)
        .bind(m.owner_id)
        .bind(m.org_id)
        .bind(title.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
        .bind(now)
        .execute(&self.inner.db.pool)
        .await?;
        self.recording(id)
            .await?
            .ok_or_else(|| Error::Api(ApiError::not_found("recording")))
    }

    /// Record one fragment file (idempotent per `seq`, so a restarted recorder may repeat).
    pub async fn add_recording_file(
        &self,
        id: i64,
        seq: i64,
        path: &str,
        bytes: i64,
        duration_ms: i64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO recording_files (recording_id, seq, path, bytes, duration_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (recording_id, seq) DO NOTHING",
        )
        .bind(id)
        .bind(seq)
        .bind(path)
        .bind(bytes)
        .bind(duration_ms)
        .execute(&self.inner.db.pool)
        .await?;
        Ok(())
    }

    pub async fn finish_recording(
        &self,
        id: i64,
        status: RecordingStatus,
        duration_ms: i64,
    ) -> Result<(), Error> {
        sqlx::query("UPDATE recordings SET status = $1, duration_ms = $2, updated_at = $3 WHERE id = $4 AND status = 'recording'")
            .bind(match status {
                RecordingStatus::Ready => "ready",
                RecordingStatus::Failed => "failed",
            })
            .bind(duration_ms)
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.inner.db.pool)
            .await?;
        Ok(())
    }

    pub async fn recording(&self, id: i64) -> Result<Option<Recording>, Error> {
        let r = sqlx::query(&format!(
            "SELECT {COLS} FROM recordings r JOIN orgs o ON o.id = r.org_id WHERE r.id = $1 AND r.status <> 'deleted'"
        ))
        .bind(id)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        let Some(r) = r else { return Ok(None) };
        let mut rec = from_row(&r)?;
        self.fill_recording(&mut rec).await?;
        Ok(Some(rec))
    }

    async fn fill_recording(&self, rec: &mut Recording) -> Result<(), Error> {
        let files = sqlx::query("SELECT seq, path, bytes, duration_ms FROM recording_files WHERE recording_id = $1 ORDER BY seq")
            .bind(rec.id)
            .fetch_all(&self.inner.db.pool)
            .await?;
        for f in files {
            rec.files.push(RecordingFile {
                seq: f.try_get("seq")?,
                path: f.try_get("path")?,
                bytes: f.try_get("bytes")?,
                duration_ms: f.try_get("duration_ms")?,
            });
        }
        let shares = sqlx::query("SELECT user_id, expires_at FROM recording_shares WHERE recording_id = $1 ORDER BY user_id")
            .bind(rec.id)
            .fetch_all(&self.inner.db.pool)
            .await?;
        for s in shares {
            rec.shares.push(RecordingShare {
                user_id: s.try_get("user_id")?,
                expires_at_ms: s.try_get("expires_at")?,
            });
        }
        Ok(())
    }

    /// Is `rec` shared with `user_id` right now?
    pub fn recording_shared_with(&self, rec: &Recording, user_id: i64) -> bool {
        let now = self.now_ms();
        rec.shares
            .iter()
            .any(|s| s.user_id == user_id && s.expires_at_ms.is_none_or(|e| e > now))
    }

    /// Replace the share list.
    pub(crate) async fn set_recording_shares(
        &self,
        id: i64,
        users: &[i64],
        expires_at: Option<i64>,
    ) -> ApiResult<()> {
        if users.len() > 1000 {
            return Err(ApiError::field("user_ids", "at most 1000"));
        }
        let mut tx = self.inner.db.pool.begin().await?;
        for u in users {
            let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
                .bind(*u)
                .fetch_optional(&mut *tx)
                .await?;
            if found.is_none() {
                return Err(ApiError::field("user_ids", &format!("{u} does not exist")));
            }
        }
        sqlx::query("DELETE FROM recording_shares WHERE recording_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let now = self.now_ms();
        for u in users {
            sqlx::query(
                "INSERT INTO recording_shares (recording_id, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (recording_id, user_id) DO NOTHING",
            )
            .bind(id)
            .bind(*u)
            .bind(expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn delete_recording(&self, id: i64) -> ApiResult<()> {
        sqlx::query("UPDATE recordings SET status = 'deleted', updated_at = $1 WHERE id = $2")
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.inner.db.pool)
            .await?;
        Ok(())
    }

    /// Recordings the user owns or that are shared with them (unexpired), newest first.
    pub async fn list_recordings(
        &self,
        user_id: i64,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Recording>, Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM recordings r JOIN orgs o ON o.id = r.org_id WHERE r.status <> 'deleted' AND \
             (r.owner_id = $1 OR EXISTS (SELECT 1 FROM recording_shares s WHERE s.recording_id = r.id AND \
             s.user_id = $1 AND (s.expires_at IS NULL OR s.expires_at > $2))) \
             ORDER BY r.started_at DESC, r.id LIMIT $3 OFFSET $4"
        ))
        .bind(user_id)
        .bind(self.now_ms())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.inner.db.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut rec = from_row(r)?;
            self.fill_recording(&mut rec).await?;
            out.push(rec);
        }
        Ok(out)
    }
}
