//! The SFU engine: a sans-IO state machine over many str0m `Rtc` instances sharing one
//! UDP port. The shell feeds it datagrams and timeouts with the time they happened and
//! sends what it returns; signalling calls its command methods. It never reads a clock.
//!
//! Each participant has two peer connections: a publish pc (client offers) whose RTP
//! packets arrive as `Event::RtpPacket`, and a subscribe pc (we offer) into which we write
//! the forwarded packets with rewritten headers (see [`crate::forward`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::codec::{PayloadInfo, h264, vp8};
use media::recovery::{FrameMarking, ReceiverEvent, ReceiverStats, SenderEvent, SenderStats};
use media::red::{RedHistory, Spacing};
use media::speaker::{SpeakerConfig, SpeakerDetector};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{DatagramRecv, Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Rtc, RtcConfig};

use crate::alloc::{Demand, allocate};
use crate::forward::{Forwarder, InPacket, Layer, Verdict};
use crate::keyframe::KeyframeGate;
use crate::protect::{self, FramePacket, ProtectedRx, ProtectedTx, SeqExtender, TxPolicy};
use crate::{
    ParticipantId, PcRole, Preference, Quality, QualityStat, RoomId, SfuError, SfuEvent,
    TrackDecl, TrackId, TrackInfo, TrackMapping, TrackSource,
};

/// Tuning of the engine.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Addresses put in SDP as host candidates (the shared UDP socket as peers reach it).
    pub candidates: Vec<SocketAddr>,
    /// Minimum time between keyframe requests for one layer of one track.
    pub keyframe_interval: Duration,
    /// Starting bandwidth estimate of a subscribe pc.
    pub initial_bwe: Bitrate,
    /// How often participants get network-quality reports.
    pub quality_interval: Duration,
    /// Participants one node accepts.
    pub max_participants: usize,
    /// The shell runs a timeout this close to now at once instead of sleeping for it
    /// (see `shell`); zero sleeps for every timeout.
    pub timer_slack: Duration,
    /// FEC sizing of protected downlinks (latency bought with repair, see
    /// [`TxPolicy::SFU_DOWNLINK`]).
    pub downlink_protection: TxPolicy,
    /// How long past its deadline a protected uplink keeps repairing a frame (see
    /// [`protect::SFU_UPLINK_LATE_GRACE`]).
    pub uplink_late_grace: Duration,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            candidates: vec![],
            keyframe_interval: Duration::from_millis(500),
            initial_bwe: Bitrate::kbps(2_500),
            quality_interval: Duration::from_secs(2),
            max_participants: 2_000,
            timer_slack: Duration::from_millis(1),
            downlink_protection: TxPolicy::SFU_DOWNLINK,
            uplink_late_grace: protect::SFU_UPLINK_LATE_GRACE,
        }
    }
}

/// Input to [`Sfu::handle_input`].
#[derive(Debug)]
pub enum Input<'a> {
    /// A datagram read from the media socket at `now`.
    Datagram { now: Instant, source: SocketAddr, destination: SocketAddr, contents: &'a [u8] },
    /// Time passed.
    Timeout(Instant),
}

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Output of [`Sfu::poll_output`].
#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(SfuEvent),
    Timeout(Instant),
}

/// Counters the shell exports as metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub datagrams_in: u64,
    pub datagrams_unparseable: u64,
    pub datagrams_unmatched: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub rtp_dropped_layer: u64,
    pub keyframe_requests_up: u64,
    pub keyframe_requests_absorbed: u64,
    pub layer_switches: u64,
    /// Frames the uplink recovery of protected streams delivered to forwarding.
    pub protected_frames_up: u64,
    /// Frames it could not complete (or whose reference was lost): never forwarded.
    pub protected_skipped_up: u64,
    /// Of those, frames still incomplete at their deadline (the rest waited for a keyframe
    /// or a reference): each one is a recovery failure on the uplink.
    pub protected_incomplete_up: u64,
    /// Runs of packets of which nothing arrived, given up by the uplink recovery.
    pub protected_gaps_up: u64,
    /// RED audio packets whose block headers did not describe their bytes (dropped).
    pub red_malformed: u64,
    /// Audio frames whose own packet was lost on the way in, forwarded from the
    /// redundancy of a later packet.
    pub red_recovered: u64,
    /// RED audio packets dropped because their frame had gone out already (from a copy
    /// in a later packet, or a duplicate).
    pub red_duplicates: u64,
}

type PeerKey = u32;

const TICK: Duration = Duration::from_millis(100);
const ALLOC_EVERY: Duration = Duration::from_millis(500);
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// Due timeouts a drain handles inline before leaving the rest to the shell (see `drain_peer`).
const MAX_INLINE_TIMEOUTS: usize = 256;

struct Peer {
    rtc: Rtc,
    participant: ParticipantId,
    role: PcRole,
    timeout: Instant,
    connected: bool,
    /// Written to since it was last drained (listed in `Sfu::dirty`).
    dirty: bool,
    /// Publisher streams already resolved to (track, layer).
    ssrcs: HashMap<Ssrc, (TrackId, Layer)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Wants an m-line in the next subscriber offer.
    New,
    /// In an offer that is not answered yet.
    Negotiating,
    Open,
    /// Its m-line should be stopped in the next offer.
    Stopping,
    /// The offer stopping its m-line is out; the answer retires it.
    StopOffered,
}

struct Subscription {
    mid: Option<Mid>,
    state: SubState,
    fwd: Forwarder,
    pref: Preference,
    /// Publisher payload type → subscriber payload type.
    pt_map: Vec<(u8, Option<u8>)>,
    /// The outgoing stream was taken off the pacer (see `on_rtp`).
    unpaced: bool,
    /// Loss protection of the downlink, when both ends negotiated it.
    protect: Option<Downlink>,
    /// The subscriber's RED payload type for the track's audio, once looked up (`None`
    /// inside: it did not negotiate RED and gets the primary frames alone).
    red_pt: Option<Option<u8>>,
    /// Loss the subscriber's receiver reports give for this stream (the latest average).
    rr_loss: Option<f32>,
    /// Gaps between this audio stream's packets on the downlink, in packets of the
    /// protected video whose loss runs size the RED copies (`media::red::distances_for`).
    red_spacing: Spacing,
}

/// A protected subscription's sending end.
struct Downlink {
    /// Carrier payload type on the subscribe pc.
    pt: Pt,
    tx: Option<ProtectedTx>,
}

#[derive(Default)]
struct Uplink {
    rtt: Option<Duration>,
    loss: Option<f32>,
}

struct Participant {
    room: RoomId,
    publisher: Option<PeerKey>,
    subscriber: Option<PeerKey>,
    subs: HashMap<TrackId, Subscription>,
    pending_offer: Option<SdpPendingOffer>,
    renegotiate: bool,
    budget: Option<u64>,
    /// The media budget of the protected downlinks' own congestion control, summed: the
    /// value the last allocation used.
    protected_budget: Option<u64>,
    desired_sent: u64,
    up: Uplink,
    down: Uplink,
    last_media: Option<Instant>,
}

#[derive(Clone, Copy, Default)]
struct LayerState {
    bytes: u64,
    bps: u64,
    last_packet: Option<Instant>,
    paused: bool,
    size: Option<(u16, u16)>,
}

struct Track {
    owner: ParticipantId,
    room: RoomId,
    kind: MediaKind,
    source: TrackSource,
    label: Option<String>,
    audience: Option<ParticipantId>,
    mid: Mid,
    /// rid per layer index (`None` entries for a non-simulcast track).
    rids: Vec<Option<Rid>>,
    layers: [LayerState; 3],
    gates: [KeyframeGate; 3],
    codecs: HashMap<u8, PayloadParams>,
    clock_rate: u32,
    temporal_seen: bool,
    muted: bool,
    subscribers: Vec<ParticipantId>,
    /// Uplink recovery of a protected stream: (carrier payload type, receiver).
    protect: Option<(u8, Option<ProtectedRx>, SeqExtender)>,
    /// Audio whose publisher negotiated RFC 2198 RED.
    red: Option<RedTrack>,
}

/// The uplink end of hop-by-hop RED (`docs/fec.md`, *Audio*): frames whose own packets
/// were lost are taken from the redundancy of later ones and forwarded in their place,
/// and each subscriber's redundancy is rebuilt from every frame held, so each hop's
/// copies cover that hop's loss only.
struct RedTrack {
    /// The publisher's RED payload type.
    pt: u8,
    /// The stream the state is of.
    ssrc: Option<Ssrc>,
    history: RedHistory,
    /// Highest publisher sequence number forwarded: a frame recovered from redundancy
    /// goes out under its own number only if that is still ahead.
    last_seq: Option<u64>,
}

