//! Hop-by-hop loss protection (issue 4) for peers that negotiate it: the SFU runs a
//! [`ProtectedRx`] per protected published video stream (it repairs the uplink and hands
//! only complete frames to forwarding) and a [`ProtectedTx`] per protected subscription
//! (it protects the downlink with its own FEC adaptation from that subscriber's
//! feedback), so loss on the uplink and on a downlink does not compound. The simulated
//! terminals use the same two types for their end of each hop.
//!
//! How it travels through str0m 0.25 in RTP mode (see `docs/fec.md`, *Carriage in
//! WebRTC sessions*): str0m drops RTP whose payload type is not in its codec
//! configuration and cannot negotiate an unknown encoding name, and it has no way to send
//! raw RTCP. So
//! - the capability is a payload type declared as `H266/90000` with a fixed, otherwise
//!   unused profile/tier/level ([`add_tunnel_codec`]); no browser offers H.266, so
//!   browsers keep plain NACK/RTX;
//! - on a protected m-line every packet the recovery loop produces (media with frame
//!   marking, `x-huitong-rs-fec` repair, RTX) is the payload of one SRTP packet of that
//!   payload type on the m-line's own SSRC (the *carrier*), less the header fields the
//!   carrier already says ([`compact_inner`]; the receiver rebuilds it byte for byte);
//!   nothing else is sent on that SSRC;
//! - the receiver's feedback (NACK, PLI, `HTLR` loss reports, `docs/recovery.md`) travels
//!   as the payload of an RTCP application-layer feedback message (PSFB FMT 15), one per
//!   SRTCP datagram.
//!
//! Sans-IO like the rest of the engine: `now` comes in, nothing reads a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use media::cc::feedback::{ArrivalRecorder, SendHistory};
use media::cc::{CcConfig, DelayBasedBwe};
use media::fec::RtpView;
use media::recovery::{
    FecSizing, FrameMarking, ProtectedReceiver, ProtectedSender, ReceiverConfig, ReceiverEvent,
    ReceiverStats, SenderConfig, SenderEvent, SenderStats, build_media_packet,
};
use media::recovery::wire::Feedback;
use str0m::Rtc;
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::{Mid, Pt};
use str0m::rtp::{
    Extension, ExtensionMap, ExtensionSerializer, ExtensionValues, RtpPacket, RtpWrite, Ssrc,
};

/// Payload type offered for the carrier (str0m's H.264 defaults take 115; the answer may keep another number; peers look
/// the carrier up by [`is_carrier`]).
pub const CARRIER_PT: u8 = 117;
/// Header-extension id of frame marking inside carried packets.
pub const FRAME_MARKING_ID: u8 = 1;
/// The carrier's H.266 profile/tier/level: Main 10, Main tier, level 1.0, which no real
/// conferencing encoder offers.
const CARRIER_PROFILE: u8 = 1;
const CARRIER_TIER: u8 = 0;
const CARRIER_LEVEL: u8 = 16;
/// Recovery budget of one hop (the recovery loop's default).
pub const HOP_PLAYOUT_DELAY: Duration = Duration::from_millis(225);
/// How long past its deadline the SFU's uplink keeps repairing a frame before it gives
/// up on it ([`media::recovery::ReceiverConfig::late_grace`]). The subscriber's budget is
/// `2 × HOP_PLAYOUT_DELAY`, and the SFU's downlinks are sized to need few repair rounds
/// (`TxPolicy::SFU_DOWNLINK`), so a frame the uplink completes a little late still
/// reaches the subscriber in time; a base-layer frame the uplink gives up on costs every
/// subscriber a keyframe. `docs/recovery.md`, *Late grace at the SFU's uplink and the
/// subscriber*. 300 ms since session 14 (175 before): with the downlink sized for few
/// rounds at price 16, a frame completed even 300 ms late still reaches the subscriber
/// within its own grace. `bench loss` gave up a frame at the uplink in 3 of 14 bursty
/// runs at 175 ms, 1 of 9 at 300 ms.
pub const SFU_UPLINK_LATE_GRACE: Duration = Duration::from_millis(300);
/// The same for a terminal behind an SFU (budget `2 × HOP_PLAYOUT_DELAY`): a frame the
/// uplink completed in its late grace reaches the terminal with little of its budget
/// left, and giving up on a base-layer frame costs a keyframe across both hops, about
/// half a second of pictures, where waiting costs a short freeze.
pub const SUBSCRIBER_LATE_GRACE: Duration = Duration::from_millis(100);
/// Largest feedback payload put in one RTCP message (stays well under the MTU).
const MAX_FEEDBACK: usize = 1_000;

