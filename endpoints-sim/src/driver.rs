//! The thin async shell around a [`Peer`]: one tokio task owns the peer and its UDP
//! socket. The server side of a WebRTC session uses one UDP port for every peer, so the
//! client side needs one local port per peer connection to keep the 5-tuples apart;
//! hundreds of these tasks run on one runtime thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::SimError;
use crate::peer::{OfferedTrack, Peer, PeerConfig, PeerOutput};
use crate::stats::Stats;

enum Cmd {
    CreateOffer(oneshot::Sender<Result<(SdpOffer, Vec<OfferedTrack>), SimError>>),
    AcceptAnswer(Box<SdpAnswer>, oneshot::Sender<Result<(), SimError>>),
    AcceptOffer(Box<SdpOffer>, oneshot::Sender<Result<SdpAnswer, SimError>>),
    Close,
}

/// What the task publishes about its peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    pub connected: bool,
    /// Distinct senders whose video this peer decoded at least one frame of.
    pub video_senders: usize,
    pub closed: bool,
}

/// Handle to a running peer task.
#[derive(Clone)]
pub struct PeerHandle {
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<PeerStatus>,
    local: SocketAddr,
}

#[allow(clippy::disallowed_methods)] // The async shell is where the clock is read.
fn now() -> Instant {
    Instant::now()
}

impl PeerHandle {
    /// Binds a UDP socket on `ip`, builds the peer and starts its task.
    pub async fn spawn(
        ip: std::net::IpAddr,
        cfg: PeerConfig,
        stats: Arc<Stats>,
    ) -> Result<PeerHandle, SimError> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        let peer = Peer::new(now(), local, cfg, stats);
        let (tx, rx) = mpsc::channel(8);
        let (st_tx, st_rx) = watch::channel(PeerStatus::default());
        tokio::spawn(async move {
            if let Err(e) = run(peer, socket, rx, &st_tx).await {
                tracing::debug!(%local, "peer task ended: {e}");
            }
            st_tx.send_modify(|s| s.closed = true);
        });
        Ok(PeerHandle {
            tx,
            status: st_rx,
            local,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SimError>>) -> Cmd,
    ) -> Result<T, SimError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| SimError::Closed)?;
        rx.await.map_err(|_| SimError::Closed)?
    }

    pub async fn create_offer(&self) -> Result<(SdpOffer, Vec<OfferedTrack>), SimError> {
        self.call(Cmd::CreateOffer).await
    }

    pub async fn accept_answer(&self, a: SdpAnswer) -> Result<(), SimError> {
        self.call(|tx| Cmd::AcceptAnswer(Box::new(a), tx)).await
    }

    pub async fn accept_offer(&self, o: SdpOffer) -> Result<SdpAnswer, SimError> {
        self.call(|tx| Cmd::AcceptOffer(Box::new(o), tx)).await
    }

    pub async fn close(&self) {
        let _ = self.tx.send(Cmd::Close).await;
    }

    pub fn status(&self) -> PeerStatus {
        self.status.borrow().clone()
    }

    /// Waits until `pred` holds for the status (or the task ends).
    pub async fn wait_for(&self, pred: impl Fn(&PeerStatus) -> bool) -> Result<(), SimError> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| pred(s) || s.closed)
            .await
            .map_err(|_| SimError::Closed)?;
        if pred(&rx.borrow()) {
            Ok(())
        } else {
            Err(SimError::Closed)
        }
    }
}

async fn run(
    mut peer: Peer,
    socket: UdpSocket,
    mut rx: mpsc::Receiver<Cmd>,
    status: &watch::Sender<PeerStatus>,
) -> Result<(), SimError> {
    let mut buf = vec![0u8; 2048];
    loop {
        // Drain output until str0m asks to be woken at some time.
        let deadline = loop {
            match peer.poll_output(now())? {
                PeerOutput::Transmit(t) => {
                    if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                        tracing::debug!("send_to {}: {e}", t.destination);
                    }
                }
                PeerOutput::Timeout(t) => break t,
            }
        };
        let st = PeerStatus {
            connected: peer.is_connected(),
            video_senders: peer.senders_seen().len(),
            closed: !peer.is_alive(),
        };
        status.send_if_modified(|s| {
            let changed = *s != st;
            *s = st;
            changed
        });
        if !peer.is_alive() {
            return Ok(());
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                peer.handle_receive(now(), from, &buf[..n])?;
                // Several datagrams are often queued: take them without re-arming the timer.
                while let Ok((n, from)) = socket.try_recv_from(&mut buf) {
                    peer.handle_receive(now(), from, &buf[..n])?;
                }
                peer.handle_timeout(now())?;
            }
            cmd = rx.recv() => {
                match cmd {
                    None | Some(Cmd::Close) => { peer.close(); return Ok(()); }
                    Some(Cmd::CreateOffer(tx)) => { let _ = tx.send(peer.create_offer()); }
                    Some(Cmd::AcceptAnswer(a, tx)) => { let _ = tx.send(peer.accept_answer(*a)); }
                    Some(Cmd::AcceptOffer(o, tx)) => { let _ = tx.send(peer.accept_offer(*o)); }
                }
                peer.handle_timeout(now())?;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                peer.handle_timeout(now())?;
            }
        }
    }
}

/// Convenience for tests and tools: a peer that publishes with default media.
pub fn publisher_config(id: u32, epoch: Instant, seed: u64) -> PeerConfig {
    PeerConfig {
        id,
        epoch,
        seed,
        media: Some(crate::peer::MediaConfig::default()),
    }
}
