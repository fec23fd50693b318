//! The WebSocket endpoint and one session per connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sfu::ParticipantId;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::SignalError;
use crate::hub::{Hub, JoinRequest, Outgoing};
use crate::protocol::{self, ClientMsg, MemberKind, PROTOCOL_VERSION, Pc, ServerMsg};

/// Frames above this are refused by the WebSocket layer itself (connection closed with
/// 1009); between [`protocol::MAX_MESSAGE_BYTES`] and this, the client gets an error
/// reply and stays connected.
const TRANSPORT_MAX_BYTES: usize = 4 * 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const RATE_PER_SEC: f64 = 50.0;
const RATE_BURST: f64 = 200.0;

/// Routes of the signalling plane, mounted by the server.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/api/v1/signal", get(upgrade))
        .with_state(hub)
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(TRANSPORT_MAX_BYTES)
        .max_frame_size(TRANSPORT_MAX_BYTES)
        .on_upgrade(move |socket| session(hub, socket))
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    #[allow(clippy::disallowed_methods)] // the session is an async shell
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * RATE_PER_SEC)
            .min(RATE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[allow(clippy::disallowed_methods)] // the session is an async shell
async fn session(hub: Arc<Hub>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut me: Option<ParticipantId> = None;
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    let mut bucket = Bucket {
        tokens: RATE_BURST,
        at: Instant::now(),
    };
    let reason = loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break "disconnected" };
                deadline = Instant::now() + IDLE_TIMEOUT;
                let text = match frame {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        let e = SignalError::BadRequest("binary frames are not part of the protocol".into());
                        let _ = tx.send(Outgoing::Msg(ServerMsg::error(None, &e)));
                        continue;
                    }
                    Message::Close(_) => break "disconnected",
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if !bucket.take() {
                    let _ = tx.send(Outgoing::Msg(ServerMsg::error(None, &SignalError::RateLimited)));
                    continue;
                }
                if handle_text(&hub, &mut me, &tx, text.as_str(), false).await {
                    break "left";
                }
            }
            out = rx.recv() => {
                match out {
                    Some(Outgoing::Msg(m)) => {
                        if sink.send(Message::Text(Utf8Bytes::from(m.to_json()))).await.is_err() {
                            break "disconnected";
                        }
                    }
                    Some(Outgoing::Close) | None => {
                        me = None; // the hub already removed us
                        break "removed";
                    }
                }
            }
            _ = sleep_until(deadline) => break "disconnected",
        }
    };
    // Flush what is queued (e.g. the `removed` notice or a last error) before closing.
    while let Ok(Outgoing::Msg(m)) = rx.try_recv() {
        let _ = sink.send(Message::Text(Utf8Bytes::from(m.to_json()))).await;
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from(reason),
        })))
        .await;
    session_ended(&hub, me, reason);
}

/// Frees the seat of a session that ended: `left` when it said so, else `disconnected`.
pub(crate) fn session_ended(hub: &Hub, me: Option<ParticipantId>, reason: &str) {
    if let Some(pid) = me {
        let why = if reason == "left" {
            "left"
        } else {
            "disconnected"
        };
        hub.leave(pid, why);
    }
}

pub(crate) type Failure = (Option<Value>, SignalError);

/// One request as text: parses it, handles it, sends any error back. True when it was
/// `leave`.
pub(crate) async fn handle_text(
    hub: &Hub,
    me: &mut Option<ParticipantId>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    text: &str,
    trusted: bool,
) -> bool {
    match protocol::parse(text) {
        Err((re, e)) => {
            let _ = tx.send(Outgoing::Msg(ServerMsg::error(re, &e)));
            false
        }
        Ok(req) => {
            let leave = matches!(req.msg, ClientMsg::Leave);
            if let Err((re, e)) = handle(hub, me, tx, req.id, req.msg, trusted).await {
                let _ = tx.send(Outgoing::Msg(ServerMsg::error(re, &e)));
            }
            leave
        }
    }
}

