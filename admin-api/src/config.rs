//! Typed configuration of the admin plane. Every field has a default, so an empty
//! `[admin]` section gives an embedded SQLite directory under `./data/`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Directory for the embedded SQLite file (and later recordings metadata).
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`. Empty means `sqlite://<data_dir>/huitong.db`.
    pub database_url: String,
    /// Maximum pool connections.
    pub max_connections: u32,
    /// HS256 key for access tokens. Empty: a random key is generated on first start and
    /// kept in the database, so tokens survive restarts and every node of a cluster
    /// sharing the database agrees.
    pub jwt_secret: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// Trust the first address of `X-Forwarded-For` (only behind a reverse proxy).
    pub trust_forwarded_for: bool,
    /// Request body limit in bytes for JSON endpoints.
    pub max_body_bytes: usize,
    /// Body limit of CSV imports (300,000 users are about 30 MB).
    pub max_import_bytes: usize,
    /// Argon2id cost. The defaults are OWASP's (19 MiB, 2 passes); tests lower them.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Audit entries older than this are pruned by `prune_audit` (0 keeps them forever).
    /// Graded protection level 3 asks for at least six months.
    pub audit_retention_days: u32,
    pub bootstrap: BootstrapConfig,
}

/// First start with an empty database: the root organisation and the three separated
/// admin accounts. A password left empty is generated and printed once to stderr.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    pub root_org_name: String,
    pub system_admin_username: String,
    pub system_admin_password: String,
    pub security_admin_username: String,
    pub security_admin_password: String,
    pub audit_admin_username: String,
    pub audit_admin_password: String,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            root_org_name: "会通".to_owned(),
            system_admin_username: "sysadmin".to_owned(),
            system_admin_password: String::new(),
            security_admin_username: "secadmin".to_owned(),
            security_admin_password: String::new(),
            audit_admin_username: "auditadmin".to_owned(),
            audit_admin_password: String::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            database_url: String::new(),
            max_connections: 16,
            jwt_secret: String::new(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 12 * 3600,
            trust_forwarded_for: false,
            max_body_bytes: 1 << 20,
            max_import_bytes: 128 << 20,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            audit_retention_days: 180,
            bootstrap: BootstrapConfig::default(),
        }
    }
}

impl AdminConfig {
    /// The URL actually used: the configured one, or the embedded SQLite file.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}/huitong.db?mode=rwc", self.data_dir.display())
        } else {
            self.database_url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_embedded_sqlite() {
        let c: AdminConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            c.effective_database_url(),
            "sqlite://./data/huitong.db?mode=rwc"
        );
        assert!(serde_json::from_str::<AdminConfig>(r#"{"nope":1}"#).is_err());
    }
}
