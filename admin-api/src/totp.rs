//! Optional second factor: time-based one-time passwords (RFC 6238 over RFC 4226 HOTP,
//! HMAC-SHA1, 6 digits, 30 s steps — what every authenticator app speaks).
//!
//! Enrolment stores a pending secret and returns it once (as base32 and an `otpauth://`
//! URI); a correct code confirms it, and from then on login requires a code. A code is
//! accepted for the current step and one step either side (clock drift), and each
//! account remembers the last step it accepted: the same code, or an older one, is
//! refused (replay). The secret is never logged and never returned again; audit
//! entries say what happened, not with what.

use crate::AdminState;
use crate::audit::{AuditEvent, Outcome};
use crate::error::{ApiError, ApiResult, Error, ErrorCode};
use crate::policy::Actor;
use hmac::{Hmac, Mac};
use sqlx::Row;

/// Seconds per step (RFC 6238's default X).
pub const STEP_SECS: i64 = 30;
/// Digits in a code.
pub const DIGITS: u32 = 6;
/// Steps accepted either side of the current one.
const SKEW: i64 = 1;
/// Secret length in bytes (RFC 4226 recommends 160 bits).
const SECRET_BYTES: usize = 20;
/// The issuer shown in authenticator apps.
const ISSUER: &str = "Huitong";

/// HOTP (RFC 4226 §5.3): HMAC-SHA1 of the counter, dynamically truncated.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return 0;
    };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = usize::from(h[19] & 0x0f);
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 10u32.pow(digits.min(9))
}

