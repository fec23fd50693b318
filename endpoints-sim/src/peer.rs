//! One simulated peer connection: a str0m `Rtc` plus the synthetic media it sends and the
//! measurements of what it receives. Sans-IO: time comes in as `now`, datagrams come in
//! as bytes and go out as [`Transmit`]s; the seed of the payload generator is configured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast,
    SimulcastLayer,
};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use crate::error::SimError;
use crate::payload::{self, Marker};
use crate::stats::Stats;

/// What a publishing peer sends.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Video bitrate of the full layer, bits per second.
    pub video_bps: u64,
    pub fps: u32,
    pub idr_interval: Duration,
    pub audio: bool,
    pub video: bool,
    /// Three simulcast encodings `q`, `h`, `f` (¼, ½, full size) instead of one.
    pub simulcast: bool,
    /// Bytes per 20 ms audio packet.
    pub audio_bytes: usize,
    /// Real encoded video instead of marker frames (e.g. a numbered test pattern).
    pub video_source: Option<VideoSource>,
    /// Real encoded audio instead of marker frames (e.g. an Opus-coded tone).
    pub audio_source: Option<AudioSource>,
}

/// Produces the Opus packet of 20 ms audio frame `n`. Frames from a source carry no
/// marker, so receivers do not count them.
#[derive(Clone)]
pub struct AudioSource(pub Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>);

impl std::fmt::Debug for AudioSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AudioSource")
    }
}

/// Produces the access unit (Annex B) of frame `n`: `(n, keyframe wanted, layer divisor
/// 1/4/16)`. Frames from a source carry no marker, so receivers do not count them.
#[derive(Clone)]
pub struct VideoSource(pub Arc<dyn Fn(u64, bool, usize) -> Vec<u8> + Send + Sync>);

impl std::fmt::Debug for VideoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VideoSource")
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            video_bps: 1_500_000,
            fps: 30,
            idr_interval: Duration::from_secs(2),
            audio: true,
            video: true,
            simulcast: false,
            audio_bytes: 80,
            video_source: None,
            audio_source: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Sender id written into every frame's marker.
    pub id: u32,
    /// Origin of marker timestamps; every peer of a run shares it.
    pub epoch: Instant,
    /// Seed of the payload generator.
    pub seed: u64,
    /// `Some` for a peer connection that publishes.
    pub media: Option<MediaConfig>,
}

/// A track this peer offered, for the signalling `tracks` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    pub mid: Mid,
    pub kind: MediaKind,
}

struct Sender {
    cfg: MediaConfig,
    rng: ChaCha8Rng,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    audio_pt: Option<Pt>,
    video_pt: Option<Pt>,
    /// Set when connected: media times are counted from here.
    start: Option<Instant>,
    video_n: u64,
    audio_n: u64,
    force_key: bool,
    last_key: u64,
}

const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// A keyframe is this many times the size of a delta frame.
const KEYFRAME_FACTOR: u64 = 4;

impl Sender {
    fn video_interval(&self) -> Duration {
        Duration::from_secs(1) / self.cfg.fps.max(1)
    }

    fn next_video(&self) -> Option<Instant> {
        let start = self.start?;
        self.video_mid?;
        Some(start + self.video_interval() * u32::try_from(self.video_n).unwrap_or(u32::MAX))
    }

    fn next_audio(&self) -> Option<Instant> {
        let start = self.start?;
        self.audio_mid?;
        Some(start + AUDIO_INTERVAL * u32::try_from(self.audio_n).unwrap_or(u32::MAX))
    }

    /// Bytes of a frame of the full layer so the GOP averages to the configured bitrate.
    fn frame_size(&self, keyframe: bool) -> usize {
        let fps = u64::from(self.cfg.fps.max(1));
        let gop = (self.cfg.idr_interval.as_millis() as u64 * fps / 1000).max(1);
        let gop_bytes = self.cfg.video_bps / 8 * gop / fps;
        let delta = gop_bytes / (gop - 1 + KEYFRAME_FACTOR);
        (if keyframe {
            delta * KEYFRAME_FACTOR
        } else {
            delta
        }) as usize
    }
}

