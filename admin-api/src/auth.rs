//! Authentication: argon2id passwords with a policy (length, character classes,
//! expiry, history) and lockout; sessions as a short-lived HS256 access token plus a
//! rotating opaque refresh token. Refresh tokens are stored hashed; reusing a spent one
//! revokes the whole session (it was stolen or replayed).

use crate::AdminState;
use crate::audit::{AuditEvent, Outcome};
use crate::clock::random_hex;
use crate::error::{ApiError, Error, ErrorCode};
use crate::policy::{Actor, Role};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// Password and lockout policy, edited by the security admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Minimum length in characters (8..=128).
    #[schema(minimum = 8, maximum = 128)]
    pub min_length: u32,
    /// How many of lower case, upper case, digit, other must appear (1..=4).
    #[schema(minimum = 1, maximum = 4)]
    pub min_classes: u32,
    /// Days until a password must be changed; 0 = never.
    #[schema(minimum = 0, maximum = 3650)]
    pub max_age_days: u32,
    /// How many previous passwords may not be reused (0..=24).
    #[schema(minimum = 0, maximum = 24)]
    pub history: u32,
    /// Failed logins in a row before the account locks (1..=100).
    #[schema(minimum = 1, maximum = 100)]
    pub lockout_threshold: u32,
    /// How long a lock lasts, in minutes (1..=1440).
    #[schema(minimum = 1, maximum = 1440)]
    pub lockout_minutes: u32,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 12,
            min_classes: 3,
            max_age_days: 90,
            history: 5,
            lockout_threshold: 5,
            lockout_minutes: 15,
        }
    }
}

impl PasswordPolicy {
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |f: &str, r: &str| Err(ApiError::field(f, r));
        if !(8..=128).contains(&self.min_length) {
            return bad("min_length", "must be 8..=128");
        }
        if !(1..=4).contains(&self.min_classes) {
            return bad("min_classes", "must be 1..=4");
        }
        if self.max_age_days > 3650 {
            return bad("max_age_days", "must be 0..=3650");
        }
        if self.history > 24 {
            return bad("history", "must be 0..=24");
        }
        if !(1..=100).contains(&self.lockout_threshold) {
            return bad("lockout_threshold", "must be 1..=100");
        }
        if !(1..=1440).contains(&self.lockout_minutes) {
            return bad("lockout_minutes", "must be 1..=1440");
        }
        Ok(())
    }

    /// Why `password` is not acceptable, if it is not.
    pub fn check(&self, password: &str, username: &str) -> Result<(), String> {
        let len = password.chars().count();
        if len < self.min_length as usize {
            return Err(format!("at least {} characters", self.min_length));
        }
        if len > 256 {
            return Err("at most 256 characters".into());
        }
        let classes = [
            password.chars().any(|c| c.is_lowercase()),
            password.chars().any(|c| c.is_uppercase()),
            password.chars().any(|c| c.is_ascii_digit()),
            password.chars().any(|c| !c.is_alphanumeric()),
        ]
        .iter()
        .filter(|&&b| b)
        .count();
        if (classes as u32) < self.min_classes {
            return Err(format!(
                "at least {} of: lower case, upper case, digit, symbol",
                self.min_classes
            ));
        }
        if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
            return Err("must not contain the user name".into());
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub sub: i64,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
}

/// Tokens handed out by login and refresh.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    /// The password is expired or one-time: only the own-account endpoints work until
    /// it is changed.
    pub must_change_password: bool,
}

pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

const POLICY_KEY: &str = "password_policy";

impl AdminState {
    fn argon2(&self) -> Result<argon2::Argon2<'static>, Error> {
        let params = argon2::Params::new(
            self.inner.config.argon2_memory_kib.max(8),
            self.inner.config.argon2_iterations.max(1),
            1,
            None,
        )
        .map_err(|e| Error::PasswordHash(e.to_string()))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    /// Hash on the blocking pool: argon2 is deliberately slow.
    pub(crate) async fn hash_password(&self, password: &str) -> Result<String, Error> {
        let a = self.argon2()?;
        let mut salt = [0u8; 16];
        self.inner.entropy.fill(&mut salt);
        let pw = password.to_owned();
        let _slot = self
            .inner
            .hash_slots
            .acquire()
            .await
            .map_err(|_| Error::Join)?;
        tokio::task::spawn_blocking(move || {
            let salt =
                SaltString::encode_b64(&salt).map_err(|e| Error::PasswordHash(e.to_string()))?;
            a.hash_password(pw.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| Error::PasswordHash(e.to_string()))
        })
        .await
        .map_err(|_| Error::Join)?
    }

