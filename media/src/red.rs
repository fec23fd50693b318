//! RFC 2198 redundant audio (RED): parsing and building RED payloads, the frame history
//! an SFU keeps to re-encode RED hop by hop, and the rule that picks how many earlier
//! frames a packet repeats for a measured loss.
//!
//! A RED payload is a list of 4-byte headers of the redundant blocks (F bit set, 7-bit
//! payload type, 14-bit timestamp offset, 10-bit length), a 1-byte header of the primary
//! block (F bit clear, payload type), then the blocks' bytes in the same order, the
//! primary last. Offsets count back from the packet's RTP timestamp.
//!
//! Why hop by hop: an SFU that forwards RED as it came passes each hop's losses on, so
//! 50 % on the uplink and 50 % on the downlink are 75 % for the redundancy to cover (a
//! frame must be in 17 packets, its own and 16 copies, for 0.75 % residual). Rebuilding
//! the redundancy at the SFU from every frame it holds lets each hop's redundancy cover
//! that hop's loss only: its own packet and 9 copies at 50 % random loss, 0.1 % per hop.

use std::collections::VecDeque;

use crate::Error;

/// Largest timestamp offset a redundant block can carry (14 bits).
pub const MAX_TS_OFFSET: u32 = (1 << 14) - 1;
/// Largest block a redundant header can describe (10 bits).
pub const MAX_BLOCK_LEN: usize = (1 << 10) - 1;
/// Most redundant blocks a payload may carry; parsing refuses more (a header list longer
/// than any sender's would make the SFU copy a packet's bytes many times over).
pub const MAX_BLOCKS: usize = 32;

/// One block of a RED payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedBlock<'a> {
    /// Payload type of the block's encoding.
    pub pt: u8,
    /// How far before the packet's timestamp this block's frame lies (0 for the primary).
    pub ts_offset: u32,
    /// The encoded frame.
    pub data: &'a [u8],
}