/// Frame marking (RFC 9626) as a negotiated header extension of ordinary RTP, for
/// Huitong peers that publish temporal layers without the carrier, such as the MCU's
/// mix: it tells the SFU each picture's temporal layer so it can thin the stream for a
/// weak receiver. Browsers do not offer it. Written through str0m's frame-level writer,
/// every packet of a picture carries the same value, so only the picture-level fields
/// (`independent`, `discardable`, `base_sync`, `tid`, `tl0_pic_idx`) are meaningful on
/// this path; the SFU finds frame starts in the H.264 payload itself.
pub const FRAME_MARKING_URI: &str = "urn:ietf:params:rtp-hdrext:framemarking";
/// The id both sides put in their extension map for [`FRAME_MARKING_URI`] (free in
/// str0m's default map).
pub const FRAME_MARKING_EXT_ID: u8 = 7;

/// str0m's reader and writer of [`FrameMarking`] in `ExtensionValues::user_values`.
#[derive(Debug)]
struct FrameMarkingSerializer;

impl ExtensionSerializer for FrameMarkingSerializer {
    fn write_to(&self, buf: &mut [u8], ev: &ExtensionValues) -> usize {
        match (ev.user_values.get::<FrameMarking>(), buf.get_mut(..3)) {
            (Some(m), Some(out)) => {
                out.copy_from_slice(&m.bytes());
                3
            }
            _ => 0,
        }
    }

    fn parse_value(&self, buf: &[u8], ev: &mut ExtensionValues) -> bool {
        match FrameMarking::from_bytes(buf) {
            Some(m) => {
                ev.user_values.set(m);
                true
            }
            None => false,
        }
    }

    fn is_video(&self) -> bool {
        true
    }

    fn is_audio(&self) -> bool {
        false
    }
}

/// The frame-marking extension, to register under [`FRAME_MARKING_EXT_ID`].
pub fn frame_marking_extension() -> Extension {
    Extension::with_serializer(FRAME_MARKING_URI, FrameMarkingSerializer)
}

/// Declares the carrier payload type in a codec configuration.
pub fn add_tunnel_codec(c: &mut CodecConfig) {
    c.add_h266(
        Pt::new_with_value(CARRIER_PT),
        None,
        CARRIER_PROFILE,
        CARRIER_TIER,
        CARRIER_LEVEL,
    );
}

/// Removes the header extensions a protected publisher's uplink does not need, 12
/// bytes of every datagram's RTP header (28 → 16; str0m writes the 4-byte extension
/// block even when it is empty), about 0.025× of the sender's overhead figure at 50 %
/// loss (`docs/fec.md`, *Carriage*):
/// - abs-send-time and transport-wide sequence numbers feed a receiver-side (REMB) or
///   send-side (TWCC) estimate of the uplink, and neither runs on a protected uplink:
///   `media::cc` estimates it from the carrier's own arrival reports (`HTAT`), and the
///   SFU does not enable str0m's estimate on a publisher's session;
/// - the MID binds an unannounced SSRC to its m-line, and a publisher announces its
///   SSRCs in the SDP (`a=ssrc`). str0m 0.25 is meant to stop writing it once a receiver
///   report acknowledges the SSRC, but for a stream with an RTX SSRC (every video
///   m-line) it only ever marks the RTX SSRC acknowledged, so it wrote the MID on every
///   datagram.
///
/// Subscribing sessions keep all three: the SFU's str0m estimate and pacer run on every
/// subscriber, protected or not, and the SFU offers those m-lines.
pub fn drop_uplink_extensions(exts: &mut ExtensionMap) {
    let unread = [Extension::AbsoluteSendTime, Extension::TransportSequenceNumber, Extension::RtpMid];
    let mut kept = ExtensionMap::empty();
    for (id, e) in exts.iter() {
        if !unread.contains(e) {
            kept.set(id, e.clone());
        }
    }
    *exts = kept;
}

/// Whether negotiated payload parameters are the carrier.
pub fn is_carrier(p: &PayloadParams) -> bool {
    p.spec().codec == Codec::H266
}

/// The carrier payload type among negotiated parameters, if any.
pub fn carrier_pt(params: &[PayloadParams], remote: &[Pt]) -> Option<Pt> {
    params
        .iter()
        .find(|p| is_carrier(p) && remote.contains(&p.pt()))
        .map(|p| p.pt())
}

/// SSRC of the RTX packets inside a carrier whose own SSRC is `media`.
pub fn inner_rtx_ssrc(media: u32) -> u32 {
    media.wrapping_add(1)
}

/// SSRC of the repair packets inside a carrier whose own SSRC is `media`.
pub fn inner_fec_ssrc(media: u32) -> u32 {
    media.wrapping_add(2)
}

