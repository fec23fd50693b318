//! The media socket and every socket trick the shell uses, in one place: batched reads
//! (`recvmmsg`, GRO, through `quinn-udp`) and batched writes (`sendmmsg` with UDP GSO,
//! through `nix`), so the crate stays free of `unsafe`.
//!
//! Writes are queued and flushed once per batch of engine work. The flush groups the
//! queue by destination (order within one destination is kept, which is the only order
//! RTP and DTLS care about), turns each run of equal-sized datagrams into one GSO train,
//! and hands the lot to the kernel in a few `sendmmsg` calls: a packet fanned out to
//! sixteen subscribers costs one syscall, not sixteen.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::engine::Transmit;

/// Largest datagram we receive; media and DTLS stay well below the 1500-byte MTU.
const MAX_DATAGRAM: usize = 2048;
/// Upper bound of one GSO send: the kernel takes at most 64 KiB of UDP payload.
const MAX_GSO_BYTES: usize = 60_000;

pub(crate) struct MediaSocket {
    sock: UdpSocket,
    state: UdpSocketState,
    /// `quinn_udp::BATCH_SIZE` slots, each big enough for a GRO-coalesced read.
    rx: Vec<u8>,
    slot: usize,
    meta: Vec<RecvMeta>,
    queue: Vec<Transmit>,
    /// Set when the kernel refused a GSO train: every later flush sends datagrams singly.
    gso_off: bool,
}

impl MediaSocket {
    /// Wraps a bound socket; must run inside a tokio runtime.
    pub(crate) fn new(socket: StdUdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Bigger kernel buffers ride out bursts (keyframes × subscribers) without drops.
        let sock2 = socket2::SockRef::from(&socket);
        let _ = sock2.set_recv_buffer_size(8 << 20);
        let _ = sock2.set_send_buffer_size(8 << 20);
        let slot = MAX_DATAGRAM * state.gro_segments().max(1);
        let batch = quinn_udp::BATCH_SIZE;
        Ok(Self {
            sock: UdpSocket::from_std(socket)?,
            state,
            rx: vec![0; slot * batch],
            slot,
            meta: vec![RecvMeta::default(); batch],
            queue: Vec::with_capacity(256),
            gso_off: false,
        })
    }

    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    /// Reads one batch of what the kernel holds and hands every datagram to `f`.
    /// Returns how many reads returned data; 0 means nothing was waiting.
    pub(crate) fn recv_batch(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let mut bufs: Vec<IoSliceMut<'_>> =
            self.rx.chunks_mut(self.slot).map(IoSliceMut::new).collect();
        let (sock, state, meta) = (&self.sock, &self.state, &mut self.meta);
        let n = match sock.try_io(Interest::READABLE, || {
            state.recv(UdpSockRef::from(sock), &mut bufs, meta)
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            // ICMP port unreachable from a departed peer surfaces here on Linux.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(1),
            Err(e) => return Err(e),
        };
        for (m, buf) in self.meta.iter().zip(&bufs).take(n) {
            let data = &buf[..m.len];
            let stride = if m.stride == 0 {
                m.len.max(1)
            } else {
                m.stride
            };
            for d in data.chunks(stride) {
                f(m.addr, d);
            }
        }
        Ok(n)
    }

    pub(crate) fn queue(&mut self, t: Transmit) {
        self.queue.push(t);
    }

    /// Sends everything queued, waiting for buffer space if the kernel has none.
    ///
    /// One `sendmmsg` carries many destinations, so a receive batch fanned out to every
    /// subscriber costs a handful of syscalls instead of one per subscriber (and the
    /// thread is rescheduled, with the receivers' wake-ups, once per call instead of once
    /// per datagram). A destination's run of equal-sized datagrams rides in one message as
    /// a GSO train. `sendmmsg` takes one control message for all its messages, so trains
    /// of one segment size go in one call and single datagrams in another; a destination
    /// with several units in one flush has them sent in order, one per round.
    pub(crate) async fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.queue);
        // Stable: per-destination order is kept.
        queue.sort_by_key(|t| t.destination);
        let units = plan_units(&queue, if self.gso_off { 1 } else { self.state.max_gso_segments().max(1) });
        let mut i = 0;
        while i < units.len() {
            let (round, seg) = (units[i].round, units[i].seg);
            let mut j = i + 1;
            while j < units.len() && units[j].round == round && units[j].seg == seg {
                j += 1;
            }
            if let Err(failed) = self.send_group(&queue, &units[i..j]).await {
                // GSO refused (a device without segmentation offload): these trains, and
                // every later one, go out one datagram per message.
                tracing::debug!(error = %failed, "GSO send refused; sending datagrams singly");
                self.gso_off = true;
                let singles: Vec<Unit> = units[i..j]
                    .iter()
                    .flat_map(|u| (u.start..u.end).map(move |k| Unit { start: k, end: k + 1, seg: None, ..*u }))
                    .collect();
                let _ = self.send_group(&queue, &singles).await;
            }
            i = j;
        }
        queue.clear();
        // Keep the allocation for the next batch.
        self.queue = queue;
    }

    /// Sends units that share one segment size (or none), as many per `sendmmsg` as the
    /// kernel takes. A datagram the kernel refuses is logged and skipped; `Err` only when
    /// a GSO train was refused, so the caller can fall back.
    async fn send_group(&self, queue: &[Transmit], units: &[Unit]) -> Result<(), io::Error> {
        let seg = units[0].seg;
        let iovs: Vec<IoSlice<'_>> = units
            .iter()
            .flat_map(|u| queue[u.start..u.end].iter().map(|t| IoSlice::new(&t.contents)))
            .collect();
        let mut msgs: Vec<&[IoSlice<'_>]> = Vec::with_capacity(units.len());
        let mut at = 0;
        for u in units {
            let n = u.end - u.start;
            msgs.push(&iovs[at..at + n]);
            at += n;
        }
        let addrs: Vec<Option<SockaddrStorage>> = units.iter().map(|u| Some(SockaddrStorage::from(u.dest))).collect();
        let fd = self.sock.as_raw_fd();
        let mut done = 0;
        while done < msgs.len() {
            let end = msgs.len().min(done + MAX_MMSG);
            let r = self
                .sock
                .async_io(Interest::WRITABLE, || {
                    send_mmsg(fd, &msgs[done..end], &addrs[done..end], seg)
                })
                .await;
            match r {
                Ok(n) => done += n.max(1),
                Err(e) if seg.is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, destination = %units[done].dest, "media send failed");
                    done += 1;
                }
            }
        }
        Ok(())
    }
}

