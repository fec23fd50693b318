//! The tokio shell around [`Sfu`]: one thread owns the engine and the media socket,
//! reads datagrams in batches, feeds commands from signalling, sends what the engine
//! emits and sleeps until its next timeout. This is the only place in the crate that
//! reads the clock.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Instant;

use media::recovery::{ReceiverStats, SenderStats};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Counters, Input, Output, Sfu, SfuConfig};
use crate::udp::MediaSocket;
use crate::{ParticipantId, PcRole, Preference, RoomId, SfuError, SfuEvent, TrackDecl, TrackId, TrackSource};

type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

enum Command {
    Join(RoomId, ParticipantId, Reply<()>),
    Publish(ParticipantId, String, Vec<TrackDecl>, Reply<String>),
    Answer(ParticipantId, String, Reply<()>),
    Candidate(ParticipantId, PcRole, String, Reply<()>),
    Preference(ParticipantId, TrackId, Preference, Reply<()>),
    Mute(ParticipantId, TrackSource, bool),
    Unpublish(ParticipantId, String, Reply<()>),
    Leave(ParticipantId),
    Stats(oneshot::Sender<Stats>),
}

/// A snapshot for metrics and health.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub counters: Counters,
    pub participants: usize,
    pub peers: usize,
    /// [`Sfu::uplink_protection_stats`].
    pub uplink_protection: ReceiverStats,
    /// [`Sfu::downlink_protection_stats`].
    pub downlink_protection: SenderStats,
}

/// Cheap, cloneable access to a running SFU.
#[derive(Clone)]
pub struct SfuHandle {
    tx: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
}

macro_rules! call {
    ($self:ident, $variant:ident ( $($arg:expr),* )) => {{
        let (tx, rx) = oneshot::channel();
        $self.tx.send(Command::$variant($($arg,)* tx)).map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }};
}

impl SfuHandle {
    /// The media socket's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn join(&self, room: RoomId, pid: ParticipantId) -> Result<(), SfuError> {
        call!(self, Join(room, pid))
    }

    pub async fn publish(&self, pid: ParticipantId, offer: String, decls: Vec<TrackDecl>) -> Result<String, SfuError> {
        call!(self, Publish(pid, offer, decls))
    }

    pub async fn subscriber_answer(&self, pid: ParticipantId, answer: String) -> Result<(), SfuError> {
        call!(self, Answer(pid, answer))
    }

    pub async fn add_candidate(&self, pid: ParticipantId, role: PcRole, cand: String) -> Result<(), SfuError> {
        call!(self, Candidate(pid, role, cand))
    }

    pub async fn set_preference(&self, pid: ParticipantId, track: TrackId, pref: Preference) -> Result<(), SfuError> {
        call!(self, Preference(pid, track, pref))
    }

    pub async fn unpublish(&self, pid: ParticipantId, mid: String) -> Result<(), SfuError> {
        call!(self, Unpublish(pid, mid))
    }

    pub fn set_muted(&self, pid: ParticipantId, source: TrackSource, muted: bool) {
        let _ = self.tx.send(Command::Mute(pid, source, muted));
    }

    pub fn leave(&self, pid: ParticipantId) {
        let _ = self.tx.send(Command::Leave(pid));
    }

    pub async fn stats(&self) -> Result<Stats, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Stats(tx)).map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)
    }
}