struct RecvTrack {
    last: u64,
}

pub struct Peer {
    rtc: Rtc,
    local: SocketAddr,
    cfg: PeerConfig,
    stats: Arc<Stats>,
    sender: Option<Sender>,
    pending: Option<SdpPendingOffer>,
    connected: bool,
    /// Last frame counter per (sender id, is video).
    recv: HashMap<(u32, bool), RecvTrack>,
    /// Last keyframe request per receiving mid, to throttle them.
    last_kf_req: HashMap<Mid, Instant>,
    /// Whether each receiving mid has seen a keyframe since it started.
    got_key: HashMap<Mid, bool>,
    senders_seen: HashMap<u32, u64>,
}

fn is_rtp(buf: &[u8]) -> bool {
    // RFC 5761: RTCP packet types 192..=223 sit where an RTP header has marker+payload type.
    buf.len() >= 12 && (128..=191).contains(&buf[0]) && !(192..=223).contains(&buf[1])
}

impl Peer {
    pub fn new(now: Instant, local: SocketAddr, cfg: PeerConfig, stats: Arc<Stats>) -> Self {
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_h264(true)
            .build(now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        let sender = cfg.media.clone().map(|m| Sender {
            cfg: m,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            audio_mid: None,
            video_mid: None,
            audio_pt: None,
            video_pt: None,
            start: None,
            video_n: 0,
            audio_n: 0,
            force_key: true,
            last_key: 0,
        });
        Peer {
            rtc,
            local,
            cfg,
            stats,
            sender,
            pending: None,
            connected: false,
            recv: HashMap::new(),
            last_kf_req: HashMap::new(),
            got_key: HashMap::new(),
            senders_seen: HashMap::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_alive(&self) -> bool {
        self.rtc.is_alive()
    }

    /// Sender ids this peer has received video frames from, with frame counts.
    pub fn senders_seen(&self) -> &HashMap<u32, u64> {
        &self.senders_seen
    }

    /// Offers the configured send-only tracks (publish pc).
    pub fn create_offer(&mut self) -> Result<(SdpOffer, Vec<OfferedTrack>), SimError> {
        let Some(sender) = self.sender.as_mut() else {
            return Err(SimError::Protocol("peer has no media to offer".into()));
        };
        let stream = format!("sim{}", self.cfg.id);
        let mut api = self.rtc.sdp_api();
        let mut tracks = Vec::new();
        if sender.cfg.audio {
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(stream.clone()),
                Some(format!("{stream}a")),
                None,
            );
            sender.audio_mid = Some(mid);
            tracks.push(OfferedTrack {
                mid,
                kind: MediaKind::Audio,
            });
        }
        if sender.cfg.video {
            let simulcast = sender.cfg.simulcast.then(|| {
                let mut s = Simulcast::new();
                for rid in ["q", "h", "f"] {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            let mid = api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(stream.clone()),
                Some(format!("{stream}v")),
                simulcast,
            );
            sender.video_mid = Some(mid);
            tracks.push(OfferedTrack {
                mid,
                kind: MediaKind::Video,
            });
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| SimError::Protocol("nothing to offer".into()))?;
        self.pending = Some(pending);
        Ok((offer, tracks))
    }

    pub fn accept_answer(&mut self, answer: SdpAnswer) -> Result<(), SimError> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| SimError::Protocol("answer without an offer".into()))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        self.pick_payload_types();
        Ok(())
    }

    pub fn accept_offer(&mut self, offer: SdpOffer) -> Result<SdpAnswer, SimError> {
        Ok(self.rtc.sdp_api().accept_offer(offer)?)
    }

    fn pick_payload_types(&mut self) {
        let Some(s) = self.sender.as_mut() else {
            return;
        };
        let mut pick = |mid: Option<Mid>, want: Codec| -> Option<Pt> {
            let w = self.rtc.writer(mid?)?;
            let params: Vec<_> = w
                .payload_params()
                .filter(|p| p.spec().codec == want)
                .collect();
            params
                .iter()
                .find(|p| want != Codec::H264 || p.spec().format.packetization_mode == Some(1))
                .or(params.first())
                .map(|p| p.pt())
        };
        s.audio_pt = pick(s.audio_mid, Codec::Opus);
        s.video_pt = pick(s.video_mid, Codec::H264);
    }

    /// A datagram arrived on this peer's socket.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        buf: &[u8],
    ) -> Result<(), SimError> {
        if is_rtp(buf) {
            Stats::add(&self.stats.rtp_packets_received, 1);
        }
        let Ok(r) = Receive::new(Protocol::Udp, source, self.local, buf) else {
            // Not STUN/DTLS/RTP/RTCP: a simulated terminal just drops it, as a browser does.
            return Ok(());
        };
        self.rtc.handle_input(Input::Receive(now, r))?;
        Ok(())
    }

    /// Time passed: drive str0m and write any media frames that are due.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SimError> {
        self.rtc.handle_input(Input::Timeout(now))?;
        self.write_due_media(now)?;
        Ok(())
    }