impl RedTrack {
    fn new(pt: u8) -> Self {
        RedTrack { pt, ssrc: None, history: RedHistory::new(RED_HISTORY_FRAMES), last_seq: None }
    }

    /// Starts over, for stream `ssrc` (`None`: whichever comes next).
    fn reset(&mut self, ssrc: impl Into<Option<Ssrc>>) {
        *self = RedTrack { ssrc: ssrc.into(), ..RedTrack::new(self.pt) };
    }
}

struct Room {
    participants: Vec<ParticipantId>,
    tracks: Vec<TrackId>,
    speaker: SpeakerDetector<ParticipantId>,
}

/// The SFU engine.
pub struct Sfu {
    cfg: SfuConfig,
    peers: HashMap<PeerKey, Peer>,
    next_peer: PeerKey,
    by_addr: HashMap<SocketAddr, PeerKey>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<RoomId, Room>,
    tracks: HashMap<TrackId, Track>,
    next_track: u64,
    out: VecDeque<Output>,
    deferred: VecDeque<(PeerKey, Event)>,
    /// Subscribe pcs written to and not drained yet. Draining once per batch instead of
    /// once per forwarded packet lets str0m compute its next timeout once per peer.
    dirty: Vec<PeerKey>,
    /// The latest input time, for events that draining a dirty peer yields.
    last_now: Instant,
    /// The time the engine was created; the base of timeouts before any input.
    epoch: Instant,
    last_tick: Option<Instant>,
    last_alloc: Option<Instant>,
    last_rates: Option<Instant>,
    last_quality: Option<Instant>,
    counters: Counters,
}

fn rid_layer(rid: &Rid, index: usize) -> Layer {
    match &**rid {
        "q" | "l" | "low" => 0,
        "h" | "m" | "mid" => 1,
        "f" | "high" => 2,
        _ => index.min(2) as Layer,
    }
}

impl Sfu {
    pub fn new(cfg: SfuConfig, now: Instant) -> Self {
        Self {
            cfg,
            epoch: now,
            peers: HashMap::new(),
            next_peer: 1,
            by_addr: HashMap::new(),
            participants: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            next_track: 1,
            out: VecDeque::new(),
            deferred: VecDeque::new(),
            dirty: Vec::new(),
            last_now: now,
            last_tick: None,
            last_alloc: None,
            last_rates: None,
            last_quality: None,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// What the loss protection of the published streams has received and asked for,
    /// summed over the live ones: a gauge, not a counter (ended tracks drop out).
    pub fn uplink_protection_stats(&self) -> ReceiverStats {
        let mut sum = ReceiverStats::default();
        for st in self.tracks.values().filter_map(|t| Some(t.protect.as_ref()?.1.as_ref()?.stats())) {
            sum += st;
        }
        sum
    }

    /// What the loss protection of the open downlinks has put on the wire (media, repair
    /// and retransmissions), summed over the live ones: a gauge, not a counter (ended
    /// subscriptions drop out).
    pub fn downlink_protection_stats(&self) -> SenderStats {
        let mut sum = SenderStats::default();
        let live = self.participants.values().flat_map(|p| p.subs.values());
        for st in live.filter_map(|s| Some(s.protect.as_ref()?.tx.as_ref()?.stats())) {
            sum += st;
        }
        sum
    }

    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    // ---------------------------------------------------------------- commands

    /// Adds a participant to a room (creating the room). Media comes with
    /// [`Sfu::publish`]; what others publish is offered to it on its subscribe pc.
    pub fn join(&mut self, now: Instant, room: RoomId, pid: ParticipantId) -> Result<(), SfuError> {
        if self.participants.contains_key(&pid) {
            return Err(SfuError::AlreadyJoined);
        }
        if self.participants.len() >= self.cfg.max_participants {
            return Err(SfuError::Full);
        }
        let r = self.rooms.entry(room.clone()).or_insert_with(|| Room {
            participants: vec![],
            tracks: vec![],
            speaker: SpeakerDetector::new(SpeakerConfig::default()),
        });
        r.participants.push(pid);
        let existing: Vec<TrackId> = r.tracks.clone();
        self.participants.insert(
            pid,
            Participant {
                room,
                publisher: None,
                subscriber: None,
                subs: HashMap::new(),
                pending_offer: None,
                renegotiate: false,
                budget: None,
                protected_budget: None,
                desired_sent: 0,
                up: Uplink::default(),
                down: Uplink::default(),
                last_media: None,
            },
        );
        for t in existing {
            self.subscribe(pid, t);
        }
        self.negotiate(now, pid);
        self.run_deferred(now);
        Ok(())
    }

    /// Applies the client's offer on its publish pc and returns the answer SDP.
    /// `decls` says what each sending m-line carries; m-lines that are gone or no longer
    /// declared are unpublished.
    pub fn publish(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        offer_sdp: &str,
        decls: &[TrackDecl],
    ) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self.participants.get(&pid).ok_or(SfuError::UnknownParticipant)?;
        let key = match part.publisher {
            Some(k) => k,
            None => {
                let k = self.new_peer(now, pid, PcRole::Publish);
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.publisher = Some(k);
                }
                k
            }
        };
        let peer = self.peers.get_mut(&key).ok_or(SfuError::UnknownParticipant)?;
        let answer = peer
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
        self.drain(key);
        self.reconcile_published(now, pid, key, decls);
        self.run_deferred(now);
        Ok(answer.to_sdp_string())
    }

