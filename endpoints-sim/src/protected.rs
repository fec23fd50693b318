//! Simulated terminals that speak Huitong's hop-by-hop loss protection (issue 4) over
//! WebRTC: a publisher whose video goes through a `ProtectedTx` (Reed-Solomon FEC +
//! RTX answering NACKs, sizes adapted from the receiver's loss reports) and a
//! subscriber whose `ProtectedRx` rebuilds, asks for and skips, and which checks every
//! frame it is handed against the regenerated source. How the protected stream rides
//! str0m (a carrier payload type, feedback in application-layer RTCP) is in
//! `sfu::protect` and `docs/fec.md`.
//!
//! Sans-IO: the owner moves datagrams and time; each terminal exposes its `Rtc`.
//! The video is synthetic: frame `n` is a deterministic function of `n`, with temporal
//! layers L1T3 (0-2-1-2) and frame marking, so the receiver can tell an intact frame from
//! a corrupt one byte for byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::fec::RtpView;
use media::recovery::{FrameMarking, ReceiverEvent, SenderEvent, SkipReason};
use sfu::protect::{self, FramePacket, ProtectedRx, ProtectedTx, TxPolicy};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::{Candidate, Event, Rtc, RtcConfig};

use crate::error::SimError;

/// Payload bytes per packet of the synthetic stream.
pub const PACKET_BYTES: usize = 1_000;
/// RTP ticks per frame at 30 fps.
pub const TICKS_PER_FRAME: u32 = 3_000;

/// Shape of the synthetic video.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticVideo {
    /// Packets of a keyframe, and of a TL0, TL1 and TL2 delta frame.
    pub packets: [usize; 4],
    /// A keyframe every this many frames (plus those asked for); 0: only when asked.
    pub keyframe_every: u64,
    /// 3: L1T3 (0, 2, 1, 2, …); 2: L1T2 (0, 1, 0, 1, …).
    pub temporal_layers: u8,
}

impl Default for SyntheticVideo {
    /// ~2.2 Mbit/s at 30 fps in L1T3, a keyframe every 4 s.
    fn default() -> Self {
        SyntheticVideo {
            packets: [40, 12, 9, 7],
            keyframe_every: 120,
            temporal_layers: 3,
        }
    }
}

impl SyntheticVideo {
    /// The shape of `bench loss`'s 1080p stream (`realvideo`): OpenH264 at 4 Mbit/s in
    /// L1T2, ~17 kB a delta frame, keyframes only when asked for. Its FEC blocks hold
    /// about 30 packets, half the L1T3 default's, which is what its repair and request
    /// rounds are sized for.
    pub fn like_bench_1080p() -> Self {
        SyntheticVideo {
            packets: [40, 16, 13, 13],
            keyframe_every: 0,
            temporal_layers: 2,
        }
    }

    /// Media rate of the delta frames at 30 fps (bit/s).
    pub fn delta_bps(&self) -> u64 {
        let cycle: Vec<u8> = (0..4).map(|n| self.temporal_layer(n)).collect();
        let packets: usize = cycle
            .iter()
            .map(|&t| self.packets[1 + usize::from(t)])
            .sum();
        (packets * PACKET_BYTES * 8 * 30 / cycle.len()) as u64
    }

    /// Temporal layer of frame `n` (a keyframe is sent as layer 0 wherever it falls).
    pub fn temporal_layer(&self, n: u64) -> u8 {
        if self.temporal_layers >= 3 {
            match n % 4 {
                0 => 0,
                2 => 1,
                _ => 2,
            }
        } else {
            (n % 2) as u8
        }
    }
}