    fn write_due_media(&mut self, now: Instant) -> Result<(), SimError> {
        if !self.connected {
            return Ok(());
        }
        let Some(s) = self.sender.as_mut() else {
            return Ok(());
        };
        if s.start.is_none() {
            s.start = Some(now);
        }
        let epoch = self.cfg.epoch;
        let sent_us = now.saturating_duration_since(epoch).as_micros() as u64;
        while let (Some(t), Some(pt), Some(mid)) = (s.next_audio(), s.audio_pt, s.audio_mid) {
            if t > now {
                break;
            }
            let marker = Marker {
                sender: self.cfg.id,
                counter: s.audio_n,
                sent_us,
            };
            let data = match &s.cfg.audio_source {
                Some(src) => (src.0)(s.audio_n),
                None => payload::opus_frame(&marker, s.cfg.audio_bytes, &mut s.rng),
            };
            let rtp_time =
                MediaTime::new(s.audio_n * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ);
            if let Some(w) = self.rtc.writer(mid) {
                // A steady quiet voice: level -30 dBov, voice active.
                w.audio_level(-30, true).write(pt, now, rtp_time, data)?;
                Stats::add(&self.stats.audio_frames_sent, 1);
            }
            s.audio_n += 1;
        }
        while let (Some(t), Some(pt), Some(mid)) = (s.next_video(), s.video_pt, s.video_mid) {
            if t > now {
                break;
            }
            let gop = u64::from(s.cfg.fps) * s.cfg.idr_interval.as_millis() as u64 / 1000;
            let key = s.force_key || s.video_n >= s.last_key + gop.max(1);
            if key {
                s.force_key = false;
                s.last_key = s.video_n;
            }
            let marker = Marker {
                sender: self.cfg.id,
                counter: s.video_n,
                sent_us,
            };
            let rtp_time = MediaTime::new(
                s.video_n * u64::from(90_000 / s.cfg.fps.max(1)),
                str0m::media::Frequency::NINETY_KHZ,
            );
            let full = s.frame_size(key);
            let layers: &[(Option<&str>, usize)] = if s.cfg.simulcast {
                &[(Some("q"), 16), (Some("h"), 4), (Some("f"), 1)]
            } else {
                &[(None, 1)]
            };
            for &(rid, div) in layers {
                let data = match &s.cfg.video_source {
                    Some(src) => (src.0)(s.video_n, key, div),
                    None => payload::h264_frame(&marker, key, full / div, &mut s.rng),
                };
                if let Some(mut w) = self.rtc.writer(mid) {
                    if let Some(rid) = rid {
                        w = w.rid(Rid::from(rid));
                    }
                    w.write(pt, now, rtp_time, data)?;
                }
            }
            Stats::add(&self.stats.video_frames_sent, 1);
            s.video_n += 1;
        }
        Ok(())
    }

