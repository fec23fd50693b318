//! The media socket and every socket trick the shell uses, in one place: batched reads
//! (`recvmmsg`, GRO) and batched writes (UDP GSO), both through `quinn-udp` so the crate
//! stays free of `unsafe`.
//!
//! Writes are queued and flushed once per batch of engine work. The flush groups the
//! queue by destination (order within one destination is kept, which is the only order
//! RTP and DTLS care about) and hands each run of equal-sized datagrams to the kernel as
//! one GSO send: the packets of one video frame forwarded to one subscriber leave in a
//! single syscall instead of one each.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};

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
    gso: Vec<u8>,
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
            gso: Vec::with_capacity(MAX_GSO_BYTES + MAX_DATAGRAM),
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
    pub(crate) async fn flush(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.queue);
        // Stable: per-destination order is kept.
        queue.sort_by_key(|t| t.destination);
        let max_segments = self.state.max_gso_segments().max(1);
        let mut i = 0;
        while i < queue.len() {
            let dest = queue[i].destination;
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
            if j - i == 1 {
                self.send(dest, None, &queue[i].contents).await;
            } else {
                let mut gso = std::mem::take(&mut self.gso);
                gso.clear();
                for t in &queue[i..j] {
                    gso.extend_from_slice(&t.contents);
                }
                if !self.send(dest, Some(size), &gso).await {
                    // A device without UDP segmentation offload: quinn-udp has turned GSO
                    // off for later batches; this train goes out one datagram at a time.
                    for t in &queue[i..j] {
                        self.send(dest, None, &t.contents).await;
                    }
                }
                self.gso = gso;
            }
            i = j;
        }
        queue.clear();
        // Keep the allocation for the next batch.
        self.queue = queue;
    }

    /// One datagram, or a GSO train of them; false if the kernel refused it.
    async fn send(
        &self,
        destination: SocketAddr,
        segment_size: Option<usize>,
        contents: &[u8],
    ) -> bool {
        let t = quinn_udp::Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let r = self
            .sock
            .async_io(Interest::WRITABLE, || {
                self.state.try_send(UdpSockRef::from(&self.sock), &t)
            })
            .await;
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, %destination, "media send failed");
                false
            }
        }
    }
}
