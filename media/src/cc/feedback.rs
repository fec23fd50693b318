//! Arrival-time feedback for [`DelayBasedBwe`](super::DelayBasedBwe) on a protected
//! stream's carrier.
//!
//! The estimator needs, per packet, when it was sent and when it arrived. Every packet
//! of a protected stream (media, repair, retransmission) rides one carrier whose
//! sequence number counts each of them once, so that number plays the part of
//! transport-wide congestion control's sequence number. The receiver reports arrivals
//! ([`ArrivalRecorder`], [`Feedback::Arrivals`]); the sender matches them with what it
//! sent ([`SendHistory`]).
//!
//! Each report covers the packets of the last two report intervals, so a report lost on
//! a 50 % link costs nothing as long as the next one arrives: the estimator needs delay
//! samples, not every one of them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::PacketFeedback;
use crate::recovery::extend_seq;
use crate::recovery::wire::{ARRIVAL_NOT_RECEIVED, Feedback};

/// The clock unit of [`Feedback::Arrivals`].
pub const ARRIVAL_UNIT: Duration = Duration::from_micros(250);

/// How often the receiver reports (GCC's transport feedback runs at 20–100 ms).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(50);

/// At most this many sequence numbers in one report, newest kept: 984 bytes, under the
/// 1,000 a feedback message may take on a protected m-line. Two intervals of up to 480
/// packets is about 45 Mbit/s of 1,200-byte packets.
pub const MAX_REPORT_ENTRIES: usize = 480;

fn ticks(d: Duration) -> u64 {
    (d.as_micros() / ARRIVAL_UNIT.as_micros()) as u64
}

/// Receiving side: carrier sequence numbers and arrival times in, reports out.
#[derive(Debug)]
pub struct ArrivalRecorder {
    media_ssrc: u32,
    epoch: Option<Instant>,
    newest: Option<u64>,
    /// Extended sequence number → arrival in [`ARRIVAL_UNIT`]s since `epoch`.
    arrivals: BTreeMap<u64, u64>,
    /// First sequence number of the newest interval reported (the next report repeats
    /// from here), and one past the last reported.
    prev_from: Option<u64>,
    reported_to: Option<u64>,
    next_report: Option<Instant>,
}

impl ArrivalRecorder {
    pub fn new(media_ssrc: u32) -> Self {
        ArrivalRecorder {
            media_ssrc,
            epoch: None,
            newest: None,
            arrivals: BTreeMap::new(),
            prev_from: None,
            reported_to: None,
            next_report: None,
        }
    }

    /// One carrier packet arrived.
    pub fn on_packet(&mut self, now: Instant, seq: u16) {
        let epoch = *self.epoch.get_or_insert(now);
        let s = extend_seq(seq, self.newest);
        if self
            .reported_to
            .is_some_and(|t| s + MAX_REPORT_ENTRIES as u64 <= t)
        {
            // Far older than anything a report will cover again.
            return;
        }
        self.newest = Some(self.newest.map_or(s, |n| n.max(s)));
        self.arrivals
            .entry(s)
            .or_insert_with(|| ticks(now.saturating_duration_since(epoch)));
        if self.next_report.is_none() {
            self.next_report = Some(now + REPORT_INTERVAL);
        }
    }

    /// When [`poll_report`](Self::poll_report) has something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_report
    }

    /// The report due at `now`, if any: the packets since the previous report and those
    /// the previous report covered.
    pub fn poll_report(&mut self, now: Instant) -> Option<Feedback> {
        if self.next_report.is_none_or(|t| now < t) {
            return None;
        }
        let newest = self.newest?;
        if self.reported_to.is_some_and(|t| t > newest) {
            self.next_report = None;
            return None;
        }
        let first_new = self
            .reported_to
            .unwrap_or_else(|| self.arrivals.keys().next().copied().unwrap_or(newest));
        let from = self
            .prev_from
            .unwrap_or(first_new)
            .max((newest + 1).saturating_sub(MAX_REPORT_ENTRIES as u64));
        let reference = self.arrivals.range(from..=newest).map(|(_, &t)| t).min()?;
        let offsets = (from..=newest)
            .map(|s| match self.arrivals.get(&s) {
                Some(&t) => (t - reference).min(u64::from(ARRIVAL_NOT_RECEIVED) - 1) as u16,
                None => ARRIVAL_NOT_RECEIVED,
            })
            .collect();
        self.prev_from = Some(first_new);
        self.reported_to = Some(newest + 1);
        self.arrivals = self.arrivals.split_off(&first_new);
        self.next_report = Some(now + REPORT_INTERVAL);
        Some(Feedback::Arrivals {
            media_ssrc: self.media_ssrc,
            base_seq: from as u16,
            reference: reference as u32,
            offsets,
        })
    }
}

