//! First start: signing key, root organisation and the three separated admins.

use crate::AdminState;
use crate::audit::{AuditEvent, Outcome};
use crate::clock::{Entropy, random_hex, random_u64};
use crate::config::AdminConfig;
use crate::db::Db;
use crate::error::Error;
use crate::pinyin_index::initials;
use crate::policy::Role;

const JWT_KEY: &str = "jwt_secret";

/// The configured signing key, or the one generated on first start and kept in the
/// database.
pub(crate) async fn jwt_secret(
    db: &Db,
    config: &AdminConfig,
    e: &dyn Entropy,
) -> Result<Vec<u8>, Error> {
    if !config.jwt_secret.is_empty() {
        return Ok(config.jwt_secret.as_bytes().to_vec());
    }
    let fresh = random_hex(e, 32);
    // Whichever node inserts first wins; everyone then reads the same key.
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
        .bind(JWT_KEY)
        .bind(&fresh)
        .execute(&db.pool)
        .await?;
    let key: String = sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
        .bind(JWT_KEY)
        .fetch_one(&db.pool)
        .await?;
    Ok(key.into_bytes())
}

fn generate_password(e: &dyn Entropy) -> String {
    // Unambiguous characters; the fixed tail guarantees every character class.
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut s: String = (0..18)
        .map(|_| ALPHABET[(random_u64(e) % ALPHABET.len() as u64) as usize] as char)
        .collect();
    s.push_str("-7a");
    s.push('Q');
    s
}

/// Returns the root organisation's path.
pub(crate) async fn run(state: &AdminState) -> Result<String, Error> {
    let pool = &state.inner.db.pool;
    if let Some(p) = root_path(state).await? {
        return Ok(p);
    }
    let cfg = &state.inner.config.bootstrap;
    // Check every configured password before writing anything, so a refused start
    // leaves the database empty and the next start bootstraps completely.
    let policy = crate::auth::PasswordPolicy::default();
    for (user, pw) in [
        (&cfg.system_admin_username, &cfg.system_admin_password),
        (&cfg.security_admin_username, &cfg.security_admin_password),
        (&cfg.audit_admin_username, &cfg.audit_admin_password),
    ] {
        if !pw.is_empty() && policy.check(pw, user).is_err() {
            return Err(Error::WeakBootstrapPassword(user.clone()));
        }
    }
    let now = state.now_ms();
    let root_id = state.new_id();
    let path = format!("/{root_id}/");
    sqlx::query(
        "INSERT INTO orgs (id, parent_id, name, path, depth, sort, created_at, updated_at) \
         VALUES ($1, NULL, $2, $3, 0, 0, $4, $4)",
    )
    .bind(root_id)
    .bind(&cfg.root_org_name)
    .bind(&path)
    .bind(now)
    .execute(pool)
    .await?;
    let admins = [
        (
            Role::SystemAdmin,
            &cfg.system_admin_username,
            &cfg.system_admin_password,
            "系统管理员",
        ),
        (
            Role::SecurityAdmin,
            &cfg.security_admin_username,
            &cfg.security_admin_password,
            "安全管理员",
        ),
        (
            Role::AuditAdmin,
            &cfg.audit_admin_username,
            &cfg.audit_admin_password,
            "审计管理员",
        ),
    ];
    for (role, username, password, display) in admins {
        let id = state.new_id();
        sqlx::query(
            "INSERT INTO users (id, username, name, name_initials, org_id, org_path, role, scope_org_id, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, (SELECT path FROM orgs WHERE id = $5), $6, $5, $7, $7)",
        )
        .bind(id)
        .bind(username)
        .bind(display)
        .bind(initials(display))
        .bind(root_id)
        .bind(role.as_str())
        .bind(now)
        .execute(pool)
        .await?;
        let generated = password.is_empty();
        let pw = if generated {
            generate_password(&*state.inner.entropy)
        } else {
            password.clone()
        };
        state
            .set_password(id, username, &pw, generated)
            .await
            .map_err(|e| match e {
                Error::Api(_) => Error::WeakBootstrapPassword(username.clone()),
                other => other,
            })?;
        if generated {
            // Printed once, to the operator's terminal, never to the log. The account
            // must change it at first login.
            eprintln!(
                "huitong admin bootstrap: created {} '{}' with one-time password: {}",
                role.as_str(),
                username,
                pw
            );
        }
        state
            .audit(AuditEvent {
                actor_id: None,
                actor_name: "bootstrap".into(),
                ip: String::new(),
                action: "bootstrap_admin".into(),
                target: format!("user:{id}"),
                scope_path: path.clone(),
                outcome: Outcome::Ok,
                detail: format!("{} {}", role.as_str(), username),
            })
            .await?;
    }
    tracing::info!("admin plane bootstrapped: root organisation and three admin accounts created");
    Ok(path)
}

async fn root_path(state: &AdminState) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT path FROM orgs WHERE parent_id IS NULL ORDER BY created_at LIMIT 1",
    )
    .fetch_optional(&state.inner.db.pool)
    .await?)
}