/// The RTX payload type negotiated for a media payload type (`apt`), or one derived
/// from it when the codec has none (only the two ends of the carrier read it).
pub fn rtx_pt_for(params: &[PayloadParams], media_pt: u8) -> u8 {
    params
        .iter()
        .find(|p| *p.pt() == media_pt)
        .and_then(|p| p.resend())
        .map_or(media_pt ^ 0x40, |r| *r)
}

/// One packet for the carrier: its sequence number, the RTP timestamp of the carrier
/// packet (the inner packet's, which the compact form leaves out) and the carrier
/// payload ([`compact_inner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub seq: u64,
    pub timestamp: u32,
    pub payload: Vec<u8>,
}

/// Puts one carried packet on the wire of `mid`'s send stream.
pub fn write_carrier(rtc: &mut Rtc, mid: Mid, pt: Pt, now: Instant, c: Carried) -> bool {
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    tx.write_rtp(RtpWrite::new(pt, c.seq.into(), c.timestamp, now, c.payload).nackable(false));
    true
}

/// First byte of a carrier payload: which inner stream (2 bits), the inner marker bit,
/// whether the frame-marking value follows, 4 reserved zero bits.
const COMPACT_STREAM_SHIFT: u8 = 6;
/// Stream code of a payload that is the inner packet whole, after the first byte.
const COMPACT_WHOLE: u8 = 3;
const COMPACT_MARKER: u8 = 0x20;
const COMPACT_FRAME_MARKING: u8 = 0x10;
/// The header-extension block every carried media and RTX packet has: one word with
/// the frame-marking element (id [`FRAME_MARKING_ID`], 3 bytes).
const FRAME_MARKING_BLOCK: [u8; 5] = [0xBE, 0xDE, 0x00, 0x01, (FRAME_MARKING_ID << 4) | 2];

/// The carrier payload for an inner packet, and the timestamp the carrier packet takes
/// (`docs/fec.md`, *Compact carriage*).
///
/// The inner RTP header repeats what the carrier's header or the SSRC plan already
/// says: the timestamp is the carrier's, the SSRC is the media, RTX or repair SSRC of
/// the carrier's, and the extension block is always the same frame-marking word. Left
/// whole they cost 13 bytes of every media packet and 8 of every repair packet, twice
/// over at 50 % loss (about 0.02× of the sender's overhead). A packet of any other
/// shape (padding, CSRCs, another extension, a foreign SSRC) is carried whole.
pub fn compact_inner(media_ssrc: u32, inner: &[u8]) -> (u32, Vec<u8>) {
    let view = RtpView::parse(inner).ok();
    let timestamp = view.as_ref().map_or(0, |v| v.timestamp);
    let compact = view.and_then(|v| {
        let stream = u8::try_from(v.ssrc.wrapping_sub(media_ssrc)).ok().filter(|s| *s < COMPACT_WHOLE)?;
        let marking = match inner[0] {
            0x80 => None,
            0x90 if inner.get(12..17) == Some(&FRAME_MARKING_BLOCK[..]) => Some(inner.get(17..20)?),
            _ => return None,
        };
        let body = if marking.is_some() { 20 } else { 12 };
        let mut out = Vec::with_capacity(inner.len().saturating_sub(body) + 7);
        out.push(
            (stream << COMPACT_STREAM_SHIFT)
                | if inner[1] & 0x80 != 0 { COMPACT_MARKER } else { 0 }
                | if marking.is_some() { COMPACT_FRAME_MARKING } else { 0 },
        );
        out.push(inner[1] & 0x7f);
        out.extend_from_slice(&inner[2..4]);
        out.extend_from_slice(marking.unwrap_or_default());
        out.extend_from_slice(inner.get(body..)?);
        Some(out)
    });
    let payload = compact.unwrap_or_else(|| {
        let mut out = Vec::with_capacity(inner.len() + 1);
        out.push(COMPACT_WHOLE << COMPACT_STREAM_SHIFT);
        out.extend_from_slice(inner);
        out
    });
    (timestamp, payload)
}

/// Rewrites the inner sequence number of a carrier payload.
fn set_carried_seq(payload: &mut [u8], seq: u16) {
    let at = if payload.first().is_some_and(|f| f >> COMPACT_STREAM_SHIFT == COMPACT_WHOLE) {
        3
    } else {
        2
    };
    if let Some(s) = payload.get_mut(at..at + 2) {
        s.copy_from_slice(&seq.to_be_bytes());
    }
}

