//! Test harness: every test gets its own database (a fresh SQLite file, or a fresh
//! PostgreSQL database when `HUITONG_TEST_POSTGRES_URL` is set), a mock clock and
//! seeded entropy, and talks to the real router in-process.
#![allow(dead_code)]

use admin_api::{AdminConfig, AdminState, MockClock, SeededEntropy};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::ServiceExt;

pub const T0: i64 = 1_800_000_000_000;
pub const SYS_PW: &str = "Sys-Admin-Pass-1";
pub const SEC_PW: &str = "Sec-Admin-Pass-2";
pub const AUD_PW: &str = "Aud-Admin-Pass-3";
pub const USER_PW: &str = "User-Pass-Word-9";

pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend, or `None` (skip) when no server is configured. With
    /// `HUITONG_REQUIRE_POSTGRES=1` a missing server fails the test instead.
    pub fn postgres() -> Option<Backend> {
        match std::env::var("HUITONG_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => Some(Backend::Postgres(u)),
            _ => {
                if std::env::var("HUITONG_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                    panic!("HUITONG_REQUIRE_POSTGRES=1 but HUITONG_TEST_POSTGRES_URL is not set");
                }
                eprintln!("skipping PostgreSQL variant: HUITONG_TEST_POSTGRES_URL not set");
                None
            }
        }
    }
}

/// Declare `async fn name(backend: Backend)` as two tests, `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = super::common::Backend::postgres() {
                    super::$name(b).await
                }
            }
        }
    )*};
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct TestApp {
    pub state: AdminState,
    pub router: axum::Router,
    pub clock: Arc<MockClock>,
    pub config: AdminConfig,
    _dir: Option<tempfile::TempDir>,
    /// (server URL, database) to drop when the test ends.
    pg_drop: Option<(String, String)>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some((base, name)) = self.pg_drop.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn test_config() -> AdminConfig {
    let mut c = AdminConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        max_connections: 5,
        ..AdminConfig::default()
    };
    c.bootstrap.system_admin_password = SYS_PW.into();
    c.bootstrap.security_admin_password = SEC_PW.into();
    c.bootstrap.audit_admin_password = AUD_PW.into();
    c
}

async fn fresh_postgres(base: &str) -> (String, String) {
    use sqlx::Connection;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let name = format!("huitong_t_{}_{}_{}", std::process::id(), n, T0 % 997);
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to test postgres");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    // Replace the database name in the URL (after the last '/', before any '?').
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let slash = head.rfind('/').expect("postgres url has a path");
    (format!("{}/{}{}", &head[..slash], name, query), name)
}

impl TestApp {
    pub async fn new(backend: Backend) -> TestApp {
        Self::with_config(backend, test_config()).await
    }

    pub async fn with_config(backend: Backend, mut config: AdminConfig) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut pg_drop = None;
        match &backend {
            Backend::Sqlite => {
                config.data_dir = dir.path().to_path_buf();
                config.database_url = String::new();
            }
            Backend::Postgres(base) => {
                let (url, name) = fresh_postgres(base).await;
                config.database_url = url;
                pg_drop = Some((base.clone(), name));
            }
        }
        let clock = Arc::new(MockClock::new(T0));
        let seed = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        let state = AdminState::connect(
            config.clone(),
            clock.clone(),
            Arc::new(SeededEntropy::new(seed)),
        )
        .await
        .expect("connect");
        let router = admin_api::router(state.clone());
        TestApp {
            state,
            router,
            clock,
            config,
            _dir: Some(dir),
            pg_drop,
        }
    }

    /// Send one request; returns the status and the body parsed as JSON (or as a JSON
    /// string when it is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.raw(req).await
    }

    pub async fn call_csv(
        &self,
        path: &str,
        token: Option<&str>,
        csv: &str,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "text/csv; charset=utf-8");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.raw(b.body(Body::from(csv.to_owned())).unwrap()).await
    }

    pub async fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, Some(token), body).await;
        assert_eq!(s, StatusCode::OK, "{method} {path}: {v}");
        v
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "login {username}: {v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn sys(&self) -> String {
        self.login("sysadmin", SYS_PW).await
    }
    pub async fn sec(&self) -> String {
        self.login("secadmin", SEC_PW).await
    }
    pub async fn aud(&self) -> String {
        self.login("auditadmin", AUD_PW).await
    }

    pub fn root_id(&self) -> i64 {
        self.state.root_path().trim_matches('/').parse().unwrap()
    }

    pub async fn org(&self, token: &str, parent: i64, name: &str) -> i64 {
        self.ok(
            "POST",
            "/api/v1/orgs",
            token,
            Some(json!({"parent_id": parent, "name": name})),
        )
        .await["id"]
            .as_i64()
            .unwrap()
    }

    /// Create a user with a usable (not one-time) password.
    pub async fn user(
        &self,
        token: &str,
        org: i64,
        username: &str,
        name: &str,
        extra: Value,
    ) -> i64 {
        let mut body = json!({"username": username, "name": name, "org_id": org});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let id = self.ok("POST", "/api/v1/users", token, Some(body)).await["id"]
            .as_i64()
            .unwrap();
        self.state
            .set_password(id, username, USER_PW, false)
            .await
            .unwrap();
        id
    }

    pub async fn count_denied(&self, username: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE actor_name = $1 AND result = 'denied'",
        )
        .bind(username)
        .fetch_one(self.state.pool())
        .await
        .unwrap()
    }
}