    /// Applies the client's answer to our last subscribe-pc offer.
    pub fn subscriber_answer(&mut self, now: Instant, pid: ParticipantId, sdp: &str) -> Result<(), SfuError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self.participants.get_mut(&pid).ok_or(SfuError::UnknownParticipant)?;
        let pending = part.pending_offer.take().ok_or(SfuError::NoPendingOffer)?;
        let key = part.subscriber.ok_or(SfuError::NoPendingOffer)?;
        let peer = self.peers.get_mut(&key).ok_or(SfuError::UnknownParticipant)?;
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| SfuError::Sdp(e.to_string()))?;
        for (tid, sub) in part.subs.iter_mut() {
            if sub.state == SubState::Negotiating {
                sub.state = SubState::Open;
                // Protect the downlink of a protected stream when the subscriber took
                // the carrier in its answer.
                let protected_src = self.tracks.get(tid).is_some_and(|t| t.protect.is_some());
                let media = sub.mid.and_then(|m| peer.rtc.media(m));
                if let (true, Some(media)) = (protected_src, media) {
                    let pt = protect::carrier_pt(peer.rtc.codec_config().params(), media.remote_pts());
                    sub.protect = pt.map(|pt| Downlink { pt, tx: None });
                }
            }
        }
        // Only stops that were in the answered offer are done; a track that went away
        // while the offer was out is still `Stopping` and goes into the next offer.
        part.subs.retain(|_, s| s.state != SubState::StopOffered);
        self.drain(key);
        self.negotiate(now, pid);
        self.reallocate(now, pid);
        self.run_deferred(now);
        Ok(())
    }

    /// Adds a trickled ICE candidate of the client.
    pub fn add_candidate(&mut self, now: Instant, pid: ParticipantId, role: PcRole, cand: &str) -> Result<(), SfuError> {
        let c = Candidate::from_sdp_string(cand).map_err(|e| SfuError::Sdp(e.to_string()))?;
        let part = self.participants.get(&pid).ok_or(SfuError::UnknownParticipant)?;
        let key = match role {
            PcRole::Publish => part.publisher,
            PcRole::Subscribe => part.subscriber,
        }
        .ok_or(SfuError::UnknownParticipant)?;
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.rtc.add_remote_candidate(c);
        }
        self.drain(key);
        self.run_deferred(now);
        Ok(())
    }

    /// The subscriber's wish for one track.
    pub fn set_preference(&mut self, now: Instant, pid: ParticipantId, track: TrackId, pref: Preference) -> Result<(), SfuError> {
        let part = self.participants.get_mut(&pid).ok_or(SfuError::UnknownParticipant)?;
        let sub = part.subs.get_mut(&track).ok_or(SfuError::UnknownTrack)?;
        sub.pref = pref;
        self.reallocate(now, pid);
        self.run_deferred(now);
        Ok(())
    }

    /// Stops (or resumes) forwarding what a participant sends from one source.
    pub fn set_muted(&mut self, pid: ParticipantId, source: TrackSource, muted: bool) {
        for t in self.tracks.values_mut() {
            if t.owner == pid && t.source == source {
                t.muted = muted;
                if let Some(red) = &mut t.red {
                    // Nothing from before the mute goes out as a copy after it.
                    red.reset(None);
                }
            }
        }
        if muted && source == TrackSource::Mic {
            if let Some(room) = self.participants.get(&pid).and_then(|p| self.rooms.get_mut(&p.room)) {
                room.speaker.remove(pid);
            }
        }
    }

    /// Removes the track carried by `mid` on the participant's publish pc.
    pub fn unpublish(&mut self, now: Instant, pid: ParticipantId, mid: &str) -> Result<(), SfuError> {
        let tid = self
            .tracks
            .iter()
            .find(|(_, t)| t.owner == pid && &*t.mid == mid)
            .map(|(id, _)| *id)
            .ok_or(SfuError::UnknownTrack)?;
        self.remove_track(now, tid);
        self.run_deferred(now);
        Ok(())
    }

    /// Removes a participant with both its peer connections.
    pub fn leave(&mut self, now: Instant, pid: ParticipantId) {
        let Some(part) = self.participants.get(&pid) else { return };
        let room = part.room.clone();
        let peers: Vec<PeerKey> = part.publisher.into_iter().chain(part.subscriber).collect();
        let owned: Vec<TrackId> = self.tracks.iter().filter(|(_, t)| t.owner == pid).map(|(id, _)| *id).collect();
        for t in owned {
            self.remove_track(now, t);
        }
        for t in self.tracks.values_mut() {
            t.subscribers.retain(|s| *s != pid);
        }
        for k in peers {
            if let Some(mut p) = self.peers.remove(&k) {
                p.rtc.disconnect();
            }
            self.by_addr.retain(|_, v| *v != k);
        }
        self.participants.remove(&pid);
        let mut empty = false;
        if let Some(r) = self.rooms.get_mut(&room) {
            r.participants.retain(|p| *p != pid);
            r.speaker.remove(pid);
            empty = r.participants.is_empty();
        }
        if empty {
            self.rooms.remove(&room);
        }
        self.run_deferred(now);
    }

    // ---------------------------------------------------------------- sans-IO core

    pub fn handle_input(&mut self, input: Input<'_>) {
        let now = match &input {
            Input::Timeout(now) | Input::Datagram { now, .. } => *now,
        };
        self.last_now = self.last_now.max(now);
        match input {
            Input::Timeout(now) => self.handle_timeout(now),
            Input::Datagram { now, source, destination, contents } => {
                self.counters.datagrams_in += 1;
                let Ok(contents) = DatagramRecv::try_from(contents) else {
                    self.counters.datagrams_unparseable += 1;
                    return;
                };
                let input = str0m::Input::Receive(
                    now,
                    Receive { proto: Protocol::Udp, source, destination, contents },
                );
                let key = match self.by_addr.get(&source) {
                    Some(k) if self.peers.get(k).is_some_and(|p| p.rtc.accepts(&input)) => Some(*k),
                    _ => {
                        let k = self.peers.iter().find(|(_, p)| p.rtc.accepts(&input)).map(|(k, _)| *k);
                        if let Some(k) = k {
                            self.by_addr.insert(source, k);
                        }
                        k
                    }
                };
                let Some(key) = key else {
                    self.counters.datagrams_unmatched += 1;
                    return;
                };
                let Some(peer) = self.peers.get_mut(&key) else { return };
                if let Err(e) = peer.rtc.handle_input(input) {
                    tracing::debug!(participant = peer.participant.0, error = %e, "peer input rejected");
                }
                self.drain(key);
                self.run_deferred(now);
            }
        }
    }

    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        if !self.dirty.is_empty() {
            self.drain_dirty();
            if let Some(o) = self.out.pop_front() {
                return o;
            }
        }
        let next_tick = self.last_tick.map(|t| t + TICK);
        let peer_min = self.peers.values().map(|p| p.timeout).chain(self.protect_timeout()).min();
        let t = match (next_tick, peer_min) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => self.epoch + Duration::from_secs(3600),
        };
        Output::Timeout(t)
    }

    fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PeerKey> = self.peers.iter().filter(|(_, p)| p.timeout <= now).map(|(k, _)| *k).collect();
        for k in due {
            if let Some(p) = self.peers.get_mut(&k) {
                if let Err(e) = p.rtc.handle_input(str0m::Input::Timeout(now)) {
                    tracing::debug!(error = %e, "peer timeout failed");
                }
            }
            self.drain(k);
        }
        self.protect_handle_timeout(now);
        if self.last_tick.is_none_or(|t| now >= t + TICK) {
            self.last_tick = Some(now);
            self.tick(now);
        }
        self.run_deferred(now);
    }

    fn tick(&mut self, now: Instant) {
        // Retry absorbed keyframe requests whose keyframe never came.
        let mut retry = vec![];
        for (tid, t) in &mut self.tracks {
            for (l, g) in t.gates.iter_mut().enumerate() {
                if g.handle_timeout(now) {
                    retry.push((*tid, l as Layer));
                }
            }
        }
        for (tid, l) in retry {
            self.send_keyframe_request(now, tid, l);
        }
        // Active speaker per room.
        let mut changes = vec![];
        for (id, r) in &mut self.rooms {
            if let Some(c) = r.speaker.evaluate(now) {
                changes.push(SfuEvent::ActiveSpeaker { room: id.clone(), participant: c });
            }
        }
        self.out.extend(changes.into_iter().map(Output::Event));

        if self.last_rates.is_none_or(|t| now >= t + RATE_WINDOW) {
            let secs = self.last_rates.map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64().max(0.1));
            self.last_rates = Some(now);
            for t in self.tracks.values_mut() {
                for l in &mut t.layers {
                    l.bps = (l.bytes as f64 * 8.0 / secs) as u64;
                    l.bytes = 0;
                }
            }
        }
        if self.last_alloc.is_none_or(|t| now >= t + ALLOC_EVERY) {
            self.last_alloc = Some(now);
            let pids: Vec<ParticipantId> = self.participants.keys().copied().collect();
            for pid in pids {
                self.reallocate(now, pid);
            }
        }
        if self.last_quality.is_none_or(|t| now >= t + self.cfg.quality_interval) {
            self.last_quality = Some(now);
            self.emit_quality(now);
        }
        // Peers whose ICE/DTLS died.
        let dead: Vec<(PeerKey, ParticipantId, PcRole)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.rtc.is_alive())
            .map(|(k, p)| (*k, p.participant, p.role))
            .collect();
        for (k, pid, role) in dead {
            self.peer_lost(now, k, pid, role);
        }
    }

    // ---------------------------------------------------------------- internals

    fn rtc_config(&self, role: PcRole) -> RtcConfig {
        let mut cfg = RtcConfig::new()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h264(true)
            .enable_vp8(true)
            .enable_opus(true, true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .set_extension(protect::FRAME_MARKING_EXT_ID, protect::frame_marking_extension());
        protect::add_tunnel_codec(cfg.codec_config());
        if role == PcRole::Subscribe {
            cfg = cfg.enable_bwe(Some(self.cfg.initial_bwe));
        }
        cfg
    }

    fn new_peer(&mut self, now: Instant, pid: ParticipantId, role: PcRole) -> PeerKey {
        let mut rtc = self.rtc_config(role).build(now);
        for addr in &self.cfg.candidates {
            match Candidate::host(*addr, "udp") {
                Ok(c) => {
                    rtc.add_local_candidate(c);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "unusable media address"),
            }
        }
        let key = self.next_peer;
        self.next_peer = self.next_peer.wrapping_add(1).max(1);
        self.peers.insert(
            key,
            Peer { rtc, participant: pid, role, timeout: now, connected: false, dirty: false, ssrcs: HashMap::new() },
        );
        key
    }

    /// Polls one peer until it has nothing more, queueing transmits and events.
    fn drain(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.get_mut(&key) {
            drain_peer(peer, key, self.last_now, &mut self.out, &mut self.deferred);
        }
    }

    /// Drains the peers forwarded packets were written to, and whatever that causes.
    fn drain_dirty(&mut self) {
        while !self.dirty.is_empty() {
            for key in std::mem::take(&mut self.dirty) {
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.dirty = false;
                    drain_peer(peer, key, self.last_now, &mut self.out, &mut self.deferred);
                }
            }
            self.run_deferred(self.last_now);
        }
    }

    fn run_deferred(&mut self, now: Instant) {
        while let Some((key, ev)) = self.deferred.pop_front() {
            self.on_event(now, key, ev);
        }
    }

    fn on_event(&mut self, now: Instant, key: PeerKey, ev: Event) {
        let Some(peer) = self.peers.get_mut(&key) else { return };
        let (pid, role) = (peer.participant, peer.role);
        match ev {
            Event::RtpPacket(pkt) => self.on_rtp(now, key, pkt),
            Event::KeyframeRequest(req) => {
                let Some(part) = self.participants.get(&pid) else { return };
                let found = part.subs.iter().find(|(_, s)| s.mid == Some(req.mid));
                if let Some((tid, s)) = found {
                    if let Some(l) = s.fwd.current() {
                        let tid = *tid;
                        self.keyframe_wanted(now, tid, l);
                    }
                }
            }
            Event::AppSpecificFeedback(f) if role == PcRole::Subscribe => {
                self.downlink_feedback(now, pid, *f.media_ssrc, &f.payload);
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.budget = Some(estimate.as_u64());
                }
            }
            Event::StreamPaused(sp) => {
                let found = self
                    .tracks
                    .iter_mut()
                    .find(|(_, t)| t.owner == pid && t.mid == sp.mid)
                    .map(|(id, t)| (*id, t));
                if let Some((tid, t)) = found {
                    let idx = t.rids.iter().position(|r| *r == sp.rid).unwrap_or(0);
                    let layer = sp.rid.as_ref().map_or(0, |r| rid_layer(r, idx));
                    t.layers[usize::from(layer)].paused = sp.paused;
                    if sp.paused {
                        t.layers[usize::from(layer)].bps = 0;
                        let subs = t.subscribers.clone();
                        for s in subs {
                            if let Some(sub) = self.participants.get_mut(&s).and_then(|p| p.subs.get_mut(&tid)) {
                                sub.fwd.layer_lost(layer);
                            }
                            self.reallocate(now, s);
                        }
                    }
                }
            }
            Event::MediaEgressStats(s) if role == PcRole::Subscribe => {
                if let Some(sub) = self.participants.get_mut(&pid).and_then(|p| p.subs.values_mut().find(|sub| sub.mid == Some(s.mid))) {
                    // str0m's `loss` needs two reports; until then, the first report's
                    // cumulative loss against what was sent.
                    let first = s.remote.as_ref().map(|r| (r.packets_lost as f32 / s.packets.max(1) as f32).clamp(0.0, 1.0));
                    sub.rr_loss = s.loss.or(sub.rr_loss).or(first);
                }
            }
            Event::PeerStats(s) => {
                if let Some(p) = self.participants.get_mut(&pid) {
                    let link = match role {
                        PcRole::Publish => &mut p.up,
                        PcRole::Subscribe => &mut p.down,
                    };
                    link.rtt = s.rtt.or(link.rtt);
                    let loss = match role {
                        PcRole::Publish => s.ingress_loss_fraction,
                        PcRole::Subscribe => s.egress_loss_fraction,
                    };
                    link.loss = loss.or(link.loss);
                }
            }
            Event::Connected => {
                peer.connected = true;
                self.out.push_back(Output::Event(SfuEvent::MediaConnected { participant: pid, pc: role }));
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.peer_lost(now, key, pid, role);
            }
            _ => {}
        }
    }

    fn peer_lost(&mut self, now: Instant, key: PeerKey, pid: ParticipantId, role: PcRole) {
        if let Some(mut p) = self.peers.remove(&key) {
            p.rtc.disconnect();
        }
        self.by_addr.retain(|_, v| *v != key);
        if let Some(part) = self.participants.get_mut(&pid) {
            match role {
                PcRole::Publish => part.publisher = None,
                PcRole::Subscribe => {
                    part.subscriber = None;
                    part.pending_offer = None;
                    for s in part.subs.values_mut() {
                        s.mid = None;
                        s.state = SubState::New;
                    }
                }
            }
        }
        if role == PcRole::Publish {
            let owned: Vec<TrackId> = self.tracks.iter().filter(|(_, t)| t.owner == pid).map(|(id, _)| *id).collect();
            for t in owned {
                self.remove_track(now, t);
            }
        }
        self.out.push_back(Output::Event(SfuEvent::MediaDisconnected { participant: pid, pc: role }));
    }

    /// Makes the set of published tracks match the declarations after an offer.
    fn reconcile_published(&mut self, now: Instant, pid: ParticipantId, key: PeerKey, decls: &[TrackDecl]) {
        let Some(room) = self.participants.get(&pid).map(|p| p.room.clone()) else { return };
        let Some(peer) = self.peers.get(&key) else { return };
        let mut keep = vec![];
        let mut added = vec![];
        for d in decls {
            let Some(media) = peer.rtc.media(Mid::from(d.mid.as_str())) else { continue };
            // Our side of a client's sending m-line is recvonly.
            if !matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) || media.kind() != d.kind {
                continue;
            }
            let existing = self.tracks.iter().find(|(_, t)| t.owner == pid && t.mid == media.mid()).map(|(id, _)| *id);
            if let Some(id) = existing {
                // A renegotiation may change the codec (the fallback to VP8 for a
                // subscriber that cannot decode H.264): learn the new payload types.
                let codecs = negotiated_codecs(&peer.rtc, media.remote_pts());
                if let Some(t) = self.tracks.get_mut(&id) {
                    t.codecs = codecs;
                }
                keep.push(id);
                continue;
            }
            let rids: Vec<Option<Rid>> = {
                let r: Vec<Option<Rid>> = match media.rids_rx() {
                    str0m::media::Rids::Specific(v) => v.iter().map(|r| Some(*r)).collect(),
                    _ => vec![],
                };
                if r.is_empty() { vec![None] } else { r }
            };
            let codecs = negotiated_codecs(&peer.rtc, media.remote_pts());
            // Loss protection is for video from peers that negotiated the carrier.
            let carrier = codecs_carrier(&codecs).filter(|_| d.kind == MediaKind::Video);
            // str0m keeps a codec's RED payload type only if the remote accepted it (it is
            // not among `remote_pts`, like RTX).
            let red = codecs
                .values()
                .find_map(|p| p.red())
                .filter(|_| d.kind == MediaKind::Audio)
                .map(|r| RedTrack::new(*r));
            let id = TrackId(self.next_track);
            self.next_track += 1;
            let gate = KeyframeGate::new(self.cfg.keyframe_interval);
            self.tracks.insert(
                id,
                Track {
                    owner: pid,
                    room: room.clone(),
                    kind: d.kind,
                    source: d.source,
                    label: d.label.clone(),
                    audience: d.audience,
                    mid: media.mid(),
                    rids,
                    layers: [LayerState::default(); 3],
                    gates: [gate.clone(), gate.clone(), gate],
                    codecs,
                    clock_rate: if d.kind == MediaKind::Audio { 48_000 } else { 90_000 },
                    temporal_seen: false,
                    muted: false,
                    subscribers: vec![],
                    protect: carrier.map(|pt| (pt, None, SeqExtender::default())),
                    red,
                },
            );
            keep.push(id);
            added.push(id);
        }
        let gone: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(id, t)| t.owner == pid && !keep.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for t in gone {
            self.remove_track(now, t);
        }
        let others: Vec<ParticipantId> = self
            .rooms
            .get_mut(&room)
            .map(|r| {
                r.tracks.extend(added.iter().copied());
                r.participants.iter().copied().filter(|p| *p != pid).collect()
            })
            .unwrap_or_default();
        for id in &added {
            if let Some(info) = self.track_info(*id) {
                self.out.push_back(Output::Event(SfuEvent::TrackPublished { room: room.clone(), track: info }));
            }
            for o in &others {
                self.subscribe(*o, *id);
            }
        }
        for o in others {
            self.negotiate(now, o);
        }
    }

    fn track_info(&self, id: TrackId) -> Option<TrackInfo> {
        let t = self.tracks.get(&id)?;
        Some(TrackInfo { id, owner: t.owner, kind: t.kind, source: t.source, label: t.label.clone(), audience: t.audience })
    }

    fn subscribe(&mut self, pid: ParticipantId, tid: TrackId) {
        let Some(t) = self.tracks.get_mut(&tid) else { return };
        if t.audience.is_some_and(|a| a != pid) {
            return;
        }
        let Some(part) = self.participants.get_mut(&pid) else { return };
        if part.subs.contains_key(&tid) {
            return;
        }
        t.subscribers.push(pid);
        let start = if t.kind == MediaKind::Audio { Some(0) } else { Some(2) };
        part.subs.insert(
            tid,
            Subscription { mid: None, state: SubState::New, fwd: Forwarder::new(start), pref: Preference::default(), pt_map: vec![], unpaced: false, protect: None, red_pt: None, rr_loss: None, red_spacing: Spacing::default() },
        );
        part.renegotiate = true;
    }

    fn remove_track(&mut self, now: Instant, tid: TrackId) {
        let Some(t) = self.tracks.remove(&tid) else { return };
        if let Some(r) = self.rooms.get_mut(&t.room) {
            r.tracks.retain(|x| *x != tid);
        }
        for pid in &t.subscribers {
            if let Some(part) = self.participants.get_mut(pid) {
                if let Some(sub) = part.subs.get_mut(&tid) {
                    if sub.mid.is_some() {
                        sub.state = SubState::Stopping;
                        part.renegotiate = true;
                    } else {
                        part.subs.remove(&tid);
                    }
                }
            }
        }
        self.out.push_back(Output::Event(SfuEvent::TrackUnpublished { room: t.room.clone(), track: tid, owner: t.owner }));
        for pid in t.subscribers {
            self.negotiate(now, pid);
        }
    }

    /// Sends a new subscribe-pc offer if anything changed and none is outstanding.
    fn negotiate(&mut self, now: Instant, pid: ParticipantId) {
        let Some(part) = self.participants.get(&pid) else { return };
        if part.pending_offer.is_some() || !part.renegotiate {
            return;
        }
        if part.subs.is_empty() && part.subscriber.is_none() {
            return;
        }
        let key = match part.subscriber {
            Some(k) => k,
            None => {
                let k = self.new_peer(now, pid, PcRole::Subscribe);
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.subscriber = Some(k);
                }
                k
            }
        };
        let (Some(part), Some(peer)) = (self.participants.get_mut(&pid), self.peers.get_mut(&key)) else { return };
        part.renegotiate = false;
        let mut api = peer.rtc.sdp_api();
        let mut ids: Vec<TrackId> = part.subs.keys().copied().collect();
        ids.sort();
        for tid in &ids {
            let Some(sub) = part.subs.get_mut(tid) else { continue };
            match sub.state {
                SubState::New => {
                    let Some(t) = self.tracks.get(tid) else { continue };
                    let mid = api.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(format!("p{}", t.owner.0)),
                        Some(format!("t{}", tid.0)),
                        None,
                    );
                    sub.mid = Some(mid);
                    sub.state = SubState::Negotiating;
                }
                SubState::Stopping => {
                    if let Some(mid) = sub.mid {
                        api.stop_media(mid);
                    }
                    sub.state = SubState::StopOffered;
                }
                _ => {}
            }
        }
        if !api.has_changes() {
            return;
        }
        let Some((offer, pending)) = api.apply() else { return };
        part.pending_offer = Some(pending);
        let tracks = ids
            .iter()
            .filter_map(|tid| {
                let sub = part.subs.get(tid)?;
                if matches!(sub.state, SubState::Stopping | SubState::StopOffered) {
                    return None;
                }
                let t = self.tracks.get(tid)?;
                Some(TrackMapping {
                    track: TrackInfo {
                        id: *tid,
                        owner: t.owner,
                        kind: t.kind,
                        source: t.source,
                        label: t.label.clone(),
                        audience: t.audience,
                    },
                    mid: sub.mid?.to_string(),
                })
            })
            .collect();
        self.out.push_back(Output::Event(SfuEvent::SubscriberOffer { participant: pid, sdp: offer.to_sdp_string(), tracks }));
        self.drain(key);
    }

    fn on_rtp(&mut self, now: Instant, key: PeerKey, pkt: RtpPacket) {
        self.counters.rtp_in += 1;
        let Some(peer) = self.peers.get_mut(&key) else { return };
        let pid = peer.participant;
        let ssrc = pkt.header.ssrc;
        let (tid, layer) = match peer.ssrcs.get(&ssrc) {
            Some(x) => *x,
            None => {
                let Some((mid, rid)) = peer.rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else {
                    return;
                };
                let Some((tid, t)) = self.tracks.iter().find(|(_, t)| t.owner == pid && t.mid == mid) else {
                    return;
                };
                let idx = t.rids.iter().position(|r| *r == rid).unwrap_or(0);
                let layer = rid.as_ref().map_or(0, |r| rid_layer(r, idx));
                peer.ssrcs.insert(ssrc, (*tid, layer));
                (*tid, layer)
            }
        };
        if let Some(p) = self.participants.get_mut(&pid) {
            p.last_media = Some(now);
        }
        let Some(track) = self.tracks.get_mut(&tid) else { return };
        let pt = *pkt.header.payload_type;
        if let Some((carrier, rx, _)) = &mut track.protect {
            if pt == *carrier {
                let params: Vec<PayloadParams> = track.codecs.values().copied().collect();
                let first = rx.is_none();
                // Our feedback's sender SSRC only has to differ from the media's.
                let rx = rx.get_or_insert_with(|| ProtectedRx::new(*ssrc, !*ssrc, protect::HOP_PLAYOUT_DELAY).with_late_grace(self.cfg.uplink_late_grace));
                rx.handle_rtp(now, &pkt, &params);
                if first {
                    // The recovery loop asks for what it needs; str0m's own NACKs would
                    // only ask for carrier packets nobody keeps.
                    if let Some(p) = self.peers.get_mut(&key) {
                        if let Some(s) = p.rtc.direct_api().stream_rx(&ssrc) {
                            s.suppress_nack(true);
                        }
                    }
                }
                self.pump_uplink(now, tid);
                return;
            }
        }
        let seq = *pkt.seq_no;
        let ts = pkt.header.timestamp;
        let mut recovered = vec![];
        let muted = track.muted;
        let (pt, payload) = match &mut track.red {
            // Nothing a muted participant sends is kept: it would go out as copies after
            // the unmute.
            Some(_) if muted => (pt, pkt.payload),
            Some(red) => {
                if red.ssrc != Some(ssrc) {
                    // A new stream: its numbers and timestamps start elsewhere.
                    red.reset(ssrc);
                }
                // A fresh history (stream start, after a mute) keeps nothing from before its
                // first packet, so no copy of a muted frame goes out after the unmute.
                let pushed = if pt == red.pt {
                    match red.history.push_red(ts, &pkt.payload) {
                        Ok(p) => p,
                        Err(_) => {
                            self.counters.red_malformed += 1;
                            return;
                        }
                    }
                } else {
                    red.history.push_plain(ts, pt, &pkt.payload)
                };
                if pushed.reset {
                    red.last_seq = None;
                }
                if !pushed.primary_new && red.last_seq.is_some_and(|l| seq <= l) {
                    // Its frame went out already, from a copy in a later packet (or this is
                    // a duplicate): sent again, its number would carry different bytes.
                    self.counters.red_duplicates += 1;
                    return;
                }
                let step = red.history.frame_ts().filter(|s| *s > 0);
                for b in pushed.recovered {
                    // One frame per packet: the lost packet's number is as far back as its
                    // frame. Before the first packet there is nothing to fill in.
                    let Some(back) = step.filter(|s| b.ts_offset % s == 0).map(|s| u64::from(b.ts_offset / s)) else { continue };
                    let Some(s) = seq.checked_sub(back) else { continue };
                    if red.last_seq.is_some_and(|l| s > l) {
                        recovered.push((s, ts.wrapping_sub(b.ts_offset), b.pt, Arc::<[u8]>::from(b.data)));
                    }
                }
                let primary = (pushed.primary.pt, Arc::from(pushed.primary.data));
                red.last_seq = Some(red.last_seq.map_or(seq, |l| l.max(seq)));
                primary
            }
            None => (pt, pkt.payload),
        };
        for (seq, ts, pt, payload) in recovered {
            self.counters.red_recovered += 1;
            let fwd = Fwd {
                pt,
                seq,
                ts,
                marker: false,
                audio_level: None,
                voice_activity: None,
                layer_mark: None,
                payload,
                arrival: pkt.timestamp,
                marking: None,
            };
            self.forward(now, pid, tid, layer, fwd);
        }
        let fwd = Fwd {
            pt,
            seq,
            ts,
            marker: pkt.header.marker,
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            // A picture-level marking (see `protect::FRAME_MARKING_URI`): its layer only.
            layer_mark: pkt.header.ext_vals.user_values.get::<FrameMarking>().map(|m| (m.tid, m.base_sync)),
            payload,
            arrival: pkt.timestamp,
            marking: None,
        };
        self.forward(now, pid, tid, layer, fwd);
    }

    /// Forwards one packet of a published track (received, or completed by the uplink
    /// recovery of a protected stream) to its subscribers.
    fn forward(&mut self, now: Instant, pid: ParticipantId, tid: TrackId, layer: Layer, pkt: Fwd) {
        let Some(track) = self.tracks.get_mut(&tid) else { return };
        let pt = pkt.pt;
        let params = track.codecs.get(&pt).copied();
        let codec = params.map(|p| p.spec().codec);
        let payload: &[u8] = &pkt.payload;
        // One parse of the VP8 descriptor serves layer detection and id rewriting.
        let vp8_fields = if codec == Some(Codec::Vp8) { vp8::parse_descriptor(payload) } else { None };
        let info = match (pkt.marking, codec) {
            // Frame marking says it for any codec.
            (Some(m), _) => Some(PayloadInfo {
                keyframe_start: m.start && m.independent,
                frame_start: m.start,
                temporal_id: Some(m.tid),
                layer_sync: m.base_sync,
            }),
            (None, Some(Codec::H264)) => h264::inspect(payload).map(|i| match pkt.layer_mark {
                Some((tid, sync)) => PayloadInfo { temporal_id: Some(tid), layer_sync: sync, ..i },
                None => i,
            }),
            (None, Some(Codec::Vp8)) => vp8_fields.map(|d| vp8::info(&d, payload)),
            _ => Some(PayloadInfo { keyframe_start: true, frame_start: true, ..Default::default() }),
        };
        let Some(info) = info else { return };
        let ls = &mut track.layers[usize::from(layer)];
        ls.bytes += payload.len() as u64;
        ls.last_packet = Some(now);
        ls.paused = false;
        if info.temporal_id.is_some() {
            track.temporal_seen = true;
        }
        if track.kind == MediaKind::Video && info.keyframe_start {
            track.gates[usize::from(layer)].keyframe_received(now);
            let size = match codec {
                Some(Codec::H264) => h264::sps_size_in_payload(payload),
                Some(Codec::Vp8) => vp8::keyframe_size(payload),
                _ => None,
            };
            if size.is_some() {
                ls.size = size;
            }
        }
        if track.kind == MediaKind::Audio && !track.muted {
            if let (Some(level), Some(room)) = (pkt.audio_level, self.rooms.get_mut(&track.room)) {
                room.speaker.add_level(now, pid, level);
            }
        }
        if track.muted {
            return;
        }
        let vp8d = if codec == Some(Codec::Vp8) { Vp8Descriptor::parse(payload).ok() } else { None };
        let inp = InPacket {
            layer,
            seq: pkt.seq,
            ts: pkt.ts,
            clock_rate: track.clock_rate,
            info,
            vp8_picture_id: vp8_fields.and_then(|d| d.picture_id),
            vp8_tl0: vp8_fields.and_then(|d| d.tl0_pic_idx),
            arrival: pkt.arrival,
        };
        let is_video = track.kind == MediaKind::Video;
        let mut ext = ExtensionValues::default();
        if !is_video {
            ext.audio_level = pkt.audio_level;
            ext.voice_activity = pkt.voice_activity;
        }
        if let Some(red) = &mut track.red {
            red.history.next_packet(pkt.ts);
        }
        let mut want_kf: Vec<Layer> = vec![];
        for i in 0..track.subscribers.len() {
            let spid = track.subscribers[i];
            let Some(part) = self.participants.get_mut(&spid) else { continue };
            let Some(skey) = part.subscriber else { continue };
            // Not for a subscriber known to lack RED: it gets the primary alone.
            let lacks_red = part.subs.get(&tid).is_some_and(|s| s.red_pt == Some(None));
            let red_channel = track.red.as_ref().filter(|_| !lacks_red).map(|_| downlink_channel(part, tid));
            let Some(sub) = part.subs.get_mut(&tid) else { continue };
            if sub.state != SubState::Open {
                continue;
            }
            let Some(mid) = sub.mid else { continue };
            let verdict = sub.fwd.process(&inp);
            if let Some(l) = sub.fwd.wanted_keyframe() {
                if !want_kf.contains(&l) {
                    want_kf.push(l);
                }
            }
            let Verdict::Forward(o) = verdict else {
                self.counters.rtp_dropped_layer += 1;
                continue;
            };
            let Some(speer) = self.peers.get_mut(&skey) else { continue };
            let out_pt = match sub.pt_map.iter().find(|(i, _)| *i == pt) {
                Some((_, o)) => *o,
                None => {
                    // Only a payload type the subscriber's answer accepted on this m-line:
                    // the local codec config lists codecs the remote may have refused.
                    let accepted = sub.mid.and_then(|m| speer.rtc.media(m)).map(|m| m.remote_pts());
                    let mapped = params
                        .and_then(|params| speer.rtc.codec_config().match_params(params).map(|p| *p.pt()))
                        .filter(|o| accepted.is_none_or(|a| a.iter().any(|x| **x == *o)));
                    sub.pt_map.push((pt, mapped));
                    if let (None, true, Some(codec)) = (mapped, is_video, codec) {
                        // The subscriber cannot decode this codec (Firefox without
                        // H.264): ask the publisher to fall back to VP8, which every
                        // browser decodes. Asked once per subscriber and payload type.
                        self.out.push_back(Output::Event(SfuEvent::CodecUnsupported {
                            publisher: pid,
                            track: tid,
                            codec: codec.to_string(),
                        }));
                    }
                    mapped
                }
            };
            let Some(out_pt) = out_pt else { continue };
            if let (Some(down), Some(marking)) = (&mut sub.protect, pkt.marking) {
                if down.tx.is_none() {
                    let ssrc = speer.rtc.direct_api().stream_tx_by_mid(mid, None).map(|s| *s.ssrc());
                    let rtx_pt = protect::rtx_pt_for(speer.rtc.codec_config().params(), out_pt);
                    // The first sequence numbers only need to differ between streams.
                    down.tx = ssrc.and_then(|s| ProtectedTx::new(s, out_pt, rtx_pt, self.cfg.downlink_protection, (s as u16) & 0x7fff).ok());
                }
                let Some(tx) = &mut down.tx else { continue };
                let fp = FramePacket { timestamp: o.ts, marker: pkt.marker, marking, payload: &pkt.payload };
                if let Err(e) = tx.push_packet(now, &fp) {
                    tracing::debug!(error = %e, "protected downlink rejected a packet");
                }
                if !sub.unpaced {
                    if let Some(stx) = speer.rtc.direct_api().stream_tx_by_mid(mid, None) {
                        stx.set_unpaced(true);
                    }
                    sub.unpaced = true;
                }
                tx.flush_into(&mut speer.rtc, mid, down.pt, now);
                self.counters.rtp_forwarded += 1;
                drain_peer(speer, skey, now, &mut self.out, &mut self.deferred);
                continue;
            }
            let (mut out_pt, mut payload) = (out_pt, pkt.payload.clone());
            if let (Some(red), Some((loss, burst, others))) = (&track.red, red_channel) {
                // Loss runs and datagrams counted on the same protected stream, so the
                // gaps are in the units the runs were measured in; without one, loss is
                // taken as independent and the gaps do not matter.
                let gaps = sub.red_spacing.observe(others.unwrap_or(0));
                let red_pt = *sub.red_pt.get_or_insert_with(|| {
                    params.and_then(|params| speer.rtc.codec_config().match_params(params)).and_then(|p| p.red()).map(|r| *r)
                });
                // Rebuilt from every frame the SFU holds, with as many copies as this
                // subscriber's own downlink needs; without RED it gets the primary.
                let primary_pt = out_pt;
                let pt_map = &sub.pt_map;
                // Blocks of a type the subscriber did not accept are left out.
                let map = |p: u8| if p == pt { Some(primary_pt) } else { pt_map.iter().find(|(i, _)| *i == p).and_then(|(_, o)| *o) };
                if let Some(b) = red_pt.and_then(|rp| Some((rp, red.history.build(pkt.ts, &media::red::distances_for(loss, burst, gaps), map)?))) {
                    (out_pt, payload) = (b.0, Arc::from(b.1));
                }
            }
            let mut w = RtpWrite::new(out_pt.into(), o.seq.into(), o.ts, inp.arrival, payload)
                .marker(pkt.marker)
                .nackable(is_video)
                .ext_vals(ext.clone());
            if let (Some(d), Some(pic), Some(tl0)) = (&vp8d, o.vp8_picture_id, o.vp8_tl0) {
                if let Ok(patch) = d.patch().picture_id(pic).tl0_pic_idx(tl0).build() {
                    w = w.vp8_patch(patch);
                }
            } else if let (Some(d), Some(pic)) = (&vp8d, o.vp8_picture_id) {
                if let Ok(patch) = d.patch().picture_id(pic).build() {
                    w = w.vp8_patch(patch);
                }
            }
            {
                let mut api = speer.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else { continue };
                // Forwarded packets were paced by their publisher already; str0m's pacer
                // (active with BWE) would queue them behind its estimate and add latency.
                // The allocator, not the pacer, keeps the rate within the estimate.
                if !sub.unpaced {
                    tx.set_unpaced(true);
                    sub.unpaced = true;
                }
                tx.write_rtp(w);
            }
            self.counters.rtp_forwarded += 1;
            if !speer.dirty {
                speer.dirty = true;
                self.dirty.push(skey);
            }
        }
        for l in want_kf {
            self.keyframe_wanted(now, tid, l);
        }
    }

    /// Forwards what the uplink recovery of a protected track completed and sends its
    /// feedback to the publisher.
    fn pump_uplink(&mut self, now: Instant, tid: TrackId) {
        let Some(t) = self.tracks.get_mut(&tid) else { return };
        let owner = t.owner;
        let Some((_, Some(rx), ext)) = &mut t.protect else { return };
        let mut fwd = vec![];
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::Frame(f) => {
                    self.counters.protected_frames_up += 1;
                    fwd.extend(f.packets.iter().filter_map(|p| carried_fwd(p, ext, now)));
                }
                ReceiverEvent::Skipped(s) => {
                    self.counters.protected_skipped_up += 1;
                    if s.reason == media::recovery::SkipReason::Incomplete {
                        self.counters.protected_incomplete_up += 1;
                    }
                }
                ReceiverEvent::Gap { .. } => self.counters.protected_gaps_up += 1,
                ReceiverEvent::KeyframeRequested => {}
            }
        }
        self.send_uplink_feedback(tid);
        for f in fwd {
            self.forward(now, owner, tid, 0, f);
        }
    }

    /// Sends the feedback the uplink recovery of a protected track has queued.
    fn send_uplink_feedback(&mut self, tid: TrackId) {
        let Some(t) = self.tracks.get_mut(&tid) else {
            return;
        };
        let owner = t.owner;
        let Some((_, Some(rx), _)) = &mut t.protect else {
            return;
        };
        let (media_ssrc, own_ssrc) = (rx.media_ssrc, rx.receiver_ssrc());
        let mut feedback = vec![];
        while let Some(fb) = rx.poll_feedback() {
            feedback.push(fb);
        }
        if let Some(key) = self.participants.get(&owner).and_then(|p| p.publisher) {
            // One feedback message per datagram: str0m keeps only the last application
            // feedback of a compound packet.
            for fb in feedback {
                if let Some(peer) = self.peers.get_mut(&key) {
                    protect::send_feedback(&mut peer.rtc, own_ssrc, media_ssrc, fb);
                }
                self.drain(key);
            }
        }
    }

    /// Feedback from a subscriber for a protected downlink.
    fn downlink_feedback(&mut self, now: Instant, pid: ParticipantId, media_ssrc: u32, payload: &[u8]) {
        let Some(part) = self.participants.get_mut(&pid) else { return };
        let Some(skey) = part.subscriber else { return };
        let mut wanted = vec![];
        for (tid, sub) in &mut part.subs {
            let (Some(down), Some(mid)) = (&mut sub.protect, sub.mid) else { continue };
            let Some(tx) = down.tx.as_mut().filter(|tx| tx.media_ssrc == media_ssrc) else { continue };
            tx.handle_feedback(now, payload);
            while let Some(SenderEvent::KeyframeRequested) = tx.poll_event() {
                if let Some(l) = sub.fwd.current() {
                    wanted.push((*tid, l));
                }
            }
            if let Some(speer) = self.peers.get_mut(&skey) {
                tx.flush_into(&mut speer.rtc, mid, down.pt, now);
                drain_peer(speer, skey, now, &mut self.out, &mut self.deferred);
            }
        }
        for (tid, l) in wanted {
            self.keyframe_wanted(now, tid, l);
        }
        // Re-allocate when the protected downlinks' estimate moved by a tenth: often
        // enough to follow a back-off within a report or two, not on every report.
        let Some(part) = self.participants.get_mut(&pid) else { return };
        let budget = protected_media_budget(part);
        let moved = match (budget, part.protected_budget) {
            (Some(b), Some(last)) => b.abs_diff(last) > last / 10,
            (b, last) => b != last,
        };
        if moved {
            part.protected_budget = budget;
            self.reallocate(now, pid);
        }
    }

    /// Earliest timer of the loss protection.
    fn protect_timeout(&self) -> Option<Instant> {
        let up = self.tracks.values().filter_map(|t| t.protect.as_ref()?.1.as_ref()?.poll_timeout());
        let down = self
            .participants
            .values()
            .flat_map(|p| p.subs.values())
            .filter_map(|s| s.protect.as_ref()?.tx.as_ref()?.poll_timeout());
        up.chain(down).min()
    }

    fn protect_handle_timeout(&mut self, now: Instant) {
        let mut due = vec![];
        for (id, t) in &mut self.tracks {
            let Some(rx) = t.protect.as_mut().and_then(|p| p.1.as_mut()) else { continue };
            if rx.poll_timeout().is_some_and(|x| x <= now) {
                rx.handle_timeout(now);
                due.push(*id);
            }
        }
        for id in due {
            self.pump_uplink(now, id);
        }
        for part in self.participants.values_mut() {
            let Some(skey) = part.subscriber else { continue };
            for sub in part.subs.values_mut() {
                let (Some(down), Some(mid)) = (&mut sub.protect, sub.mid) else { continue };
                let Some(tx) = &mut down.tx else { continue };
                if tx.poll_timeout().is_none_or(|x| x > now) {
                    continue;
                }
                tx.handle_timeout(now);
                if let Some(speer) = self.peers.get_mut(&skey) {
                    tx.flush_into(&mut speer.rtc, mid, down.pt, now);
                    drain_peer(speer, skey, now, &mut self.out, &mut self.deferred);
                }
            }
        }
    }

    fn keyframe_wanted(&mut self, now: Instant, tid: TrackId, layer: Layer) {
        let Some(t) = self.tracks.get_mut(&tid) else { return };
        if t.kind != MediaKind::Video {
            return;
        }
        if t.gates[usize::from(layer)].request(now) {
            self.send_keyframe_request(now, tid, layer);
        } else {
            self.counters.keyframe_requests_absorbed += 1;
        }
    }

    fn send_keyframe_request(&mut self, now: Instant, tid: TrackId, layer: Layer) {
        // A protected uplink loses a lone RTCP PLI as often as it loses packets (half the
        // time at 50 %, and the gate retries only every `keyframe_interval`): ask through
        // the recovery loop's feedback, which sends it in enough copies.
        if let Some(t) = self.tracks.get_mut(&tid) {
            if let Some((_, Some(rx), _)) = &mut t.protect {
                if rx.request_keyframe(now) {
                    self.counters.keyframe_requests_up += 1;
                    self.send_uplink_feedback(tid);
                    return;
                }
            }
        }
        let Some(t) = self.tracks.get(&tid) else { return };
        let Some(key) = self.participants.get(&t.owner).and_then(|p| p.publisher) else { return };
        let rid = t
            .rids
            .iter()
            .enumerate()
            .find(|(i, r)| r.as_ref().map_or(0, |r| rid_layer(r, *i)) == layer)
            .and_then(|(_, r)| *r);
        let mid = t.mid;
        let Some(peer) = self.peers.get_mut(&key) else { return };
        if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.counters.keyframe_requests_up += 1;
        }
        self.drain(key);
    }

    /// Re-runs the bandwidth allocation of one subscriber.
    fn reallocate(&mut self, now: Instant, pid: ParticipantId) {
        let Some(part) = self.participants.get_mut(&pid) else { return };
        let speaker = self.rooms.get(&part.room).and_then(|r| r.speaker.dominant());
        let mut ids = vec![];
        let mut demands = vec![];
        let mut audio_bps = 0u64;
        let mut desired = 0u64;
        for (tid, sub) in &part.subs {
            let Some(t) = self.tracks.get(tid) else { continue };
            if t.kind == MediaKind::Audio {
                audio_bps += t.layers[0].bps;
                continue;
            }
            if sub.state != SubState::Open {
                continue;
            }
            let simulcast = t.rids.len() > 1;
            let received = |l: usize| !t.layers[l].paused && t.layers[l].last_packet.is_some_and(|p| now.saturating_duration_since(p) < Duration::from_secs(2));
            let mut layer_bps = [0u64; 3];
            for (l, bps) in layer_bps.iter_mut().enumerate() {
                if received(l) {
                    // A layer that just started has no rate yet; count it as present.
                    *bps = t.layers[l].bps.max(1);
                }
            }
            let ceiling = ceiling_for(&sub.pref, t, simulcast);
            desired += ceiling.map_or(0, |c| layer_bps[usize::from(c)]);
            let priority = match t.source {
                TrackSource::Screen => 3,
                _ if speaker == Some(t.owner) => 2,
                _ => 1,
            };
            ids.push(*tid);
            demands.push(Demand { ceiling, layer_bps, priority, temporal_scalable: t.temporal_seen, simulcast, keep_base: sub.protect.is_some() });
        }
        // str0m's estimate lowers the rate for loss, which collapses it on a lossy link
        // the protection handles; a subscriber with protected streams is held instead to
        // the delay-based estimates of its protected downlinks (media::cc, from the
        // protection's arrival reports), which random loss does not lower, less the
        // repair each protection wants (docs/recovery.md, *In charge*).
        let protected = part.subs.values().any(|s| s.protect.is_some());
        let budget = if protected {
            part.protected_budget.unwrap_or(u64::MAX)
        } else {
            part.budget.map_or(u64::MAX, |b| b.saturating_sub(audio_bps))
        };
        let alloc = allocate(budget, &demands);
        let mut wanted = vec![];
        for (tid, a) in ids.iter().zip(alloc) {
            if let Some(sub) = part.subs.get_mut(tid) {
                let before = sub.fwd.target();
                sub.fwd.set_target(a.layer, a.temporal);
                if before != a.layer {
                    self.counters.layer_switches += 1;
                }
                if let Some(l) = sub.fwd.wanted_keyframe() {
                    wanted.push((*tid, l));
                }
            }
        }
        // Ask the estimator to probe up to what the subscriber would like to receive.
        let desired = desired + audio_bps;
        let sub_key = part.subscriber;
        let change = desired.abs_diff(part.desired_sent) > part.desired_sent / 5;
        if change && desired > 0 {
            part.desired_sent = desired;
            if let Some(peer) = sub_key.and_then(|k| self.peers.get_mut(&k)) {
                peer.rtc.bwe().set_bitrate(Bitrate::kbps(100), Bitrate::bps(desired));
            }
            if let Some(k) = sub_key {
                self.drain(k);
            }
        }
        for (tid, l) in wanted {
            self.keyframe_wanted(now, tid, l);
        }
    }

    fn emit_quality(&mut self, now: Instant) {
        let mut per_room: HashMap<RoomId, Vec<QualityStat>> = HashMap::new();
        for (pid, p) in &self.participants {
            let active = p.last_media.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(5));
            let rtt = p.up.rtt.or(p.down.rtt);
            let loss = p.up.loss.unwrap_or(0.0).max(p.down.loss.unwrap_or(0.0));
            let score = if !active && p.subscriber.is_none() { 0 } else { Quality::score(rtt, loss) };
            per_room.entry(p.room.clone()).or_default().push(QualityStat {
                participant: *pid,
                score,
                rtt_ms: rtt.map(|d| d.as_millis() as u32),
                loss_up: p.up.loss,
                loss_down: p.down.loss,
                bitrate_down_kbps: p.budget.map(|b| (b / 1000) as u32),
            });
        }
        for (room, stats) in per_room {
            self.out.push_back(Output::Event(SfuEvent::Quality { room, stats }));
        }
    }
}

