//! The thread that runs one meeting's [`McuClient`]: it owns the two UDP sockets of the
//! client's peer connections and its signalling channel, reads the clock and sleeps until
//! the client's next timeout. One MCU per thread, so a meeting's encodes never stall the
//! SFU or another meeting's mix.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::Error;
use crate::layout::LayoutSet;
use crate::participant::{ClientCounters, ClientOutput, McuClient, McuClientConfig, PcSide};
use crate::text::TextRenderer;

/// What the owner of an MCU can tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McuCommand {
    /// The host chose another layout.
    SetLayout(String),
    /// Leave the meeting.
    Stop,
}

/// Handle to a running MCU.
#[derive(Debug, Clone)]
pub struct McuHandle {
    tx: mpsc::UnboundedSender<McuCommand>,
    status: watch::Receiver<McuStatus>,
}

/// What the MCU thread reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McuStatus {
    /// Client counters, refreshed about once a second.
    pub counters: ClientCounters,
    /// Distinct encoded outputs of the mixer.
    pub encoders: usize,
    /// The client left the meeting; the thread has ended.
    pub done: bool,
}

impl McuHandle {
    /// Sends a command; false when the MCU has ended.
    pub fn command(&self, c: McuCommand) -> bool {
        self.tx.send(c).is_ok()
    }

    /// The latest status.
    pub fn status(&self) -> McuStatus {
        *self.status.borrow()
    }

    /// Waits until the MCU thread has ended.
    pub async fn ended(&self) {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.done).await;
    }
}

/// The signalling channel of the client: JSON text each way (see `signaling::local`, or a
/// WebSocket for an MCU on another node).
pub struct SignalChannel {
    /// To the server.
    pub to_server: mpsc::UnboundedSender<String>,
    /// From the server.
    pub from_server: mpsc::UnboundedReceiver<String>,
}

/// Starts an MCU for `cfg.meeting` on its own thread. Its sockets bind on `local_ip`,
/// which must reach the SFU's advertised media address.
pub fn spawn(
    signal: SignalChannel,
    cfg: McuClientConfig,
    layouts: LayoutSet,
    font: Option<TextRenderer>,
    local_ip: IpAddr,
) -> Result<McuHandle, Error> {
    let io = |e: std::io::Error| Error::Io(e.to_string());
    let pub_sock = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)).map_err(io)?;
    let sub_sock = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0)).map_err(io)?;
    pub_sock.set_nonblocking(true).map_err(io)?;
    sub_sock.set_nonblocking(true).map_err(io)?;
    let client = McuClient::new(
        now(),
        cfg.clone(),
        layouts,
        font,
        pub_sock.local_addr().map_err(io)?,
        sub_sock.local_addr().map_err(io)?,
    )?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (st_tx, st_rx) = watch::channel(McuStatus::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    let meeting = cfg.meeting.clone();
    std::thread::Builder::new()
        .name(format!("mcu-{meeting}"))
        .spawn(move || {
            rt.block_on(async move {
                match (UdpSocket::from_std(pub_sock), UdpSocket::from_std(sub_sock)) {
                    (Ok(p), Ok(s)) => run(client, p, s, signal, rx, &st_tx).await,
                    _ => tracing::error!(%meeting, "MCU sockets unusable"),
                }
                st_tx.send_modify(|s| s.done = true);
                tracing::info!(%meeting, "MCU ended");
            })
        })
        .map_err(io)?;
    Ok(McuHandle { tx, status: st_rx })
}

#[allow(clippy::disallowed_methods)] // the shell is where the MCU's time comes from
fn now() -> Instant {
    Instant::now()
}

async fn run(
    mut client: McuClient,
    pub_sock: UdpSocket,
    sub_sock: UdpSocket,
    mut signal: SignalChannel,
    mut cmds: mpsc::UnboundedReceiver<McuCommand>,
    status: &watch::Sender<McuStatus>,
) {
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    let mut next_status = now();
    loop {
        let timeout = loop {
            match client.poll_output(now()) {
                ClientOutput::Signal(s) => {
                    if signal.to_server.send(s).is_err() {
                        return;
                    }
                }
                ClientOutput::Transmit(pc, t) => {
                    let sock = if pc == PcSide::Publish {
                        &pub_sock
                    } else {
                        &sub_sock
                    };
                    if let Err(e) = sock.try_send_to(&t.contents, t.destination) {
                        tracing::debug!(error = %e, "MCU send failed");
                    }
                }
                ClientOutput::Timeout(t) => break t,
                ClientOutput::Done => return,
            }
        };
        if now() >= next_status {
            next_status = now() + std::time::Duration::from_secs(1);
            let s = McuStatus {
                counters: client.counters(),
                encoders: client.mixer().encoder_count(),
                done: false,
            };
            status.send_replace(s);
        }
        tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                Some(McuCommand::SetLayout(l)) => client.set_layout(&l),
                Some(McuCommand::Stop) | None => client.stop(),
            },
            msg = signal.from_server.recv() => match msg {
                Some(m) => client.handle_signal(now(), &m),
                // The server closed the connection: we are out of the meeting.
                None => return,
            },
            r = pub_sock.recv_from(&mut pub_buf) => {
                if let Ok((n, src)) = r {
                    client.handle_datagram(now(), PcSide::Publish, src, &pub_buf[..n]);
                }
            }
            r = sub_sock.recv_from(&mut sub_buf) => {
                if let Ok((n, src)) = r {
                    client.handle_datagram(now(), PcSide::Subscribe, src, &sub_buf[..n]);
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => client.handle_timeout(now()),
        }
        // Steady input would starve the timer branch of the biased select.
        let t = now();
        if t >= timeout {
            client.handle_timeout(t);
        }
    }
}