/// Payload of packet `i` of `count` of frame `n`: an H.264 FU-A fragment (so the SFU's
/// H.264 inspection accepts it) whose body names the frame and packet, then bytes that
/// are a function of both.
pub fn packet_payload(n: u64, i: usize, count: usize, key: bool) -> Vec<u8> {
    let nal_type = if key { 5 } else { 1 };
    let mut fu = nal_type;
    if i == 0 {
        fu |= 0x80;
    }
    if i + 1 == count {
        fu |= 0x40;
    }
    let mut p = Vec::with_capacity(PACKET_BYTES);
    p.push(0x7c); // FU-A, NRI 3
    p.push(fu);
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&(i as u16).to_be_bytes());
    p.extend_from_slice(&(count as u16).to_be_bytes());
    p.push(u8::from(key));
    let mut x =
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) | 1;
    while p.len() < PACKET_BYTES {
        // xorshift: any fixed function of (n, i) does.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p
}

/// Which frame a payload says it belongs to: (frame, packet index, packet count, key).
pub fn payload_identity(p: &[u8]) -> Option<(u64, usize, usize, bool)> {
    let n = u64::from_be_bytes(p.get(2..10)?.try_into().ok()?);
    let i = u16::from_be_bytes(p.get(10..12)?.try_into().ok()?);
    let c = u16::from_be_bytes(p.get(12..14)?.try_into().ok()?);
    let k = *p.get(14)? != 0;
    Some((n, usize::from(i), usize::from(c), k))
}

fn rtc_config(publish: bool) -> RtcConfig {
    let mut cfg = RtcConfig::new()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_h264(true);
    // At 50 % loss each way a connectivity check and its answer both arrive 1 time in 4:
    // check every second (the ICE-lite SFU drops a pair after 15 s without one) and give
    // up only after 30 unanswered checks in a row.
    cfg.set_max_stun_rto(Duration::from_secs(1));
    cfg.set_max_stun_retransmits(30);
    protect::add_tunnel_codec(cfg.codec_config());
    if publish {
        protect::drop_uplink_extensions(cfg.extension_map());
    }
    cfg
}

/// A terminal publishing one protected video stream.
pub struct FecPublisher {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub video: SyntheticVideo,
    mid: Option<Mid>,
    tx: Option<ProtectedTx>,
    carrier: Option<Pt>,
    /// How the uplink's protection sizes FEC against repair rounds
    /// ([`TxPolicy::ENDPOINT`] unless a sweep measures another point of the trade).
    pub uplink_policy: TxPolicy,
    next_frame: u64,
    tl0_idx: u8,
    force_key: bool,
    /// Frames handed to the protection, and how many were keyframes.
    pub frames_sent: u64,
    pub keyframes_sent: u64,
    /// Keyframe requests received (PLI through the recovery loop or from the SFU).
    pub keyframe_requests: u64,
    /// Scale frames down to the uplink's congestion control, as an encoder told its
    /// target rate would ([`ProtectedTx::media_budget`]): keyframes by the same share
    /// as delta frames, since a rate-controlled encoder raises the quantiser for both.
    pub follow_congestion_control: bool,
    /// Frames sent smaller than the stream's shape because of it.
    pub frames_scaled: u64,
}

impl FecPublisher {
    pub fn new(now: Instant, addr: SocketAddr, video: SyntheticVideo) -> Result<Self, SimError> {
        let mut rtc = rtc_config(true).build(now);
        rtc.add_local_candidate(
            Candidate::host(addr, "udp").map_err(|e| SimError::Protocol(e.to_string()))?,
        );
        Ok(FecPublisher {
            rtc,
            addr,
            video,
            mid: None,
            tx: None,
            carrier: None,
            uplink_policy: TxPolicy::ENDPOINT,
            next_frame: 0,
            tl0_idx: 0,
            force_key: true,
            frames_sent: 0,
            keyframes_sent: 0,
            keyframe_requests: 0,
            follow_congestion_control: false,
            frames_scaled: 0,
        })
    }

    /// The uplink's congestion control: (sending rate, media rate within it) in bit/s.
    pub fn congestion_control(&self) -> Option<(u64, u64)> {
        let tx = self.tx.as_ref()?;
        Some((tx.target_bitrate(), tx.media_budget()))
    }

