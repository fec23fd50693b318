//! A userspace UDP relay that carries real datagrams through [`media::netem`]: the kernel
//! here has no `netem` qdisc, so a benchmark that wants real sockets to see loss and delay
//! puts one of these between a terminal and the server.
//!
//! The relay owns two sockets. The terminal sends to the *near* socket (its SDP names the
//! near address instead of the server's); the relay forwards through the *far* socket,
//! so the server sees the far address as the terminal's (a peer-reflexive candidate, as
//! behind any NAT). Each direction has its own seeded [`Netem`], so uplink and downlink
//! losses are independent and replay from their seeds (given the same arrival times).
//!
//! This is an async shell: it reads the clock and maps it onto the emulator's virtual time.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use media::netem::{Netem, NetemConfig, NetemStats};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::error::SimError;

/// Largest datagram relayed (media and DTLS stay below the MTU).
const MAX_DATAGRAM: usize = 2048;

#[allow(clippy::disallowed_methods)] // The relay is a shell: real packets meet virtual time here.
fn now() -> Instant {
    Instant::now()
}

/// What each direction of a relay has done: `[uplink, downlink]`.
pub type RelayStats = [NetemStats; 2];

/// A running relay. Dropping it stops the relay task.
pub struct Relay {
    near: SocketAddr,
    far: SocketAddr,
    stats: Arc<Mutex<RelayStats>>,
    reconfig: Arc<Mutex<Option<(NetemConfig, NetemConfig)>>>,
    _stop: oneshot::Sender<()>,
}

impl Relay {
    /// Binds two sockets on `ip` and relays between whoever sends to the near one and
    /// `target`: `up` shapes terminal → target, `down` target → terminal. Must be called
    /// inside a tokio runtime.
    pub async fn spawn(
        ip: IpAddr,
        target: SocketAddr,
        up: NetemConfig,
        down: NetemConfig,
    ) -> Result<Relay, SimError> {
        let near_sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let far_sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        for s in [&near_sock, &far_sock] {
            // A keyframe at 1080p arrives as a burst of a hundred datagrams or more.
            let r = socket2::SockRef::from(s);
            let _ = r.set_recv_buffer_size(4 << 20);
            let _ = r.set_send_buffer_size(4 << 20);
        }
        let near = near_sock.local_addr()?;
        let far = far_sock.local_addr()?;
        let stats = Arc::new(Mutex::new(RelayStats::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let reconfig = Arc::new(Mutex::new(None));
        let shared = Shared {
            stats: stats.clone(),
            reconfig: reconfig.clone(),
        };
        tokio::spawn(run(near_sock, far_sock, target, up, down, shared, stop_rx));
        Ok(Relay {
            near,
            far,
            stats,
            reconfig,
            _stop: stop_tx,
        })
    }

    /// Where the terminal sends (and whence it hears the target).
    pub fn near_addr(&self) -> SocketAddr {
        self.near
    }

    /// Where the target hears the terminal from.
    pub fn far_addr(&self) -> SocketAddr {
        self.far
    }

    /// Changes both directions' shaping from the next datagram on (packets in flight keep
    /// their fate; each emulator keeps its random stream, the new seed is not used).
    pub fn set_config(&self, up: NetemConfig, down: NetemConfig) {
        *self.reconfig.lock().unwrap_or_else(|e| e.into_inner()) = Some((up, down));
    }

    /// Counters of both directions so far.
    pub fn stats(&self) -> RelayStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Shared {
    stats: Arc<Mutex<RelayStats>>,
    reconfig: Arc<Mutex<Option<(NetemConfig, NetemConfig)>>>,
}

async fn run(
    near: UdpSocket,
    far: UdpSocket,
    target: SocketAddr,
    up: NetemConfig,
    down: NetemConfig,
    shared: Shared,
    mut stop: oneshot::Receiver<()>,
) {
    let mut up: Netem<Vec<u8>> = Netem::new(up);
    let mut down: Netem<Vec<u8>> = Netem::new(down);
    // The terminal's address, learnt from its first datagram.
    let mut client: Option<SocketAddr> = None;
    let mut buf_near = vec![0u8; MAX_DATAGRAM];
    let mut buf_far = vec![0u8; MAX_DATAGRAM];
    loop {
        if let Some((u, d)) = shared.reconfig.lock().ok().and_then(|mut r| r.take()) {
            up.set_config(u);
            down.set_config(d);
        }
        let t = now();
        while let Some(p) = up.poll_receive(t) {
            let _ = far.send_to(&p, target).await;
        }
        if let Some(c) = client {
            while let Some(p) = down.poll_receive(t) {
                let _ = near.send_to(&p, c).await;
            }
        }
        if let Ok(mut s) = shared.stats.lock() {
            *s = [up.stats(), down.stats()];
        }
        let next = [up.poll_timeout(), down.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            r = near.recv_from(&mut buf_near) => {
                if let Ok((n, from)) = r {
                    client = Some(from);
                    up.send(now(), buf_near[..n].to_vec());
                }
            }
            r = far.recv_from(&mut buf_far) => {
                // Only the target's datagrams go back: the far port is not an open relay.
                if let Ok((n, from)) = r {
                    if from == target {
                        down.send(now(), buf_far[..n].to_vec());
                    }
                }
            }
            _ = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media::netem::LossModel;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// Echo server, a relay with 30 % loss up and 20 ms each way: about 70 % of the
    /// datagrams reach the echo and come back, none sooner than the configured 40 ms.
    #[tokio::test]
    async fn relays_with_configured_loss_and_delay() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let echo = UdpSocket::bind(SocketAddr::new(lo, 0)).await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        });
        let link = |seed, loss| {
            NetemConfig::new()
                .latency(Duration::from_millis(20))
                .loss(loss)
                .seed(seed)
        };
        let relay = Relay::spawn(
            lo,
            echo_addr,
            link(1, LossModel::Bernoulli(0.3)),
            link(2, LossModel::None),
        )
        .await
        .unwrap();
        let client = UdpSocket::bind(SocketAddr::new(lo, 0)).await.unwrap();
        let sent_at = now();
        for i in 0u32..200 {
            client
                .send_to(&i.to_be_bytes(), relay.near_addr())
                .await
                .unwrap();
        }
        let mut got = 0;
        let mut first = None;
        let mut b = [0u8; 64];
        while let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut b)).await
        {
            assert_eq!(n, 4);
            assert_eq!(from, relay.near_addr());
            first.get_or_insert_with(now);
            got += 1;
        }
        let rtt = first.expect("something came back") - sent_at;
        assert!(rtt >= Duration::from_millis(40), "rtt {rtt:?}");
        assert!((110..=170).contains(&got), "{got} of 200 came back");
        let [up, down] = relay.stats();
        assert_eq!(up.offered, 200);
        assert_eq!(up.offered - up.lost, down.offered);
        assert_eq!(down.delivered, got);
    }
}