/// One request of a session. `trusted` sessions (in-process services such as the MCU)
/// may join as a service member.
pub(crate) async fn handle(
    hub: &Hub,
    me: &mut Option<ParticipantId>,
    tx: &mpsc::UnboundedSender<Outgoing>,
    re: Option<Value>,
    msg: ClientMsg,
    trusted: bool,
) -> Result<(), Failure> {
    let fail = |e: SignalError| (re.clone(), e);
    let reply = |m: ServerMsg| {
        let _ = tx.send(Outgoing::Msg(m));
    };
    if let ClientMsg::Join {
        v,
        meeting,
        passcode,
        token,
        name,
        create,
        kind,
    } = msg
    {
        if me.is_some() {
            return Err(fail(SignalError::AlreadyJoined));
        }
        if v != PROTOCOL_VERSION {
            return Err(fail(SignalError::UnsupportedVersion(v)));
        }
        let name = name.trim().to_string();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(fail(SignalError::BadRequest(
                "name must be 1–64 printable characters".into(),
            )));
        }
        if meeting.len() < 3 || meeting.len() > 20 || !meeting.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(SignalError::BadRequest(
                "meeting is a number of 3–20 digits".into(),
            )));
        }
        if passcode.as_ref().is_some_and(|p| p.len() > 64) {
            return Err(fail(SignalError::BadRequest(
                "passcode longer than 64 characters".into(),
            )));
        }
        if kind != MemberKind::User && !trusted {
            return Err(fail(SignalError::BadRequest(
                "only service connections join as a service member".into(),
            )));
        }
        if token.as_ref().is_some_and(|t| t.len() > 4096) {
            return Err(fail(SignalError::BadRequest(
                "token longer than 4096 bytes".into(),
            )));
        }
        let pid = hub
            .join(
                JoinRequest {
                    meeting,
                    passcode,
                    token,
                    name,
                    create,
                    kind,
                },
                tx.clone(),
                re.clone(),
            )
            .await
            .map_err(fail)?;
        *me = Some(pid);
        return Ok(());
    }
    let Some(pid) = *me else {
        return Err(fail(SignalError::NotJoined));
    };
    match msg {
        ClientMsg::Join { .. } => unreachable_join(),
        ClientMsg::Offer { pc, sdp, tracks } => {
            if pc != Pc::Pub {
                return Err(fail(SignalError::BadRequest(
                    "clients offer only on the publish pc".into(),
                )));
            }
            let answer = hub.publish(pid, sdp, tracks).await.map_err(fail)?;
            reply(ServerMsg::Answer {
                re: re.clone(),
                pc: Pc::Pub,
                sdp: answer,
            });
        }
        ClientMsg::Answer { pc, sdp } => {
            if pc != Pc::Sub {
                return Err(fail(SignalError::BadRequest(
                    "clients answer only on the subscribe pc".into(),
                )));
            }
            hub.subscriber_answer(pid, sdp).await.map_err(fail)?;
        }
        ClientMsg::Candidate { pc, candidate } => {
            // mDNS (.local) candidates cannot be resolved here; the server learns the
            // address from the client's own connectivity checks instead.
            if !candidate.contains(".local") && !candidate.is_empty() {
                hub.candidate(pid, pc, candidate).await.map_err(fail)?;
            }
        }
        ClientMsg::Subscribe {
            track,
            quality,
            max_width,
            max_height,
        } => {
            hub.subscribe(pid, &track, quality, max_width, max_height)
                .await
                .map_err(fail)?;
        }
        ClientMsg::Unpublish { mid } => hub.unpublish(pid, mid).await.map_err(fail)?,
        ClientMsg::Mute { source, muted } => hub.mute(pid, source, muted),
        ClientMsg::Host {
            action,
            participant,
            mcu,
        } => {
            hub.host_action(pid, action, participant.as_deref(), mcu)
                .map_err(fail)?;
            reply(ServerMsg::Ok { re: re.clone() });
        }
        ClientMsg::SignIn { headcount } => {
            let r = hub
                .sign_in(pid, headcount.unwrap_or(1))
                .await
                .map_err(fail)?;
            reply(ServerMsg::SignedIn {
                re: re.clone(),
                late: r.late,
                already: r.already,
            });
        }
        ClientMsg::McuView { view } => {
            if let Some(v) = &view {
                v.check().map_err(|e| fail(SignalError::BadRequest(e)))?;
            }
            hub.mcu_view(pid, view).map_err(fail)?;
            reply(ServerMsg::Ok { re: re.clone() });
        }
        ClientMsg::McuRoute { participant, track } => {
            hub.mcu_route(pid, &participant, track).map_err(fail)?;
        }
        ClientMsg::Ping => reply(ServerMsg::Pong { re: re.clone() }),
        ClientMsg::Leave => {}
    }
    Ok(())
}

fn unreachable_join() {
    // Join is handled before this match; nothing to do.
}