    /// Next datagram to send, or the time this peer next needs [`Peer::handle_timeout`].
    pub fn poll_output(&mut self, now: Instant) -> Result<PeerOutput, SimError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Transmit(t) => {
                    if is_rtp(&t.contents) {
                        Stats::add(&self.stats.rtp_packets_sent, 1);
                    }
                    return Ok(PeerOutput::Transmit(t));
                }
                Output::Timeout(t) => {
                    let mut next = t;
                    if let Some(s) = &self.sender {
                        for m in [s.next_audio(), s.next_video()].into_iter().flatten() {
                            next = next.min(m);
                        }
                    }
                    return Ok(PeerOutput::Timeout(next));
                }
                Output::Event(e) => self.handle_event(now, e),
            }
        }
    }

    fn handle_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                tracing::debug!(id = self.cfg.id, "ice disconnected");
            }
            Event::KeyframeRequest(_) => {
                Stats::add(&self.stats.keyframe_requests_received, 1);
                if let Some(s) = self.sender.as_mut() {
                    s.force_key = true;
                }
            }
            Event::MediaData(d) => self.on_media(now, d),
            _ => {}
        }
    }

    fn on_media(&mut self, now: Instant, d: MediaData) {
        let codec = d.params.spec().codec;
        let parsed = match codec {
            Codec::H264 => payload::h264_read_marker(&d.data),
            Codec::Opus => payload::opus_read_marker(&d.data).map(|m| (m, false)),
            _ => None,
        };
        let video = codec == Codec::H264;
        if codec == Codec::Opus {
            self.stats.tap_audio(&d.mid.to_string(), &d.data);
        }
        if video {
            let got_key = self.got_key.entry(d.mid).or_insert(false);
            let is_key = parsed.map_or_else(|| d.is_keyframe(), |(_, k)| k);
            self.stats.tap_video(&d.mid.to_string(), &d.data);
            *got_key |= is_key;
            if !d.contiguous || !*got_key {
                self.request_keyframe(now, d.mid, d.rid);
            }
        }
        let Some((m, _)) = parsed else {
            Stats::add(&self.stats.frames_unreadable, 1);
            return;
        };
        Stats::add(
            if video {
                &self.stats.video_frames_received
            } else {
                &self.stats.audio_frames_received
            },
            1,
        );
        if video {
            *self.senders_seen.entry(m.sender).or_default() += 1;
        }
        let arrived_us = d
            .network_time
            .saturating_duration_since(self.cfg.epoch)
            .as_micros() as u64;
        self.stats
            .record_latency(arrived_us.saturating_sub(m.sent_us));
        match self.recv.get_mut(&(m.sender, video)) {
            None => {
                self.recv
                    .insert((m.sender, video), RecvTrack { last: m.counter });
            }
            Some(t) if m.counter > t.last => {
                Stats::add(&self.stats.frames_lost, m.counter - t.last - 1);
                t.last = m.counter;
            }
            Some(_) => Stats::add(&self.stats.frames_late, 1),
        }
    }

    fn request_keyframe(&mut self, now: Instant, mid: Mid, rid: Option<Rid>) {
        if let Some(t) = self.last_kf_req.get(&mid)
            && now.saturating_duration_since(*t) < Duration::from_secs(1)
        {
            return;
        }
        if let Some(mut w) = self.rtc.writer(mid)
            && w.request_keyframe(rid, KeyframeRequestKind::Pli).is_ok()
        {
            Stats::add(&self.stats.keyframe_requests_sent, 1);
            self.last_kf_req.insert(mid, now);
        }
    }

    pub fn close(&mut self) {
        self.rtc.disconnect();
    }
}

pub enum PeerOutput {
    Transmit(Transmit),
    Timeout(Instant),
}
