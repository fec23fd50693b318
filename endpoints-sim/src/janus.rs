//! A simulated terminal speaking Janus's REST API to the VideoRoom plugin (Janus 1.x,
//! multistream subscribers), with the same peers and measurements as the Huitong client.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::driver::PeerHandle;
use crate::error::SimError;
use crate::http::request_json;
use crate::peer::PeerConfig;
use crate::stats::Stats;

static TXN: AtomicU64 = AtomicU64::new(1);

fn txn() -> String {
    format!("t{}", TXN.fetch_add(1, Ordering::Relaxed))
}

/// One Janus session with its long-poll event loop.
pub struct JanusSession {
    addr: SocketAddr,
    id: u64,
    events: mpsc::UnboundedReceiver<Value>,
    backlog: VecDeque<Value>,
    poller: JoinHandle<()>,
}

fn janus_ok(v: &Value) -> Result<(), SimError> {
    match v["janus"].as_str() {
        Some("success") | Some("ack") => Ok(()),
        _ => Err(SimError::Refused {
            code: v["error"]["code"].to_string(),
            message: v["error"]["reason"].as_str().unwrap_or("").to_string(),
        }),
    }
}

impl JanusSession {
    pub async fn create(addr: SocketAddr) -> Result<Self, SimError> {
        let r = request_json(
            addr,
            "POST",
            "/janus",
            Some(&json!({"janus": "create", "transaction": txn()})),
        )
        .await?;
        janus_ok(&r)?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| SimError::Protocol(format!("no session id in {r}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            let path = format!("/janus/{id}?maxev=10");
            loop {
                match request_json(addr, "GET", &path, None).await {
                    Ok(Value::Array(evs)) => {
                        for e in evs {
                            if tx.send(e).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(e) => {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("janus long poll: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(JanusSession {
            addr,
            id,
            events: rx,
            backlog: VecDeque::new(),
            poller,
        })
    }

    async fn post(&self, path: String, body: Value) -> Result<Value, SimError> {
        let r = request_json(self.addr, "POST", &path, Some(&body)).await?;
        janus_ok(&r)?;
        Ok(r)
    }

    pub async fn attach(&self) -> Result<u64, SimError> {
        let r = self
            .post(
                format!("/janus/{}", self.id),
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": txn()}),
            )
            .await?;
        r["data"]["id"]
            .as_u64()
            .ok_or_else(|| SimError::Protocol(format!("no handle id in {r}")))
    }

    /// Sends a plugin message; returns Janus's immediate reply (`ack` or `success`).
    pub async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, SimError> {
        let mut m = json!({"janus": "message", "transaction": txn(), "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        let r = self.post(format!("/janus/{}/{handle}", self.id), m).await?;
        if let Some(err) = r["plugindata"]["data"]["error"].as_str() {
            return Err(SimError::Refused {
                code: r["plugindata"]["data"]["error_code"].to_string(),
                message: err.to_string(),
            });
        }
        Ok(r)
    }

    /// Tells Janus we have no more candidates (they are all in our SDP).
    pub async fn trickle_done(&self, handle: u64) -> Result<(), SimError> {
        self.post(
            format!("/janus/{}/{handle}", self.id),
            json!({"janus": "trickle", "transaction": txn(), "candidate": {"completed": true}}),
        )
        .await
        .map(|_| ())
    }

    /// Waits for a plugin event of `handle` whose data satisfies `pred`.
    pub async fn wait_event(
        &mut self,
        handle: u64,
        what: &'static str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, SimError> {
        let matches =
            |e: &Value| e["janus"] == "event" && e["sender"].as_u64() == Some(handle) && pred(e);
        if let Some(i) = self.backlog.iter().position(matches) {
            return Ok(self.backlog.remove(i).unwrap_or_default());
        }
        let deadline = tokio::time::sleep(Duration::from_secs(15));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                e = self.events.recv() => {
                    let e = e.ok_or(SimError::Closed)?;
                    if let Some(err) = e["plugindata"]["data"]["error"].as_str()
                        && e["sender"].as_u64() == Some(handle)
                    {
                        return Err(SimError::Refused {
                            code: e["plugindata"]["data"]["error_code"].to_string(),
                            message: err.to_string(),
                        });
                    }
                    if matches(&e) {
                        return Ok(e);
                    }
                    if self.backlog.len() < 256 {
                        self.backlog.push_back(e);
                    }
                }
                _ = &mut deadline => return Err(SimError::Timeout(what)),
            }
        }
    }

    pub async fn destroy(self) {
        self.poller.abort();
        let _ = request_json(
            self.addr,
            "POST",
            &format!("/janus/{}", self.id),
            Some(&json!({"janus": "destroy", "transaction": txn()})),
        )
        .await;
    }
}

fn jsep_sdp(e: &Value, ty: &str) -> Result<String, SimError> {
    if e["jsep"]["type"] != ty {
        return Err(SimError::Protocol(format!("expected a jsep {ty} in {e}")));
    }
    e["jsep"]["sdp"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| SimError::Protocol("jsep without sdp".into()))
}

/// A terminal in a Janus VideoRoom: optionally a publisher, always able to subscribe.
pub struct JanusTerminal {
    session: JanusSession,
    room: u64,
    local_ip: IpAddr,
    cfg: PeerConfig,
    stats: Arc<Stats>,
    /// Our feed id when publishing.
    pub feed: Option<u64>,
    pub publisher: Option<PeerHandle>,
    pub subscriber: Option<PeerHandle>,
    /// Handle for synchronous requests (listing participants).
    control: Option<u64>,
}

impl JanusTerminal {
    /// Creates a session and, if `cfg.media` is set, joins as a publisher and publishes.
    pub async fn join(
        addr: SocketAddr,
        room: u64,
        local_ip: IpAddr,
        cfg: PeerConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, SimError> {
        let session = JanusSession::create(addr).await?;
        let mut t = JanusTerminal {
            session,
            room,
            local_ip,
            cfg,
            stats,
            feed: None,
            publisher: None,
            subscriber: None,
            control: None,
        };
        if t.cfg.media.is_some() {
            t.publish().await?;
        }
        Ok(t)
    }

    async fn publish(&mut self) -> Result<(), SimError> {
        let h = self.session.attach().await?;
        let display = format!("sim{}", self.cfg.id);
        self.session
            .message(
                h,
                json!({"request": "join", "ptype": "publisher", "room": self.room, "display": display}),
                None,
            )
            .await?;
        let joined = self
            .session
            .wait_event(h, "publisher joined", |e| {
                e["plugindata"]["data"]["videoroom"] == "joined"
            })
            .await?;
        self.feed = joined["plugindata"]["data"]["id"].as_u64();
        let peer = PeerHandle::spawn(self.local_ip, self.cfg.clone(), self.stats.clone()).await?;
        let (offer, _tracks) = peer.create_offer().await?;
        self.session
            .message(
                h,
                json!({"request": "configure", "audio": true, "video": true}),
                Some(json!({"type": "offer", "sdp": offer.to_sdp_string()})),
            )
            .await?;
        self.session.trickle_done(h).await?;
        let ev = self
            .session
            .wait_event(h, "publisher answer", |e| e["jsep"].is_object())
            .await?;
        let answer = SdpAnswer::from_sdp_string(&jsep_sdp(&ev, "answer")?)?;
        peer.accept_answer(answer).await?;
        self.publisher = Some(peer);
        Ok(())
    }

    /// Feed ids of the room's publishers (other than ours).
    pub async fn list_feeds(&mut self) -> Result<Vec<u64>, SimError> {
        let h = match self.control {
            Some(h) => h,
            None => {
                let h = self.session.attach().await?;
                self.control = Some(h);
                h
            }
        };
        let r = self
            .session
            .message(
                h,
                json!({"request": "listparticipants", "room": self.room}),
                None,
            )
            .await?;
        let feeds = r["plugindata"]["data"]["participants"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["publisher"].as_bool().unwrap_or(false))
                    .filter_map(|p| p["id"].as_u64())
                    .filter(|id| Some(*id) != self.feed)
                    .collect()
            })
            .unwrap_or_default();
        Ok(feeds)
    }

    /// One multistream subscription to every given feed, on one peer connection.
    pub async fn subscribe(&mut self, feeds: &[u64]) -> Result<(), SimError> {
        if feeds.is_empty() {
            return Ok(());
        }
        let h = self.session.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        self.session
            .message(
                h,
                json!({"request": "join", "ptype": "subscriber", "room": self.room, "streams": streams}),
                None,
            )
            .await?;
        let ev = self
            .session
            .wait_event(h, "subscriber offer", |e| e["jsep"].is_object())
            .await?;
        let offer = SdpOffer::from_sdp_string(&jsep_sdp(&ev, "offer")?)?;
        let mut cfg = self.cfg.clone();
        cfg.media = None;
        let peer = PeerHandle::spawn(self.local_ip, cfg, self.stats.clone()).await?;
        let answer = peer.accept_offer(offer).await?;
        self.session
            .message(
                h,
                json!({"request": "start"}),
                Some(json!({"type": "answer", "sdp": answer.to_sdp_string()})),
            )
            .await?;
        self.session.trickle_done(h).await?;
        self.subscriber = Some(peer);
        Ok(())
    }

    pub async fn leave(self) {
        for p in [&self.publisher, &self.subscriber].into_iter().flatten() {
            p.close().await;
        }
        self.session.destroy().await;
    }
}
