//! Huitong admin plane: organisation directory, authentication, separated admin roles,
//! meeting scheduling, in-meeting sign-in and a tamper-evident audit log, over SQLite
//! (embedded default) or PostgreSQL.
//!
//! ```no_run
//! # async fn run() -> Result<(), admin_api::Error> {
//! use std::sync::Arc;
//! let state = admin_api::AdminState::connect(
//!     admin_api::AdminConfig::default(),
//!     Arc::new(admin_api::SystemClock),
//!     Arc::new(admin_api::OsEntropy),
//! )
//! .await?;
//! let app: axum::Router = admin_api::router(state);
//! # let _ = app; Ok(()) }
//! ```

mod api;
pub mod audit;
pub mod auth;
mod bootstrap;
pub mod clock;
pub mod config;
pub mod db;
pub mod directory;
pub mod error;
pub mod export;
pub mod import;
pub mod join;
pub mod meetings;
mod pinyin_index;
pub mod policy;
pub mod recordings;
pub mod signin;
pub mod totp;
pub mod xlsx;

pub use api::{openapi, router};
pub use clock::{Clock, Entropy, MockClock, OsEntropy, SeededEntropy, SystemClock};
pub use config::{AdminConfig, BootstrapConfig};
pub use error::{ApiError, Error, ErrorCode};
pub use join::{JoinDecision, JoinRole, SignInOutcome, SignInParticipant};

use audit::{AuditEvent, Outcome};
use policy::{Action, Actor, Decision, Target};
use std::sync::Arc;

/// Shared state of the admin plane; cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    db: db::Db,
    config: AdminConfig,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    jwt_encoding: jsonwebtoken::EncodingKey,
    jwt_decoding: jsonwebtoken::DecodingKey,
    /// Held by the task that writes the next audit group (see [`AdminState::audit`]).
    audit_lock: Arc<tokio::sync::Mutex<()>>,
    /// Audit events waiting for the next group commit.
    audit_queue: std::sync::Mutex<Vec<audit::PendingAudit>>,
    /// Argon2 runs at most one hash per core at a time: each takes `argon2_memory_kib`
    /// of memory, and 500 logins at once on the blocking pool would hold 500 × 19 MiB
    /// while finishing no sooner; queued in order, the early ones finish early.
    hash_slots: tokio::sync::Semaphore,
    /// Path of the root organisation, `/<id>/`.
    root_path: String,
    /// A real argon2 hash to verify against for unknown user names (constant work).
    dummy_hash: String,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("db", &self.inner.db.kind())
            .field("root_path", &self.inner.root_path)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// Open (and migrate) the database, and on an empty database create the root
    /// organisation and the three admin accounts (see [`BootstrapConfig`]).
    pub async fn connect(
        config: AdminConfig,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Result<AdminState, Error> {
        let url = config.effective_database_url();
        if url.starts_with("sqlite:") && config.database_url.is_empty() {
            std::fs::create_dir_all(&config.data_dir)?;
        }
        let db = db::Db::connect(&url, config.max_connections).await?;
        let secret = bootstrap::jwt_secret(&db, &config, &*entropy).await?;
        let mut state = AdminState {
            inner: Arc::new(Inner {
                db,
                jwt_encoding: jsonwebtoken::EncodingKey::from_secret(&secret),
                jwt_decoding: jsonwebtoken::DecodingKey::from_secret(&secret),
                config,
                clock,
                entropy,
                audit_lock: Arc::new(tokio::sync::Mutex::new(())),
                audit_queue: std::sync::Mutex::new(Vec::new()),
                hash_slots: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
                root_path: String::new(),
                dummy_hash: String::new(),
            }),
        };
        let root_path = bootstrap::run(&state).await?;
        let dummy_hash = state.hash_password("huitong-dummy-password").await?;
        // Still the only handle: fill in what bootstrap computed.
        if let Some(inner) = Arc::get_mut(&mut state.inner) {
            inner.root_path = root_path;
            inner.dummy_hash = dummy_hash;
        }
        Ok(state)
    }

    pub fn config(&self) -> &AdminConfig {
        &self.inner.config
    }

    /// Which database this state talks to.
    pub fn db_kind(&self) -> db::DbKind {
        self.inner.db.kind()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    pub(crate) fn new_id(&self) -> i64 {
        clock::random_id(&*self.inner.entropy)
    }

    /// The single authorisation gate: asks [`policy::decide`] and audits every refusal.
    pub async fn authorize(
        &self,
        actor: &Actor,
        action: Action,
        target: &Target<'_>,
    ) -> Result<(), ApiError> {
        match policy::decide(actor, action, target) {
            Decision::Allow => Ok(()),
            d => {
                let scope = match target {
                    Target::Global => self.inner.root_path.clone(),
                    t => t.scope_path().to_owned(),
                };
                self.audit(AuditEvent {
                    actor_id: Some(actor.user_id),
                    actor_name: actor.username.clone(),
                    ip: actor.ip.clone(),
                    action: action.as_str().to_owned(),
                    target: format!("{target:?}").chars().take(200).collect(),
                    scope_path: scope,
                    outcome: Outcome::Denied,
                    detail: if d == Decision::PasswordChangeRequired {
                        "password change required".into()
                    } else {
                        String::new()
                    },
                })
                .await?;
                Err(if d == Decision::PasswordChangeRequired {
                    ApiError::new(
                        ErrorCode::PasswordChangeRequired,
                        "change your password first",
                    )
                } else {
                    ApiError::forbidden()
                })
            }
        }
    }

    /// Record a successful (or failed) admin action.
    pub(crate) async fn audit_ok(
        &self,
        actor: &Actor,
        action: &str,
        target: String,
        scope_path: &str,
        detail: String,
    ) -> Result<(), Error> {
        self.audit(AuditEvent {
            actor_id: Some(actor.user_id),
            actor_name: actor.username.clone(),
            ip: actor.ip.clone(),
            action: action.to_owned(),
            target,
            scope_path: scope_path.to_owned(),
            outcome: Outcome::Ok,
            detail,
        })
        .await
    }
}

impl AdminState {
    /// The connection pool, for maintenance tools and tests (e.g. tamper checks).
    #[doc(hidden)]
    pub fn pool(&self) -> &sqlx::AnyPool {
        &self.inner.db.pool
    }
}
