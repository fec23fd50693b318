//! Helpers shared by the integration tests: a `huitong serve` child process on loopback
//! ports and a temp data dir, signalling over WebSocket, and plain HTTP requests.
#![allow(dead_code)]

/// Headless Chromium over WebDriver, with a server whose output is captured.
pub mod browser;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the x264 tests can run: libx264 loads, or `HUITONG_REQUIRE_X264` is set (CI),
/// in which case they run and fail without it instead of being skipped.
pub fn x264_or_skip() -> bool {
    let run = std::env::var_os("HUITONG_REQUIRE_X264").is_some()
        || mcu::engine::encoder_available(mcu::engine::EncoderBackend::X264);
    if !run {
        eprintln!("libx264 not installed: skipped");
    }
    run
}

/// Starts `huitong serve` with `env` added to the test defaults and waits for READY.
pub fn start_server(env: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huitong"));
    cmd.arg("serve")
        .env("HUITONG_HTTP__LISTEN", "127.0.0.1:0")
        .env("HUITONG_MEDIA__UDP_LISTEN", "127.0.0.1:0")
        .env("HUITONG_MEDIA__ADVERTISE_IP", "127.0.0.1")
        .env("HUITONG_DATA_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start huitong");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines.next().expect("server exited before READY").unwrap();
        if let Some(j) = line.strip_prefix("HUITONG_READY ") {
            break serde_json::from_str::<Value>(j).unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        http: ready["http"].as_str().unwrap().parse().unwrap(),
        udp: ready["udp"].as_str().unwrap().parse().unwrap(),
        _data: data,
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(http: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/api/v1/signal"))
        .await
        .expect("ws connect");
    ws
}

/// Next JSON message of the given type, skipping others.
pub async fn expect(ws: &mut Ws, ty: &str) -> Value {
    expect_where(ws, ty, Duration::from_secs(10), |v| v["type"] == ty).await
}

/// Next `error` or `want` reply, whichever comes first.
pub async fn reply(ws: &mut Ws, want: &str) -> Value {
    expect_where(ws, want, Duration::from_secs(10), |v| {
        v["type"] == want || v["type"] == "error"
    })
    .await
}

/// Next JSON message satisfying `pred` within `limit`, skipping others; `what` names it
/// in the panic.
pub async fn expect_where(
    ws: &mut Ws,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let fut = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if pred(&v) {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended waiting for {what}: {other:?}"),
            }
        }
    };
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// One HTTP/1.1 request on its own connection; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// JSON body of a request that must succeed.
pub async fn http_ok(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Value {
    let (status, text) = http(addr, method, path, bearer, body.as_ref()).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path} -> {status}: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}