/// The inner packet of a carrier payload, byte for byte what [`compact_inner`] was
/// given; `None` for a payload that is not one.
pub fn expand_carried(media_ssrc: u32, timestamp: u32, payload: &[u8]) -> Option<Vec<u8>> {
    let (&flags, rest) = payload.split_first()?;
    let stream = flags >> COMPACT_STREAM_SHIFT;
    if stream == COMPACT_WHOLE {
        return Some(rest.to_vec());
    }
    if flags & 0x0f != 0 || rest.first()? & 0x80 != 0 {
        return None;
    }
    let seq = rest.get(1..3)?;
    let (marking, body) = if flags & COMPACT_FRAME_MARKING != 0 {
        (Some(rest.get(3..6)?), rest.get(6..)?)
    } else {
        (None, rest.get(3..)?)
    };
    let mut p = Vec::with_capacity(body.len() + 20);
    p.push(if marking.is_some() { 0x90 } else { 0x80 });
    p.push(if flags & COMPACT_MARKER != 0 { 0x80 } else { 0 } | rest[0]);
    p.extend_from_slice(seq);
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&media_ssrc.wrapping_add(u32::from(stream)).to_be_bytes());
    if let Some(m) = marking {
        p.extend_from_slice(&FRAME_MARKING_BLOCK);
        p.extend_from_slice(m);
    }
    p.extend_from_slice(body);
    Some(p)
}

/// Sends one feedback payload to the sender of `media_ssrc`.
pub fn send_feedback(rtc: &mut Rtc, sender_ssrc: u32, media_ssrc: u32, payload: Vec<u8>) {
    rtc.direct_api().send_app_specific_feedback(
        Ssrc::from(sender_ssrc),
        Ssrc::from(media_ssrc),
        payload,
    );
}

/// Extends 16-bit sequence numbers to 64 bits for forwarding.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqExtender {
    last: Option<u64>,
}

impl SeqExtender {
    pub fn extend(&mut self, seq: u16) -> u64 {
        let v = match self.last {
            None => (1 << 20) | u64::from(seq),
            Some(l) => {
                let cand = (l & !0xffff) | u64::from(seq);
                if cand + 0x8000 <= l {
                    cand + 0x1_0000
                } else if cand > l + 0x8000 && cand >= 0x1_0000 {
                    cand - 0x1_0000
                } else {
                    cand
                }
            }
        };
        if self.last.is_none_or(|l| v > l) {
            self.last = Some(v);
        }
        v
    }
}

/// The receiving end of one protected stream: carried packets in, complete frames,
/// skip reports and feedback out.
pub struct ProtectedRx {
    /// SSRC of the carrier (= the media SSRC inside).
    pub media_ssrc: u32,
    receiver_ssrc: u32,
    playout_delay: Duration,
    late_grace: Duration,
    rx: Option<ProtectedReceiver>,
    /// Carried packets before the first media packet told the media payload type.
    early: Vec<(Instant, Vec<u8>)>,
    /// Arrival times by carrier sequence number, reported for the sender's congestion
    /// control.
    arrivals: ArrivalRecorder,
    reports: VecDeque<Vec<u8>>,
}

impl ProtectedRx {
    /// The hop's recovery gives up on a frame `playout_delay` after the earliest it could
    /// have arrived (see `docs/recovery.md`): [`HOP_PLAYOUT_DELAY`] for one hop, the sum
    /// over the hops for a terminal behind an SFU, whose frames may have waited for the
    /// uplink's repair before the downlink carried them.
    pub fn new(media_ssrc: u32, receiver_ssrc: u32, playout_delay: Duration) -> Self {
        ProtectedRx {
            media_ssrc,
            receiver_ssrc,
            playout_delay,
            late_grace: Duration::ZERO,
            rx: None,
            early: vec![],
            arrivals: ArrivalRecorder::new(media_ssrc),
            reports: VecDeque::new(),
        }
    }

    /// A terminal's end of a stream an SFU forwards: the budget of both hops, and
    /// [`SUBSCRIBER_LATE_GRACE`]. The terminal's own SSRC for feedback is derived from
    /// the media SSRC.
    pub fn behind_sfu(media_ssrc: u32) -> Self {
        ProtectedRx::new(media_ssrc, media_ssrc ^ 0x5355_4253, HOP_PLAYOUT_DELAY * 2)
            .with_late_grace(SUBSCRIBER_LATE_GRACE)
    }

    /// Keeps repairing a frame `grace` past its planned deadline before giving up on it
    /// ([`media::recovery::ReceiverConfig::late_grace`]).
    pub fn with_late_grace(mut self, grace: Duration) -> Self {
        self.late_grace = grace;
        self
    }

    /// One carrier packet as str0m hands it over.
    pub fn handle_rtp(&mut self, now: Instant, p: &RtpPacket, params: &[PayloadParams]) {
        self.handle_carried(now, p.header.sequence_number, p.header.timestamp, &p.payload, params);
    }

