//! A simulated terminal speaking Huitong signalling v1 (`docs/signaling.md`) over a
//! WebSocket: a publish pc it offers, a subscribe pc whose offers it answers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::MediaKind;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::driver::PeerHandle;
use crate::error::SimError;
use crate::peer::PeerConfig;
use crate::stats::Stats;

#[derive(Debug, Clone)]
pub struct JoinParams {
    pub meeting: String,
    pub passcode: Option<String>,
    pub name: String,
    pub create: bool,
}

#[derive(Default)]
struct Pcs {
    publisher: Option<PeerHandle>,
    subscriber: Option<PeerHandle>,
    last_error: Option<String>,
    /// The track (as the server describes it) per mid of the subscribe pc, from the
    /// latest `offer`.
    sub_tracks: HashMap<String, Value>,
    /// The MCU track carrying our own picture (`mcu_track`).
    mcu_track: Option<String>,
}

/// A joined participant. Dropping it does not leave: call [`HuitongTerminal::leave`].
pub struct HuitongTerminal {
    pub participant: String,
    pcs: Arc<Mutex<Pcs>>,
    leave: Option<oneshot::Sender<()>>,
    signals: mpsc::UnboundedSender<Value>,
    task: tokio::task::JoinHandle<()>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl HuitongTerminal {
    /// Connects, joins, and (if `cfg.media` is set) sends the publish offer.
    pub async fn join(
        http: SocketAddr,
        params: JoinParams,
        local_ip: IpAddr,
        cfg: PeerConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, SimError> {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{http}/api/v1/signal")).await?;
        let mut join = json!({"type": "join", "v": 1, "id": "join", "meeting": params.meeting,
            "name": params.name, "create": params.create});
        if let Some(p) = &params.passcode {
            join["passcode"] = json!(p);
        }
        send(&mut ws, &join).await?;
        // The server may send events (even the first subscribe offer) before `joined`:
        // keep them and handle them once the message loop runs.
        let mut early = Vec::new();
        let joined = loop {
            let m = recv(&mut ws)
                .await?
                .ok_or(SimError::Protocol("socket closed before joined".into()))?;
            match m["type"].as_str() {
                Some("joined") => break m,
                Some("error") => return Err(refused(&m)),
                _ => early.push(m),
            }
        };
        let participant = joined["participant"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pcs = Arc::new(Mutex::new(Pcs::default()));
        if cfg.media.is_some() {
            let peer = PeerHandle::spawn(local_ip, cfg.clone(), stats.clone()).await?;
            let (offer, tracks) = peer.create_offer().await?;
            let tracks: Vec<Value> = tracks
                .iter()
                .map(|t| {
                    let (kind, source) = match t.kind {
                        MediaKind::Audio => ("audio", "mic"),
                        MediaKind::Video => ("video", "camera"),
                    };
                    json!({"mid": t.mid.to_string(), "kind": kind, "source": source})
                })
                .collect();
            send(
                &mut ws,
                &json!({"type": "offer", "id": "pub", "pc": "pub", "sdp": offer.to_sdp_string(), "tracks": tracks}),
            )
            .await?;
            if let Ok(mut p) = pcs.lock() {
                p.publisher = Some(peer);
            }
        }
        let (leave_tx, leave_rx) = oneshot::channel();
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let io = Io {
            leave: leave_rx,
            signals: sig_rx,
        };
        let task = tokio::spawn(run(ws, early, pcs.clone(), local_ip, cfg, stats, io));
        Ok(HuitongTerminal {
            participant,
            pcs,
            leave: Some(leave_tx),
            signals: sig_tx,
            task,
        })
    }

    pub fn publisher(&self) -> Option<PeerHandle> {
        self.pcs.lock().ok().and_then(|p| p.publisher.clone())
    }

    pub fn subscriber(&self) -> Option<PeerHandle> {
        self.pcs.lock().ok().and_then(|p| p.subscriber.clone())
    }

    /// Sends a signalling message as is (e.g. `mcu_view`).
    pub fn send_signal(&self, v: Value) {
        let _ = self.signals.send(v);
    }

    /// The track id carried by `mid` of the subscribe pc.
    pub fn sub_track(&self, mid: &str) -> Option<String> {
        let t = self.sub_track_info(mid)?;
        t["id"].as_str().map(str::to_owned)
    }

    /// The server's description of the track carried by `mid` of the subscribe pc
    /// (`id`, `participant`, `kind`, `source`, and `view`/`audience` on MCU tracks).
    pub fn sub_track_info(&self, mid: &str) -> Option<Value> {
        self.pcs.lock().ok()?.sub_tracks.get(mid).cloned()
    }

    /// Every track of the subscribe pc with its mid, as the latest offer described them.
    pub fn sub_tracks(&self) -> Vec<(String, Value)> {
        let Ok(p) = self.pcs.lock() else {
            return vec![];
        };
        p.sub_tracks
            .iter()
            .map(|(m, t)| (m.clone(), t.clone()))
            .collect()
    }

    /// The MCU track the server named as our own picture.
    pub fn mcu_track(&self) -> Option<String> {
        self.pcs.lock().ok()?.mcu_track.clone()
    }

    /// The last error the server sent us, if any.
    pub fn last_error(&self) -> Option<String> {
        self.pcs.lock().ok().and_then(|p| p.last_error.clone())
    }

    pub async fn leave(mut self) {
        if let Some(tx) = self.leave.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        let pcs: Vec<PeerHandle> = self
            .pcs
            .lock()
            .map(|p| {
                p.publisher
                    .iter()
                    .chain(p.subscriber.iter())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for p in pcs {
            p.close().await;
        }
    }
}

fn refused(m: &Value) -> SimError {
    SimError::Refused {
        code: m["code"].as_str().unwrap_or("").to_string(),
        message: m["message"].as_str().unwrap_or("").to_string(),
    }
}

async fn send(ws: &mut Ws, v: &Value) -> Result<(), SimError> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

/// Next JSON message; `None` when the socket closed.
async fn recv(ws: &mut Ws) -> Result<Option<Value>, SimError> {
    while let Some(m) = ws.next().await {
        match m? {
            Message::Text(t) => return Ok(Some(serde_json::from_str(t.as_str())?)),
            Message::Close(_) => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

/// What the owner of a terminal tells its task.
struct Io {
    leave: oneshot::Receiver<()>,
    signals: mpsc::UnboundedReceiver<Value>,
}

async fn run(
    mut ws: Ws,
    early: Vec<Value>,
    pcs: Arc<Mutex<Pcs>>,
    local_ip: IpAddr,
    cfg: PeerConfig,
    stats: Arc<Stats>,
    mut io: Io,
) {
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<String>();
    for m in early {
        if let Err(e) = handle(&mut ws, &m, &pcs, local_ip, &cfg, &stats).await {
            let _ = err_tx.send(format!("{}: {e}", m["type"]));
        }
    }
    loop {
        tokio::select! {
            Some(v) = io.signals.recv() => {
                if send(&mut ws, &v).await.is_err() { return; }
            }
            _ = &mut io.leave => {
                let _ = send(&mut ws, &json!({"type": "leave"})).await;
                let _ = ws.close(None).await;
                return;
            }
            _ = ping.tick() => {
                if send(&mut ws, &json!({"type": "ping"})).await.is_err() { return; }
            }
            Some(e) = err_rx.recv() => {
                tracing::warn!("terminal {}: {e}", cfg.id);
                if let Ok(mut p) = pcs.lock() { p.last_error = Some(e); }
            }
            m = recv(&mut ws) => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => { let _ = err_tx.send(e.to_string()); return; }
                };
                tracing::debug!(id = cfg.id, "signal in: {}", m["type"]);
                if let Err(e) = handle(&mut ws, &m, &pcs, local_ip, &cfg, &stats).await {
                    let _ = err_tx.send(format!("{}: {e}", m["type"]));
                }
            }
        }
    }
}

async fn handle(
    ws: &mut Ws,
    m: &Value,
    pcs: &Arc<Mutex<Pcs>>,
    local_ip: IpAddr,
    cfg: &PeerConfig,
    stats: &Arc<Stats>,
) -> Result<(), SimError> {
    let sdp = || m["sdp"].as_str().unwrap_or_default();
    match (m["type"].as_str(), m["pc"].as_str()) {
        (Some("answer"), Some("pub")) => {
            let peer = pcs.lock().ok().and_then(|p| p.publisher.clone());
            let peer = peer.ok_or(SimError::Protocol("answer without a publish pc".into()))?;
            peer.accept_answer(SdpAnswer::from_sdp_string(sdp())?)
                .await?;
        }
        (Some("mcu_track"), _) => {
            if let Ok(mut p) = pcs.lock() {
                p.mcu_track = m["track"].as_str().map(str::to_owned);
            }
        }
        (Some("offer"), Some("sub")) => {
            if let Ok(mut p) = pcs.lock() {
                p.sub_tracks = m["tracks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| Some((t["mid"].as_str()?.to_owned(), t.clone())))
                    .collect();
            }
            let existing = pcs.lock().ok().and_then(|p| p.subscriber.clone());
            let peer = match existing {
                Some(p) => p,
                None => {
                    let mut c = cfg.clone();
                    c.media = None;
                    let p = PeerHandle::spawn(local_ip, c, stats.clone()).await?;
                    if let Ok(mut g) = pcs.lock() {
                        g.subscriber = Some(p.clone());
                    }
                    p
                }
            };
            let answer = peer.accept_offer(SdpOffer::from_sdp_string(sdp())?).await?;
            send(
                ws,
                &json!({"type": "answer", "pc": "sub", "sdp": answer.to_sdp_string()}),
            )
            .await?;
        }
        (Some("error"), _) => return Err(refused(m)),
        _ => {}
    }
    Ok(())
}
