//! HTTP routes under `/api/v1`, one module per resource, each handler annotated for the
//! OpenAPI document served at `/api/openapi.json`. Extractors here turn every bad
//! request (body, path, query, token) into a JSON `{"code","message"}` error.

mod audit;
mod auth;
mod directory;
mod export;
mod meetings;
mod openapi_errors;
mod orgs;
mod recordings;
mod security;
mod signins;
mod terminals;
mod totp;
mod users;

use crate::AdminState;
use crate::error::{ApiError, ErrorCode};
use crate::policy::Actor;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Huitong admin API", description = "Directory, authentication, roles, meetings, sign-in and audit of the Huitong conferencing platform. Every error is `{\"code\",\"message\"}`; times are milliseconds since the Unix epoch (UTC)."),
    components(schemas(ApiError, ErrorCode)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

fn api_router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(auth::change_password))
        .routes(routes!(orgs::list_orgs, orgs::create_org))
        .routes(routes!(orgs::get_org, orgs::update_org, orgs::delete_org))
        .routes(routes!(orgs::move_org))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(users::import_users))
        .routes(routes!(export::export_users))
        .routes(routes!(
            terminals::list_terminals,
            terminals::create_terminal
        ))
        .routes(routes!(
            terminals::get_terminal,
            terminals::update_terminal,
            terminals::delete_terminal
        ))
        .routes(routes!(directory::search_directory))
        .routes(routes!(directory::directory_orgs))
        .routes(routes!(security::get_policy, security::put_policy))
        .routes(routes!(security::list_accounts))
        .routes(routes!(security::set_role))
        .routes(routes!(security::unlock))
        .routes(routes!(security::reset_password))
        .routes(routes!(audit::search_audit))
        .routes(routes!(audit::verify_audit))
        .routes(routes!(meetings::list_meetings, meetings::create_meeting))
        .routes(routes!(meetings::get_meeting, meetings::update_meeting))
        .routes(routes!(meetings::cancel_meeting))
        .routes(routes!(signins::start_signin))
        .routes(routes!(signins::get_signin))
        .routes(routes!(signins::end_signin))
        .routes(routes!(signins::submit_signin))
        .routes(routes!(signins::export_signin))
        .routes(routes!(export::export_signin_xlsx))
        .routes(routes!(totp::totp_status, totp::totp_enrol))
        .routes(routes!(totp::totp_confirm))
        .routes(routes!(totp::totp_disable))
        .routes(routes!(totp::account_totp_disable))
        .routes(routes!(recordings::list_recordings))
        .routes(routes!(
            recordings::get_recording,
            recordings::delete_recording
        ))
        .routes(routes!(recordings::set_shares))
}

/// The OpenAPI 3 document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_router().split_for_parts().1;
    // After the routes are in: modifiers on `ApiDoc` run before any path exists.
    openapi_errors::CommonErrors.modify(&mut doc);
    doc
}

/// Every admin route under `/api/v1/…` plus `/api/openapi.json`, with JSON errors for
/// unknown paths, wrong methods, oversized bodies and panics.
pub fn router(state: AdminState) -> axum::Router {
    let (routes, mut doc) = api_router().split_for_parts();
    openapi_errors::CommonErrors.modify(&mut doc);
    let doc = std::sync::Arc::new(doc);
    let limit = state.config().max_body_bytes;
    routes
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| ApiError::internal().into_response(),
        ))
        .with_state(state)
}

/// JSON body extractor whose rejections are API errors.
pub(crate) struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(match r {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "expected Content-Type: application/json",
                ),
                JsonRejection::BytesRejection(b)
                    if b.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
                }
                other => ApiError::new(ErrorCode::InvalidBody, other.body_text()),
            }),
        }
    }
}

/// Path parameters; a malformed one (`/orgs/abc`) is a 400, not a 500 or plain text.
pub(crate) struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| ApiError::new(ErrorCode::InvalidField, r.body_text()))
    }
}

pub(crate) struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Query(p.0))
            .map_err(|r| ApiError::new(ErrorCode::InvalidField, r.body_text()))
    }
}

/// The caller's address: the TCP peer, or with `trust_forwarded_for` the first
/// `X-Forwarded-For` entry.
pub(crate) struct ClientIp(pub String);

impl FromRequestParts<AdminState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts, state)))
    }
}

fn client_ip(parts: &Parts, state: &AdminState) -> String {
    if state.config().trust_forwarded_for
        && let Some(v) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        && let Some(first) = v.split(',').next()
        && first.trim().parse::<std::net::IpAddr>().is_ok()
    {
        return first.trim().to_owned();
    }
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl FromRequestParts<AdminState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
        let ip = client_ip(parts, state);
        state.authenticate(token.trim(), &ip).await
    }
}

/// The org id at the end of a path like `/1/5/23/`.
pub(crate) fn path_leaf(path: &str) -> i64 {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `{"ok": true}` for actions without a body to return.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Done {
    pub ok: bool,
}

pub(crate) fn done() -> axum::Json<Done> {
    axum::Json(Done { ok: true })
}
