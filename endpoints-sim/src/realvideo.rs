//! Real-video terminals for the loss benchmark (`bench loss`, issue 4): a sender that
//! encodes a moving synthetic picture with its frame number stamped into it (OpenH264 via
//! `media::codec::openh264`), packetises it as H.264 RTP (RFC 6184 single NAL units and
//! FU-A) and sends it with a 50 packet/s audio stand-in, and a receiver that reassembles,
//! decodes, reads the stamp back and compares every displayed picture with the
//! regenerated source (luma PSNR).
//!
//! Two ways to carry the media, chosen per run:
//! - [`Method::Huitong`]: video through Huitong's hop-by-hop protection (Reed-Solomon FEC
//!   and NACK/RTX in the carrier of `sfu::protect`), audio in RFC 2198 RED with as many
//!   earlier frames as the measured loss needs (`media::red::distances_for`), which the
//!   SFU rebuilds hop by hop;
//! - [`Method::NackOnly`]: what other SFUs and browsers do: str0m's own H.264 packetiser,
//!   NACK/RTX, PLI, and for audio one earlier frame per packet (Opus in-band FEC).
//!
//! Each frame's temporal layer goes into the frame marking ([`TEMPORAL_LAYERS`] of them),
//! so the protection can weigh layers and a receiver that loses a top-layer frame loses
//! only that frame. The terminals send two layers (T0 T1 T0 T1 …): with one, every frame
//! a hop could not complete broke the reference chain until a keyframe had crossed both
//! hops (random50 26 fps, bursty50 17); with two, half the frames can be lost alone
//! (29.25 / 29.25). Three (T0 T2 T1 T2) fell to 5.8 fps: the layered FEC sizing leaves
//! T2 frames short of repair and base frames sharing their blocks miss the deadline with
//! them. See `docs/benchmarks.md`.
//!
//! The terminals are sans-IO objects; [`run`] is the thin blocking shell that owns a UDP
//! socket and the clock for one of them on its own thread.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use media::codec::openh264::{
    EncodedPicture, H264Complexity, H264Decoder, H264Encoder, H264EncoderConfig, I420Frame,
};
use media::fec::RtpView;
use media::recovery::{FrameMarking, ReceiverEvent, SenderEvent};
use sfu::protect::{self, FramePacket, ProtectedRx, ProtectedTx, TxPolicy};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use crate::error::SimError;
use crate::render::{RenderClock, RenderConfig};

/// Frame interval at 30 fps.
pub const FRAME_INTERVAL: Duration = Duration::from_nanos(1_000_000_000 / 30);
/// Audio packet interval (50 packets/s).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes of one 20 ms audio frame of the stand-in (24 kbit/s, a voice Opus rate).
pub const AUDIO_FRAME_BYTES: usize = 60;
/// What a browser sends without RED: Opus in-band FEC carries the previous frame.
pub const NACK_ONLY_AUDIO_DEPTH: usize = 1;
/// How often the sender looks for a frame its encoder thread has finished.
const ENCODE_POLL: Duration = Duration::from_micros(500);
/// Largest H.264 RTP payload we produce.
const MAX_RTP_PAYLOAD: usize = 1_100;
/// A decoded picture this far below its source is "corrupt" (issue 4).
pub const CORRUPT_PSNR_DB: f64 = 30.0;
/// Size of one stamp bit in pixels.
const STAMP_CELL: usize = 32;
const STAMP_BITS: usize = 20;

/// How the media is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Huitong,
    NackOnly,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Huitong => "huitong",
            Method::NackOnly => "nack_only",
        }
    }
}

#[allow(clippy::disallowed_methods)] // `run` is the shell: the one place the terminals read the clock.
fn clock() -> Instant {
    Instant::now()
}

// ------------------------------------------------------------------ the picture

/// The pattern's chroma planes for a `w` × `h` picture: still, two gentle gradients.
fn chroma_planes(w: usize, h: usize) -> (Vec<u8>, Vec<u8>) {
    let (cw, ch) = (w / 2, h / 2);
    let mut u = vec![0u8; cw * ch];
    let mut v = vec![0u8; cw * ch];
    for row in 0..ch {
        for x in 0..cw {
            u[row * cw + x] = (90 + x * 80 / cw) as u8;
            v[row * cw + x] = (160 - row * 60 / ch) as u8;
        }
    }
    (u, v)
}

/// The synthetic source: a textured background panning 4 px per frame, a bright square
/// moving diagonally, and the frame number stamped as two rows of black/white cells
/// (the bits and their complement, so a misread is detected rather than believed).
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: usize,
    height: usize,
    texture: Vec<u8>,
    /// The chroma planes, the same in every frame.
    u: Vec<u8>,
    v: Vec<u8>,
}

impl TestPattern {
    pub fn new(width: usize, height: usize) -> Self {
        let mut texture = vec![0u8; 128 * 128];
        let mut x: u32 = 0x1234_5678;
        for (i, t) in texture.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Smooth bands plus a little noise: compresses like camera content, not like noise.
            let (r, c) = (i / 128, i % 128);
            let band = ((r / 16 + c / 16) % 2) as u32 * 50 + (c as u32 * 40 / 128);
            *t = (60 + band + (x % 12)) as u8;
        }
        let (w, h) = (width & !1, height & !1);
        let (u, v) = chroma_planes(w, h);
        TestPattern {
            width: w,
            height: h,
            texture,
            u,
            v,
        }
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Source picture of frame `n`. Built by copying rows, not pixel by pixel: the
    /// sender makes one per captured frame and the receiver one per shown frame, and
    /// the time either takes is latency the bench would count (7.8 ms per 1080p frame
    /// pixel by pixel in a test build).
    pub fn frame(&self, n: u64) -> I420Frame {
        let (w, h) = (self.width, self.height);
        let shift = (n as usize * 4) % 128;
        let mut y = vec![0u8; w * h];
        let mut rotated = [0u8; 128];
        for (r, line) in y.chunks_exact_mut(w).enumerate().take(128) {
            let t = &self.texture[r * 128..(r + 1) * 128];
            rotated[..128 - shift].copy_from_slice(&t[shift..]);
            rotated[128 - shift..].copy_from_slice(&t[..shift]);
            for chunk in line.chunks_mut(128) {
                chunk.copy_from_slice(&rotated[..chunk.len()]);
            }
        }
        // Rows repeat with the texture's height.
        for row in 128..h {
            y.copy_within((row - 128) * w..(row - 127) * w, row * w);
        }
        self.draw_marks(&mut y, n);
        // Sizes are even and the planes match them by construction.
        I420Frame::from_planes(w, h, y, self.u.clone(), self.v.clone())
            .unwrap_or_else(|_| unreachable_frame())
    }

    /// Draws frame `n`'s moving square and its number's stamp over the luma plane.
    fn draw_marks(&self, y: &mut [u8], n: u64) {
        let (w, h) = (self.width, self.height);
        let side = h / 6;
        let (sx, sy) = (
            (n as usize * 7) % (w - side),
            (n as usize * 3) % (h - side - 3 * STAMP_CELL) + 3 * STAMP_CELL,
        );
        for row in sy..sy + side {
            y[row * w + sx..row * w + sx + side].fill(220);
        }
        for bit in 0..STAMP_BITS {
            let one = (n >> bit) & 1 == 1;
            for (r, val) in [(0, one), (1, !one)] {
                let v = if val { 235 } else { 16 };
                for row in r * STAMP_CELL..(r + 1) * STAMP_CELL {
                    let x0 = bit * STAMP_CELL;
                    y[row * w + x0..row * w + x0 + STAMP_CELL].fill(v);
                }
            }
        }
    }

