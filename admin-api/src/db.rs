//! One pool over SQLite or PostgreSQL through sqlx's `Any` driver. Queries are
//! written once in the common subset: `$n` placeholders (SQLite accepts them too),
//! BIGINT/TEXT columns, `LIKE … ESCAPE '\'`, `ON CONFLICT DO NOTHING`.

use crate::error::Error;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pub(crate) pool: AnyPool,
    pub(crate) kind: DbKind,
    /// SQLite has one writer at a time; see [`Db::write_gate`].
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Migrations, in order: (version, description, SQL for both dialects, PostgreSQL's own
/// SQL where the two differ). Each is applied once, in a transaction, and the checksum of
/// the SQL applied kept so an edited migration is detected instead of silently diverging.
const MIGRATIONS: &[(i64, &str, &str, Option<&str>)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql"), None),
    (
        2,
        "recordings",
        include_str!("../migrations/0002_recordings.sql"),
        None,
    ),
    (3, "totp", include_str!("../migrations/0003_totp.sql"), None),
    (
        4,
        "user listing index",
        include_str!("../migrations/0004_user_listing.sql"),
        None,
    ),
    (
        5,
        "user tree order",
        include_str!("../migrations/0005_user_tree.sql"),
        Some(include_str!("../migrations/0005_user_tree.pg.sql")),
    ),
];

/// Statements that exist in one dialect only: an index PostgreSQL can use for the
/// `path LIKE '/1/5/%'` subtree queries under a non-C collation, and triggers that make
/// the audit log append-only at the database level.
const POSTGRES_EXTRAS: &str = r#"
CREATE INDEX IF NOT EXISTS orgs_path_prefix ON orgs (path text_pattern_ops);
CREATE OR REPLACE FUNCTION huitong_audit_append_only() RETURNS trigger AS $f$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$f$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION huitong_audit_append_only();
"#;

const SQLITE_EXTRAS: &str = r#"
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
"#;

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, Error> {
        install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            DbKind::Postgres
        } else {
            return Err(Error::UnsupportedDatabase);
        };
        let mut opts = AnyPoolOptions::new().max_connections(max_connections.max(1));
        if kind == DbKind::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run while one writer commits; NORMAL sync is safe in
                    // WAL mode (a power cut may lose the last commit, never corrupt).
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // Reads from the OS page cache without a copy per page: the subtree
                    // listing reads thousands of index pages; 256 MiB of address space.
                    conn.execute("PRAGMA mmap_size = 268435456").await?;
                    // A bulk import's transaction dirties thousands of index pages; with
                    // the default 2 MiB cache SQLite spills them to the WAL mid-transaction
                    // and writes them again. A limit, not an allocation: readers, which
                    // read through mmap, stay small.
                    conn.execute("PRAGMA cache_size = -32768").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        let db = Self {
            pool,
            kind,
            write_gate: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        };
        db.migrate().await?;
        Ok(db)
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// On SQLite, a turn to write: hot write transactions of this process queue here
    /// (fair, no polling) instead of in SQLite's busy handler, which sleeps up to 100 ms
    /// between retries and so made the latency tail under load. `None` on PostgreSQL,
    /// whose writers lock rows, not the database.
    pub(crate) async fn write_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.kind {
            DbKind::Sqlite => Some(std::sync::Arc::clone(&self.write_gate).lock_owned().await),
            DbKind::Postgres => None,
        }
    }

    async fn migrate(&self) -> Result<(), Error> {
        use sha2::Digest;
        let mut conn = self.pool.acquire().await?;
        if self.kind == DbKind::Postgres {
            // Two nodes starting together must not both apply a migration.
            sqlx::query("SELECT pg_advisory_lock(7355608)")
                .execute(&mut *conn)
                .await?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
                 description TEXT NOT NULL, checksum TEXT NOT NULL)",
            )
            .await?;
            for &(version, description, common, postgres) in MIGRATIONS {
                let sql = match (self.kind, postgres) {
                    (DbKind::Postgres, Some(pg)) => pg,
                    _ => common,
                };
                let checksum = hex::encode(sha2::Sha256::digest(sql.as_bytes()));
                let applied: Option<String> =
                    sqlx::query_scalar("SELECT checksum FROM schema_migrations WHERE version = $1")
                        .bind(version)
                        .fetch_optional(&mut *conn)
                        .await?;
                match applied {
                    Some(c) if c == checksum => continue,
                    Some(_) => return Err(Error::MigrationChanged(version)),
                    None => {}
                }
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                sqlx::raw_sql(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| Error::Migration { version, source })?;
                sqlx::query(
                    "INSERT INTO schema_migrations (version, description, checksum) VALUES ($1, $2, $3)",
                )
                .bind(version)
                .bind(description)
                .bind(checksum)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            let extras = match self.kind {
                DbKind::Postgres => POSTGRES_EXTRAS,
                DbKind::Sqlite => SQLITE_EXTRAS,
            };
            sqlx::raw_sql(extras)
                .execute(&mut *conn)
                .await
                .map_err(|source| Error::Migration { version: 0, source })?;
            Ok(())
        }
        .await;
        if self.kind == DbKind::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(7355608)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }
}

/// Escape `%`, `_` and `\` so user input matches literally inside `LIKE … ESCAPE '\'`.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// A bound value for queries assembled at run time.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I(i64),
    S(String),
    OptS(Option<String>),
}

/// SQL text plus its arguments, numbering `$n` as values are added.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    pub text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }
    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }
    /// Append a placeholder for `a`.
    pub fn arg(&mut self, a: Arg) -> &mut Self {
        self.args.push(a);
        let n = self.args.len();
        self.text.push_str(&format!("${n}"));
        self
    }
    pub fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::I(v) => q.bind(*v),
                Arg::S(v) => q.bind(v.clone()),
                Arg::OptS(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

/// Take a named lock row (see the migration) inside `tx`.
pub(crate) async fn lock_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE settings SET value = value WHERE key = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