    /// The publish offer: one send-only video m-line. Returns the SDP, the pending
    /// state for [`FecPublisher::accept_answer`] and the m-line's mid.
    pub fn offer(&mut self) -> Result<(String, SdpPendingOffer, Mid), SimError> {
        let mut api = self.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| SimError::Protocol("nothing to offer".into()))?;
        self.mid = Some(mid);
        Ok((offer.to_sdp_string(), pending, mid))
    }

    pub fn accept_answer(&mut self, pending: SdpPendingOffer, sdp: &str) -> Result<(), SimError> {
        let answer = SdpAnswer::from_sdp_string(sdp)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        let mid = self
            .mid
            .ok_or_else(|| SimError::Protocol("no offer".into()))?;
        let media = self
            .rtc
            .media(mid)
            .ok_or_else(|| SimError::Protocol("m-line gone".into()))?;
        self.carrier = protect::carrier_pt(self.rtc.codec_config().params(), media.remote_pts());
        if self.carrier.is_none() {
            return Err(SimError::Protocol(
                "the answer did not take the protection carrier".into(),
            ));
        }
        Ok(())
    }

    /// Encodes and sends the next frame (call every 1/30 s once connected).
    pub fn send_frame(&mut self, now: Instant) -> Result<(), SimError> {
        let (Some(mid), Some(carrier)) = (self.mid, self.carrier) else {
            return Err(SimError::Protocol("not negotiated".into()));
        };
        if self.tx.is_none() {
            let ssrc = self
                .rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| *s.ssrc())
                .ok_or_else(|| SimError::Protocol("no send stream".into()))?;
            let params = self.rtc.codec_config().params();
            let pt = params
                .iter()
                .find(|p| p.spec().codec == Codec::H264)
                .map(|p| *p.pt())
                .ok_or_else(|| SimError::Protocol("no H.264".into()))?;
            let rtx = protect::rtx_pt_for(params, pt);
            let tx = ProtectedTx::new(ssrc, pt, rtx, self.uplink_policy, (ssrc as u16) & 0x7fff)
                .map_err(|e| SimError::Protocol(e.to_string()))?;
            self.tx = Some(tx);
        }
        let n = self.next_frame;
        self.next_frame += 1;
        let key = self.force_key
            || (self.video.keyframe_every > 0 && n.is_multiple_of(self.video.keyframe_every));
        self.force_key = false;
        let tid = if key { 0 } else { self.video.temporal_layer(n) };
        if tid == 0 {
            self.tl0_idx = self.tl0_idx.wrapping_add(1);
        }
        let mut count = self.video.packets[if key { 0 } else { 1 + usize::from(tid) }];
        if let (true, Some(tx)) = (self.follow_congestion_control, &self.tx) {
            let share = tx.media_budget() as f64 / self.video.delta_bps() as f64;
            if share < 1.0 {
                count = ((count as f64 * share).floor() as usize).max(1);
                self.frames_scaled += 1;
            }
        }
        let ts = (n as u32).wrapping_mul(TICKS_PER_FRAME);
        let Some(tx) = &mut self.tx else {
            return Ok(());
        };
        for i in 0..count {
            let payload = packet_payload(n, i, count, key);
            let marking = FrameMarking {
                start: i == 0,
                end: i + 1 == count,
                ..FrameMarking::picture(tid, self.video.temporal_layers, key, self.tl0_idx)
            };
            let fp = FramePacket {
                timestamp: ts,
                marker: i + 1 == count,
                marking,
                payload: &payload,
            };
            tx.push_packet(now, &fp)
                .map_err(|e| SimError::Protocol(e.to_string()))?;
        }
        tx.flush_into(&mut self.rtc, mid, carrier, now);
        self.frames_sent += 1;
        if key {
            self.keyframes_sent += 1;
        }
        Ok(())
    }

    /// An event `rtc` returned.
    pub fn handle_event(&mut self, now: Instant, ev: &Event) {
        match ev {
            Event::AppSpecificFeedback(f) => {
                if let (Some(tx), Some(mid), Some(pt)) = (&mut self.tx, self.mid, self.carrier) {
                    if tx.media_ssrc == *f.media_ssrc {
                        tx.handle_feedback(now, &f.payload);
                        while let Some(SenderEvent::KeyframeRequested) = tx.poll_event() {
                            self.keyframe_requests += 1;
                            self.force_key = true;
                        }
                        tx.flush_into(&mut self.rtc, mid, pt, now);
                    }
                }
            }
            Event::KeyframeRequest(_) => {
                self.keyframe_requests += 1;
                self.force_key = true;
            }
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tx.as_ref()?.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let (Some(tx), Some(mid), Some(pt)) = (&mut self.tx, self.mid, self.carrier) {
            if tx.poll_timeout().is_some_and(|t| t <= now) {
                tx.handle_timeout(now);
                tx.flush_into(&mut self.rtc, mid, pt, now);
            }
        }
    }

    /// Bytes sent / media bytes of the protection (FEC and RTX over first transmissions).
    pub fn overhead(&self) -> f64 {
        self.tx.as_ref().map_or(1.0, |t| t.stats().overhead())
    }

    /// The protection's counters, once it has started.
    pub fn protection_stats(&self) -> Option<media::recovery::SenderStats> {
        self.tx.as_ref().map(ProtectedTx::stats)
    }

    /// The uplink's congestion verdict, once sending.
    pub fn usage(&self) -> Option<media::cc::Usage> {
        self.tx.as_ref().map(ProtectedTx::usage)
    }

    /// (loss, mean loss run) the uplink's FEC is adapted to, once sending.
    pub fn channel(&self) -> Option<(f64, f64)> {
        self.tx.as_ref().map(ProtectedTx::channel)
    }

    /// Repair and retransmissions the uplink shed for want of rate.
    pub fn shed(&self) -> Option<sfu::protect::Shed> {
        self.tx.as_ref().map(ProtectedTx::shed)
    }
}