    /// The frame number stamped in a decoded picture, if both rows agree.
    pub fn read_stamp(&self, pic: &I420Frame) -> Option<u64> {
        if pic.width() < STAMP_BITS * STAMP_CELL || pic.height() < 2 * STAMP_CELL {
            return None;
        }
        let w = pic.width();
        let cell = |r: usize, bit: usize| -> bool {
            // The centre of the cell: block edges blur under compression.
            let (q, s) = (STAMP_CELL / 4, STAMP_CELL / 2);
            let mut sum = 0u32;
            for row in r * STAMP_CELL + q..r * STAMP_CELL + q + s {
                let x0 = bit * STAMP_CELL + q;
                sum += pic.y[row * w + x0..row * w + x0 + s]
                    .iter()
                    .map(|&p| u32::from(p))
                    .sum::<u32>();
            }
            sum / (s * s) as u32 > 125
        };
        let mut n = 0u64;
        for bit in 0..STAMP_BITS {
            let (a, b) = (cell(0, bit), cell(1, bit));
            if a == b {
                return None;
            }
            n |= u64::from(a) << bit;
        }
        Some(n)
    }
}

fn unreachable_frame() -> I420Frame {
    // `from_planes` only fails on inconsistent sizes, which `frame` never builds.
    I420Frame::filled(2, 2, [0, 128, 128]).unwrap_or_else(|_| std::process::abort())
}

// ------------------------------------------------------------------ H.264 RTP

/// NAL units of an Annex-B access unit (without start codes).
pub fn nal_units(au: &[u8]) -> Vec<&[u8]> {
    let mut starts = vec![];
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = vec![];
    for (k, &s) in starts.iter().enumerate() {
        let mut e = starts.get(k + 1).map_or(au.len(), |&n| n - 3);
        // A four-byte start code leaves a zero at the end of the previous unit.
        while e > s && au[e - 1] == 0 && k + 1 < starts.len() {
            e -= 1;
        }
        if e > s {
            out.push(&au[s..e]);
        }
    }
    out
}

/// RTP payloads of one access unit: single NAL unit packets, FU-A for large units,
/// split into fragments of about equal size (as libwebrtc does): a FEC repair packet
/// is as long as the longest packet of its block, so a short last fragment beside
/// full ones makes every repair longer than the average source it stands for.
pub fn packetize(au: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for nal in nal_units(au) {
        if nal.len() <= MAX_RTP_PAYLOAD {
            out.push(nal.to_vec());
            continue;
        }
        let (hdr, body) = (nal[0], &nal[1..]);
        // `count` fragments whose sizes differ by at most one byte.
        let count = body.len().div_ceil(MAX_RTP_PAYLOAD - 2);
        let (base, extra) = (body.len() / count, body.len() % count);
        let mut chunks: Vec<&[u8]> = Vec::with_capacity(count);
        let mut rest = body;
        for i in 0..count {
            let (c, r) = rest.split_at(base + usize::from(i < extra));
            chunks.push(c);
            rest = r;
        }
        for (i, c) in chunks.iter().enumerate() {
            let mut p = Vec::with_capacity(c.len() + 2);
            p.push((hdr & 0xe0) | 28);
            let mut fu = hdr & 0x1f;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == chunks.len() {
                fu |= 0x40;
            }
            p.push(fu);
            p.extend_from_slice(c);
            out.push(p);
        }
    }
    out
}

/// The Annex-B access unit from RTP payloads of one frame, in order.
pub fn depacketize<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut au = vec![];
    for p in payloads {
        let t = *p.first()? & 0x1f;
        match t {
            1..=23 => {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(p);
            }
            28 => {
                let fu = *p.get(1)?;
                if fu & 0x80 != 0 {
                    au.extend_from_slice(&[0, 0, 0, 1, (p[0] & 0xe0) | (fu & 0x1f)]);
                }
                au.extend_from_slice(p.get(2..)?);
            }
            _ => return None,
        }
    }
    Some(au)
}

// ------------------------------------------------------------------ audio stand-in

/// One audio frame's bytes: its number, then bytes that are a function of it, so the
/// receiver can tell which frame a block is and verify it.
pub fn audio_frame(n: u64) -> [u8; AUDIO_FRAME_BYTES] {
    let mut f = [0u8; AUDIO_FRAME_BYTES];
    f[..8].copy_from_slice(&n.to_be_bytes());
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in &mut f[8..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    f
}

/// Plain audio packet `n`: frames n, n−1, …, n−depth back to back (the Opus in-band FEC
/// stand-in).
pub fn audio_packet(n: u64, depth: usize) -> Vec<u8> {
    (0..=depth as u64)
        .take_while(|k| *k <= n)
        .flat_map(|k| audio_frame(n - k))
        .collect()
}

/// RED audio packet `n` (RFC 2198, blocks of payload type `pt`): frame n as the primary,
/// the frames `distances` before it as redundancy.
pub fn audio_red_packet(n: u64, distances: &[u16], pt: u8) -> Vec<u8> {
    let frames: Vec<(u32, [u8; AUDIO_FRAME_BYTES])> = distances
        .iter()
        .rev()
        .filter_map(|&d| Some((u32::from(d), audio_frame(n.checked_sub(u64::from(d))?))))
        .collect();
    let redundant: Vec<media::red::RedBlock<'_>> = frames
        .iter()
        .map(|(d, f)| media::red::RedBlock {
            pt,
            ts_offset: d * AUDIO_FRAME_TS,
            data: f,
        })
        .collect();
    let primary = audio_frame(n);
    media::red::build(
        &redundant,
        media::red::RedBlock {
            pt,
            ts_offset: 0,
            data: &primary,
        },
    )
}

/// Loss the audio redundancy assumes before the video's protection has a report (as the
/// protection itself does, `SenderConfig::initial_loss`).
const INITIAL_AUDIO_LOSS: f64 = 0.5;

/// RTP timestamp units of one audio frame (20 ms at 48 kHz).
const AUDIO_FRAME_TS: u32 = 960;

/// Frame numbers a plain audio packet carries intact.
pub fn audio_frames_in(p: &[u8]) -> Vec<u64> {
    p.chunks_exact(AUDIO_FRAME_BYTES)
        .filter_map(verified_frame)
        .collect()
}

/// Frame numbers a RED audio packet carries intact.
pub fn audio_frames_in_red(p: &[u8]) -> Vec<u64> {
    let Ok((redundant, primary)) = media::red::parse(p) else {
        return vec![];
    };
    std::iter::once(primary)
        .chain(redundant)
        .filter_map(|b| verified_frame(b.data))
        .collect()
}

fn verified_frame(f: &[u8]) -> Option<u64> {
    let n = u64::from_be_bytes(f.get(..8)?.try_into().ok()?);
    (f == audio_frame(n)).then_some(n)
}

// ------------------------------------------------------------------ terminals

fn rtc_config(method: Method, publish: bool) -> RtcConfig {
    let mut cfg = RtcConfig::new()
        .set_rtp_mode(method == Method::Huitong)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, method == Method::Huitong);
    // At 50 % loss each way a connectivity check and its answer both arrive 1 time in 4
    // (see `protected`).
    cfg.set_max_stun_rto(Duration::from_secs(1));
    cfg.set_max_stun_retransmits(30);
    if method == Method::Huitong {
        protect::add_tunnel_codec(cfg.codec_config());
        if publish {
            protect::drop_uplink_extensions(cfg.extension_map());
        }
    }
    cfg
}

/// What a datagram a terminal sent carried, by its RTP payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentKind {
    /// Video: the protected video's carrier (media, FEC repair and RTX inside), or
    /// plain H.264 RTP.
    Video,
    /// Opus, plain or in RED.
    Audio,
    /// Any other RTP payload type (str0m's own RTX or padding).
    OtherRtp,
}

/// A sender's socket bytes by what they carried, so the overhead figure can be taken
/// apart: payload against the outer RTP header (with its extensions) and SRTP's trailer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentBytes {
    /// `[datagrams, bytes, bytes of RTP header and extensions]` for video, audio and
    /// other RTP.
    pub rtp: [[u64; 3]; 3],
    /// RTCP datagrams and bytes (compound SRTCP).
    pub rtcp: [u64; 2],
    /// STUN, DTLS and anything unparsed: datagrams and bytes.
    pub other: [u64; 2],
}

/// A sender's socket bytes over its media bytes, by what carried them: the overhead
/// figure taken apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverheadParts {
    /// Video datagrams, whole.
    pub video: f64,
    /// Of which the carrier's RTP header and SRTP's trailer around the inner packets
    /// (media, repair, RTX with their own headers), when the video is protected.
    pub video_wrapping: Option<f64>,
    /// Audio datagrams, whole (RED included).
    pub audio: f64,
    /// RTCP, other RTP (str0m's RTX and padding), STUN and DTLS.
    pub other: f64,
}