/// Splits a RED payload into its redundant blocks (oldest first, as sent) and its primary.
pub fn parse(payload: &[u8]) -> Result<(Vec<RedBlock<'_>>, RedBlock<'_>), Error> {
    let mut heads: Vec<(u8, u32, usize)> = Vec::new();
    let mut at = 0usize;
    let primary_pt = loop {
        let &b0 = payload
            .get(at)
            .ok_or(Error::BadRed("header list runs past the end"))?;
        if b0 & 0x80 == 0 {
            at += 1;
            break b0 & 0x7f;
        }
        if heads.len() == MAX_BLOCKS {
            return Err(Error::BadRed("too many redundant blocks"));
        }
        let h = payload
            .get(at..at + 4)
            .ok_or(Error::BadRed("truncated block header"))?;
        let offset = (u32::from(h[1]) << 6) | (u32::from(h[2]) >> 2);
        let len = (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        heads.push((b0 & 0x7f, offset, len));
        at += 4;
    };
    let mut blocks = Vec::with_capacity(heads.len());
    for (pt, ts_offset, len) in heads {
        let data = payload
            .get(at..at + len)
            .ok_or(Error::BadRed("block runs past the end"))?;
        blocks.push(RedBlock {
            pt,
            ts_offset,
            data,
        });
        at += len;
    }
    let primary = RedBlock {
        pt: primary_pt,
        ts_offset: 0,
        data: &payload[at..],
    };
    Ok((blocks, primary))
}

/// Builds a RED payload: `redundant` oldest first, then the primary. A redundant block
/// that cannot be described (offset or length out of range) is left out, and past
/// [`MAX_BLOCKS`] the oldest are.
pub fn build(redundant: &[RedBlock<'_>], primary: RedBlock<'_>) -> Vec<u8> {
    let fits = |b: &&RedBlock<'_>| {
        b.ts_offset > 0 && b.ts_offset <= MAX_TS_OFFSET && b.data.len() <= MAX_BLOCK_LEN
    };
    let described: Vec<&RedBlock<'_>> = redundant.iter().filter(fits).collect();
    let kept = &described[described.len().saturating_sub(MAX_BLOCKS)..];
    let len = kept.iter().map(|b| 4 + b.data.len()).sum::<usize>() + 1 + primary.data.len();
    let mut out = Vec::with_capacity(len);
    for b in kept {
        out.push(0x80 | (b.pt & 0x7f));
        out.push((b.ts_offset >> 6) as u8);
        out.push((((b.ts_offset & 0x3f) << 2) as u8) | ((b.data.len() >> 8) as u8 & 0x03));
        out.push(b.data.len() as u8);
    }
    out.push(primary.pt & 0x7f);
    for b in kept {
        out.extend_from_slice(b.data);
    }
    out.extend_from_slice(primary.data);
    out
}

/// Most earlier frames one packet repeats.
pub const MAX_DISTANCE_COUNT: usize = 16;
/// Furthest back, in frames, a repeated frame lies: 320 ms of 20 ms frames. A frame that
/// arrives later than this is of no use to a jitter buffer.
pub const MAX_SPAN_FRAMES: u16 = MAX_DISTANCE_COUNT as u16;
/// Chance, per hop, that every copy of a frame is lost that [`distances_for`] aims at.
/// Two hops (publisher → SFU → subscriber) then lose about 0.2 %. It was 0.2 % per hop
/// until session 16: losses come in runs (a frame is lost only with its own packet and
/// all the packets after it that carry copies), so a 20 s call at 0.4 % on average lost
/// over 1 % in about one in twenty (a model of two hops at 50 %; 0.41–0.92 % in
/// `bench loss` runs). One more copy (about 0.006× of a 4 Mbit/s sender's bytes at
/// 50 %) makes that about one in a hundred.
pub const RESIDUAL_TARGET: f64 = 0.001;
/// Largest RED payload [`RedHistory::build`] makes; the farthest copies are left out
/// first. As libwebrtc and str0m do, it keeps a packet of copies under the MTU whatever
/// the Opus rate: 16 copies of a 20 ms frame at 48 kbit/s would be 2 kB.
pub const MAX_RED_PAYLOAD: usize = 1_100;
/// A frame this far (in RTP timestamp units) from the newest one held is a new stream
/// (a new SSRC or a timestamp jump), not a late frame: the history starts over.
pub const RESET_DISTANCE: u32 = 4 * MAX_TS_OFFSET;

/// What taking in a packet did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed<'a> {
    /// The packet's own frame.
    pub primary: RedBlock<'a>,
    /// Whether the primary frame was not held before. A primary already held arrived
    /// after a copy of it (reordering, or a duplicate): a forwarder that sent the copy
    /// must not send it again.
    pub primary_new: bool,
    /// The redundant blocks whose frames were not held before (oldest first): frames
    /// whose own packets were lost, which a forwarder can send on in their place.
    pub recovered: Vec<RedBlock<'a>>,
    /// The history started over before taking this packet in (see [`RESET_DISTANCE`]).
    pub reset: bool,
}