/// Upper bound of messages per `sendmmsg` (the kernel's `UIO_MAXIOV`).
const MAX_MMSG: usize = 1024;

/// One message of a flush: a single datagram, or a GSO train to one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    dest: SocketAddr,
    /// Segment size of a train; `None` for a single datagram.
    seg: Option<u16>,
    /// Index range in the (destination-sorted) queue.
    start: usize,
    end: usize,
    /// Ordinal among this destination's units: round `r` is sent after round `r - 1`.
    round: u32,
}

/// Cuts a destination-sorted queue into units, grouped by (round, segment size) so each
/// group is one `sendmmsg` and every destination's order is kept.
fn plan_units(queue: &[Transmit], max_segments: usize) -> Vec<Unit> {
    let mut units = Vec::with_capacity(queue.len());
    let mut i = 0;
    let mut round = 0;
    while i < queue.len() {
        let dest = queue[i].destination;
        if i > 0 && queue[i - 1].destination != dest {
            round = 0;
        }
        let size = queue[i].contents.len();
        // A run: same destination, equal sizes, the last one may be shorter.
        let mut j = i + 1;
        let mut bytes = size;
        while j < queue.len()
            && j - i < max_segments
            && queue[j].destination == dest
            && queue[j].contents.len() <= size
            && bytes + size <= MAX_GSO_BYTES
        {
            bytes += queue[j].contents.len();
            j += 1;
            if queue[j - 1].contents.len() < size {
                break;
            }
        }
        let seg = if j - i > 1 { u16::try_from(size).ok() } else { None };
        // A size that does not fit the control message goes out datagram by datagram.
        if seg.is_none() && j - i > 1 {
            for k in i..j {
                units.push(Unit { dest, seg: None, start: k, end: k + 1, round });
                round += 1;
            }
        } else {
            units.push(Unit { dest, seg, start: i, end: j, round });
            round += 1;
        }
        i = j;
    }
    units.sort_by_key(|u| (u.round, u.seg));
    units
}

