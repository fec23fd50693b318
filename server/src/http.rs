//! HTTP routes of `huitong serve`: the web client, the admin console, health, metrics,
//! signalling.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use rust_embed::RustEmbed;
use serde_json::json;
use signaling::Hub;

#[derive(RustEmbed)]
#[folder = "../web/client"]
struct WebClient;

/// The admin console (`web/admin`), served under `/admin/`.
#[derive(RustEmbed)]
#[folder = "../web/admin"]
struct WebAdmin;

/// Signalling, operations, the admin API, the admin console and the web client on one
/// router. The admin router brings the JSON 404/405 fallback; the client's files are a
/// catch-all below the more specific API and `/admin/` routes.
pub fn app(hub: Arc<Hub>, admin: Router) -> Router {
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&hub));
    signaling::router(hub)
        .merge(ops)
        .route("/", get(static_file))
        .route("/{*path}", get(static_file))
        // Without the trailing slash the console's relative asset URLs would resolve
        // against `/`, i.e. the meeting client.
        .route(
            "/admin",
            get(|| async { axum::response::Redirect::permanent("/admin/") }),
        )
        .route("/admin/", get(admin_file))
        .route("/admin/{*path}", get(admin_file))
        .merge(admin)
}

/// A JSON error body with a stable code, as every API error is.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    let (meetings, participants) = hub.census();
    match hub.sfu().stats().await {
        Ok(_) => axum::Json(
            json!({ "status": "ok", "meetings": meetings, "participants": participants }),
        )
        .into_response(),
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sfu_down",
            "the media engine is not running",
        ),
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let Ok(stats) = hub.sfu().stats().await else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sfu_down",
            "the media engine is not running",
        );
    };
    let (meetings, participants) = hub.census();
    let reg = Registry::new_custom(Some("huitong".into()), None).unwrap_or_default();
    let gauge = |name: &str, help: &str, v: usize| {
        if let Ok(g) = IntGauge::new(name, help) {
            g.set(v as i64);
            let _ = reg.register(Box::new(g));
        }
    };
    gauge(
        "meetings",
        "Meetings with at least one participant",
        meetings,
    );
    gauge(
        "participants",
        "Participants connected to signalling",
        participants,
    );
    gauge(
        "sfu_participants",
        "Participants known to the SFU",
        stats.participants,
    );
    gauge("sfu_peers", "Peer connections on the SFU", stats.peers);
    let c = &stats.counters;
    let counter = |name: &str, help: &str, v: u64| {
        if let Ok(k) = IntCounter::new(name, help) {
            k.inc_by(v);
            let _ = reg.register(Box::new(k));
        }
    };
    counter(
        "sfu_datagrams_in_total",
        "UDP datagrams received on the media port",
        c.datagrams_in,
    );
    counter(
        "sfu_datagrams_unparseable_total",
        "Datagrams that were not STUN, DTLS, RTP or RTCP",
        c.datagrams_unparseable,
    );
    counter(
        "sfu_datagrams_unmatched_total",
        "Datagrams no peer connection accepted",
        c.datagrams_unmatched,
    );
    counter(
        "sfu_rtp_in_total",
        "RTP packets received from publishers",
        c.rtp_in,
    );
    counter(
        "sfu_rtp_forwarded_total",
        "RTP packets written to subscribers",
        c.rtp_forwarded,
    );
    counter(
        "sfu_rtp_dropped_layer_total",
        "Packets not forwarded to a subscriber for layer selection",
        c.rtp_dropped_layer,
    );
    counter(
        "sfu_keyframe_requests_sent_total",
        "Keyframe requests sent to publishers",
        c.keyframe_requests_up,
    );
    counter(
        "sfu_keyframe_requests_absorbed_total",
        "Keyframe requests coalesced away",
        c.keyframe_requests_absorbed,
    );
    counter(
        "sfu_layer_switches_total",
        "Target layer changes by the allocator",
        c.layer_switches,
    );
    let mut buf = vec![];
    if TextEncoder::new().encode(&reg.gather(), &mut buf).is_err() {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics encoding failed",
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        buf,
    )
        .into_response()
}

async fn static_file(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such API route");
    }
    let path = if path.is_empty() { "index.html" } else { path };
    embedded(WebClient::get(path))
}

async fn admin_file(uri: Uri) -> Response {
    let path = uri
        .path()
        .trim_start_matches("/admin")
        .trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let mut resp = embedded(WebAdmin::get(path));
    // The console holds admin tokens: only its own scripts run, and no other site may
    // frame it (clickjacking).
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn embedded(file: Option<rust_embed::EmbeddedFile>) -> Response {
    match file {
        Some(f) => {
            let mime = f.metadata.mimetype();
            Response::builder()
                .header(header::CONTENT_TYPE, mime)
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from(f.data.into_owned()))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        None => json_error(StatusCode::NOT_FOUND, "not_found", "no such page"),
    }
}