/// Starts the SFU on its own thread. It stops when every [`SfuHandle`] is dropped.
/// `cfg.candidates` empty means "advertise the socket's own address".
pub fn spawn(socket: StdUdpSocket, mut cfg: SfuConfig) -> Result<(SfuHandle, mpsc::UnboundedReceiver<SfuEvent>), SfuError> {
    let local_addr = socket.local_addr()?;
    if cfg.candidates.is_empty() {
        cfg.candidates.push(local_addr);
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The socket registers with this runtime's reactor; `enter` (not `block_on`) because
    // callers may themselves be inside a runtime. Failure is reported here.
    let io = {
        let _guard = rt.enter();
        MediaSocket::new(socket)?
    };
    std::thread::Builder::new().name("sfu".into()).spawn(move || {
        rt.block_on(run(io, cfg, cmd_rx, ev_tx));
    })?;
    Ok((SfuHandle { tx: cmd_tx, local_addr }, ev_rx))
}

#[allow(clippy::disallowed_methods)] // the shell is where time comes from
fn now() -> Instant {
    Instant::now()
}

async fn run(
    mut io: MediaSocket,
    cfg: SfuConfig,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<SfuEvent>,
) {
    // The address peers reach us at: str0m matches it against the local candidates.
    let destination = cfg.candidates[0];
    let slack = cfg.timer_slack;
    // Engine time: the wall clock, except that a timeout run early (within `slack`)
    // moves it ahead; it never goes back, so the engine always sees monotonic time.
    let mut clock = Clock(now());
    let mut sfu = Sfu::new(cfg, clock.0);
    loop {
        // Under load str0m's pacer and RTCP timers come due every few hundred µs, and
        // each sleep and wake-up is a context switch (the largest single item in the
        // forwarding profile): a timeout due within `slack` runs now, without sleeping.
        let mut early = 0;
        let timeout = loop {
            match sfu.poll_output() {
                Output::Transmit(t) => io.queue(t),
                Output::Event(e) => {
                    let _ = events.send(e);
                }
                Output::Timeout(t) => {
                    if early == MAX_EARLY || slack.is_zero() {
                        break t;
                    }
                    let n = now();
                    if t > n + slack {
                        break t;
                    }
                    early += 1;
                    sfu.handle_input(Input::Timeout(clock.at(t.max(n))));
                }
            }
        };
        // Everything one batch of input produced leaves together (see `udp`).
        io.flush().await;
        tokio::select! {
            biased;
            r = io.readable() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "media socket failed");
                    return;
                }
                // One batched read per wake-up; its output is flushed before the next.
                let t = clock.at(now());
                let r = io.recv_batch(|source, contents| {
                    sfu.handle_input(Input::Datagram { now: t, source, destination, contents });
                });
                if let Err(e) = r {
                    tracing::warn!(error = %e, "media recv failed");
                }
                // Under steady traffic the socket is always readable and the biased select
                // would never reach the timer branch: feed due timeouts here so str0m's
                // queued output (RTX, RTCP, feedback) is not held back by incoming load.
                if t >= timeout {
                    sfu.handle_input(Input::Timeout(t));
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return };
                handle_command(&mut sfu, clock.at(now()), cmd);
            }
            _ = tokio::time::sleep_until(timeout.checked_sub(slack).unwrap_or(timeout).into()) => {
                // Woken up to `slack` early: the timeout runs at its own time.
                let at = clock.at(now().max(timeout));
                sfu.handle_input(Input::Timeout(at));
            }
        }
    }
}

/// Timeouts run early in one go before the shell sleeps or reads again.
pub const MAX_EARLY: usize = 64;

/// Monotonic engine time (see `run`).
struct Clock(Instant);

impl Clock {
    fn at(&mut self, t: Instant) -> Instant {
        self.0 = self.0.max(t);
        self.0
    }
}

fn handle_command(sfu: &mut Sfu, t: Instant, cmd: Command) {
    match cmd {
        Command::Join(room, pid, r) => {
            let _ = r.send(sfu.join(t, room, pid));
        }
        Command::Publish(pid, sdp, decls, r) => {
            let _ = r.send(sfu.publish(t, pid, &sdp, &decls));
        }
        Command::Answer(pid, sdp, r) => {
            let _ = r.send(sfu.subscriber_answer(t, pid, &sdp));
        }
        Command::Candidate(pid, role, c, r) => {
            let _ = r.send(sfu.add_candidate(t, pid, role, &c));
        }
        Command::Preference(pid, track, pref, r) => {
            let _ = r.send(sfu.set_preference(t, pid, track, pref));
        }
        Command::Mute(pid, source, muted) => sfu.set_muted(pid, source, muted),
        Command::Unpublish(pid, mid, r) => {
            let _ = r.send(sfu.unpublish(t, pid, &mid));
        }
        Command::Leave(pid) => sfu.leave(t, pid),
        Command::Stats(r) => {
            let _ = r.send(Stats {
                counters: sfu.counters().clone(),
                participants: sfu.participant_count(),
                peers: sfu.peer_count(),
                uplink_protection: sfu.uplink_protection_stats(),
                downlink_protection: sfu.downlink_protection_stats(),
            });
        }
    }
}
