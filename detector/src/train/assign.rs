//! MaxIoUAssigner and RandomSampler (mmdetection 1.0, as the reference configures them).

use crate::froc::iou_inclusive;

/// How boxes are matched to ground truth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assigner {
    /// IoU at or above which a box is positive.
    pub pos_iou: f32,
    /// IoU below which (and at or above 0) a box is negative.
    pub neg_iou: f32,
    /// A ground truth's best boxes become positive if that best IoU reaches this.
    pub min_pos_iou: f32,
}

impl Assigner {
    /// The RPN's: positive >= 0.7, negative < 0.3, best matches >= 0.3.
    pub fn rpn() -> Assigner {
        Assigner {
            pos_iou: 0.7,
            neg_iou: 0.3,
            min_pos_iou: 0.3,
        }
    }

    /// The R-CNN's: positive >= 0.5, negative < 0.5, best matches >= 0.5.
    pub fn rcnn() -> Assigner {
        Assigner {
            pos_iou: 0.5,
            neg_iou: 0.5,
            min_pos_iou: 0.5,
        }
    }
}

/// Per box: ignored, negative, or positive for ground truth `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Neither (IoU in the band between the thresholds).
    Ignore,
    /// Background.
    Negative,
    /// Matched to this ground truth.
    Positive(usize),
}

/// Assigns `boxes` to `gts` (+1 IoU): every box starts ignored; best IoU below `neg_iou` is
/// negative, at or above `pos_iou` positive for its best ground truth; then, for each ground
/// truth whose best IoU reaches `min_pos_iou`, **every** box tied at that best IoU becomes
/// positive for it (`gt_max_assign_all`). Ground truths later in the list win ties, as the
/// reference's loop overwrites. Returns None without ground truth (the reference raises).
pub fn assign(a: &Assigner, boxes: &[[f32; 4]], gts: &[[f32; 4]]) -> Option<Vec<Assignment>> {
    if gts.is_empty() {
        return None;
    }
    let iou: Vec<Vec<f64>> = boxes
        .iter()
        .map(|b| gts.iter().map(|g| iou_inclusive(b, g)).collect())
        .collect();
    let mut out: Vec<Assignment> = iou
        .iter()
        .map(|row| {
            let (k, best) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |acc, (k, &v)| if v > acc.1 { (k, v) } else { acc },
                );
            if best >= 0.0 && best < a.neg_iou as f64 {
                Assignment::Negative
            } else if best >= a.pos_iou as f64 {
                Assignment::Positive(k)
            } else {
                Assignment::Ignore
            }
        })
        .collect();
    for g in 0..gts.len() {
        let best = iou.iter().map(|r| r[g]).fold(f64::NEG_INFINITY, f64::max);
        if best < a.min_pos_iou as f64 {
            continue;
        }
        for (i, row) in iou.iter().enumerate() {
            if row[g] == best {
                out[i] = Assignment::Positive(g);
            }
        }
    }
    Some(out)
}

/// RandomSampler: at most `num * pos_fraction` positives, the rest negatives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Boxes per image.
    pub num: usize,
    /// Largest share of positives.
    pub pos_fraction: f32,
}

impl Sampler {
    /// The RPN's: 32 anchors, half positive.
    pub fn rpn() -> Sampler {
        Sampler {
            num: 32,
            pos_fraction: 0.5,
        }
    }

    /// The R-CNN's: 64 RoIs, a quarter positive (ground truths are added as proposals first).
    pub fn rcnn() -> Sampler {
        Sampler {
            num: 64,
            pos_fraction: 0.25,
        }
    }
}

/// The sampled boxes: indices into the assigned list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampled {
    /// Positives.
    pub pos: Vec<usize>,
    /// Negatives.
    pub neg: Vec<usize>,
}

/// Samples positives and negatives uniformly without replacement (`rng` a SplitMix64 state):
/// `min(#pos, num * pos_fraction)` positives, then `num - #sampled positives` negatives (or all
/// there are).
pub fn sample(s: &Sampler, assigned: &[Assignment], rng: &mut a3d::rng::SplitMix64) -> Sampled {
    let mut pick = |mut pool: Vec<usize>, k: usize| -> Vec<usize> {
        if pool.len() > k {
            // Partial Fisher-Yates: the first k of a uniform permutation.
            for i in 0..k {
                let j = i + rng.below((pool.len() - i) as u64) as usize;
                pool.swap(i, j);
            }
            pool.truncate(k);
            pool.sort_unstable();
        }
        pool
    };
    let pos: Vec<usize> = (0..assigned.len())
        .filter(|&i| matches!(assigned[i], Assignment::Positive(_)))
        .collect();
    let neg: Vec<usize> = (0..assigned.len())
        .filter(|&i| assigned[i] == Assignment::Negative)
        .collect();
    let max_pos = (s.num as f32 * s.pos_fraction) as usize;
    let pos = pick(pos, max_pos);
    let neg = pick(neg, s.num - pos.len());
    Sampled { pos, neg }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_best_matches() {
        let gts = [[0.0, 0.0, 9.0, 9.0], [100.0, 100.0, 109.0, 109.0]];
        let boxes = [
            [0.0, 0.0, 9.0, 9.0],         // IoU 1 with gt 0: positive
            [0.0, 0.0, 9.0, 13.0],        // 100/140 = 0.714: positive
            [0.0, 0.0, 9.0, 19.0],        // 0.5: ignored band (RPN)
            [50.0, 50.0, 59.0, 59.0],     // 0: negative
            [100.0, 100.0, 109.0, 123.0], // 100/240 = 0.417: gt 1's best -> positive
            [100.0, 95.0, 109.0, 118.0],  // the same 0.417 tie: also positive
        ];
        let a = assign(&Assigner::rpn(), &boxes, &gts).unwrap();
        use Assignment::*;
        assert_eq!(
            a,
            vec![
                Positive(0),
                Positive(0),
                Ignore,
                Negative,
                Positive(1),
                Positive(1)
            ]
        );
        assert!(assign(&Assigner::rpn(), &boxes, &[]).is_none());
    }

    #[test]
    fn sampler_caps_positives_and_fills_with_negatives() {
        use Assignment::*;
        let mut assigned = vec![Negative; 100];
        for a in assigned.iter_mut().take(30) {
            *a = Positive(0);
        }
        assigned[99] = Ignore;
        let mut rng = a3d::rng::SplitMix64::new(3);
        let s = sample(&Sampler::rpn(), &assigned, &mut rng);
        assert_eq!((s.pos.len(), s.neg.len()), (16, 16));
        assert!(s.pos.iter().all(|&i| i < 30) && s.neg.iter().all(|&i| (30..99).contains(&i)));
        // Few positives: the negatives fill up to num.
        let few: Vec<Assignment> = (0..50)
            .map(|i| if i < 3 { Positive(0) } else { Negative })
            .collect();
        let s = sample(&Sampler::rpn(), &few, &mut rng);
        assert_eq!((s.pos.len(), s.neg.len()), (3, 29));
    }
}