    /// One carrier packet: its (outer) sequence number, timestamp and payload.
    /// `params` are the receiving side's negotiated codecs.
    pub fn handle_carried(
        &mut self,
        now: Instant,
        carrier_seq: u16,
        carrier_ts: u32,
        payload: &[u8],
        params: &[PayloadParams],
    ) {
        self.arrivals.on_packet(now, carrier_seq);
        let Some(inner) = expand_carried(self.media_ssrc, carrier_ts, payload) else {
            return;
        };
        let inner = &inner[..];
        if self.rx.is_none() {
            let Ok(v) = RtpView::parse(inner) else { return };
            if v.ssrc != self.media_ssrc || v.payload_type == CARRIER_PT {
                // Repair or RTX before any media: keep a few until the stream is known.
                if self.early.len() < 256 {
                    self.early.push((now, inner.to_vec()));
                }
                return;
            }
            let mut cfg = ReceiverConfig::new(
                self.media_ssrc,
                self.receiver_ssrc,
                inner_rtx_ssrc(self.media_ssrc),
            );
            cfg.media_payload_type = v.payload_type;
            cfg.rtx_payload_type = rtx_pt_for(params, v.payload_type);
            cfg.fec_payload_type = CARRIER_PT;
            cfg.fec_ssrc = Some(inner_fec_ssrc(self.media_ssrc));
            cfg.frame_marking_id = FRAME_MARKING_ID;
            cfg.playout_delay = self.playout_delay;
            cfg.late_grace = self.late_grace;
            let mut rx = ProtectedReceiver::new(cfg);
            for (at, p) in self.early.drain(..) {
                rx.handle_packet(at, &p);
            }
            self.rx = Some(rx);
        }
        if let Some(rx) = &mut self.rx {
            rx.handle_packet(now, inner);
        }
    }

    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.rx.as_mut()?.poll_event()
    }

    /// Next feedback message. Each goes in its own datagram: the receiver sends NACKs
    /// and PLIs in several copies so that losing one datagram does not lose them all.
    pub fn poll_feedback(&mut self) -> Option<Vec<u8>> {
        // Repair requests first: they race a deadline, the arrival reports do not.
        if let Some(p) = self.rx.as_mut().and_then(ProtectedReceiver::poll_feedback) {
            return Some(p.into_iter().take(MAX_FEEDBACK).collect());
        }
        self.reports.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let rx = self.rx.as_ref().and_then(ProtectedReceiver::poll_timeout);
        match (rx, self.arrivals.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(rx) = &mut self.rx {
            rx.handle_timeout(now);
        }
        if let Some(r) = self.arrivals.poll_report(now) {
            self.reports.push_back(r.to_bytes(self.receiver_ssrc));
        }
    }

    /// Asks the publisher for a keyframe through the protected feedback; false if the
    /// stream has not started (then only a plain PLI can ask).
    pub fn request_keyframe(&mut self, now: Instant) -> bool {
        match &mut self.rx {
            Some(rx) => {
                rx.request_keyframe(now);
                true
            }
            None => false,
        }
    }

    pub fn stats(&self) -> ReceiverStats {
        self.rx
            .as_ref()
            .map(ProtectedReceiver::stats)
            .unwrap_or_default()
    }

    pub fn receiver_ssrc(&self) -> u32 {
        self.receiver_ssrc
    }
}

/// One packet of a frame to protect.
#[derive(Debug, Clone)]
pub struct FramePacket<'a> {
    pub timestamp: u32,
    pub marker: bool,
    pub marking: FrameMarking,
    pub payload: &'a [u8],
}

/// The sending end of one protected stream: frames in, carried packets out.
pub struct ProtectedTx {
    pub media_ssrc: u32,
    tx: ProtectedSender,
    media_pt: u8,
    next_seq: u16,
    carrier_seq: u64,
    frame: Vec<Vec<u8>>,
    frame_layer: u8,
    frame_key: bool,
    /// Delay-based congestion control of this hop, fed by the receiver's arrival reports.
    history: SendHistory,
    bwe: DelayBasedBwe,
    /// Wire bytes the protection produces per media byte, smoothed: turns the sending
    /// rate into a media rate.
    overhead: f64,
    counted: (u64, u64),
    /// What the protection produced: media bytes, and wire bytes of everything (shed
    /// or not).
    wire: (u64, u64),
    /// Token bucket holding repair and retransmissions to the estimate (bytes; below 0
    /// after media beyond it).
    tokens: f64,
    refilled: Option<Instant>,
    shed: Shed,
    /// Next sequence number of the repair stream.
    fec_seq: u16,
}

/// Repair and retransmissions [`ProtectedTx`] did not send because the hop's congestion
/// control had no room for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shed {
    pub fec_packets: u64,
    pub fec_bytes: u64,
    pub rtx_packets: u64,
    pub rtx_bytes: u64,
}

