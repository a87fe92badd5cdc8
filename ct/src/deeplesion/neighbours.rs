//! Which slices make up a key slice's D-slice input (shared/docs/deeplesion.md, "Building a
//! multi-slice input"; reference-detector.md section 1.3).
//!
//! The network expects slices 2.0 mm apart. With the scan's slice interval `s`, `r = 2.0 / s`:
//! neighbour `p` on each side sits `r * p` slices away; a fractional position is interpolated
//! between its floor and ceiling slices. [`WeightRule::PerNeighbour`] (the default) weights
//! each neighbour by its own fraction; [`WeightRule::Reference`] reproduces the reference's code,
//! which uses the fraction of `r` for every neighbour (wrong for the 2nd and 3rd neighbours of
//! D = 7 whenever `frac(r * p) != frac(r)`: at 5 mm, `r = 0.4`, the 2nd neighbour is
//! `0.4 S1 + 0.6 S0` instead of `0.8 S1 + 0.2 S0`).

/// How the interpolation weights of the neighbours are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightRule {
    /// Each neighbour by its own position's fraction (correct).
    #[default]
    PerNeighbour,
    /// Every neighbour by `frac(2.0 / s)`, as the reference computes them.
    Reference,
}

/// The detector's slice spacing, mm.
pub const NETWORK_SLICE_MM: f64 = 2.0;

/// One output slice: `sum weight * slice(key + offset)` over its terms.
pub type Terms = Vec<(i64, f32)>;

/// The `depth` output slices in order of offset `-k..=k` (`k = depth / 2`; the key slice is at
/// index `depth / 2`). `depth` must be odd. A slice interval that is not finite and positive
/// repeats the key slice, as the reference does.
pub fn plan(depth: usize, slice_interval_mm: f64, rule: WeightRule) -> Vec<Terms> {
    let k = depth / 2;
    let mut out = vec![Vec::new(); depth];
    out[k] = vec![(0, 1.0)];
    if !(slice_interval_mm.is_finite() && slice_interval_mm > 0.0) {
        for (i, t) in out.iter_mut().enumerate() {
            if i != k {
                *t = vec![(0, 1.0)];
            }
        }
        return out;
    }
    let r = NETWORK_SLICE_MM / slice_interval_mm;
    let (a_ref, b_ref) = (r - r.floor(), r.ceil() - r);
    for p in 1..=k {
        let pos = r * p as f64;
        let (lo, hi) = (pos.floor() as i64, pos.ceil() as i64);
        let (a, b) = match rule {
            WeightRule::PerNeighbour => (pos - pos.floor(), pos.ceil() - pos),
            WeightRule::Reference => (a_ref, b_ref),
        };
        let terms = |sign: i64| -> Terms {
            if a_ref == 0.0 {
                // Whole-slice steps: the slice itself (the reference's `int(delta)`).
                vec![(sign * pos as i64, 1.0)]
            } else if lo == hi {
                // On a whole slice although r is fractional (e.g. r = 0.5, p = 2): the slice
                // itself (the reference reads it twice with weights adding to 1).
                vec![(sign * lo, 1.0)]
            } else {
                vec![(sign * hi, a as f32), (sign * lo, b as f32)]
            }
        };
        out[k + p] = terms(1);
        out[k - p] = terms(-1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mm_slices_are_read_directly_and_five_mm_ones_interpolated() {
        assert_eq!(
            plan(3, 2.0, WeightRule::PerNeighbour),
            vec![vec![(-1, 1.0)], vec![(0, 1.0)], vec![(1, 1.0)]]
        );
        assert_eq!(plan(3, 1.0, WeightRule::PerNeighbour)[2], vec![(2, 1.0)]);
        // 5 mm: r = 0.4. Neighbour 1 at 0.4: 0.4 S1 + 0.6 S0 (both rules).
        let correct = plan(7, 5.0, WeightRule::PerNeighbour);
        let reference = plan(7, 5.0, WeightRule::Reference);
        let close = |t: &Terms, want: &[(i64, f32)]| {
            assert_eq!(t.len(), want.len(), "{t:?}");
            for ((o, w), (wo, ww)) in t.iter().zip(want) {
                assert_eq!(o, wo, "{t:?}");
                assert!((w - ww).abs() < 1e-6, "{t:?} vs {want:?}");
            }
        };
        close(&correct[4], &[(1, 0.4), (0, 0.6)]);
        close(&reference[4], &[(1, 0.4), (0, 0.6)]);
        // Neighbour 2 at 0.8: where the rules differ (reference-detector.md's example).
        close(&correct[5], &[(1, 0.8), (0, 0.2)]);
        close(&reference[5], &[(1, 0.4), (0, 0.6)]);
        // Neighbour 3 at 1.2 and its mirror image.
        close(&correct[6], &[(2, 0.2), (1, 0.8)]);
        close(&correct[0], &[(-2, 0.2), (-1, 0.8)]);
        close(&reference[6], &[(2, 0.4), (1, 0.6)]);
        // r = 0.5 (4 mm): neighbour 2 sits on slice 1 exactly.
        assert_eq!(plan(5, 4.0, WeightRule::PerNeighbour)[4], vec![(1, 1.0)]);
        assert_eq!(plan(5, 4.0, WeightRule::Reference)[4], vec![(1, 1.0)]);
        // Missing or invalid intervals repeat the key slice.
        for s in [f64::NAN, 0.0, -1.0] {
            assert!(plan(5, s, WeightRule::PerNeighbour)
                .iter()
                .all(|t| t == &vec![(0, 1.0)]));
        }
    }
}
