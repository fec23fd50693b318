//! An in-process signalling connection: the same protocol v1 JSON text as the WebSocket,
//! carried over channels. Services running inside `huitong serve` (the MCU) join
//! meetings through it exactly like a client; a service on another node would carry the
//! same messages over the WebSocket instead.
//!
//! The connection is trusted: it may join as a service member (`join.kind: "mcu"`).

use std::sync::Arc;

use sfu::ParticipantId;
use tokio::sync::mpsc;

use crate::hub::{Hub, Outgoing};
use crate::ws::{handle_text, session_ended};

/// The client's ends of a local connection.
pub struct LocalConnection {
    /// Requests, one JSON message per string. Dropping it leaves the meeting.
    pub to_server: mpsc::UnboundedSender<String>,
    /// Server messages, one JSON message per string; ends when the server closes.
    pub from_server: mpsc::UnboundedReceiver<String>,
}

/// Opens a trusted in-process connection to the hub.
pub fn connect(hub: Arc<Hub>) -> LocalConnection {
    let (to_server, mut requests) = mpsc::unbounded_channel::<String>();
    let (out_tx, from_server) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let mut me: Option<ParticipantId> = None;
        let reason = loop {
            tokio::select! {
                req = requests.recv() => {
                    let Some(text) = req else { break "disconnected" };
                    if handle_text(&hub, &mut me, &tx, &text, true).await {
                        break "left";
                    }
                }
                out = rx.recv() => match out {
                    Some(Outgoing::Msg(m)) => {
                        if out_tx.send(m.to_json()).is_err() {
                            break "disconnected";
                        }
                    }
                    Some(Outgoing::Close) | None => {
                        me = None;
                        break "removed";
                    }
                },
            }
        };
        while let Ok(Outgoing::Msg(m)) = rx.try_recv() {
            let _ = out_tx.send(m.to_json());
        }
        session_ended(&hub, me, reason);
    });
    LocalConnection {
        to_server,
        from_server,
    }
}