/// Bytes a carrier payload costs on the wire besides itself: IPv4 and UDP (28), the
/// carrier's RTP header with str0m's header extensions (28 on a subscriber's session; 16
/// on a publisher's, [`drop_uplink_extensions`]) and the SRTP tag (16). The
/// larger is kept for both: the rate budget it feeds errs towards the link.
pub const CARRIER_WIRE_OVERHEAD: usize = 72;

/// The hop's congestion control starts here and never exceeds it, so that 50 % random
/// loss never holds a stream back. Under a real bottleneck this start fills the queue
/// before the first report; it is one of three reasons nothing is held to the estimate
/// yet (`docs/recovery.md`, *In the protected loop*).
pub const HOP_MAX_BPS: u64 = 60_000_000;
/// The hop's congestion control never goes below this.
pub const HOP_MIN_BPS: u64 = 150_000;
/// Depth of the bucket that holds repair and retransmissions to the hop's estimate, in
/// time at that rate: a keyframe's repair at 50 % loss goes out whole at any rate
/// where the stream fits at all, and the bottleneck's queue absorbs the burst.
const RATE_BUCKET: Duration = Duration::from_millis(250);

/// How a [`ProtectedTx`] trades repair bytes for latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TxPolicy {
    pub sizing: FecSizing,
    /// [`media::recovery::SenderConfig::round_penalty_scale`].
    pub round_penalty_scale: f64,
}

impl TxPolicy {
    /// A terminal sending its own media: the byte-minimising hybrid rule.
    pub const ENDPOINT: TxPolicy = TxPolicy {
        sizing: FecSizing::Hybrid,
        round_penalty_scale: 1.0,
    };
    /// The SFU's downlink: a frame forwarded here has already spent part of its
    /// latency budget in its uplink's repair rounds, so this hop buys fewer rounds
    /// with more repair (`docs/recovery.md`, *Two hops*).
    pub const SFU_DOWNLINK: TxPolicy = TxPolicy {
        sizing: FecSizing::Hybrid,
        round_penalty_scale: DOWNLINK_ROUND_PENALTY_SCALE,
    };
}

/// See [`TxPolicy::SFU_DOWNLINK`].
pub const DOWNLINK_ROUND_PENALTY_SCALE: f64 = 16.0;

impl ProtectedTx {
    /// `seed` picks the first sequence numbers (random in production, fixed in tests).
    pub fn new(
        media_ssrc: u32,
        media_pt: u8,
        rtx_pt: u8,
        policy: TxPolicy,
        seed: u16,
    ) -> Result<Self, media::Error> {
        let mut cfg = SenderConfig::new(
            media_ssrc,
            inner_fec_ssrc(media_ssrc),
            inner_rtx_ssrc(media_ssrc),
        );
        cfg.fec_payload_type = CARRIER_PT;
        cfg.rtx_payload_type = rtx_pt;
        cfg.sizing = policy.sizing;
        cfg.round_penalty_scale = policy.round_penalty_scale;
        let tx = ProtectedSender::new(cfg, seed.wrapping_mul(7), seed.wrapping_mul(13))?;
        Ok(ProtectedTx {
            media_ssrc,
            tx,
            media_pt,
            next_seq: seed,
            carrier_seq: u64::from(seed / 2),
            frame: vec![],
            frame_layer: 0,
            frame_key: false,
            history: SendHistory::new(),
            bwe: DelayBasedBwe::new(CcConfig::new(HOP_MAX_BPS, HOP_MIN_BPS, HOP_MAX_BPS)),
            // The sender's FEC starts sized for 50 % loss (`SenderConfig::initial_loss`).
            overhead: 2.0,
            counted: (0, 0),
            wire: (0, 0),
            tokens: bucket_depth(HOP_MAX_BPS),
            refilled: None,
            shed: Shed::default(),
            fec_seq: seed.wrapping_mul(13),
        })
    }

    /// Adds one packet of the current frame; the frame is sent at its last packet
    /// (frame-marking end bit or RTP marker).
    pub fn push_packet(&mut self, now: Instant, p: &FramePacket<'_>) -> Result<(), media::Error> {
        if p.marking.start && !self.frame.is_empty() {
            // The previous frame's end never came: send what it has.
            self.flush_frame(now)?;
        }
        if self.frame.is_empty() {
            self.frame_layer = p.marking.tid;
            self.frame_key = p.marking.independent;
        }
        let pkt = build_media_packet(
            self.media_ssrc,
            self.media_pt,
            self.next_seq,
            p.timestamp,
            p.marker,
            FRAME_MARKING_ID,
            p.marking,
            p.payload,
        );
        self.next_seq = self.next_seq.wrapping_add(1);
        self.frame.push(pkt);
        if p.marking.end || p.marker {
            self.flush_frame(now)?;
        }
        Ok(())
    }

