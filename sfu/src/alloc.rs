//! Bandwidth allocation across one subscriber's subscriptions.
//!
//! Input: the subscriber pc's bandwidth estimate, and per subscription the layer ceiling
//! from the subscriber's preference (quality and rendered size), the bitrate each layer
//! of the source currently carries, and a priority. Output: the spatial and temporal
//! layer per subscription. Start everyone at their ceiling; while over budget, lower the
//! lowest-priority subscription one step (spatial layer, then temporal layers of the
//! lowest spatial layer, then pause), spreading the cuts round-robin within a priority.

use crate::forward::{Layer, MAX_TEMPORAL};

#[derive(Debug, Clone)]
pub struct Demand {
    /// Highest layer the subscriber asked for; `None` = paused by preference.
    pub ceiling: Option<Layer>,
    /// Measured bitrate (bit/s) per layer; 0 = layer not currently received.
    pub layer_bps: [u64; 3],
    /// Higher is protected longer (screen share > active speaker > others).
    pub priority: u8,
    /// Whether temporal layers are known to exist (otherwise halving by TL is not possible).
    pub temporal_scalable: bool,
    /// Whether the source sends simulcast layers. A single-layer, non-scalable track is
    /// never paused for bandwidth: there is nothing lower to offer, and pausing it would
    /// blank a participant instead of letting congestion control and NACK cope.
    pub simulcast: bool,
    /// Never pause: the lowest layer's base temporal layer stays. A protected downlink's
    /// congestion control learns only from what it sends (it does not probe), so a
    /// paused stream would never find that the path had recovered.
    pub keep_base: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub layer: Option<Layer>,
    pub temporal: u8,
}

/// Share of the bitrate kept by forwarding temporal layers 0..=t out of L1T3.
const TEMPORAL_SHARE: [f64; 4] = [0.5, 0.75, 1.0, 1.0];

fn cost(d: &Demand, a: Allocation) -> u64 {
    match a.layer {
        None => 0,
        Some(l) => {
            let bps = d.layer_bps[usize::from(l)] as f64;
            (bps * TEMPORAL_SHARE[usize::from(a.temporal.min(MAX_TEMPORAL))]) as u64
        }
    }
}

/// Highest received layer at or below `ceiling`, or the lowest received layer when the
/// ceiling is below everything the publisher currently sends.
fn start_layer(d: &Demand) -> Option<Layer> {
    let ceiling = d.ceiling?;
    let received = |l: Layer| d.layer_bps[usize::from(l)] > 0;
    (0..=ceiling.min(2)).rev().find(|&l| received(l)).or_else(|| (0..3).find(|&l| received(l)))
}

fn step_down(d: &Demand, a: Allocation) -> Option<Allocation> {
    let layer = a.layer?;
    let lower = (0..layer).rev().find(|&l| d.layer_bps[usize::from(l)] > 0);
    if let Some(l) = lower {
        return Some(Allocation { layer: Some(l), temporal: MAX_TEMPORAL });
    }
    if d.temporal_scalable && a.temporal > 0 {
        return Some(Allocation { layer: Some(layer), temporal: a.temporal.min(2) - 1 });
    }
    if (d.simulcast || d.temporal_scalable) && !d.keep_base {
        return Some(Allocation { layer: None, temporal: 0 });
    }
    None
}

pub fn allocate(budget_bps: u64, demands: &[Demand]) -> Vec<Allocation> {
    let mut alloc: Vec<Allocation> = demands
        .iter()
        .map(|d| Allocation { layer: start_layer(d), temporal: MAX_TEMPORAL })
        .collect();
    let total = |alloc: &[Allocation]| -> u64 {
        demands.iter().zip(alloc).map(|(d, a)| cost(d, *a)).sum()
    };
    let mut turn = 0usize;
    while total(&alloc) > budget_bps {
        // The lowest priority that still has something to give.
        let can_give = |i: usize| step_down(&demands[i], alloc[i]).is_some();
        let Some(prio) = (0..demands.len()).filter(|&i| can_give(i)).map(|i| demands[i].priority).min()
        else {
            break;
        };
        let candidates: Vec<usize> =
            (0..demands.len()).filter(|&i| demands[i].priority == prio && can_give(i)).collect();
        let i = candidates[turn % candidates.len()];
        turn += 1;
        if let Some(next) = step_down(&demands[i], alloc[i]) {
            alloc[i] = next;
        }
    }
    alloc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(ceiling: Option<Layer>, prio: u8) -> Demand {
        Demand {
            ceiling,
            layer_bps: [150_000, 500_000, 1_500_000],
            priority: prio,
            temporal_scalable: true,
            simulcast: true,
            keep_base: false,
        }
    }

    #[test]
    fn a_protected_stream_keeps_its_base_layer() {
        let d = Demand { keep_base: true, ..cam(Some(2), 1) };
        assert_eq!(allocate(10_000, &[d])[0], Allocation { layer: Some(0), temporal: 0 });
        assert_eq!(allocate(10_000, &[cam(Some(2), 1)])[0].layer, None);
    }

    #[test]
    fn plenty_of_bandwidth_gives_ceilings() {
        let a = allocate(10_000_000, &[cam(Some(2), 1), cam(Some(1), 1), cam(None, 1)]);
        assert_eq!(a[0], Allocation { layer: Some(2), temporal: MAX_TEMPORAL });
        assert_eq!(a[1].layer, Some(1));
        assert_eq!(a[2].layer, None);
    }

    #[test]
    fn less_bandwidth_lowers_layers_low_priority_first() {
        let a = allocate(2_100_000, &[cam(Some(2), 2), cam(Some(2), 1), cam(Some(2), 1)]);
        assert_eq!(a[0].layer, Some(2), "high priority keeps full layer: {a:?}");
        assert!(a[1].layer < Some(2) && a[2].layer < Some(2), "{a:?}");
        let spent: u64 = [cam(Some(2), 2), cam(Some(2), 1), cam(Some(2), 1)]
            .iter()
            .zip(&a)
            .map(|(d, x)| cost(d, *x))
            .sum();
        assert!(spent <= 2_100_000);
    }

    #[test]
    fn very_low_bandwidth_drops_temporal_layers_then_pauses() {
        let a = allocate(100_000, &[cam(Some(2), 1)]);
        assert_eq!(a[0], Allocation { layer: Some(0), temporal: 0 });
        let a = allocate(10_000, &[cam(Some(2), 1)]);
        assert_eq!(a[0].layer, None);
    }

    #[test]
    fn single_layer_track_is_never_paused_for_bandwidth() {
        let d = Demand { ceiling: Some(0), layer_bps: [1_500_000, 0, 0], priority: 1, temporal_scalable: false, simulcast: false, keep_base: false };
        let a = allocate(100_000, &[d]);
        assert_eq!(a[0].layer, Some(0));
    }

    #[test]
    fn missing_layers_are_skipped() {
        let mut d = cam(Some(2), 1);
        d.layer_bps[2] = 0; // publisher stopped sending f
        let a = allocate(10_000_000, &[d]);
        assert_eq!(a[0].layer, Some(1));
    }
}