impl SentBytes {
    /// This socket's bytes over `media` bytes; `video_inner` is what the protected
    /// video's packets inside the carrier came to, if it is protected.
    pub fn overhead_parts(&self, media: u64, video_inner: Option<u64>) -> OverheadParts {
        let m = media.max(1) as f64;
        OverheadParts {
            video: self.rtp[0][1] as f64 / m,
            video_wrapping: video_inner.map(|i| self.rtp[0][1].saturating_sub(i) as f64 / m),
            audio: self.rtp[1][1] as f64 / m,
            other: (self.rtp[2][1] + self.rtcp[1] + self.other[1]) as f64 / m,
        }
    }

    /// Counts one datagram; `kind` names an RTP payload type.
    pub fn count(&mut self, d: &[u8], kind: impl FnOnce(u8) -> SentKind) {
        let len = d.len() as u64;
        // RFC 7983: RTP and RTCP start with 128..=191; RTCP packet types 192..=223 sit
        // where RTP's marker bit and payload type are (RFC 5761).
        if d.len() < 12 || !(128..=191).contains(&d[0]) {
            self.other[0] += 1;
            self.other[1] += len;
            return;
        }
        if (192..=223).contains(&d[1]) {
            self.rtcp[0] += 1;
            self.rtcp[1] += len;
            return;
        }
        let mut header = 12 + 4 * usize::from(d[0] & 0x0f);
        if d[0] & 0x10 != 0 && d.len() >= header + 4 {
            header += 4 + 4 * usize::from(u16::from_be_bytes([d[header + 2], d[header + 3]]));
        }
        let i = match kind(d[1] & 0x7f) {
            SentKind::Video => 0,
            SentKind::Audio => 1,
            SentKind::OtherRtp => 2,
        };
        let row = &mut self.rtp[i];
        row[0] += 1;
        row[1] += len;
        row[2] += header.min(d.len()) as u64;
    }
}

/// Shared start of the media clock: frame `n` is captured at `epoch + n · FRAME_INTERVAL`.
pub type Epoch = Arc<std::sync::OnceLock<Instant>>;

/// What a terminal reports when its thread ends.
pub trait Terminal: Send {
    fn rtc(&mut self) -> &mut Rtc;
    /// An event the `Rtc` emitted.
    fn on_event(&mut self, now: Instant, ev: Event);
    /// Work due at `now` (frames to send, recovery timers); returns when next due.
    fn tick(&mut self, now: Instant) -> Option<Instant>;
    /// Queues one more message in the `Rtc` after it drained; true if it did.
    fn queue_more(&mut self) -> bool {
        false
    }
    /// A datagram this terminal's socket sent.
    fn count_sent(&mut self, datagram: &[u8]);
}

/// Drives `t` on a blocking socket until `stop`. The socket must be bound at `t`'s local
/// candidate address.
pub fn run<T: Terminal>(t: &mut T, socket: &UdpSocket, stop: &AtomicBool) -> Result<(), SimError> {
    let local = socket.local_addr()?;
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let now = clock();
        let due = t.tick(now);
        let _ = t.rtc().handle_input(Input::Timeout(now));
        let rtc_due = drain(t, socket, now)?;
        let next = due.map_or(rtc_due, |d| d.min(rtc_due));
        let wait = next
            .saturating_duration_since(clock())
            .clamp(Duration::from_micros(200), Duration::from_millis(20));
        socket.set_read_timeout(Some(wait))?;
        // Everything waiting is read before the next tick; str0m's output is drained
        // after each datagram (in RTP mode an undrained packet event is overwritten by
        // the next one: the first version of this loop lost most carrier packets so).
        let mut first = true;
        loop {
            let r = socket.recv_from(&mut buf);
            let Ok((n, from)) = r else { break };
            let now = clock();
            if let Ok(contents) = buf[..n].try_into() {
                let _ = t.rtc().handle_input(Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents,
                    },
                ));
                drain(t, socket, now)?;
            }
            if first {
                socket.set_nonblocking(true)?;
                first = false;
            }
        }
        socket.set_nonblocking(false)?;
    }
    Ok(())
}

/// Sends what the `Rtc` has queued and hands its events to the terminal; returns when
/// the `Rtc` next wants a timeout.
fn drain<T: Terminal>(t: &mut T, socket: &UdpSocket, now: Instant) -> Result<Instant, SimError> {
    loop {
        match t.rtc().poll_output()? {
            Output::Transmit(tr) => {
                t.count_sent(&tr.contents);
                let _ = socket.send_to(&tr.contents, tr.destination);
            }
            Output::Event(e) => t.on_event(now, e),
            Output::Timeout(at) => {
                if !t.queue_more() {
                    return Ok(at);
                }
            }
        }
    }
}

/// Encoder settings per picture height: the bitrate a conferencing terminal would use.
pub fn encoder_config(height: usize) -> H264EncoderConfig {
    H264EncoderConfig {
        bitrate_bps: if height >= 1080 { 4_000_000 } else { 2_000_000 },
        fps: 30.0,
        intra_period: 0,
        // A skipped frame would read as a lost one at the receiver.
        allow_frame_skip: false,
        threads: 1,
        complexity: H264Complexity::Low,
        scene_change_detect: false,
        adaptive_quant: false,
        background_detection: false,
        temporal_layers: TEMPORAL_LAYERS,
        ..H264EncoderConfig::default()
    }
}

/// Temporal layers of the sent video (the encoder does 1..=4; why 2: module docs).
pub const TEMPORAL_LAYERS: u8 = 2;

/// One encoded frame, as the sender handed it to the network.
#[derive(Debug, Clone, Copy)]
pub struct EncodedAt {
    pub frame: u64,
    pub at: Instant,
    pub temporal_id: u8,
}

/// The sending terminal.
pub struct LossSender {
    pub rtc: Rtc,
    pub method: Method,
    epoch: Epoch,
    encoder: EncodeWorker,
    video_mid: Option<Mid>,
    audio_mid: Option<Mid>,
    video_pt: Option<Pt>,
    audio_pt: Option<Pt>,
    /// RED payload type for the audio, if the SFU accepted it.
    audio_red_pt: Option<Pt>,
    carrier: Option<Pt>,
    tx: Option<ProtectedTx>,
    pending: Option<SdpPendingOffer>,
    /// How the uplink's protection sizes FEC against repair rounds
    /// ([`TxPolicy::ENDPOINT`] unless the bench measures another point of the trade).
    pub uplink_policy: TxPolicy,
    next_frame: u64,
    next_audio: u64,
    audio_seq: u16,
    /// Redundant audio frames sent (RED blocks besides the primaries).
    pub audio_redundant_frames: u64,
    /// Video datagrams between audio packets on the uplink.
    audio_spacing: media::red::Spacing,
    tl0_idx: u8,
    force_key: bool,
    last_key: Option<Instant>,
    connected: bool,
    /// Bytes the socket sent (everything: media, repair, RTX, RTCP, ICE, DTLS).
    pub bytes_sent: u64,
    /// The same bytes by kind of datagram.
    pub sent: SentBytes,
    /// Media bytes: encoded H.264 access units plus one copy of each audio frame.
    pub media_bytes: u64,
    /// Of which encoded H.264.
    pub video_bytes: u64,
    pub frames_sent: u64,
    pub keyframes_sent: u64,
    pub keyframe_requests: u64,
    /// Time spent encoding (includes generating the source picture).
    pub encode_time: Duration,
    /// When each frame's encode finished and its packets went to the protection, for
    /// the bench's latency parts ([`latency_parts`]) and per-frame trace.
    pub encoded: Vec<EncodedAt>,
}