    fn flush_frame(&mut self, now: Instant) -> Result<(), media::Error> {
        let frame = std::mem::take(&mut self.frame);
        self.tx
            .push_frame(now, &frame, self.frame_layer, self.frame_key)
    }

    /// Media payload type used inside the carrier.
    pub fn media_pt(&self) -> u8 {
        self.media_pt
    }

    /// Next packet for the carrier, sent at `now`: (carrier sequence number, packet).
    ///
    /// Media always leaves. Repair and retransmissions leave only while the hop's
    /// congestion control has room for them: under congestion the queue's overflow reads
    /// as loss, the protection would size more repair for it and the NACKs ask for more
    /// retransmissions, and sending them would keep the queue full (session 17 measured
    /// 130 bytes sent per media byte into a 1.5 Mbit/s bottleneck). What is shed is as if
    /// lost; the receiver asks again or skips the frame.
    ///
    /// The repair stream's sequence numbers are given here, to what is sent: the
    /// receiver measures the hop's loss over them, and a gap left by shedding would read
    /// as loss and size yet more repair.
    pub fn poll_carried(&mut self, now: Instant) -> Option<Carried> {
        self.refill(now);
        loop {
            let p = self.tx.poll_transmit()?;
            let (timestamp, mut payload) = compact_inner(self.media_ssrc, &p);
            let cost = payload.len() + CARRIER_WIRE_OVERHEAD;
            let ssrc = RtpView::parse(&p).map_or(self.media_ssrc, |v| v.ssrc);
            let media = ssrc == self.media_ssrc;
            if media {
                self.wire.0 += p.len() as u64;
            }
            // Counted before shedding: the media budget leaves room for the repair the
            // protection wants, or the encoder would fill the room shedding made and
            // crowd out the repair a keyframe at 50 % loss cannot do without.
            self.wire.1 += cost as u64;
            if !media && self.tokens < cost as f64 {
                if ssrc == inner_fec_ssrc(self.media_ssrc) {
                    self.shed.fec_packets += 1;
                    self.shed.fec_bytes += p.len() as u64;
                } else {
                    self.shed.rtx_packets += 1;
                    self.shed.rtx_bytes += p.len() as u64;
                }
                continue;
            }
            if ssrc == inner_fec_ssrc(self.media_ssrc) {
                set_carried_seq(&mut payload, self.fec_seq);
                self.fec_seq = self.fec_seq.wrapping_add(1);
            }
            let depth = bucket_depth(self.bwe.target_bitrate());
            self.tokens = (self.tokens - cost as f64).max(-depth);
            self.carrier_seq += 1;
            self.history.on_sent(now, self.carrier_seq, cost);
            return Some(Carried {
                seq: self.carrier_seq,
                timestamp,
                payload,
            });
        }
    }

    fn refill(&mut self, now: Instant) {
        let target = self.bwe.target_bitrate();
        let dt = self
            .refilled
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.refilled = Some(self.refilled.map_or(now, |t| t.max(now)));
        self.tokens = (self.tokens + target as f64 / 8.0 * dt.as_secs_f64())
            .min(bucket_depth(target));
    }

    /// Repair and retransmissions shed for want of rate.
    pub fn shed(&self) -> Shed {
        self.shed
    }

    pub fn handle_feedback(&mut self, now: Instant, payload: &[u8]) {
        for f in Feedback::parse_compound(payload) {
            if let Feedback::Arrivals {
                media_ssrc,
                base_seq,
                reference,
                offsets,
            } = f
                && media_ssrc == self.media_ssrc
            {
                let settled = self.history.on_report(now, base_seq, reference, &offsets);
                self.bwe.on_feedback(now, &settled);
                self.update_overhead();
            }
        }
        self.tx.handle_feedback(now, payload);
    }

    fn update_overhead(&mut self) {
        let (media, sent) = self.wire;
        let (dm, ds) = (media - self.counted.0, sent - self.counted.1);
        // Over at least 50 kB of media, so one keyframe block does not swing it.
        if dm >= 50_000 {
            self.overhead = 0.7 * self.overhead + 0.3 * (ds as f64 / dm as f64).max(1.0);
            self.counted = (media, sent);
        }
    }

    /// The rate this hop's congestion control allows, all packets included (bit/s).
    pub fn target_bitrate(&self) -> u64 {
        self.bwe.target_bitrate()
    }

    /// The media rate that fits [`target_bitrate`](Self::target_bitrate) with the
    /// protection's current repair and retransmissions and the carrier's headers on top
    /// (bit/s).
    pub fn media_budget(&self) -> u64 {
        (self.bwe.target_bitrate() as f64 / self.overhead) as u64
    }