/// One packet on its way to forwarding.
struct Fwd {
    pt: u8,
    /// Extended sequence number on the publisher's stream.
    seq: u64,
    ts: u32,
    marker: bool,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    payload: Arc<[u8]>,
    arrival: Instant,
    /// Frame marking of a packet completed by the uplink recovery.
    marking: Option<FrameMarking>,
    /// Temporal layer and base-sync flag from a picture-level frame marking on plain RTP.
    layer_mark: Option<(u8, bool)>,
}

/// A packet the uplink recovery delivered, ready for forwarding.
fn carried_fwd(p: &[u8], ext: &mut SeqExtender, now: Instant) -> Option<Fwd> {
    let v = media::fec::RtpView::parse(p).ok()?;
    Some(Fwd {
        pt: v.payload_type,
        seq: ext.extend(v.seq),
        ts: v.timestamp,
        marker: v.marker,
        audio_level: None,
        voice_activity: None,
        payload: Arc::from(p.get(v.payload_start..v.payload_end)?),
        arrival: now,
        marking: FrameMarking::parse(p, protect::FRAME_MARKING_ID),
        layer_mark: None,
    })
}

/// Audio frames an SFU keeps per RED track: a copy can lie at most 16 packets after its
/// frame became available, and a late frame can only be repeated while it is within
/// RED's 14-bit offset (17 frames of 20 ms) of the packet; twice that leaves room.
const RED_HISTORY_FRAMES: usize = 2 * media::red::MAX_SPAN_FRAMES as usize + 2;