impl LossSender {
    pub fn new(
        now: Instant,
        addr: SocketAddr,
        method: Method,
        width: usize,
        height: usize,
        epoch: Epoch,
    ) -> Result<Self, SimError> {
        let mut rtc = rtc_config(method, true).build(now);
        rtc.add_local_candidate(
            Candidate::host(addr, "udp").map_err(|e| SimError::Protocol(e.to_string()))?,
        );
        Ok(LossSender {
            rtc,
            method,
            epoch,
            encoder: EncodeWorker::spawn(width, height)?,
            video_mid: None,
            audio_mid: None,
            video_pt: None,
            audio_pt: None,
            audio_red_pt: None,
            carrier: None,
            tx: None,
            pending: None,
            uplink_policy: TxPolicy::ENDPOINT,
            next_frame: 0,
            next_audio: 0,
            audio_seq: 1,
            audio_redundant_frames: 0,
            audio_spacing: media::red::Spacing::default(),
            tl0_idx: 0,
            force_key: true,
            last_key: None,
            connected: false,
            bytes_sent: 0,
            sent: SentBytes::default(),
            media_bytes: 0,
            video_bytes: 0,
            frames_sent: 0,
            keyframes_sent: 0,
            keyframe_requests: 0,
            encode_time: Duration::ZERO,
            encoded: vec![],
        })
    }

    /// What the video's loss protection put on the wire (inner packets: media, repair
    /// and RTX), once it has started.
    pub fn protection_stats(&self) -> Option<media::recovery::SenderStats> {
        self.tx.as_ref().map(ProtectedTx::stats)
    }

    /// The publish offer (audio then video, send-only) and the two mids.
    pub fn offer(&mut self) -> Result<(String, Mid, Mid), SimError> {
        let mut api = self.rtc.sdp_api();
        let a = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let v = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| SimError::Protocol("nothing to offer".into()))?;
        self.pending = Some(pending);
        self.audio_mid = Some(a);
        self.video_mid = Some(v);
        Ok((offer.to_sdp_string(), a, v))
    }

    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), SimError> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| SimError::Protocol("no offer".into()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(sdp)?)?;
        let params = self.rtc.codec_config().params().to_vec();
        self.video_pt = params
            .iter()
            .find(|p| {
                p.spec().codec == Codec::H264 && p.spec().format.packetization_mode == Some(1)
            })
            .map(|p| p.pt());
        self.audio_pt = params
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        // Negotiated params keep the RED payload type only if the SFU accepted it.
        self.audio_red_pt = params
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .and_then(|p| p.red());
        if self.method == Method::Huitong {
            let mid = self.video_mid.ok_or(SimError::Closed)?;
            let media = self
                .rtc
                .media(mid)
                .ok_or_else(|| SimError::Protocol("m-line gone".into()))?;
            self.carrier = protect::carrier_pt(&params, media.remote_pts());
            if self.carrier.is_none() {
                return Err(SimError::Protocol("answer without the carrier".into()));
            }
        }
        Ok(())
    }

    /// Hands the next frame to the encoder thread.
    fn request_frame(&mut self, now: Instant) -> Result<(), SimError> {
        let n = self.next_frame;
        self.next_frame += 1;
        // A keyframe per request, at most one per 200 ms: copies of one request arrive together.
        let keyframe = self.force_key
            && self
                .last_key
                .is_none_or(|t| now >= t + Duration::from_millis(200));
        if keyframe {
            self.last_key = Some(now);
            self.force_key = false;
        }
        self.encoder.submit(EncodeJob { n, keyframe })
    }

    /// Sends a frame the encoder thread finished.
    fn send_encoded(&mut self, done: Encoded) -> Result<(), SimError> {
        let n = done.n;
        self.encode_time += done.took;
        let Some(pic) = done.pic.map_err(SimError::Protocol)? else {
            return Ok(());
        };
        let now = clock();
        self.encoded.push(EncodedAt {
            frame: n,
            at: now,
            temporal_id: pic.temporal_id,
        });
        self.media_bytes += pic.data.len() as u64;
        self.video_bytes += pic.data.len() as u64;
        self.frames_sent += 1;
        self.keyframes_sent += u64::from(pic.keyframe);
        let (Some(mid), Some(pt)) = (self.video_mid, self.video_pt) else {
            return Ok(());
        };
        let ts = (n as u32).wrapping_mul(3_000);
        match self.method {
            Method::NackOnly => {
                if let Some(w) = self.rtc.writer(mid) {
                    w.write(
                        pt,
                        now,
                        MediaTime::new(u64::from(ts), Frequency::NINETY_KHZ),
                        pic.data,
                    )?;
                }
            }
            Method::Huitong => {
                let carrier = self.carrier.ok_or(SimError::Closed)?;
                if self.tx.is_none() {
                    let ssrc = self
                        .rtc
                        .direct_api()
                        .stream_tx_by_mid(mid, None)
                        .map(|s| *s.ssrc())
                        .ok_or_else(|| SimError::Protocol("no send stream".into()))?;
                    let rtx = protect::rtx_pt_for(self.rtc.codec_config().params(), *pt);
                    self.tx = Some(
                        ProtectedTx::new(
                            ssrc,
                            *pt,
                            rtx,
                            self.uplink_policy,
                            (ssrc as u16) & 0x7fff,
                        )
                        .map_err(|e| SimError::Protocol(e.to_string()))?,
                    );
                }
                // TL0PICIDX counts base-layer frames; upper-layer frames carry the index
                // of the base frame they build on.
                if pic.temporal_id == 0 {
                    self.tl0_idx = self.tl0_idx.wrapping_add(1);
                }
                let Some(tx) = &mut self.tx else {
                    return Ok(());
                };
                let payloads = packetize(&pic.data);
                let count = payloads.len();
                for (i, payload) in payloads.iter().enumerate() {
                    let marking = FrameMarking {
                        start: i == 0,
                        end: i + 1 == count,
                        ..FrameMarking::picture(
                            pic.temporal_id,
                            TEMPORAL_LAYERS,
                            pic.keyframe,
                            self.tl0_idx,
                        )
                    };
                    let fp = FramePacket {
                        timestamp: ts,
                        marker: i + 1 == count,
                        marking,
                        payload,
                    };
                    tx.push_packet(now, &fp)
                        .map_err(|e| SimError::Protocol(e.to_string()))?;
                }
                tx.flush_into(&mut self.rtc, mid, carrier, now);
            }
        }
        Ok(())
    }

    fn send_audio(&mut self, now: Instant) -> Result<(), SimError> {
        let n = self.next_audio;
        self.next_audio += 1;
        let (Some(mid), Some(pt)) = (self.audio_mid, self.audio_pt) else {
            return Ok(());
        };
        self.media_bytes += AUDIO_FRAME_BYTES as u64;
        let ts = (n as u32).wrapping_mul(960);
        match self.method {
            Method::NackOnly => {
                if let Some(w) = self.rtc.writer(mid) {
                    w.write(
                        pt,
                        now,
                        MediaTime::new(u64::from(ts), Frequency::FORTY_EIGHT_KHZ),
                        audio_packet(n, NACK_ONLY_AUDIO_DEPTH),
                    )?;
                }
            }
            Method::Huitong => {
                let seq = self.audio_seq;
                self.audio_seq = self.audio_seq.wrapping_add(1);
                // As many copies as the uplink's measured loss needs: the SFU rebuilds
                // the redundancy for its downlinks.
                let (loss, burst) = self
                    .tx
                    .as_ref()
                    .map_or((INITIAL_AUDIO_LOSS, 1.0), ProtectedTx::channel);
                // Audio shares the link with the video: a loss run that takes one audio
                // packet rarely reaches the next (`media::red::distances_for`).
                let gaps = self.audio_spacing.observe(self.sent.rtp[0][0]);
                let distances = media::red::distances_for(loss, burst, gaps);
                let (wire_pt, p) = match self.audio_red_pt {
                    Some(red) => {
                        let copies = distances.iter().filter(|d| u64::from(**d) <= n).count();
                        self.audio_redundant_frames += copies as u64;
                        (red, audio_red_packet(n, &distances, *pt))
                    }
                    None => (pt, audio_packet(n, NACK_ONLY_AUDIO_DEPTH)),
                };
                if let Some(s) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                    s.write_rtp(
                        RtpWrite::new(wire_pt, u64::from(seq).into(), ts, now, p).nackable(false),
                    );
                }
            }
        }
        Ok(())
    }
}