    /// The congestion detector's verdict.
    pub fn usage(&self) -> media::cc::Usage {
        self.bwe.usage()
    }

    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.tx.poll_event()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tx.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.tx.handle_timeout(now);
    }

    /// (loss, mean loss run) the receiver reports and the FEC is adapted to.
    pub fn channel(&self) -> (f64, f64) {
        self.tx.channel()
    }

    /// Counters of what went on the wire (repair and retransmissions the sender
    /// produced but [`shed`](Self::shed) are not in them).
    pub fn stats(&self) -> SenderStats {
        let mut s = self.tx.stats();
        s.fec_packets = s.fec_packets.saturating_sub(self.shed.fec_packets);
        s.fec_bytes = s.fec_bytes.saturating_sub(self.shed.fec_bytes);
        s.rtx_packets = s.rtx_packets.saturating_sub(self.shed.rtx_packets);
        s.rtx_bytes = s.rtx_bytes.saturating_sub(self.shed.rtx_bytes);
        s
    }

    /// Writes everything pending into `rtc` on `mid` with the carrier payload type `pt`.
    pub fn flush_into(&mut self, rtc: &mut Rtc, mid: Mid, pt: Pt, now: Instant) {
        while let Some(c) = self.poll_carried(now) {
            write_carrier(rtc, mid, pt, now, c);
        }
    }
}

fn bucket_depth(bps: u64) -> f64 {
    bps as f64 / 8.0 * RATE_BUCKET.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0xfffe_fffe;

    fn media_packet(seq: u16, marker: bool) -> Vec<u8> {
        let marking = FrameMarking {
            start: true,
            end: marker,
            independent: false,
            discardable: false,
            base_sync: false,
            tid: 1,
            lid: 0,
            tl0_pic_idx: 9,
        };
        build_media_packet(SSRC, 102, seq, 0x8000_0001, marker, FRAME_MARKING_ID, marking, &[7; 100])
    }

    #[test]
    fn carried_packets_come_back_byte_for_byte() {
        let media = media_packet(65_535, true);
        let rtx = media::recovery::wire::rtx_wrap(&media, inner_rtx_ssrc(SSRC), 103, 4).unwrap();
        // A repair packet's shape: no extension, on the repair SSRC (which wraps here).
        let mut repair = vec![0x80, CARRIER_PT, 0, 5, 0x80, 0, 0, 1];
        repair.extend_from_slice(&inner_fec_ssrc(SSRC).to_be_bytes());
        repair.extend_from_slice(&[1; 60]);
        // Shapes carried whole: a foreign SSRC, padding, another extension.
        let mut foreign = media.clone();
        foreign[8..12].copy_from_slice(&7u32.to_be_bytes());
        let mut padded = repair.clone();
        padded[0] |= 0x20;
        let mut other_ext = media.clone();
        other_ext[16] = (2 << 4) | 2;
        for (p, saved) in [
            (&media, 13),
            (&rtx, 13),
            (&repair, 8),
            (&foreign, -1),
            (&padded, -1),
            (&other_ext, -1),
        ] {
            let (ts, c) = compact_inner(SSRC, p);
            assert_eq!(ts, 0x8000_0001);
            assert_eq!(p.len() as i64 - c.len() as i64, saved, "{p:02x?}");
            assert_eq!(expand_carried(SSRC, ts, &c).as_ref(), Some(p));
        }
    }

    #[test]
    fn repair_renumbered_in_either_form() {
        let mut repair = vec![0x80, CARRIER_PT, 0, 5, 0, 0, 0, 1];
        repair.extend_from_slice(&inner_fec_ssrc(SSRC).to_be_bytes());
        repair.push(1);
        for ssrc in [SSRC, 3] {
            let (ts, mut c) = compact_inner(ssrc, &repair);
            set_carried_seq(&mut c, 0xabcd);
            let back = expand_carried(ssrc, ts, &c).unwrap();
            assert_eq!(RtpView::parse(&back).unwrap().seq, 0xabcd);
        }
    }

    #[test]
    fn malformed_carrier_payloads_are_refused() {
        assert_eq!(expand_carried(SSRC, 0, &[]), None);
        // Reserved bits, a payload type above 127, a short header.
        assert_eq!(expand_carried(SSRC, 0, &[0x01, 96, 0, 1]), None);
        assert_eq!(expand_carried(SSRC, 0, &[0x00, 0x80, 0, 1]), None);
        assert_eq!(expand_carried(SSRC, 0, &[0x10, 96, 0, 1, 2]), None);
        assert_eq!(expand_carried(SSRC, 0, &[0x00, 96, 0]), None);
    }

    #[test]
    fn seq_extension_wraps() {
        let mut e = SeqExtender::default();
        let a = e.extend(65_534);
        assert_eq!(e.extend(1), a + 3);
        assert_eq!(e.extend(65_535), a + 1);
    }
}