/// Loss assumed on a downlink before its first receiver report, as the video protection
/// assumes before its first loss report (`SenderConfig::initial_loss`): too few copies
/// lose audio at once, too many only cost bandwidth (9 copies of a 20 ms frame, about
/// 220 kbit/s, until the report). Reports of an audio stream come every 5 s from
/// libwebrtc and str0m, and on a lossy link the first can take much longer: at 50 % loss
/// one test seed saw none for 40 s.
const RED_INITIAL_LOSS: f64 = 0.5;

/// (loss, mean loss run, packets sent so far) of a subscriber's downlink, for the audio
/// redundancy of track `tid`: what its protected video downlink measures (those reports
/// carry loss runs) and how many packets that stream has sent, else the loss the
/// receiver reports of the audio stream itself give, taken as random.
/// Not str0m's peer-level egress loss: it counts from transport-wide feedback, which
/// under heavy loss is lost too, and read 0–30 % on a 50 % link.
fn downlink_channel(part: &Participant, tid: TrackId) -> (f64, f64, Option<u64>) {
    if let Some(tx) = part.subs.values().find_map(|s| s.protect.as_ref()?.tx.as_ref()) {
        let (loss, burst) = tx.channel();
        let st = tx.stats();
        return (loss, burst, Some(st.media_packets + st.fec_packets + st.rtx_packets));
    }
    let loss = part.subs.get(&tid).and_then(|s| s.rr_loss).map_or(RED_INITIAL_LOSS, f64::from);
    (loss, 1.0 / (1.0 - loss.min(0.95)), None)
}