/// Which earlier frames (distances in frames, nearest first) each packet should repeat
/// on a link losing `loss` of its packets in runs of `burst` on average: consecutive ones,
/// as many as keep the chance of losing a frame's packet and all its copies under
/// [`RESIDUAL_TARGET`], at most [`MAX_DISTANCE_COUNT`]. `gaps` are the recent distances
/// on the link between consecutive packets of this stream, in datagrams ([`Spacing`];
/// 1 = back to back, which is also what an empty list means).
///
/// The link is modelled as a two-state (Gilbert) channel whose bad state loses
/// everything: a packet `g` datagrams after a lost one is lost with
/// `q(g) = p + (1 − p)·λ^g`, `λ` being how much of a loss run carries over to the next
/// datagram. Loss and run length are measured on the video, but audio shares the link
/// with it: behind a 1080p stream an audio packet is one of about 20 datagrams, so a run
/// of 3 often misses the next audio packet, and sizing the copies for runs of 3 in the
/// audio itself sent 14 copies at bursty 50 % (`bench loss` bursty50, session 16: audio
/// 0.098× of the media bytes on the sender's socket). The gaps are not even, though:
/// video leaves a frame at a time, so about 40 % of consecutive audio packets at 30 fps
/// have no video between them. A frame's copies ride the packets after it, across
/// whatever gaps come, so the per-copy `q` is the geometric mean of `q(g)` over the
/// recent gaps; `q` of the mean gap would count too few (bursty 50 %: 8 copies, 0.5 %
/// per hop, where 10 meet the target).
/// Spacing the copies two apart would buy independence under bursts, but within the
/// 16-frame span it saved at most one copy at 50 %, and it made losses come in correlated
/// pairs (frames n, n+2, n+4 sharing their copies' packets): consecutive copies are kept.
pub fn distances_for(loss: f64, burst: f64, gaps: &[u32]) -> Vec<u16> {
    let p = if loss.is_finite() {
        loss.clamp(0.0, 0.95)
    } else {
        0.5
    };
    if p < 1e-3 {
        // A clean link still loses the odd packet: one copy, as browsers send.
        return vec![1];
    }
    let b = if burst.is_finite() { burst } else { 1.0 };
    let b = b.max(1.0 / (1.0 - p)).max(1.0);
    // Leave the bad state with 1/b, enter it so the average loss is `p`.
    let enter = p / (b * (1.0 - p));
    let lambda = (1.0 - 1.0 / b - enter).clamp(0.0, 1.0);
    // `p ≥ 0.001` here, so every `q(g)` is positive and its logarithm finite.
    let q_at = |g: u32| p + (1.0 - p) * lambda.powi(g.clamp(1, 1_000) as i32);
    let q = if gaps.is_empty() {
        q_at(1)
    } else {
        (gaps.iter().map(|&g| q_at(g).ln()).sum::<f64>() / gaps.len() as f64).exp()
    };
    let mut n: u16 = 0;
    let mut all_lost = p;
    // A hair of tolerance: 10 % loss and two copies meet 0.1 % exactly, and the rounding
    // of 0.1³ should not cost a third copy.
    while all_lost > RESIDUAL_TARGET * (1.0 + 1e-9) && usize::from(n) < MAX_DISTANCE_COUNT {
        n += 1;
        all_lost *= q;
    }
    (1..=n.max(1)).collect()
}

/// The recent gaps, in datagrams, between consecutive packets of one stream on a link:
/// what [`distances_for`] takes. Fed at each of the stream's packets with a running count
/// of the other datagrams sent on the link. Empty at first (read as back to back, the
/// cautious end); the last [`Spacing::SAMPLES`] gaps count, about 0.6 s of 20 ms audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spacing {
    last_others: Option<u64>,
    gaps: [u32; Spacing::SAMPLES],
    len: usize,
    next: usize,
}

impl Default for Spacing {
    fn default() -> Self {
        Spacing {
            last_others: None,
            gaps: [1; Spacing::SAMPLES],
            len: 0,
            next: 0,
        }
    }
}

impl Spacing {
    pub const SAMPLES: usize = 32;

    /// At a packet of the stream, `others` being the link's datagrams of other streams
    /// sent so far; returns the gaps to size this packet's copies with.
    pub fn observe(&mut self, others: u64) -> &[u32] {
        if let Some(last) = self.last_others {
            let g = others.saturating_sub(last).saturating_add(1);
            self.gaps[self.next] = u32::try_from(g).unwrap_or(u32::MAX);
            self.next = (self.next + 1) % Self::SAMPLES;
            self.len = (self.len + 1).min(Self::SAMPLES);
        }
        self.last_others = Some(others);
        self.gaps()
    }

    pub fn gaps(&self) -> &[u32] {
        &self.gaps[..self.len]
    }
}

/// The recent frames of one audio stream, by RTP timestamp: what arrived as primaries and
/// what arrived only as redundancy of a later packet. An SFU keeps one per RED track and
/// builds each subscriber's RED payload from it.
///
/// Copies are placed by *packets sent since the frame became available*, not by frame
/// distance: a frame the SFU only got from a later packet's redundancy is forwarded late,
/// and counting its copies from its own timestamp would leave it with as many fewer
/// copies as it was late (at 50 % loss on the uplink that alone lost ~0.9 % of the frames
/// behind the SFU).
#[derive(Debug, Clone)]
pub struct RedHistory {
    frames: VecDeque<Held>,
    capacity: usize,
    frame_ts: Option<u32>,
    /// The first primary taken in (since a reset): copies of frames before it are of a
    /// time the stream was not being forwarded (before it started, or during a mute) and
    /// are not kept.
    floor: Option<u32>,
    /// Packets sent so far ([`RedHistory::next_packet`]).
    sent: u64,
}