/// Sending side: what was sent when, matched with arrival reports.
#[derive(Debug, Default)]
pub struct SendHistory {
    /// (carrier sequence number, send time, bytes), in send order.
    sent: VecDeque<(u64, Instant, usize)>,
    /// The first sequence number not yet handed to the estimator.
    next: u64,
    /// The receiver's clock, unwrapped, at the newest report's reference.
    last_reference: Option<u64>,
    /// A receiver clock reading and the sender instant it is mapped to.
    anchor: Option<(u64, Instant)>,
}

/// How long a send is kept for matching (reports come every 50 ms, the next one
/// repeats the previous one's packets).
const HISTORY: Duration = Duration::from_secs(2);

impl SendHistory {
    pub fn new() -> Self {
        SendHistory::default()
    }

    /// One carrier packet left: its full sequence number and bytes on the wire.
    pub fn on_sent(&mut self, now: Instant, seq: u64, bytes: usize) {
        if self.sent.back().is_some_and(|b| seq <= b.0) {
            // Sequence numbers only grow; anything else is not ours to track.
            return;
        }
        self.sent.push_back((seq, now, bytes));
        while self.sent.front().is_some_and(|f| f.1 + HISTORY < now) {
            self.sent.pop_front();
        }
    }

    /// One arrival report: feedback for the packets it settles, in send order. A packet
    /// reported missing counts as lost once a later one in the same report arrived; the
    /// missing ones after the last arrival wait for the next report.
    pub fn on_report(
        &mut self,
        now: Instant,
        base_seq: u16,
        reference: u32,
        offsets: &[u16],
    ) -> Vec<PacketFeedback> {
        let Some(&(newest_sent, _, _)) = self.sent.back() else {
            return vec![];
        };
        let mut base = (newest_sent & !0xffff) | u64::from(base_seq);
        if base > newest_sent {
            let Some(b) = base.checked_sub(0x1_0000) else {
                return vec![];
            };
            base = b;
        }
        let reference = match self.last_reference {
            None => u64::from(reference) + (1 << 32),
            Some(last) => {
                let d = i64::from(reference.wrapping_sub(last as u32) as i32);
                last.saturating_add_signed(d)
            }
        };
        self.last_reference = Some(reference);
        let Some(last_arrived) = offsets.iter().rposition(|&o| o != ARRIVAL_NOT_RECEIVED) else {
            return vec![];
        };
        let (anchor_t, anchor_at) = *self.anchor.get_or_insert_with(|| {
            let newest = offsets
                .iter()
                .filter(|&&o| o != ARRIVAL_NOT_RECEIVED)
                .max()
                .copied()
                .unwrap_or(0);
            (reference + u64::from(newest), now)
        });
        let arrival_at = |t: u64| -> Option<Instant> {
            if t >= anchor_t {
                anchor_at.checked_add(ARRIVAL_UNIT * (t - anchor_t) as u32)
            } else {
                anchor_at.checked_sub(ARRIVAL_UNIT * (anchor_t - t) as u32)
            }
        };
        let settled_to = base + last_arrived as u64;
        let mut out = Vec::new();
        let first = self.next.max(base);
        let from = self.sent.partition_point(|s| s.0 < first);
        for &(seq, sent, bytes) in self.sent.range(from..) {
            if seq > settled_to {
                break;
            }
            let o = offsets[(seq - base) as usize];
            let arrival = if o == ARRIVAL_NOT_RECEIVED {
                None
            } else {
                match arrival_at(reference + u64::from(o)) {
                    Some(a) => Some(a),
                    None => continue,
                }
            };
            out.push(PacketFeedback {
                send_time: sent,
                arrival,
                size: bytes,
            });
        }
        self.next = self.next.max(settled_to + 1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::wire::Feedback;

    /// Any fixed instant: the tests only use offsets from it.
    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    fn report(r: &mut ArrivalRecorder, now: Instant) -> (u16, u32, Vec<u16>) {
        match r.poll_report(now) {
            Some(Feedback::Arrivals {
                base_seq,
                reference,
                offsets,
                ..
            }) => (base_seq, reference, offsets),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_cover_two_intervals_and_survive_the_wire() {
        let t0 = origin();
        let mut r = ArrivalRecorder::new(7);
        for s in [65530u16, 65531, 65533] {
            r.on_packet(t0 + Duration::from_millis(u64::from(s - 65520)), s);
        }
        assert!(r.poll_report(t0).is_none(), "not due yet");
        let at = r.poll_timeout().unwrap();
        let (base, _, offs) = report(&mut r, at);
        assert_eq!(base, 65530);
        assert_eq!(offs, vec![0, 4, ARRIVAL_NOT_RECEIVED, 12]);
        for s in [65535u16, 0, 2] {
            r.on_packet(at + Duration::from_millis(1), s);
        }
        let at2 = r.poll_timeout().unwrap();
        let fb = r.poll_report(at2).unwrap();
        let bytes = fb.to_bytes(1);
        let back = Feedback::parse_compound(&bytes);
        let [
            Feedback::Arrivals {
                base_seq, offsets, ..
            },
        ] = &back[..]
        else {
            panic!("{back:?}")
        };
        // The previous interval again, then the new one across the wrap.
        assert_eq!(*base_seq, 65530);
        assert_eq!(offsets.len(), 9);
        assert_eq!(offsets[4], ARRIVAL_NOT_RECEIVED, "65534 never came");
        assert_eq!(offsets[7], ARRIVAL_NOT_RECEIVED, "1 never came");
        assert!(
            r.poll_report(at2 + REPORT_INTERVAL).is_none(),
            "nothing new"
        );
    }

    #[test]
    fn sender_settles_each_packet_once_in_send_order() {
        let t0 = origin();
        let mut h = SendHistory::new();
        let mut r = ArrivalRecorder::new(7);
        let ms = Duration::from_millis;
        // 20 packets 5 ms apart; every third lost; one-way delay 30 ms growing 1 ms a
        // packet (a queue building).
        for i in 0..20u64 {
            let seq = 70_000 + i;
            h.on_sent(t0 + ms(5 * i), seq, 1000);
            if i % 3 != 1 {
                r.on_packet(t0 + ms(5 * i + 30 + i), seq as u16);
            }
        }
        let mut got = Vec::new();
        let mut now = t0 + ms(200);
        while let Some(at) = r.poll_timeout() {
            now = now.max(at);
            let Some(Feedback::Arrivals {
                base_seq,
                reference,
                offsets,
                ..
            }) = r.poll_report(now)
            else {
                break;
            };
            // The same report delivered twice settles nothing new.
            got.extend(h.on_report(now, base_seq, reference, &offsets));
            assert!(h.on_report(now, base_seq, reference, &offsets).is_empty());
        }
        // 19 was lost and nothing after it arrived: not settled yet.
        assert_eq!(got.len(), 19);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.send_time, t0 + ms(5 * i as u64));
            assert_eq!(p.arrival.is_none(), i % 3 == 1, "packet {i}");
        }
        let owd = |i: usize| got[i].arrival.unwrap() - got[i].send_time;
        assert_eq!(owd(18) - owd(0), ms(18), "delay growth kept exactly");
    }

    #[test]
    fn a_lost_report_is_covered_by_the_next() {
        let t0 = origin();
        let mut h = SendHistory::new();
        let mut r = ArrivalRecorder::new(7);
        let ms = Duration::from_millis;
        let mut reports = Vec::new();
        for i in 0..30u64 {
            let now = t0 + ms(10 * i);
            h.on_sent(now, i + 1, 500);
            r.on_packet(now + ms(20), (i + 1) as u16);
            if let Some(f) = r.poll_report(now + ms(20)) {
                reports.push((now + ms(20), f));
            }
        }
        assert!(reports.len() >= 4);
        let mut settled = 0;
        for (i, (now, f)) in reports.iter().enumerate() {
            if i == 1 {
                continue; // lost on the way
            }
            let Feedback::Arrivals {
                base_seq,
                reference,
                offsets,
                ..
            } = f
            else {
                unreachable!()
            };
            let got = h.on_report(*now, *base_seq, *reference, offsets);
            assert!(got.iter().all(|p| p.arrival.is_some()));
            settled += got.len();
        }
        let last_reported = match &reports.last().unwrap().1 {
            Feedback::Arrivals {
                base_seq, offsets, ..
            } => u64::from(*base_seq) + offsets.len() as u64 - 1,
            _ => unreachable!(),
        };
        assert_eq!(settled as u64, last_reported, "every packet settled once");
    }
}