    pub(crate) async fn verify_password(&self, password: &str, hash: &str) -> Result<bool, Error> {
        let a = self.argon2()?;
        let pw = password.to_owned();
        let hash = hash.to_owned();
        let _slot = self
            .inner
            .hash_slots
            .acquire()
            .await
            .map_err(|_| Error::Join)?;
        tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            a.verify_password(pw.as_bytes(), &parsed).is_ok()
        })
        .await
        .map_err(|_| Error::Join)
    }

    pub async fn password_policy(&self) -> Result<PasswordPolicy, Error> {
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(POLICY_KEY)
            .fetch_optional(&self.inner.db.pool)
            .await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default())
    }

    pub(crate) async fn set_password_policy(&self, p: &PasswordPolicy) -> Result<(), Error> {
        let json = serde_json::to_string(p).map_err(|e| Error::PasswordHash(e.to_string()))?;
        let mut tx = self.inner.db.pool.begin().await?;
        sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(POLICY_KEY)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2)")
            .bind(POLICY_KEY)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Set a user's password after checking policy and history. `must_change` marks a
    /// one-time password set by an admin.
    pub async fn set_password(
        &self,
        user_id: i64,
        username: &str,
        password: &str,
        must_change: bool,
    ) -> Result<(), Error> {
        let policy = self.password_policy().await?;
        policy
            .check(password, username)
            .map_err(|m| Error::Api(ApiError::new(ErrorCode::PasswordPolicy, m)))?;
        if policy.history > 0 {
            let old: Vec<String> = sqlx::query_scalar(
                "SELECT hash FROM password_history WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2",
            )
            .bind(user_id)
            .bind(i64::from(policy.history))
            .fetch_all(&self.inner.db.pool)
            .await?;
            for h in old {
                if self.verify_password(password, &h).await? {
                    return Err(Error::Api(ApiError::new(
                        ErrorCode::PasswordPolicy,
                        format!("must differ from the last {} passwords", policy.history),
                    )));
                }
            }
        }
        let hash = self.hash_password(password).await?;
        let now = self.now_ms();
        let mut tx = self.inner.db.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2, must_change_password = $3, \
             failed_logins = 0, locked_until = NULL, updated_at = $2 WHERE id = $4",
        )
        .bind(&hash)
        .bind(now)
        .bind(i64::from(must_change))
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO password_history (user_id, hash, created_at) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(&hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Check credentials, apply lockout, open a session. Every attempt is audited.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        ip: &str,
    ) -> Result<TokenPair, ApiError> {
        self.login_with_totp(username, password, None, ip).await
    }

    /// [`AdminState::login`] with the one-time code of an account that has a second
    /// factor (`totp_required` without it). A wrong or replayed code counts towards
    /// the lockout like a wrong password.
    pub async fn login_with_totp(
        &self,
        username: &str,
        password: &str,
        totp_code: Option<&str>,
        ip: &str,
    ) -> Result<TokenPair, ApiError> {
        let now = self.now_ms();
        let policy = self.password_policy().await?;
        let row = sqlx::query(
            "SELECT u.id, u.status, u.password_hash, u.password_changed_at, u.must_change_password, \
             u.failed_logins, u.locked_until, o.path FROM users u JOIN orgs o ON o.id = u.org_id \
             WHERE u.username = $1",
        )
        .bind(username)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        let audit = |outcome: Outcome, id: Option<i64>, scope: String, detail: &str| AuditEvent {
            actor_id: id,
            actor_name: username.chars().take(64).collect(),
            ip: ip.to_owned(),
            action: "login".into(),
            target: format!("user:{}", id.map(|i| i.to_string()).unwrap_or_default()),
            scope_path: scope,
            outcome,
            detail: detail.to_owned(),
        };
        let Some(row) = row else {
            // Same work and same answer as a wrong password, so user names can't be probed.
            let _ = self.verify_password(password, &self.inner.dummy_hash).await;
            self.audit(audit(
                Outcome::Failed,
                None,
                self.inner.root_path.clone(),
                "unknown user",
            ))
            .await?;
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "wrong user name or password",
            ));
        };
        let id: i64 = row.try_get("id").map_err(Error::from)?;
        let path: String = row.try_get("path").map_err(Error::from)?;
        let status: String = row.try_get("status").map_err(Error::from)?;
        let hash: Option<String> = row.try_get("password_hash").map_err(Error::from)?;
        let changed_at: Option<i64> = row.try_get("password_changed_at").map_err(Error::from)?;
        let must_change: i64 = row.try_get("must_change_password").map_err(Error::from)?;
        let failed: i64 = row.try_get("failed_logins").map_err(Error::from)?;
        let locked_until: Option<i64> = row.try_get("locked_until").map_err(Error::from)?;

        if locked_until.is_some_and(|t| t > now) {
            self.audit(audit(Outcome::Denied, Some(id), path, "account locked"))
                .await?;
            return Err(ApiError::new(
                ErrorCode::AccountLocked,
                "account locked after repeated failures; try later",
            ));
        }
        let ok = match &hash {
            Some(h) => self.verify_password(password, h).await?,
            None => false,
        };
        if !ok {
            let failed = failed + 1;
            let lock = (failed >= i64::from(policy.lockout_threshold))
                .then(|| now + i64::from(policy.lockout_minutes) * 60_000);
            sqlx::query("UPDATE users SET failed_logins = $1, locked_until = $2 WHERE id = $3")
                .bind(if lock.is_some() { 0 } else { failed })
                .bind(lock)
                .bind(id)
                .execute(&self.inner.db.pool)
                .await?;
            let detail = if lock.is_some() {
                "wrong password; account locked"
            } else {
                "wrong password"
            };
            self.audit(audit(Outcome::Failed, Some(id), path, detail))
                .await?;
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "wrong user name or password",
            ));
        }
        if status != "active" {
            self.audit(audit(Outcome::Denied, Some(id), path, "account disabled"))
                .await?;
            return Err(ApiError::new(
                ErrorCode::AccountDisabled,
                "account disabled",
            ));
        }
        match self.totp_login_check(id, totp_code).await {
            Ok(()) => {}
            Err(crate::totp::LoginTotp::Error(e)) => return Err(e),
            Err(crate::totp::LoginTotp::Missing) => {
                self.audit(audit(
                    Outcome::Denied,
                    Some(id),
                    path,
                    "second factor required",
                ))
                .await?;
                return Err(ApiError::new(
                    ErrorCode::TotpRequired,
                    "this account needs a one-time code (totp_code)",
                ));
            }
            Err(crate::totp::LoginTotp::Rejected(why)) => {
                let failed = failed + 1;
                let lock = (failed >= i64::from(policy.lockout_threshold))
                    .then(|| now + i64::from(policy.lockout_minutes) * 60_000);
                sqlx::query("UPDATE users SET failed_logins = $1, locked_until = $2 WHERE id = $3")
                    .bind(if lock.is_some() { 0 } else { failed })
                    .bind(lock)
                    .bind(id)
                    .execute(&self.inner.db.pool)
                    .await?;
                let detail = if lock.is_some() {
                    format!("{why}; account locked")
                } else {
                    why
                };
                self.audit(audit(Outcome::Failed, Some(id), path, &detail))
                    .await?;
                return Err(ApiError::new(
                    ErrorCode::InvalidCredentials,
                    "wrong one-time code",
                ));
            }
        }
        let expired = policy.max_age_days > 0
            && changed_at.is_some_and(|t| now - t > i64::from(policy.max_age_days) * 86_400_000);
        if failed != 0 || locked_until.is_some() {
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
                .bind(id)
                .execute(&self.inner.db.pool)
                .await?;
        }
        let session_id = random_hex(&*self.inner.entropy, 16);
        let refresh_ttl = i64::try_from(self.inner.config.refresh_token_ttl_secs)
            .unwrap_or(i64::MAX / 2000)
            * 1000;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at, expires_at, ip) VALUES ($1, $2, $3, $4, $5)")
            .bind(&session_id)
            .bind(id)
            .bind(now)
            .bind(now.saturating_add(refresh_ttl))
            .bind(ip)
            .execute(&self.inner.db.pool)
            .await?;
        let pair = self
            .issue_tokens(id, &session_id, must_change != 0 || expired)
            .await?;
        self.audit(audit(
            Outcome::Ok,
            Some(id),
            path,
            if expired { "password expired" } else { "" },
        ))
        .await?;
        Ok(pair)
    }

    async fn issue_tokens(
        &self,
        user_id: i64,
        session_id: &str,
        must_change: bool,
    ) -> Result<TokenPair, Error> {
        let now = self.now_ms();
        let ttl = self.inner.config.access_token_ttl_secs.max(1);
        let claims = Claims {
            sub: user_id,
            sid: session_id.to_owned(),
            iat: now / 1000,
            exp: now / 1000 + i64::try_from(ttl).unwrap_or(i64::MAX / 4),
        };
        let access = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.inner.jwt_encoding,
        )?;
        let refresh = format!("rt_{}", random_hex(&*self.inner.entropy, 32));
        let refresh_ttl = i64::try_from(self.inner.config.refresh_token_ttl_secs)
            .unwrap_or(i64::MAX / 2000)
            * 1000;
        sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(sha256_hex(&refresh))
            .bind(session_id)
            .bind(now)
            .bind(now.saturating_add(refresh_ttl))
            .execute(&self.inner.db.pool)
            .await?;
        Ok(TokenPair {
            access_token: access,
            token_type: "Bearer",
            expires_in: ttl,
            refresh_token: refresh,
            must_change_password: must_change,
        })
    }

    /// Trade a refresh token for a new pair. A token works once.
    pub async fn refresh(&self, refresh_token: &str, ip: &str) -> Result<TokenPair, ApiError> {
        let now = self.now_ms();
        let hash = sha256_hex(refresh_token);
        let row = sqlx::query(
            "SELECT r.session_id, r.expires_at, r.used_at, s.user_id, s.revoked_at, u.status, \
             u.must_change_password FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
             JOIN users u ON u.id = s.user_id WHERE r.hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        let Some(row) = row else {
            return Err(ApiError::new(
                ErrorCode::TokenRevoked,
                "unknown refresh token",
            ));
        };
        let sid: String = row.try_get("session_id").map_err(Error::from)?;
        let exp: i64 = row.try_get("expires_at").map_err(Error::from)?;
        let used: Option<i64> = row.try_get("used_at").map_err(Error::from)?;
        let user_id: i64 = row.try_get("user_id").map_err(Error::from)?;
        let revoked: Option<i64> = row.try_get("revoked_at").map_err(Error::from)?;
        let status: String = row.try_get("status").map_err(Error::from)?;
        let must_change: i64 = row.try_get("must_change_password").map_err(Error::from)?;
        if revoked.is_some() {
            return Err(ApiError::new(ErrorCode::TokenRevoked, "session revoked"));
        }
        if used.is_some() {
            self.revoke_session(&sid).await?;
            self.audit(AuditEvent {
                actor_id: Some(user_id),
                actor_name: String::new(),
                ip: ip.to_owned(),
                action: "refresh_reuse".into(),
                target: format!("user:{user_id}"),
                scope_path: self.inner.root_path.clone(),
                outcome: Outcome::Denied,
                detail: "spent refresh token presented again; session revoked".into(),
            })
            .await?;
            return Err(ApiError::new(
                ErrorCode::TokenRevoked,
                "refresh token already used; session revoked",
            ));
        }
        if exp <= now {
            return Err(ApiError::new(
                ErrorCode::TokenExpired,
                "refresh token expired",
            ));
        }
        if status != "active" {
            return Err(ApiError::new(
                ErrorCode::AccountDisabled,
                "account disabled",
            ));
        }
        // Only one of two racing refreshes may win the token.
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(&hash)
        .execute(&self.inner.db.pool)
        .await?
        .rows_affected();
        if spent != 1 {
            return Err(ApiError::new(
                ErrorCode::TokenRevoked,
                "refresh token already used",
            ));
        }
        Ok(self.issue_tokens(user_id, &sid, must_change != 0).await?)
    }

    pub(crate) async fn revoke_session(&self, sid: &str) -> Result<(), Error> {
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(self.now_ms())
            .bind(sid)
            .execute(&self.inner.db.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn revoke_user_sessions(&self, user_id: i64) -> Result<(), Error> {
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(self.now_ms())
        .bind(user_id)
        .execute(&self.inner.db.pool)
        .await?;
        Ok(())
    }

    /// Resolve a bearer token to the caller, checking expiry against the injected
    /// clock, the session's revocation and the account's current state and role.
    pub async fn authenticate(&self, token: &str, ip: &str) -> Result<Actor, ApiError> {
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        // jsonwebtoken would read the system clock; expiry is checked below against ours.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &self.inner.jwt_decoding, &validation)
            .map_err(|_| ApiError::new(ErrorCode::Unauthenticated, "invalid access token"))?;
        let c = data.claims;
        if c.exp.saturating_mul(1000) <= self.now_ms() {
            return Err(ApiError::new(
                ErrorCode::TokenExpired,
                "access token expired",
            ));
        }
        let row = sqlx::query(
            "SELECT s.revoked_at, u.id, u.username, u.name, u.role, u.status, u.org_id, u.must_change_password, \
             u.password_changed_at, o.path AS org_path, so.path AS scope_path, p.value AS policy \
             FROM sessions s JOIN users u ON u.id = s.user_id JOIN orgs o ON o.id = u.org_id \
             LEFT JOIN orgs so ON so.id = u.scope_org_id LEFT JOIN settings p ON p.key = $3 \
             WHERE s.id = $1 AND s.user_id = $2",
        )
        .bind(&c.sid)
        .bind(c.sub)
        .bind(POLICY_KEY)
        .fetch_optional(&self.inner.db.pool)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::TokenRevoked, "session not found"))?;
        let revoked: Option<i64> = row.try_get("revoked_at").map_err(Error::from)?;
        if revoked.is_some() {
            return Err(ApiError::new(ErrorCode::TokenRevoked, "session revoked"));
        }
        let status: String = row.try_get("status").map_err(Error::from)?;
        if status != "active" {
            return Err(ApiError::new(
                ErrorCode::AccountDisabled,
                "account disabled",
            ));
        }
        let role_s: String = row.try_get("role").map_err(Error::from)?;
        let role = Role::parse(&role_s).unwrap_or(Role::User);
        let scope_path: Option<String> = row.try_get("scope_path").map_err(Error::from)?;
        let must: i64 = row.try_get("must_change_password").map_err(Error::from)?;
        let changed_at: Option<i64> = row.try_get("password_changed_at").map_err(Error::from)?;
        // The policy row comes with the session (one round trip per request, not two).
        let policy: PasswordPolicy = row
            .try_get::<Option<String>, _>("policy")
            .map_err(Error::from)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let expired = policy.max_age_days > 0
            && changed_at
                .is_some_and(|t| self.now_ms() - t > i64::from(policy.max_age_days) * 86_400_000);
        Ok(Actor {
            user_id: row.try_get("id").map_err(Error::from)?,
            username: row.try_get("username").map_err(Error::from)?,
            name: row.try_get("name").map_err(Error::from)?,
            role,
            org_id: row.try_get("org_id").map_err(Error::from)?,
            org_path: row.try_get("org_path").map_err(Error::from)?,
            scope_path: if role.is_admin() { scope_path } else { None },
            must_change_password: must != 0 || expired,
            session_id: c.sid,
            ip: ip.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_checks_length_classes_and_username() {
        let p = PasswordPolicy::default();
        assert!(p.check("short1A!", "bob").is_err());
        assert!(p.check("alllowercaseletters", "bob").is_err());
        assert!(p.check("Lower-and-UPPER", "bob").is_ok());
        assert!(p.check("Bob-Password-123", "bob").is_err());
        assert!(p.check("密码很长很长很长很长A1x", "bob").is_ok());
        assert!(
            PasswordPolicy {
                min_length: 3,
                ..p.clone()
            }
            .validate()
            .is_err()
        );
    }
}