/// What a subscriber saw of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFate {
    /// Handed over complete and byte-identical to the source.
    Intact { at: Instant },
    /// Handed over but different from the source (must never happen).
    Corrupt,
    /// Reported skipped.
    Skipped(SkipReason),
}

/// A terminal subscribing to protected video.
pub struct FecSubscriber {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    rx: Option<ProtectedRx>,
    /// Fate of each frame the receiver resolved, by frame number.
    pub frames: Vec<(u64, FrameFate)>,
    /// Skips whose frame number is unknown (the frame never showed a packet).
    pub skipped_unknown: u64,
    pub gaps: u64,
    pub keyframe_requests: u64,
    /// Video packets that arrived outside the carrier (there must be none).
    pub unprotected_packets: u64,
    /// Frame number by RTP timestamp, learnt from arriving packets.
    seen: std::collections::HashMap<u32, u64>,
}

impl FecSubscriber {
    pub fn new(now: Instant, addr: SocketAddr) -> Result<Self, SimError> {
        let mut rtc = rtc_config(false).build(now);
        rtc.add_local_candidate(
            Candidate::host(addr, "udp").map_err(|e| SimError::Protocol(e.to_string()))?,
        );
        Ok(FecSubscriber {
            rtc,
            addr,
            rx: None,
            frames: vec![],
            skipped_unknown: 0,
            gaps: 0,
            keyframe_requests: 0,
            unprotected_packets: 0,
            seen: Default::default(),
        })
    }