/// One `sendmmsg`; returns how many messages the kernel took.
fn send_mmsg(fd: RawFd, msgs: &[&[IoSlice<'_>]], addrs: &[Option<SockaddrStorage>], seg: Option<u16>) -> io::Result<usize> {
    let seg_ref = seg.unwrap_or(0);
    let cmsg = [ControlMessage::UdpGsoSegments(&seg_ref)];
    let (cmsgs, space): (&[ControlMessage<'_>], _) = match seg {
        Some(_) => (&cmsg, Some(nix::cmsg_space!(u16))),
        None => (&[], None),
    };
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(msgs.len(), space);
    let sent = sendmmsg(fd, &mut headers, msgs, addrs, cmsgs, MsgFlags::empty()).map_err(io::Error::from)?;
    Ok(sent.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(dest: u16, len: usize, tag: u8) -> Transmit {
        let a: SocketAddr = ([127, 0, 0, 1], dest).into();
        Transmit { source: a, destination: a, contents: vec![tag; len] }
    }

    /// The order each destination receives its datagrams in, when the groups are sent in
    /// the planned order.
    fn delivered(queue: &[Transmit], units: &[Unit]) -> Vec<(u16, u8)> {
        units.iter().flat_map(|u| queue[u.start..u.end].iter().map(|t| (t.destination.port(), t.contents[0]))).collect()
    }

    #[test]
    fn trains_and_singles_keep_each_destinations_order() {
        // Destination 1: a train of three equal sizes ending with a shorter one, then a
        // bigger datagram (a new unit), then another. Destination 2: one datagram.
        let mut queue =
            vec![tx(1, 1200, 0), tx(2, 300, 10), tx(1, 1200, 1), tx(1, 1200, 2), tx(1, 800, 3), tx(1, 1300, 4), tx(1, 90, 5)];
        queue.sort_by_key(|t| t.destination);
        let units = plan_units(&queue, 64);
        let trains: Vec<_> = units.iter().filter(|u| u.seg.is_some()).map(|u| (u.seg, u.end - u.start)).collect();
        assert_eq!(trains, vec![(Some(1200), 4), (Some(1300), 2)]);
        // Groups are (round, segment size) runs; within one, a destination appears once.
        for w in units.windows(2) {
            assert!((w[0].round, w[0].seg) <= (w[1].round, w[1].seg));
        }
        let got = delivered(&queue, &units);
        let per_dest = |d: u16| got.iter().filter(|(p, _)| *p == d).map(|(_, t)| *t).collect::<Vec<_>>();
        assert_eq!(per_dest(1), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(per_dest(2), vec![10]);
    }

    #[test]
    fn no_gso_means_one_datagram_per_message() {
        let mut queue = vec![tx(1, 100, 0), tx(1, 100, 1), tx(3, 100, 2), tx(1, 100, 3)];
        queue.sort_by_key(|t| t.destination);
        let units = plan_units(&queue, 1);
        assert!(units.iter().all(|u| u.seg.is_none() && u.end - u.start == 1));
        assert_eq!(units.iter().filter(|u| u.round == 0).count(), 2);
        let got = delivered(&queue, &units);
        assert_eq!(got.iter().filter(|(p, _)| *p == 1).map(|(_, t)| *t).collect::<Vec<_>>(), vec![0, 1, 3]);
    }

    #[tokio::test]
    async fn a_flush_reaches_every_destination_in_order() {
        let recv: Vec<StdUdpSocket> = (0..3).map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for r in &recv {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        }
        let mut sock = MediaSocket::new(StdUdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let src = sock.sock.local_addr().unwrap();
        for k in 0..20u8 {
            for r in &recv {
                // Mixed sizes: some runs become GSO trains, some do not.
                let len = if k % 5 == 4 { 500 } else { 1000 };
                sock.queue(Transmit { source: src, destination: r.local_addr().unwrap(), contents: vec![k; len] });
            }
        }
        sock.flush().await;
        for r in &recv {
            let mut buf = [0u8; 2048];
            let got: Vec<u8> = (0..20).map(|_| r.recv(&mut buf).map(|n| buf[n - 1]).unwrap()).collect();
            assert_eq!(got, (0..20).collect::<Vec<u8>>());
        }
    }
}