/// What the congestion control of a subscriber's protected downlinks leaves for video
/// media, summed over them; `None` before any has sent.
fn protected_media_budget(part: &Participant) -> Option<u64> {
    part.subs
        .values()
        .filter_map(|s| s.protect.as_ref()?.tx.as_ref())
        .map(ProtectedTx::media_budget)
        .reduce(u64::saturating_add)
}

/// The carrier payload type among a track's negotiated codecs.
fn codecs_carrier(codecs: &HashMap<u8, PayloadParams>) -> Option<u8> {
    codecs.iter().find(|(_, p)| protect::is_carrier(p)).map(|(pt, _)| *pt)
}

/// The highest layer the subscriber's preference allows.
fn ceiling_for(pref: &Preference, t: &Track, simulcast: bool) -> Option<Layer> {
    let by_quality = match pref.quality {
        crate::QualityPref::Off => return None,
        crate::QualityPref::Low => 0,
        crate::QualityPref::Medium => 1,
        crate::QualityPref::High => 2,
    };
    if !simulcast {
        return Some(0);
    }
    let by_size = match (pref.max_width, pref.max_height) {
        (None, None) => 2,
        (w, h) => {
            let fits = |l: usize| {
                t.layers[l].size.is_some_and(|(lw, lh)| {
                    w.is_none_or(|w| u32::from(lw) * 10 >= w * 9) && h.is_none_or(|h| u32::from(lh) * 10 >= h * 9)
                })
            };
            (0..3).find(|&l| fits(l)).unwrap_or(2) as Layer
        }
    };
    Some(by_quality.min(by_size))
}