    /// Answers the SFU's subscribe offer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, SimError> {
        let offer = SdpOffer::from_sdp_string(sdp)?;
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        Ok(answer.to_sdp_string())
    }

    /// An event `rtc` returned.
    pub fn handle_event(&mut self, now: Instant, ev: &Event) {
        let Event::RtpPacket(p) = ev else { return };
        let params = self.rtc.codec_config().params();
        let is_carrier = params
            .iter()
            .any(|c| c.pt() == p.header.payload_type && protect::is_carrier(c));
        if !is_carrier {
            self.unprotected_packets += 1;
            return;
        }
        let inner = protect::expand_carried(*p.header.ssrc, p.header.timestamp, &p.payload)
            .unwrap_or_default();
        let media = RtpView::parse(&inner)
            .ok()
            .filter(|v| v.ssrc == *p.header.ssrc && v.payload_type != protect::CARRIER_PT);
        if let Some(v) = media {
            if let Some(id) = inner
                .get(v.payload_start..v.payload_end)
                .and_then(payload_identity)
            {
                self.seen.insert(v.timestamp, id.0);
            }
        }
        let ssrc = *p.header.ssrc;
        let params = params.to_vec();
        if self.rx.is_none() {
            // The recovery loop asks for what it needs; str0m's own NACKs would only ask
            // for carrier packets nobody keeps.
            if let Some(s) = self.rtc.direct_api().stream_rx(&p.header.ssrc) {
                s.suppress_nack(true);
            }
        }
        let rx = self.rx.get_or_insert_with(|| ProtectedRx::behind_sfu(ssrc));
        rx.handle_rtp(now, p, &params);
        self.pump(now);
    }

    fn pump(&mut self, now: Instant) {
        let Some(rx) = &mut self.rx else { return };
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::Frame(f) => {
                    let (n, ok) = check_frame(&f.packets);
                    match n {
                        Some(n) => self.frames.push((
                            n,
                            if ok {
                                FrameFate::Intact { at: now }
                            } else {
                                FrameFate::Corrupt
                            },
                        )),
                        None => self.frames.push((u64::MAX, FrameFate::Corrupt)),
                    }
                }
                ReceiverEvent::Skipped(s) => match self.seen.get(&s.rtp_timestamp) {
                    Some(n) => self.frames.push((*n, FrameFate::Skipped(s.reason))),
                    None => self.skipped_unknown += 1,
                },
                ReceiverEvent::Gap { .. } => self.gaps += 1,
                ReceiverEvent::KeyframeRequested => self.keyframe_requests += 1,
            }
        }
        if self.seen.len() > 4_096 {
            // Frames resolve within a second; keep the map small.
            let newest = self.seen.values().copied().max().unwrap_or(0);
            self.seen.retain(|_, n| *n + 300 > newest);
        }
    }

    /// Queues the next feedback message in `rtc`, if any. Each must leave in its own
    /// datagram (str0m keeps only the last application feedback of a compound packet,
    /// and copies of a NACK are meant to be lost independently): poll the `Rtc` until
    /// it has nothing more after each `true`.
    pub fn queue_feedback(&mut self) -> bool {
        let Some(rx) = &mut self.rx else { return false };
        let Some(fb) = rx.poll_feedback() else {
            return false;
        };
        let (own, media) = (rx.receiver_ssrc(), rx.media_ssrc);
        protect::send_feedback(&mut self.rtc, own, media, fb);
        true
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rx.as_ref()?.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(rx) = &mut self.rx {
            rx.handle_timeout(now);
        }
        self.pump(now);
    }

    /// The receiver's counters.
    pub fn stats(&self) -> Option<media::recovery::ReceiverStats> {
        self.rx.as_ref().map(ProtectedRx::stats)
    }
}

/// Whether a delivered frame is exactly the source frame it claims to be.
fn check_frame(packets: &[Vec<u8>]) -> (Option<u64>, bool) {
    let mut frame = None;
    let mut ok = true;
    for (idx, p) in packets.iter().enumerate() {
        let Ok(v) = RtpView::parse(p) else {
            return (frame, false);
        };
        let Some(payload) = p.get(v.payload_start..v.payload_end) else {
            return (frame, false);
        };
        let Some((n, i, count, key)) = payload_identity(payload) else {
            return (frame, false);
        };
        frame.get_or_insert(n);
        ok &= frame == Some(n)
            && i == idx
            && count == packets.len()
            && payload == packet_payload(n, i, count, key);
    }
    (frame, ok && !packets.is_empty())
}

/// Frame interval of the synthetic stream.
pub const FRAME_INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / 30);