/// The step a Unix time (seconds) falls in.
pub fn step_at(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// TOTP (RFC 6238): HOTP of the time step.
pub fn totp(secret: &[u8], unix_secs: i64, digits: u32) -> u32 {
    hotp(secret, step_at(unix_secs).max(0) as u64, digits)
}

/// The step `code` is valid for near `now_ms`, if any, and only if it is later than
/// `last_step` (each step's code works once). Comparison is constant-time per step.
pub fn verify(secret: &[u8], code: &str, now_ms: i64, last_step: i64) -> Result<i64, TotpReject> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpReject::Wrong);
    }
    let now = step_at(now_ms.div_euclid(1000));
    let mut matched = None;
    for step in (now - SKEW)..=(now + SKEW) {
        if step < 0 {
            continue;
        }
        let want = format!(
            "{:0width$}",
            hotp(secret, step as u64, DIGITS),
            width = DIGITS as usize
        );
        let same = want
            .bytes()
            .zip(code.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            matched = Some(step);
        }
    }
    match matched {
        None => Err(TotpReject::Wrong),
        Some(s) if s <= last_step => Err(TotpReject::Replayed),
        Some(s) => Ok(s),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpReject {
    Wrong,
    Replayed,
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding (what `otpauth://` URIs carry).
pub fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(B32[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(B32[((buf << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decode base32 (case-insensitive, padding and spaces ignored); `None` on a bad letter.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !matches!(c, b'=' | b' ')) {
        let v = B32.iter().position(|&x| x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Percent-encode for a URI label or query value.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `otpauth://` URI authenticator apps scan as a QR code.
pub fn otpauth_uri(username: &str, secret_b32: &str) -> String {
    format!(
        "otpauth://totp/{issuer}:{user}?secret={secret_b32}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        issuer = pct(ISSUER),
        user = pct(username),
    )
}

/// Returned once, by enrolment.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// Base32 secret, for typing into an app.
    pub secret: String,
    /// `otpauth://totp/…` URI, for a QR code.
    pub otpauth_uri: String,
}

#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct TotpStatus {
    /// Login requires a code.
    pub enabled: bool,
    /// Enrolled but not confirmed yet.
    pub pending: bool,
}

struct Factor {
    secret: Vec<u8>,
    confirmed: bool,
    last_step: i64,
}

impl AdminState {
    async fn totp_factor(&self, user_id: i64) -> Result<Option<Factor>, Error> {
        let row = sqlx::query(
            "SELECT secret, confirmed_at, last_step FROM totp_factors WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let secret: String = r.try_get("secret")?;
        let confirmed: Option<i64> = r.try_get("confirmed_at")?;
        Ok(Some(Factor {
            // Only this module writes the column, always valid base32.
            secret: base32_decode(&secret).unwrap_or_default(),
            confirmed: confirmed.is_some(),
            last_step: r.try_get("last_step")?,
        }))
    }

    pub async fn totp_status(&self, user_id: i64) -> Result<TotpStatus, Error> {
        let f = self.totp_factor(user_id).await?;
        Ok(TotpStatus {
            enabled: f.as_ref().is_some_and(|f| f.confirmed),
            pending: f.as_ref().is_some_and(|f| !f.confirmed),
        })
    }

    /// Start (or restart) enrolment: a fresh secret replaces any unconfirmed one. An
    /// account with a confirmed factor must disable it first.
    pub async fn totp_enrol(&self, actor: &Actor) -> ApiResult<TotpEnrolment> {
        if self
            .totp_factor(actor.user_id)
            .await?
            .is_some_and(|f| f.confirmed)
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a second factor is already enabled; disable it first",
            ));
        }
        let mut secret = [0u8; SECRET_BYTES];
        self.inner.entropy.fill(&mut secret);
        let b32 = base32_encode(&secret);
        let now = self.now_ms();
        let mut tx = self.inner.db.pool.begin().await?;
        sqlx::query("DELETE FROM totp_factors WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(actor.user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO totp_factors (user_id, secret, created_at, last_step) VALUES ($1, $2, $3, -1)",
        )
        .bind(actor.user_id)
        .bind(&b32)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.audit_ok(
            actor,
            "totp_enrol",
            format!("user:{}", actor.user_id),
            &actor.org_path,
            String::new(),
        )
        .await?;
        Ok(TotpEnrolment {
            otpauth_uri: otpauth_uri(&actor.username, &b32),
            secret: b32,
        })
    }

    /// Check `code` against the account's factor and spend its step. Confirmed factors
    /// only, unless `pending_ok`.
    async fn totp_spend(&self, user_id: i64, code: &str, pending_ok: bool) -> ApiResult<()> {
        let f = self
            .totp_factor(user_id)
            .await?
            .filter(|f| f.confirmed || pending_ok)
            .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "no second factor to check"))?;
        let step = verify(&f.secret, code, self.now_ms(), f.last_step).map_err(|r| {
            ApiError::new(
                ErrorCode::InvalidCredentials,
                match r {
                    TotpReject::Wrong => "wrong one-time code",
                    TotpReject::Replayed => "this one-time code was already used",
                },
            )
        })?;
        // Two racing requests with one code: only one moves last_step past it.
        let won = sqlx::query(
            "UPDATE totp_factors SET last_step = $1 WHERE user_id = $2 AND last_step < $1",
        )
        .bind(step)
        .bind(user_id)
        .execute(&self.inner.db.pool)
        .await?
        .rows_affected();
        if won != 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "this one-time code was already used",
            ));
        }
        Ok(())
    }

    async fn totp_audit(&self, actor: &Actor, action: &str, outcome: Outcome, detail: &str) {
        let e = AuditEvent {
            actor_id: Some(actor.user_id),
            actor_name: actor.username.clone(),
            ip: actor.ip.clone(),
            action: action.to_owned(),
            target: format!("user:{}", actor.user_id),
            scope_path: actor.org_path.clone(),
            outcome,
            detail: detail.to_owned(),
        };
        if let Err(err) = self.audit(e).await {
            tracing::error!(error = %err, "audit append failed");
        }
    }

    /// Confirm enrolment with a code from the app; from now on login needs a code.
    pub async fn totp_confirm(&self, actor: &Actor, code: &str) -> ApiResult<()> {
        if let Err(e) = self.totp_spend(actor.user_id, code, true).await {
            self.totp_audit(actor, "totp_confirm", Outcome::Failed, &e.message)
                .await;
            return Err(e);
        }
        sqlx::query("UPDATE totp_factors SET confirmed_at = $1 WHERE user_id = $2")
            .bind(self.now_ms())
            .bind(actor.user_id)
            .execute(&self.inner.db.pool)
            .await?;
        self.totp_audit(actor, "totp_confirm", Outcome::Ok, "")
            .await;
        Ok(())
    }

    /// Remove one's own factor, proving possession with a current code.
    pub async fn totp_disable_self(&self, actor: &Actor, code: &str) -> ApiResult<()> {
        if let Err(e) = self.totp_spend(actor.user_id, code, false).await {
            self.totp_audit(actor, "totp_disable", Outcome::Failed, &e.message)
                .await;
            return Err(e);
        }
        self.totp_remove(actor.user_id).await?;
        self.totp_audit(actor, "totp_disable", Outcome::Ok, "")
            .await;
        Ok(())
    }

    /// Remove a factor (the security admin, for a lost phone). Authorisation and audit
    /// are the route's.
    pub async fn totp_remove(&self, user_id: i64) -> Result<bool, Error> {
        let n = sqlx::query("DELETE FROM totp_factors WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.inner.db.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Login's second step, after the password: `Ok` when the account has no confirmed
    /// factor or `code` is right and fresh. The caller counts failures and audits.
    pub(crate) async fn totp_login_check(
        &self,
        user_id: i64,
        code: Option<&str>,
    ) -> Result<(), LoginTotp> {
        let enabled = self
            .totp_factor(user_id)
            .await
            .map_err(|e| LoginTotp::Error(e.into()))?
            .is_some_and(|f| f.confirmed);
        if !enabled {
            return Ok(());
        }
        let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
            return Err(LoginTotp::Missing);
        };
        match self.totp_spend(user_id, code, false).await {
            Ok(()) => Ok(()),
            Err(e) if e.code == ErrorCode::InvalidCredentials => {
                Err(LoginTotp::Rejected(e.message))
            }
            Err(e) => Err(LoginTotp::Error(e)),
        }
    }
}

/// Why login's second step did not pass.
pub(crate) enum LoginTotp {
    Missing,
    /// Wrong or replayed (the reason is for the audit entry).
    Rejected(String),
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits, the 20-byte ASCII secret).
    #[test]
    fn rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(totp(secret, t, 8), want, "T = {t}");
        }
    }

    /// RFC 4226 appendix D.
    #[test]
    fn rfc4226_vectors() {
        let secret = b"12345678901234567890";
        let want = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(hotp(secret, c as u64, 6), *w);
        }
    }

    #[test]
    fn base32_round_trip_and_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32_encode(raw.as_bytes()), enc);
            assert_eq!(base32_decode(enc).unwrap(), raw.as_bytes());
        }
        assert_eq!(base32_decode("mzxw6===").unwrap(), b"foo");
        assert!(base32_decode("MZ1W").is_none());
        let s: Vec<u8> = (0..20).collect();
        assert_eq!(base32_decode(&base32_encode(&s)).unwrap(), s);
    }

    #[test]
    fn verify_window_and_replay() {
        let secret = b"12345678901234567890";
        let now_ms = 1_111_111_111_000;
        let code = |t: i64| format!("{:06}", totp(secret, t, 6));
        let step = step_at(1_111_111_111);
        assert_eq!(verify(secret, &code(1_111_111_111), now_ms, -1), Ok(step));
        // One step of drift either way is accepted, two are not.
        assert_eq!(
            verify(secret, &code(1_111_111_111 - 30), now_ms, -1),
            Ok(step - 1)
        );
        assert_eq!(
            verify(secret, &code(1_111_111_111 + 30), now_ms, -1),
            Ok(step + 1)
        );
        assert_eq!(
            verify(secret, &code(1_111_111_111 - 90), now_ms, -1),
            Err(TotpReject::Wrong)
        );
        // The same step again, or an older one after a newer was used: replay.
        assert_eq!(
            verify(secret, &code(1_111_111_111), now_ms, step),
            Err(TotpReject::Replayed)
        );
        assert_eq!(
            verify(secret, &code(1_111_111_111 - 30), now_ms, step),
            Err(TotpReject::Replayed)
        );
        for bad in ["", "12345", "1234567", "abcdef", "１２３４５６", "12 456"] {
            assert_eq!(
                verify(secret, bad, now_ms, -1),
                Err(TotpReject::Wrong),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn uri_is_escaped() {
        let u = otpauth_uri("li@x", "ABC");
        assert_eq!(
            u,
            "otpauth://totp/Huitong:li%40x?secret=ABC&issuer=Huitong&algorithm=SHA1&digits=6&period=30"
        );
    }
}
