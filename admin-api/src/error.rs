//! Errors. [`Error`] is the crate's error for library callers (startup, hooks);
//! [`ApiError`] is what every HTTP route returns: a status and a stable `code`
//! rendered as `{"code","message"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("migration {0} was changed after it was applied (checksum mismatch)")]
    MigrationChanged(i64),
    #[error("unsupported database url (expected sqlite:// or postgres://)")]
    UnsupportedDatabase,
    #[error("creating data directory: {0}")]
    DataDir(#[from] std::io::Error),
    #[error("password hashing: {0}")]
    PasswordHash(String),
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("bootstrap password for {0} does not meet the password policy")]
    WeakBootstrapPassword(String),
    #[error("background task failed")]
    Join,
    #[error("audit append failed: {0}")]
    Audit(String),
    #[error("audit chain broken at entry {0}")]
    AuditChain(i64),
    #[error("could not allocate a free meeting number")]
    NumberSpaceExhausted,
    #[error("spreadsheet: {0}")]
    Spreadsheet(String),
    #[error("{0}")]
    Api(ApiError),
}

/// Stable error codes of the HTTP API. Clients switch on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidBody,
    InvalidField,
    UnsupportedMediaType,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Unauthenticated,
    InvalidCredentials,
    /// The account has a second factor: repeat the login with `totp_code`.
    TotpRequired,
    AccountLocked,
    AccountDisabled,
    PasswordChangeRequired,
    PasswordPolicy,
    TokenExpired,
    TokenRevoked,
    Forbidden,
    Conflict,
    OrgNotEmpty,
    OrgCycle,
    TerminalBusy,
    SigninClosed,
    SigninNotOpen,
    NotInvited,
    MeetingCancelled,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidBody | InvalidField | PasswordPolicy | OrgCycle => StatusCode::BAD_REQUEST,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Unauthenticated | InvalidCredentials | TotpRequired | TokenExpired | TokenRevoked => {
                StatusCode::UNAUTHORIZED
            }
            AccountLocked | AccountDisabled => StatusCode::FORBIDDEN,
            PasswordChangeRequired | Forbidden | NotInvited => StatusCode::FORBIDDEN,
            Conflict | OrgNotEmpty | TerminalBusy | SigninClosed | SigninNotOpen
            | MeetingCancelled => StatusCode::CONFLICT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON error body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
    pub fn field(field: &str, why: &str) -> Self {
        Self::new(ErrorCode::InvalidField, format!("{field}: {why}"))
    }
    pub fn forbidden() -> Self {
        Self::new(ErrorCode::Forbidden, "not permitted for this account")
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Api(a) => a,
            Error::Database(d) => d.into(),
            other => {
                tracing::error!(error = %other, "admin api internal error");
                ApiError::internal()
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Constraint violations come from racing requests (two creates of one username);
        // they are the caller's conflict, not a server fault.
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return ApiError::new(ErrorCode::Conflict, "already exists");
            }
            if db.is_foreign_key_violation() {
                return ApiError::new(
                    ErrorCode::Conflict,
                    "refers to a record that does not exist or is still referenced",
                );
            }
        }
        if matches!(e, sqlx::Error::RowNotFound) {
            return ApiError::not_found("record");
        }
        tracing::error!(error = %e, "admin api database error");
        ApiError::internal()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