#[derive(Debug, Clone)]
struct Held {
    ts: u32,
    pt: u8,
    data: Vec<u8>,
    /// The packet count when the frame was first sent or first could be repeated.
    avail: Option<u64>,
}

impl RedHistory {
    /// A history of the last `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        RedHistory {
            frames: VecDeque::new(),
            capacity: capacity.max(1),
            frame_ts: None,
            floor: None,
            sent: 0,
        }
    }

    /// Takes in a RED payload sent at RTP timestamp `ts`.
    pub fn push_red<'a>(&mut self, ts: u32, payload: &'a [u8]) -> Result<Pushed<'a>, Error> {
        let (redundant, primary) = parse(payload)?;
        let reset = self.reset_if_far(ts);
        self.floor.get_or_insert(ts);
        let mut recovered = Vec::new();
        for b in redundant {
            if b.ts_offset > 0 && self.insert(ts.wrapping_sub(b.ts_offset), b.pt, b.data) {
                recovered.push(b);
            }
        }
        recovered.sort_by_key(|b| std::cmp::Reverse(b.ts_offset));
        let primary_new = self.insert(ts, primary.pt, primary.data);
        Ok(Pushed {
            primary,
            primary_new,
            recovered,
            reset,
        })
    }

    /// Takes in a plain (non-RED) frame.
    pub fn push_plain<'a>(&mut self, ts: u32, pt: u8, data: &'a [u8]) -> Pushed<'a> {
        let reset = self.reset_if_far(ts);
        self.floor.get_or_insert(ts);
        let primary_new = self.insert(ts, pt, data);
        Pushed {
            primary: RedBlock {
                pt,
                ts_offset: 0,
                data,
            },
            primary_new,
            recovered: Vec::new(),
            reset,
        }
    }

    /// Forgets everything if `ts` is too far from the newest frame held to belong to
    /// the same stream: otherwise a full history would refuse every frame of a stream
    /// whose timestamps restarted behind it.
    fn reset_if_far(&mut self, ts: u32) -> bool {
        let Some(newest) = self.frames.back().map(|h| h.ts) else {
            return false;
        };
        if ts.wrapping_sub(newest).min(newest.wrapping_sub(ts)) <= RESET_DISTANCE {
            return false;
        }
        self.frames.clear();
        self.frame_ts = None;
        self.floor = None;
        true
    }

    /// The frame of timestamp `ts`, if held.
    pub fn get(&self, ts: u32) -> Option<(u8, &[u8])> {
        self.held(ts).map(|h| (h.pt, h.data.as_slice()))
    }

    /// Samples per frame, as learned from consecutive timestamps (the smallest step).
    pub fn frame_ts(&self) -> Option<u32> {
        self.frame_ts
    }

    /// The frame of timestamp `ts` is about to be sent (once, whatever the number of
    /// receivers): it and the frames before it that arrived since are now available
    /// for repetition in the packets that follow.
    pub fn next_packet(&mut self, ts: u32) {
        self.sent += 1;
        let sent = self.sent;
        for h in &mut self.frames {
            if h.avail.is_none() && (ts.wrapping_sub(h.ts) as i32) >= 0 {
                h.avail = Some(sent);
            }
        }
    }

    /// A RED payload for the frame of timestamp `ts` (the packet announced by the last
    /// [`RedHistory::next_packet`]), repeating the held frames that became available
    /// `distances` packets before it, nearest first, within [`MAX_RED_PAYLOAD`] bytes.
    /// Payload types go through `map_pt`; a block whose type does not map is left out.
    /// `None` if the frame itself is not held or its type does not map.
    ///
    /// A frame can only be repeated while it is at most [`MAX_TS_OFFSET`] older than the
    /// packet (341 ms at 48 kHz): one that reached the SFU late gets fewer copies.
    pub fn build(
        &self,
        ts: u32,
        distances: &[u16],
        map_pt: impl Fn(u8) -> Option<u8>,
    ) -> Option<Vec<u8>> {
        let held = self.held(ts)?;
        let primary = RedBlock {
            pt: map_pt(held.pt)?,
            ts_offset: 0,
            data: &held.data,
        };
        let mut redundant: Vec<RedBlock<'_>> = self
            .frames
            .iter()
            .filter(|h| {
                h.avail
                    .and_then(|a| self.sent.checked_sub(a))
                    .and_then(|d| u16::try_from(d).ok())
                    .is_some_and(|d| distances.contains(&d))
            })
            .filter_map(|h| {
                Some(RedBlock {
                    pt: map_pt(h.pt)?,
                    ts_offset: ts.wrapping_sub(h.ts),
                    data: &h.data,
                })
            })
            .filter(|b| b.ts_offset > 0 && b.ts_offset <= MAX_TS_OFFSET)
            .collect();
        redundant.sort_by_key(|b| b.ts_offset);
        let mut room = MAX_RED_PAYLOAD.saturating_sub(1 + primary.data.len());
        redundant.retain(|b| {
            let need = 4 + b.data.len();
            let fits = need <= room;
            if fits {
                room -= need;
            }
            fits
        });
        redundant.reverse();
        Some(build(&redundant, primary))
    }

    fn held(&self, ts: u32) -> Option<&Held> {
        self.frames.iter().find(|h| h.ts == ts)
    }

    /// Whether the frame was new and kept.
    fn insert(&mut self, ts: u32, pt: u8, data: &[u8]) -> bool {
        if self.held(ts).is_some() || self.floor.is_some_and(|f| (ts.wrapping_sub(f) as i32) < 0) {
            return false;
        }
        // The step between neighbouring frames, for the forwarder's sequence numbers.
        for h in &self.frames {
            let d = ts.wrapping_sub(h.ts).min(h.ts.wrapping_sub(ts));
            if d > 0 && d <= MAX_TS_OFFSET && self.frame_ts.is_none_or(|f| d < f) {
                self.frame_ts = Some(d);
            }
        }
        // Newest at the back; a late frame goes where its timestamp belongs so that the
        // oldest is what falls out.
        let pos = self
            .frames
            .iter()
            .rposition(|h| (ts.wrapping_sub(h.ts) as i32) > 0)
            .map_or(0, |i| i + 1);
        if self.frames.len() == self.capacity && pos == 0 {
            return false;
        }
        let held = Held {
            ts,
            pt,
            data: data.to_vec(),
            avail: None,
        };
        self.frames.insert(pos, held);
        if self.frames.len() > self.capacity {
            self.frames.pop_front();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse_round_trips() {
        let (a, b, c) = ([1u8; 60], [2u8; 61], [3u8; 7]);
        let red = [
            RedBlock {
                pt: 111,
                ts_offset: 1920,
                data: &a,
            },
            RedBlock {
                pt: 111,
                ts_offset: 960,
                data: &b,
            },
        ];
        let p = build(
            &red,
            RedBlock {
                pt: 111,
                ts_offset: 0,
                data: &c,
            },
        );
        assert_eq!(p.len(), 2 * 4 + 1 + 60 + 61 + 7);
        let (r, prim) = parse(&p).unwrap();
        assert_eq!(r, red);
        assert_eq!(
            prim,
            RedBlock {
                pt: 111,
                ts_offset: 0,
                data: &c
            }
        );
    }

    #[test]
    fn a_known_rfc_2198_payload_parses() {
        // One redundant block (PT 0, offset 160, 2 bytes) and a primary of PT 0.
        let p = [0x80, 0x02, 0x80, 0x02, 0x00, 0xaa, 0xbb, 0xcc];
        let (r, prim) = parse(&p).unwrap();
        assert_eq!(
            r,
            vec![RedBlock {
                pt: 0,
                ts_offset: 160,
                data: &[0xaa, 0xbb]
            }]
        );
        assert_eq!(prim.data, &[0xcc]);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x80, 0x00]).is_err());
        // A block longer than what follows.
        assert!(parse(&[0x80, 0x00, 0x40, 0x05, 0x00, 1, 2]).is_err());
        // Too many headers.
        let many: Vec<u8> = (0..MAX_BLOCKS + 1)
            .flat_map(|_| [0x80, 0, 0x04, 0])
            .chain([0])
            .collect();
        assert!(parse(&many).is_err());
        // An empty primary is allowed (RFC 2198 does not forbid it).
        assert!(parse(&[0x00]).is_ok());
    }

    #[test]
    fn out_of_range_blocks_are_left_out() {
        let big = [0u8; MAX_BLOCK_LEN + 1];
        let ok = [1u8; 3];
        let red = [
            RedBlock {
                pt: 1,
                ts_offset: MAX_TS_OFFSET + 1,
                data: &ok,
            },
            RedBlock {
                pt: 1,
                ts_offset: 960,
                data: &big,
            },
            RedBlock {
                pt: 1,
                ts_offset: 960,
                data: &ok,
            },
        ];
        let p = build(
            &red,
            RedBlock {
                pt: 1,
                ts_offset: 0,
                data: &ok,
            },
        );
        let (r, _) = parse(&p).unwrap();
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn distances_grow_with_loss_and_with_loss_runs() {
        assert_eq!(distances_for(0.0, 1.0, &[]), vec![1]);
        let random50 = distances_for(0.5, 2.0, &[]);
        // 0.5^10 ≈ 0.1 %: the primary and nine copies, nearest first.
        assert_eq!(random50, (1..=9).collect::<Vec<_>>());
        // A loss estimate a little off the independent run length changes little.
        assert_eq!(distances_for(0.5, 2.1, &[1]).len(), 10);
        assert_eq!(distances_for(0.1, 1.0, &[]), vec![1, 2]);
        let low = distances_for(0.05, 1.05, &[]);
        assert!(low.len() < random50.len(), "{low:?}");
        // Runs of 3 at 50 %: a copy after a lost packet is lost 2 times in 3, and the
        // target would take 17 copies: the span's 16.
        assert_eq!(distances_for(0.5, 3.0, &[1]).len(), MAX_DISTANCE_COUNT);
        // The same runs, but 20 datagrams between audio packets: nearly independent.
        assert_eq!(distances_for(0.5, 3.0, &[20]).len(), 9);
        assert_eq!(distances_for(0.5, 3.0, &[2, 2]).len(), 11);
        // Two in five back to back, the rest far apart (audio beside 30 fps video): the
        // adjacent ones weigh in as they do on the wire, not through the mean gap.
        assert_eq!(distances_for(0.5, 3.0, &[1, 34, 34, 1, 34]).len(), 11);
        // Beyond what the span can cover: all the copies it allows.
        assert_eq!(distances_for(0.9, 1.0, &[]).len(), MAX_DISTANCE_COUNT);
        assert!(!distances_for(f64::NAN, f64::NAN, &[0, u32::MAX]).is_empty());
        assert_eq!(distances_for(0.5, 3.0, &[0]).len(), MAX_DISTANCE_COUNT);
    }

    /// The copies `distances_for` picks keep a frame's loss near the target on the
    /// channel it models, for the gaps it is given: audio packets placed on a
    /// Gilbert–Elliott link (50 %, runs of 3) with the gaps repeating in the given
    /// order, each frame lost only if its own packet and every packet carrying a copy
    /// are lost. The last pattern is audio beside 30 fps video sent a frame at a time.
    #[test]
    fn spaced_copies_meet_the_target_on_a_bursty_link() {
        use crate::netem::{GilbertElliott, LossModel, Netem, NetemConfig};
        use std::time::{Duration, Instant};
        let patterns: [&[u32]; 4] = [&[1], &[3], &[20], &[1, 34, 34, 1, 34]];
        for (k, gaps) in patterns.into_iter().enumerate() {
            let n = distances_for(0.5, 3.0, gaps).len();
            let cfg = NetemConfig::new()
                .loss(LossModel::GilbertElliott(GilbertElliott::from_average(
                    0.5, 3.0,
                )))
                .seed(k as u64 + 11);
            let mut link: Netem<Vec<u8>> = Netem::new(cfg);
            #[allow(clippy::disallowed_methods)]
            let t = Instant::now();
            let frames = 100_000usize;
            // Datagram positions of the audio packets.
            let mut at = Vec::with_capacity(frames);
            let mut d = 0u64;
            for i in 0..frames {
                at.push(d);
                d += u64::from(gaps[i % gaps.len()]);
            }
            let mut got = std::collections::HashSet::new();
            for x in 0..d {
                link.send(t, x.to_le_bytes().to_vec());
            }
            while let Some(b) = link.poll_receive(t + Duration::from_secs(1)) {
                got.insert(b.try_into().map_or(u64::MAX, u64::from_le_bytes));
            }
            let arrived: Vec<bool> = at.iter().map(|x| got.contains(x)).collect();
            let lost_with = |copies: usize| {
                (0..frames - n)
                    .filter(|&i| (i..=i + copies).all(|j| !arrived[j]))
                    .count() as f64
                    / (frames - n) as f64
            };
            let rate = lost_with(n);
            assert!(
                rate < 1.6 * RESIDUAL_TARGET,
                "gaps {gaps:?}: {n} copies lose {rate:.4}"
            );
            // One copy fewer would miss it: the rule does not over-provision.
            let fewer = lost_with(n - 1);
            assert!(fewer > 0.8 * RESIDUAL_TARGET, "gaps {gaps:?}: {fewer:.4}");
        }
    }

    #[test]
    fn spacing_keeps_the_recent_gaps() {
        let mut s = Spacing::default();
        assert!(s.observe(0).is_empty());
        assert_eq!(s.observe(19), &[20]);
        assert_eq!(s.observe(19), &[20, 1]);
        let mut others = 19;
        for _ in 0..100 {
            others += 33;
            s.observe(others);
        }
        assert_eq!(s.gaps().len(), Spacing::SAMPLES);
        assert!(s.gaps().iter().all(|&g| g == 34), "{:?}", s.gaps());
        // A counter that went backwards reads as back to back, not as a huge gap.
        assert_eq!(s.observe(0).iter().filter(|&&g| g == 1).count(), 1);
    }

    #[test]
    fn the_history_rebuilds_frames_that_only_came_as_redundancy() {
        let f = |n: u8| vec![n; 10];
        let mut h = RedHistory::new(32);
        h.push_plain(0, 111, &f(0));
        h.next_packet(0);
        // Frames 1 and 2 were lost; the packet of frame 3 carries them.
        let red = build(
            &[
                RedBlock {
                    pt: 111,
                    ts_offset: 1920,
                    data: &f(1),
                },
                RedBlock {
                    pt: 111,
                    ts_offset: 960,
                    data: &f(2),
                },
            ],
            RedBlock {
                pt: 111,
                ts_offset: 0,
                data: &f(3),
            },
        );
        let got = h.push_red(3 * 960, &red).unwrap();
        assert_eq!(got.primary.data, f(3).as_slice());
        assert!(got.primary_new && !got.reset);
        assert_eq!(
            got.recovered
                .iter()
                .map(|b| b.ts_offset)
                .collect::<Vec<_>>(),
            vec![1920, 960]
        );
        // The same packet again adds nothing, and says its frame was held.
        let again = h.push_red(3 * 960, &red).unwrap();
        assert!(again.recovered.is_empty() && !again.primary_new);
        // So does frame 2's own packet arriving after its copy.
        assert!(!h.push_plain(2 * 960, 111, &f(2)).primary_new);
        assert_eq!(h.frame_ts(), Some(960));
        assert_eq!(h.get(960), Some((111, f(1).as_slice())));
        // The forwarder sends frames 1, 2, 3 in turn, repeating what was sent 1 and 3
        // packets before, with a mapped payload type.
        let blocks = |h: &RedHistory, ts: u32| {
            let out = h.build(ts, &[1, 3], |_| Some(100)).unwrap();
            let (r, p) = parse(&out).unwrap();
            assert_eq!((p.pt, p.ts_offset), (100, 0));
            r.iter()
                .map(|b| (b.ts_offset, b.data[0]))
                .collect::<Vec<_>>()
        };
        h.next_packet(960);
        assert_eq!(blocks(&h, 960), vec![(960, 0)]);
        h.next_packet(2 * 960);
        assert_eq!(blocks(&h, 2 * 960), vec![(960, 1)]);
        h.next_packet(3 * 960);
        // Frame 0 went 3 packets ago, frame 2 one: frame 1 (2 packets ago) is not repeated.
        assert_eq!(blocks(&h, 3 * 960), vec![(2880, 0), (960, 2)]);
        // A frame 5 that arrives before 4 is not repeated in 4's packet (it is newer),
        // and becomes available with its own.
        h.push_plain(5 * 960, 111, &f(5));
        h.push_plain(4 * 960, 111, &f(4));
        h.next_packet(4 * 960);
        h.next_packet(5 * 960);
        assert_eq!(blocks(&h, 5 * 960), vec![(2880, 2), (960, 4)]);
        assert!(h.build(7 * 960, &[1], Some).is_none());
        // A block whose payload type the receiver lacks is left out; the primary's too.
        let only_111 = |p: u8| (p == 111).then_some(111);
        h.push_plain(6 * 960, 112, &f(6));
        h.next_packet(6 * 960);
        h.push_plain(7 * 960, 111, &f(7));
        h.next_packet(7 * 960);
        let out = h.build(7 * 960, &[1, 2], only_111).unwrap();
        let (r, _) = parse(&out).unwrap();
        assert_eq!(r.len(), 1, "frame 5 only; frame 6 is of type 112");
        assert!(h.build(6 * 960, &[1], only_111).is_none());
    }

    #[test]
    fn copies_stay_within_the_payload_budget_nearest_first() {
        let mut h = RedHistory::new(32);
        for n in 0..=16u32 {
            h.push_plain(n * 960, 111, &[n as u8; 320]);
            h.next_packet(n * 960);
        }
        let distances: Vec<u16> = (1..=16).collect();
        let out = h.build(16 * 960, &distances, Some).unwrap();
        assert!(out.len() <= MAX_RED_PAYLOAD, "{}", out.len());
        let (r, p) = parse(&out).unwrap();
        assert_eq!(p.data[0], 16);
        // 1 + 320 for the primary leaves room for two 324-byte copies: frames 15 and 14.
        assert_eq!(
            r.iter().map(|b| b.data[0]).collect::<Vec<_>>(),
            vec![14, 15]
        );
    }

    #[test]
    fn a_timestamp_jump_starts_the_history_over() {
        let mut h = RedHistory::new(4);
        for n in 0..4u32 {
            assert!(!h.push_plain(1_000_000 + n * 960, 0, &[1]).reset);
        }
        // A new stream whose timestamps start behind: without the reset a full history
        // would refuse it as older than everything held.
        let got = h.push_plain(5_000, 0, &[2]);
        assert!(got.reset && got.primary_new);
        assert!(h.get(1_000_000).is_none() && h.frame_ts().is_none());
        assert!(h.push_plain(5_960, 0, &[3]).primary_new);
        assert_eq!(h.frame_ts(), Some(960));
    }

    #[test]
    fn the_history_keeps_the_newest_frames() {
        let mut h = RedHistory::new(4);
        for n in [0u32, 1, 2, 3, 4, 5] {
            h.push_plain(n * 960, 0, &[n as u8]);
        }
        // A late frame older than everything held is not kept.
        h.push_plain(960, 0, &[9]);
        assert!(h.get(0).is_none() && h.get(960).is_none());
        assert!(h.get(2 * 960).is_some() && h.get(5 * 960).is_some());
        // Wrapping timestamps order as RTP does.
        let mut w = RedHistory::new(4);
        w.push_plain(u32::MAX - 959, 0, &[1]);
        w.next_packet(u32::MAX - 959);
        w.push_plain(0, 0, &[2]);
        w.next_packet(0);
        assert_eq!(w.frame_ts(), Some(960));
        let out = w.build(0, &[1], Some).unwrap();
        assert_eq!(parse(&out).unwrap().0.len(), 1);
    }
}