/// Polls one peer until it has nothing more for now, queueing transmits and events.
///
/// With BWE on, str0m's pacer releases one packet per timeout and then asks to be woken at
/// once. Such due timeouts are handled here, inside the same drain, so every packet queued
/// on a subscriber leaves in this batch: otherwise each one costs a trip through the
/// shell's loop, a scan of all peers and a `sendmmsg` of its own.
fn drain_peer(peer: &mut Peer, key: PeerKey, now: Instant, out: &mut VecDeque<Output>, deferred: &mut VecDeque<(PeerKey, Event)>) {
    let mut rounds = 0;
    loop {
        match peer.rtc.poll_output() {
            Ok(str0m::Output::Timeout(t)) => {
                peer.timeout = t;
                // Bounded: a timer str0m keeps due without progress is left to the shell.
                if t > now || rounds == MAX_INLINE_TIMEOUTS {
                    break;
                }
                rounds += 1;
                if let Err(e) = peer.rtc.handle_input(str0m::Input::Timeout(now)) {
                    tracing::debug!(participant = peer.participant.0, error = %e, "peer timeout failed");
                    break;
                }
            }
            Ok(str0m::Output::Transmit(t)) => out.push_back(Output::Transmit(Transmit {
                source: t.source,
                destination: t.destination,
                contents: t.contents.into(),
            })),
            Ok(str0m::Output::Event(e)) => deferred.push_back((key, e)),
            Err(e) => {
                tracing::debug!(participant = peer.participant.0, error = %e, "peer failed");
                peer.rtc.disconnect();
                break;
            }
        }
    }
}

/// The codecs of our config that the remote accepted on an m-line, by payload type.
fn negotiated_codecs(rtc: &Rtc, remote_pts: &[Pt]) -> HashMap<u8, PayloadParams> {
    rtc.codec_config().params().iter().filter(|p| remote_pts.contains(&p.pt())).map(|p| (*p.pt(), *p)).collect()
}