impl Terminal for LossSender {
    fn rtc(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    fn on_event(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Connected => self.connected = true,
            Event::KeyframeRequest(_) => {
                self.keyframe_requests += 1;
                self.force_key = true;
            }
            Event::AppSpecificFeedback(f) => {
                if let (Some(tx), Some(mid), Some(pt)) =
                    (&mut self.tx, self.video_mid, self.carrier)
                {
                    if tx.media_ssrc == *f.media_ssrc {
                        tx.handle_feedback(now, &f.payload);
                        while let Some(ev) = tx.poll_event() {
                            if ev == SenderEvent::KeyframeRequested {
                                self.keyframe_requests += 1;
                                self.force_key = true;
                            }
                        }
                        tx.flush_into(&mut self.rtc, mid, pt, now);
                    }
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        if let (Some(tx), Some(mid), Some(pt)) = (&mut self.tx, self.video_mid, self.carrier) {
            if tx.poll_timeout().is_some_and(|t| t <= now) {
                tx.handle_timeout(now);
                tx.flush_into(&mut self.rtc, mid, pt, now);
            }
        }
        if !self.connected {
            return None;
        }
        let epoch = *self.epoch.get_or_init(|| now);
        let frame_at = |n: u64| epoch + FRAME_INTERVAL * n as u32;
        let audio_at = |n: u64| epoch + AUDIO_INTERVAL * n as u32;
        while audio_at(self.next_audio) <= now {
            if let Err(e) = self.send_audio(now) {
                tracing::warn!(error = %e, "audio send failed");
            }
        }
        while let Some(done) = self.encoder.poll() {
            if let Err(e) = self.send_encoded(done) {
                tracing::warn!(error = %e, "video send failed");
            }
        }
        // A frame late by more than one interval (the encoder fell behind) is still
        // encoded: the receiver measures what that costs.
        if frame_at(self.next_frame) <= now {
            if let Err(e) = self.request_frame(now) {
                tracing::warn!(error = %e, "video encode failed");
            }
        }
        let mut next = frame_at(self.next_frame).min(audio_at(self.next_audio));
        if self.encoder.in_flight > 0 {
            // Look for the encoded frame soon: it leaves as soon as it is done.
            next = next.min(now + ENCODE_POLL);
        }
        if let Some(t) = self.tx.as_ref().and_then(ProtectedTx::poll_timeout) {
            next = next.min(t);
        }
        Some(next)
    }

    fn count_sent(&mut self, datagram: &[u8]) {
        self.bytes_sent += datagram.len() as u64;
        let carrier = self.carrier.map(|p| *p);
        let audio = [self.audio_pt, self.audio_red_pt].map(|p| p.map(|p| *p));
        let video = self.video_pt.map(|p| *p);
        self.sent.count(datagram, |pt| {
            if Some(pt) == carrier || Some(pt) == video {
                SentKind::Video
            } else if audio.contains(&Some(pt)) {
                SentKind::Audio
            } else {
                SentKind::OtherRtp
            }
        });
    }
}

/// A frame for the encoder thread: its number, and whether it must be a keyframe.
struct EncodeJob {
    n: u64,
    keyframe: bool,
}

/// What the encoder thread made of frame `n`, and how long the source picture and the
/// encode took.
struct Encoded {
    n: u64,
    pic: Result<Option<EncodedPicture>, String>,
    took: Duration,
}

/// The encoder on a thread of its own, as in a real terminal, where the network thread
/// answers NACKs and sends repair while a frame is encoded. Encoding on the network
/// thread held every retransmission and loss report behind the 10–12 ms of a 1080p
/// frame.
struct EncodeWorker {
    jobs: Option<mpsc::Sender<EncodeJob>>,
    done: mpsc::Receiver<Encoded>,
    in_flight: usize,
    thread: Option<JoinHandle<()>>,
}

impl EncodeWorker {
    fn spawn(width: usize, height: usize) -> Result<Self, SimError> {
        let mut encoder = H264Encoder::new(encoder_config(height))
            .map_err(|e| SimError::Protocol(e.to_string()))?;
        let pattern = TestPattern::new(width, height);
        let (jobs, job_rx) = mpsc::channel::<EncodeJob>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("loss-encoder".into())
            .spawn(move || {
                for job in job_rx {
                    let t0 = clock();
                    if job.keyframe {
                        encoder.force_keyframe();
                    }
                    let pic = encoder
                        .encode(&pattern.frame(job.n))
                        .map_err(|e| e.to_string());
                    let out = Encoded {
                        n: job.n,
                        pic,
                        took: clock().saturating_duration_since(t0),
                    };
                    if done_tx.send(out).is_err() {
                        return;
                    }
                }
            })?;
        Ok(EncodeWorker {
            jobs: Some(jobs),
            done,
            in_flight: 0,
            thread: Some(thread),
        })
    }

    fn submit(&mut self, job: EncodeJob) -> Result<(), SimError> {
        let jobs = self.jobs.as_ref().ok_or(SimError::Closed)?;
        jobs.send(job).map_err(|_| SimError::Closed)?;
        self.in_flight += 1;
        Ok(())
    }

    fn poll(&mut self) -> Option<Encoded> {
        match self.done.try_recv() {
            Ok(e) => {
                self.in_flight -= 1;
                Some(e)
            }
            Err(mpsc::TryRecvError::Empty) => None,
            // The thread is gone (it panicked): nothing more will come back.
            Err(mpsc::TryRecvError::Disconnected) => {
                self.in_flight = 0;
                None
            }
        }
    }
}

impl Drop for EncodeWorker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Work for the decoder thread, in decoding order.
enum DecodeJob {
    /// A complete access unit and its RTP timestamp.
    Frame {
        au: Vec<u8>,
        keyframe: bool,
        ts: u32,
        /// When the network thread handed it over (its recovery completed).
        arrived: Instant,
    },
    /// A frame known lost: nothing decodes until the next keyframe.
    Lost,
}

/// What the decoder thread reports.
enum Decoded {
    /// An access unit went to the decoder.
    Fed,
    Shown(Shown),
    /// A decoder error: nothing decodes until the next keyframe.
    Error,
    /// A picture whose stamp could not be read.
    Unreadable,
    /// A frame dropped because the decoder waits for a keyframe.
    Waiting,
}

/// The decoder on a thread of its own, so the network thread keeps reading, asking for
/// what is missing and reporting loss while a picture is decoded (5–10 ms at 1080p). The
/// stamp reader and the PSNR check, the bench's instruments rather than the terminal's
/// work, run on a third thread, so the frames that a repair releases together queue
/// only behind each other's decodes. A picture's display time is set when its decode
/// finishes.
struct DecodeWorker {
    jobs: Option<mpsc::Sender<DecodeJob>>,
    done: mpsc::Receiver<Decoded>,
    thread: Option<JoinHandle<()>>,
}

impl DecodeWorker {
    fn spawn(width: usize, height: usize) -> Result<Self, SimError> {
        let mut decoder = H264Decoder::new().map_err(|e| SimError::Protocol(e.to_string()))?;
        let (jobs, job_rx) = mpsc::channel::<DecodeJob>();
        let (done_tx, done) = mpsc::channel();
        let (check, checker) = spawn_checker(width, height, done_tx.clone())?;
        let thread = std::thread::Builder::new()
            .name("loss-decoder".into())
            .spawn(move || {
                let mut need_key = true;
                let mut render = RenderClock::new(RenderConfig::default());
                for job in job_rx {
                    let out = match job {
                        DecodeJob::Lost => {
                            need_key = true;
                            continue;
                        }
                        DecodeJob::Frame { keyframe, .. } if need_key && !keyframe => {
                            Decoded::Waiting
                        }
                        DecodeJob::Frame {
                            au, ts, arrived, ..
                        } => {
                            let _ = done_tx.send(Decoded::Fed);
                            match decoder.decode(&au) {
                                Ok(Some(pic)) => {
                                    need_key = false;
                                    let decoded = clock();
                                    let at = render.render_at(ts, decoded);
                                    let _ = check.send(Check {
                                        pic,
                                        at,
                                        decoded,
                                        arrived,
                                    });
                                    continue;
                                }
                                Ok(None) => continue,
                                Err(_) => {
                                    need_key = true;
                                    Decoded::Error
                                }
                            }
                        }
                    };
                    if done_tx.send(out).is_err() {
                        break;
                    }
                }
                // Finished only once every decoded picture has been checked.
                drop(check);
                let _ = checker.join();
            })?;
        Ok(DecodeWorker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    fn submit(&mut self, job: DecodeJob) {
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }

    /// Waits for everything submitted to be decoded.
    fn finish(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DecodeWorker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A decoded picture for the checker, with its times.
struct Check {
    pic: I420Frame,
    at: Instant,
    decoded: Instant,
    arrived: Instant,
}

/// The checker thread: reads each picture's stamp and compares it with the regenerated
/// source.
fn spawn_checker(
    width: usize,
    height: usize,
    done_tx: mpsc::Sender<Decoded>,
) -> Result<(mpsc::Sender<Check>, JoinHandle<()>), SimError> {
    let pattern = TestPattern::new(width, height);
    let (check, check_rx) = mpsc::channel::<Check>();
    let thread = std::thread::Builder::new()
        .name("loss-checker".into())
        .spawn(move || {
            for c in check_rx {
                let out = match pattern.read_stamp(&c.pic) {
                    Some(n) => Decoded::Shown(Shown {
                        frame: n,
                        at: c.at,
                        decoded: c.decoded,
                        arrived: c.arrived,
                        psnr: pattern.frame(n).psnr_y(&c.pic).unwrap_or(0.0),
                        width: c.pic.width(),
                        height: c.pic.height(),
                    }),
                    None => Decoded::Unreadable,
                };
                if done_tx.send(out).is_err() {
                    return;
                }
            }
        })?;
    Ok((check, thread))
}

/// One displayed picture.
#[derive(Debug, Clone, Copy)]
pub struct Shown {
    pub frame: u64,
    /// When it is shown ([`RenderClock`]).
    pub at: Instant,
    /// When its decode finished.
    pub decoded: Instant,
    /// When the complete frame reached the decoder's queue.
    pub arrived: Instant,
    pub psnr: f64,
    pub width: usize,
    pub height: usize,
}

/// The receiving terminal.
pub struct LossReceiver {
    pub rtc: Rtc,
    pub method: Method,
    decoder: DecodeWorker,
    rx: Option<ProtectedRx>,
    /// Where a keyframe request goes, once video has arrived.
    video_mid: Option<Mid>,
    last_pli: Option<Instant>,
    /// Every picture the decoder produced.
    pub shown: Vec<Shown>,
    /// Decoder errors and pictures whose stamp could not be read.
    pub decode_errors: u64,
    /// Frames the recovery skipped (never decoded).
    pub skipped: u64,
    /// Complete frames handed to the terminal, and how many it gave the decoder.
    pub frames_in: u64,
    /// Skips by reason.
    pub skip_reasons: HashMap<String, u64>,
    pub frames_decoded: u64,
    /// Audio frames recovered, by number.
    pub audio: HashSet<u64>,
    /// Highest audio packet number seen.
    pub audio_newest: Option<u64>,
    /// Audio packets received in RED and plain.
    pub audio_packets: (u64, u64),
    /// Set once ICE and DTLS are up; shared so the shell's owner can wait for it.
    pub connected: Arc<AtomicBool>,
}

impl LossReceiver {
    pub fn new(
        now: Instant,
        addr: SocketAddr,
        method: Method,
        width: usize,
        height: usize,
    ) -> Result<Self, SimError> {
        let mut rtc = rtc_config(method, false).build(now);
        rtc.add_local_candidate(
            Candidate::host(addr, "udp").map_err(|e| SimError::Protocol(e.to_string()))?,
        );
        Ok(LossReceiver {
            rtc,
            method,
            decoder: DecodeWorker::spawn(width, height)?,
            rx: None,
            video_mid: None,
            last_pli: None,
            shown: vec![],
            decode_errors: 0,
            skipped: 0,
            frames_in: 0,
            skip_reasons: HashMap::new(),
            frames_decoded: 0,
            audio: HashSet::new(),
            audio_newest: None,
            audio_packets: (0, 0),
            connected: Arc::default(),
        })
    }

    /// The recovery loop's counters (Huitong method).
    pub fn recovery_stats(&self) -> Option<media::recovery::ReceiverStats> {
        self.rx.as_ref().map(ProtectedRx::stats)
    }

    /// Answers the SFU's subscribe offer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, SimError> {
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(sdp)?)?;
        Ok(answer.to_sdp_string())
    }

    fn on_audio(&mut self, payload: &[u8]) {
        self.on_audio_frames(audio_frames_in(payload));
    }

    fn on_audio_frames(&mut self, frames: Vec<u64>) {
        if let Some(&n) = frames.iter().max() {
            self.audio_newest = Some(self.audio_newest.map_or(n, |m| m.max(n)));
        }
        self.audio.extend(frames);
    }

    /// One complete access unit, or `None` for a frame known lost.
    fn on_frame(&mut self, au: Option<Vec<u8>>, keyframe: bool, ts: u32) {
        let Some(au) = au else {
            self.decoder.submit(DecodeJob::Lost);
            return;
        };
        self.frames_in += 1;
        self.decoder.submit(DecodeJob::Frame {
            au,
            keyframe,
            ts,
            arrived: clock(),
        });
    }

    /// Takes in what the decoder thread has finished; asks for a keyframe while the
    /// decoder waits for one (the decoder, not this thread, knows when it does).
    fn collect_decoded(&mut self, now: Option<Instant>) {
        let mut want_key = false;
        while let Ok(d) = self.decoder.done.try_recv() {
            match d {
                Decoded::Fed => self.frames_decoded += 1,
                Decoded::Shown(s) => self.shown.push(s),
                Decoded::Error => {
                    self.decode_errors += 1;
                    want_key = true;
                }
                Decoded::Unreadable => self.decode_errors += 1,
                Decoded::Waiting => want_key = true,
            }
        }
        if let (true, Some(now), Some(mid)) = (want_key, now, self.video_mid) {
            self.request_keyframe(now, mid);
        }
    }

    /// Waits for the decoder thread to finish what it was given; call once the
    /// terminal has stopped, before reading the figures.
    pub fn finish(&mut self) {
        self.decoder.finish();
        self.collect_decoded(None);
    }

    fn request_keyframe(&mut self, now: Instant, mid: Mid) {
        if self
            .last_pli
            .is_some_and(|t| now < t + Duration::from_millis(200))
        {
            return;
        }
        self.last_pli = Some(now);
        if let Some(mut w) = self.rtc.writer(mid) {
            let _ = w.request_keyframe(None, KeyframeRequestKind::Pli);
        }
    }

    fn pump(&mut self) {
        let mut frames = vec![];
        if let Some(rx) = &mut self.rx {
            while let Some(ev) = rx.poll_event() {
                match ev {
                    ReceiverEvent::Frame(f) => {
                        let payloads: Vec<Vec<u8>> = f
                            .packets
                            .iter()
                            .filter_map(|p| {
                                let v = RtpView::parse(p).ok()?;
                                p.get(v.payload_start..v.payload_end).map(<[u8]>::to_vec)
                            })
                            .collect();
                        let au = (payloads.len() == f.packets.len())
                            .then(|| depacketize(payloads.iter().map(Vec::as_slice)))
                            .flatten();
                        frames.push((au, f.keyframe, f.rtp_timestamp));
                    }
                    ReceiverEvent::Skipped(sk) => {
                        self.skipped += 1;
                        *self
                            .skip_reasons
                            .entry(format!("{:?}", sk.reason))
                            .or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
        for (au, key, ts) in frames {
            // An undecodable delivery is an error of ours, not a skip: count it.
            if au.is_none() {
                self.decode_errors += 1;
            }
            self.on_frame(au, key, ts);
        }
    }
}

impl Terminal for LossReceiver {
    fn rtc(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    fn on_event(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Connected => self.connected.store(true, Ordering::Relaxed),
            Event::MediaData(d) => match d.params.spec().codec {
                Codec::Opus => self.on_audio(&d.data),
                Codec::H264 => {
                    self.video_mid = Some(d.mid);
                    if !d.contiguous {
                        // A frame before this one never came: the chain is broken,
                        // and there is no need to wait for the decoder to say so.
                        self.decoder.submit(DecodeJob::Lost);
                        self.request_keyframe(now, d.mid);
                    }
                    let key = d.is_keyframe();
                    self.on_frame(Some(d.data.to_vec()), key, d.time.numer() as u32);
                }
                _ => {}
            },
            Event::RtpPacket(p) => {
                let params = self.rtc.codec_config().params().to_vec();
                let pt = p.header.payload_type;
                let Some(pp) = params.iter().find(|c| c.pt() == pt || c.red() == Some(pt)) else {
                    return;
                };
                if pp.red() == Some(pt) {
                    self.audio_packets.0 += 1;
                    self.on_audio_frames(audio_frames_in_red(&p.payload));
                    return;
                }
                if pp.spec().codec == Codec::Opus {
                    self.audio_packets.1 += 1;
                    self.on_audio(&p.payload);
                    return;
                }
                if !protect::is_carrier(pp) {
                    return;
                }
                let ssrc = *p.header.ssrc;
                if self.rx.is_none() {
                    // The recovery loop asks for what it needs (see `protected`).
                    if let Some(s) = self.rtc.direct_api().stream_rx(&p.header.ssrc) {
                        s.suppress_nack(true);
                    }
                }
                let rx = self.rx.get_or_insert_with(|| ProtectedRx::behind_sfu(ssrc));
                rx.handle_rtp(now, &p, &params);
                self.pump();
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        self.collect_decoded(Some(now));
        let due = self.rx.as_ref().and_then(ProtectedRx::poll_timeout);
        if due.is_some_and(|t| t <= now) {
            if let Some(rx) = &mut self.rx {
                rx.handle_timeout(now);
            }
            self.pump();
        }
        self.rx.as_ref().and_then(ProtectedRx::poll_timeout)
    }

    fn queue_more(&mut self) -> bool {
        let Some(rx) = &mut self.rx else { return false };
        let Some(fb) = rx.poll_feedback() else {
            return false;
        };
        let (own, media) = (rx.receiver_ssrc(), rx.media_ssrc);
        protect::send_feedback(&mut self.rtc, own, media, fb);
        true
    }

    fn count_sent(&mut self, _datagram: &[u8]) {}
}

/// Figures of one run, as issue 4 asks for them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub width: usize,
    pub height: usize,
    pub fps_avg: f64,
    pub fps_worst_1s: u64,
    pub corrupt_frames: u64,
    pub freeze_ms: u64,
    pub p95_latency_ms: f64,
    pub audio_residual_loss: f64,
}

/// Median and 95th percentile, in ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub p50: f64,
    pub p95: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread {
            p50: quantile(&v, 0.5),
            p95: quantile(&v, 0.95),
        }
    }
}

/// The `q` quantile of sorted values (the smallest value at or above that share of
/// them); NaN for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// What the glass-to-glass latency of the pictures shown in `[from, to)` is made of,
/// part by part (each part's own percentiles; they do not add up to the total's).
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencyParts {
    /// Capture to encoded (the source picture, the encode, the wait for the encoder).
    pub encode: Spread,
    /// Encoded to complete at the receiver: both hops, their repair and the SFU.
    pub network: Spread,
    /// Complete to decoded: the decoder's queue and the decode.
    pub decode: Spread,
    /// Decoded to shown: the render clock's wait.
    pub render_wait: Spread,
    /// Capture to complete at the receiver, base-layer frames.
    pub arrived_base: Spread,
    /// The same, upper-layer frames: they wait for the base-layer frame that closes
    /// their FEC block.
    pub arrived_upper: Spread,
}

/// [`LatencyParts`] of the good pictures shown in `[from, to)`.
pub fn latency_parts(
    encoded: &[EncodedAt],
    rx: &LossReceiver,
    epoch: Instant,
    from: Instant,
    to: Instant,
) -> LatencyParts {
    let sent: HashMap<u64, EncodedAt> = encoded.iter().map(|e| (e.frame, *e)).collect();
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let mut parts: [Vec<f64>; 6] = Default::default();
    for s in &rx.shown {
        if s.at < from || s.at >= to || s.psnr < CORRUPT_PSNR_DB {
            continue;
        }
        let Some(e) = sent.get(&s.frame) else {
            continue;
        };
        let cap = epoch + FRAME_INTERVAL * s.frame as u32;
        parts[0].push(ms(cap, e.at));
        parts[1].push(ms(e.at, s.arrived));
        parts[2].push(ms(s.arrived, s.decoded));
        parts[3].push(ms(s.decoded, s.at));
        parts[if e.temporal_id == 0 { 4 } else { 5 }].push(ms(cap, s.arrived));
    }
    let [
        encode,
        network,
        decode,
        render_wait,
        arrived_base,
        arrived_upper,
    ] = parts.map(Spread::of);
    LatencyParts {
        encode,
        network,
        decode,
        render_wait,
        arrived_base,
        arrived_upper,
    }
}

/// Figures over the window `[from, to)` of display time; frame `n` was captured at
/// `epoch + n · FRAME_INTERVAL`, audio frame `m` at `epoch + m · AUDIO_INTERVAL`.
pub fn figures(rx: &LossReceiver, epoch: Instant, from: Instant, to: Instant) -> Figures {
    figures_by(rx, epoch, from, to, |s| s.at)
}

/// The same as if each picture were shown the moment its decode finished, without the
/// terminal's render clock: what the recovery delivers, bunching included.
pub fn figures_at_decode(rx: &LossReceiver, epoch: Instant, from: Instant, to: Instant) -> Figures {
    figures_by(rx, epoch, from, to, |s| s.decoded)
}

fn figures_by(
    rx: &LossReceiver,
    epoch: Instant,
    from: Instant,
    to: Instant,
    time: impl Fn(&Shown) -> Instant,
) -> Figures {
    let shown: Vec<Shown> = rx
        .shown
        .iter()
        .map(|s| Shown { at: time(s), ..*s })
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    let secs = to.saturating_duration_since(from).as_secs_f64().max(1e-9);
    let good: Vec<&Shown> = shown.iter().filter(|s| s.psnr >= CORRUPT_PSNR_DB).collect();
    let corrupt = (shown.len() - good.len()) as u64 + rx.decode_errors;
    let buckets = secs.floor().max(1.0) as usize;
    let mut per_s = vec![0u64; buckets];
    for s in &good {
        let i = s.at.saturating_duration_since(from).as_secs() as usize;
        if let Some(b) = per_s.get_mut(i) {
            *b += 1;
        }
    }
    let mut freeze = Duration::ZERO;
    let mut last = from;
    for s in good.iter().map(|s| s.at).chain([to]) {
        let gap = s.saturating_duration_since(last);
        if gap > Duration::from_millis(200) {
            freeze += gap;
        }
        last = s;
    }
    let mut lat: Vec<f64> = good
        .iter()
        .map(|s| {
            let cap = epoch + FRAME_INTERVAL * s.frame as u32;
            s.at.saturating_duration_since(cap).as_secs_f64() * 1e3
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let p95 = quantile(&lat, 0.95);
    let (width, height) = good
        .iter()
        .map(|s| (s.width, s.height))
        .min_by_key(|&(w, h)| w * h)
        .unwrap_or((0, 0));
    // Audio frames captured in the window, with a margin for the last ones in flight.
    let a0 = (from.saturating_duration_since(epoch).as_millis() / 20) as u64;
    let a1 = (to.saturating_duration_since(epoch).as_millis() / 20) as u64;
    let a1 = a1.saturating_sub(25).max(a0);
    let expected = a1 - a0;
    let got = (a0..a1).filter(|m| rx.audio.contains(m)).count() as u64;
    Figures {
        width,
        height,
        fps_avg: good.len() as f64 / secs,
        fps_worst_1s: per_s.iter().copied().min().unwrap_or(0),
        corrupt_frames: corrupt,
        freeze_ms: freeze.as_millis() as u64,
        p95_latency_ms: p95,
        audio_residual_loss: if expected == 0 {
            f64::NAN
        } else {
            1.0 - got as f64 / expected as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_bytes_split_rtp_by_kind_and_header() {
        let mut sb = SentBytes::default();
        let kind = |pt| {
            if pt == 100 {
                SentKind::Video
            } else {
                SentKind::Audio
            }
        };
        // RTP, PT 100 with the marker set, one CSRC, a one-byte-header extension block
        // of 2 words: header 12 + 4 + 4 + 8 = 28 bytes, then 50 bytes of payload.
        let mut v = vec![0x91, 0x80 | 100];
        v.extend([0u8; 10]);
        v.extend([0u8; 4]);
        v.extend([0xbe, 0xde, 0, 2]);
        v.extend([0u8; 8]);
        v.extend([7u8; 50]);
        sb.count(&v, kind);
        // Audio without extension: 12-byte header.
        let mut a = vec![0x80, 111];
        a.extend([0u8; 30]);
        sb.count(&a, kind);
        // An RTCP receiver report (PT 201) and a STUN binding request.
        let mut r = vec![0x81, 201];
        r.extend([0u8; 30]);
        sb.count(&r, kind);
        let mut stun = vec![0x00, 0x01];
        stun.extend([0u8; 18]);
        sb.count(&stun, kind);
        // A truncated extension length does not read past the datagram.
        sb.count(&[0x90, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe], kind);
        assert_eq!(sb.rtp[0], [2, 78 + 13, 28 + 12]);
        assert_eq!(sb.rtp[1], [1, 32, 12]);
        assert_eq!(sb.rtp[2], [0, 0, 0]);
        assert_eq!(sb.rtcp, [1, 32]);
        assert_eq!(sb.other, [1, 20]);
        let parts = sb.overhead_parts(10, Some(51));
        assert_eq!(parts.video, 9.1);
        assert_eq!(parts.video_wrapping, Some(4.0));
        assert_eq!(parts.audio, 3.2);
        assert_eq!(parts.other, 5.2);
        assert_eq!(sb.overhead_parts(10, None).video_wrapping, None);
    }

    /// The pattern's background as first written, pixel by pixel (the marks drawn over
    /// it and the still chroma are shared): the row-copying `frame` must give the same
    /// pictures
    /// (the receiver regenerates them to check what it shows).
    fn frame_pixel_by_pixel(p: &TestPattern, n: u64) -> I420Frame {
        let (w, h) = (p.width, p.height);
        let shift = (n as usize * 4) % 128;
        let mut y = vec![0u8; w * h];
        for row in 0..h {
            let t = &p.texture[(row % 128) * 128..(row % 128 + 1) * 128];
            for x in 0..w {
                y[row * w + x] = t[(x + shift) % 128];
            }
        }
        p.draw_marks(&mut y, n);
        let (u, v) = chroma_planes(w, h);
        I420Frame::from_planes(w, h, y, u, v).unwrap()
    }

    #[test]
    fn pattern_rows_are_copied_faithfully() {
        for (w, h) in [(1920, 1080), (1280, 720), (650, 300)] {
            let p = TestPattern::new(w, h);
            for n in [0, 1, 31, 32, 33, 77, 1_000_003] {
                let (a, b) = (p.frame(n), frame_pixel_by_pixel(&p, n));
                assert!(a.y == b.y && a.u == b.u && a.v == b.v, "{w}x{h} frame {n}");
            }
        }
    }

    #[test]
    fn stamp_survives_encoding_and_packetisation() {
        let pat = TestPattern::new(640, 360);
        let mut enc = H264Encoder::new(encoder_config(360)).unwrap();
        let mut dec = H264Decoder::new().unwrap();
        for n in [0u64, 1, 2, 77_777, 77_778] {
            let src = pat.frame(n);
            assert_eq!(pat.read_stamp(&src), Some(n));
            let pic = enc.encode(&src).unwrap().unwrap();
            let pkts = packetize(&pic.data);
            assert!(pkts.iter().all(|p| p.len() <= MAX_RTP_PAYLOAD));
            // The FU-A fragments of each unit differ in size by at most one byte.
            let mut unit: Vec<usize> = vec![];
            for p in pkts.iter().filter(|p| p[0] & 0x1f == 28) {
                unit.push(p.len());
                if p[1] & 0x40 != 0 {
                    let (lo, hi) = (unit.iter().min(), unit.iter().max());
                    assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{unit:?}");
                    unit.clear();
                }
            }
            let au = depacketize(pkts.iter().map(Vec::as_slice)).unwrap();
            let out = dec.decode(&au).unwrap().unwrap();
            assert_eq!(pat.read_stamp(&out), Some(n));
            assert!(src.psnr_y(&out).unwrap() > 32.0);
        }
        // A different frame's source is far from this picture: PSNR detects a wrong frame.
        let other = pat.frame(40);
        assert!(pat.frame(3).psnr_y(&other).unwrap() < CORRUPT_PSNR_DB);
    }

    #[test]
    fn latency_parts_split_each_picture_at_its_stages() {
        let epoch = clock();
        let ms = |x: u64| Duration::from_millis(x);
        let mut rx = LossReceiver::new(
            epoch,
            "127.0.0.1:9".parse().unwrap(),
            Method::Huitong,
            64,
            64,
        )
        .unwrap();
        let cap = |n: u64| epoch + FRAME_INTERVAL * n as u32;
        // Frame 1 (upper layer): encoded 30 ms after capture, complete 150 ms later,
        // decoded 10 ms later, shown 40 ms after that. Frame 2 (base): 20/100/5/0.
        // Frame 3 is shown outside the window and frame 4 is corrupt: neither counts.
        let mut encoded = vec![];
        for (n, tid, enc, net, dec, wait, psnr) in [
            (1, 1, 30, 150, 10, 40, 40.0),
            (2, 0, 20, 100, 5, 0, 40.0),
            (3, 0, 1, 1, 1, 5_000, 40.0),
            (4, 0, 1, 1, 1, 1, 10.0),
        ] {
            let e = cap(n) + ms(enc);
            encoded.push(EncodedAt {
                frame: n,
                at: e,
                temporal_id: tid,
            });
            let arrived = e + ms(net);
            let decoded = arrived + ms(dec);
            rx.shown.push(Shown {
                frame: n,
                at: decoded + ms(wait),
                decoded,
                arrived,
                psnr,
                width: 64,
                height: 64,
            });
        }
        let p = latency_parts(&encoded, &rx, epoch, epoch, epoch + ms(1_000));
        let near = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(
            near(p.encode.p50, 20.0) && near(p.encode.p95, 30.0),
            "{p:?}"
        );
        assert!(
            near(p.network.p50, 100.0) && near(p.network.p95, 150.0),
            "{p:?}"
        );
        assert!(
            near(p.decode.p95, 10.0) && near(p.render_wait.p95, 40.0),
            "{p:?}"
        );
        assert!(near(p.arrived_upper.p95, 180.0), "{p:?}");
        assert!(near(p.arrived_base.p95, 120.0), "{p:?}");
    }

    #[test]
    fn audio_redundancy_round_trip() {
        let p = audio_packet(10, 3);
        assert_eq!(audio_frames_in(&p), vec![10, 9, 8, 7]);
        let mut bad = p.clone();
        bad[AUDIO_FRAME_BYTES + 9] ^= 1;
        assert_eq!(audio_frames_in(&bad), vec![10, 8, 7]);
        assert_eq!(audio_frames_in(&audio_packet(1, 3)), vec![1, 0]);
    }

    #[test]
    fn red_audio_round_trip() {
        let p = audio_red_packet(10, &[1, 2, 4, 16], 111);
        // Frame 10−16 does not exist; the primary comes out first.
        assert_eq!(audio_frames_in_red(&p), vec![10, 6, 8, 9]);
        let mut bad = p.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(audio_frames_in_red(&bad), vec![6, 8, 9]);
        assert!(audio_frames_in_red(&p[..3]).is_empty());
    }
}
