//! DeepLesion's free-response ROC, as the reference computes it (deeplesion.md "Evaluation",
//! reference-detector.md section 9), with the cases its code does not handle made explicit.
//!
//! - All detections of all images are pooled and ranked by score (descending; ties keep input
//!   order). A detection whose best IoU with its image's lesions is below 0.5 is a false
//!   positive; otherwise every not-yet-hit lesion it overlaps with IoU >= 0.5 becomes hit (one
//!   detection may hit several), and one that only overlaps hit lesions counts as neither.
//! - IoU uses the inclusive (+1) pixel convention.
//! - The curve is (false positives / images, hits / lesions) after each detection, from the
//!   origin. Sensitivity at an FP rate is linear interpolation along it (the reference's
//!   `interp1d`, whose search picks, at an FP rate the curve reaches exactly, the point where
//!   it got there); beyond the curve's end, its last sensitivity; before its first point, the
//!   segment from the origin (the reference's code raises there).

use std::collections::BTreeMap;

/// The FP rates papers report.
pub const FP_RATES: [f64; 6] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0];

/// One detection: its image, box (0-based, inclusive corners) and score.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The image (DeepLesion's `File_name`).
    pub image: String,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Score.
    pub score: f32,
}

/// A lesion to find: its box and whether it counts in the subset evaluated (lesions outside
/// the subset still absorb the detections that find them, which are then no false positives).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lesion {
    /// `[x1, y1, x2, y2]`, 0-based, inclusive.
    pub bbox: [f32; 4],
    /// Counts towards sensitivity.
    pub counted: bool,
}

/// The FROC curve and its summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Froc {
    /// Images evaluated.
    pub images: usize,
    /// Lesions counted.
    pub lesions: usize,
    /// Curve points (FP per image, sensitivity), from (0, 0).
    pub curve: Vec<(f64, f64)>,
    /// Sensitivity at [`FP_RATES`].
    pub sensitivity: [f64; 6],
}

impl Froc {
    /// The mean sensitivity at 0.5, 1, 2 and 4 FP per image (the headline number).
    pub fn mean_first_four(&self) -> f64 {
        self.sensitivity[..4].iter().sum::<f64>() / 4.0
    }
}

/// IoU with the +1 convention.
pub fn iou_inclusive(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0) as f64;
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0) as f64;
    let area = |r: &[f32; 4]| ((r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0)) as f64;
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The FROC of `detections` against `lesions` (per image; every image evaluated is a key, even
/// one without lesions). Detections of images not in `lesions` must be filtered out first.
pub fn froc(lesions: &BTreeMap<String, Vec<Lesion>>, detections: &[Detection]) -> Froc {
    let images = lesions.len();
    let counted: usize = lesions.values().flatten().filter(|l| l.counted).count();
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| {
        detections[b]
            .score
            .total_cmp(&detections[a].score)
            .then(a.cmp(&b))
    });
    let mut hit: BTreeMap<&str, Vec<bool>> = lesions
        .iter()
        .map(|(k, v)| (k.as_str(), vec![false; v.len()]))
        .collect();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut curve = vec![(0.0, 0.0)];
    for i in order {
        let det = &detections[i];
        let Some(gts) = lesions.get(&det.image) else {
            continue;
        };
        let flags = hit.get_mut(det.image.as_str()).expect("same keys");
        let ious: Vec<f64> = gts
            .iter()
            .map(|g| iou_inclusive(&det.bbox, &g.bbox))
            .collect();
        if ious.iter().all(|&v| v < 0.5) {
            fp += 1;
        } else {
            for (j, &v) in ious.iter().enumerate() {
                if v >= 0.5 && !flags[j] {
                    flags[j] = true;
                    if gts[j].counted {
                        tp += 1;
                    }
                }
            }
        }
        let fppi = fp as f64 / images.max(1) as f64;
        let sens = tp as f64 / counted.max(1) as f64;
        curve.push((fppi, sens));
    }
    let sensitivity = FP_RATES.map(|x| interpolate(&curve, x));
    Froc {
        images,
        lesions: counted,
        curve,
        sensitivity,
    }
}

/// Linear interpolation along `curve` (x non-decreasing) with `searchsorted(side = left)`.
fn interpolate(curve: &[(f64, f64)], x: f64) -> f64 {
    let last = curve[curve.len() - 1];
    if x >= last.0 {
        return if x == last.0 {
            // The first point that reached x (as the reference's search finds it).
            curve[curve
                .iter()
                .position(|p| p.0 >= x)
                .unwrap_or(curve.len() - 1)]
            .1
        } else {
            last.1
        };
    }
    let hi = curve
        .iter()
        .position(|p| p.0 >= x)
        .unwrap_or(curve.len() - 1)
        .max(1);
    let (lo, hi) = (curve[hi - 1], curve[hi]);
    if hi.0 == lo.0 {
        return hi.1;
    }
    lo.1 + (hi.1 - lo.1) * (x - lo.0) / (hi.0 - lo.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(image: &str, b: [f32; 4], score: f32) -> Detection {
        Detection {
            image: image.into(),
            bbox: b,
            score,
        }
    }

    fn gt(b: [f32; 4]) -> Lesion {
        Lesion {
            bbox: b,
            counted: true,
        }
    }

    #[test]
    fn hits_duplicates_and_false_positives() {
        let mut lesions = BTreeMap::new();
        // Two overlapping lesions on image a, one on b, none on c.
        lesions.insert(
            "a".to_string(),
            vec![gt([10., 10., 29., 29.]), gt([12., 12., 31., 31.])],
        );
        lesions.insert("b".to_string(), vec![gt([50., 50., 59., 59.])]);
        lesions.insert("c".to_string(), vec![]);
        let dets = vec![
            det("a", [11., 11., 30., 30.], 0.9), // hits both lesions of a
            det("a", [10., 10., 29., 29.], 0.8), // duplicate: neither
            det("c", [0., 0., 9., 9.], 0.7),     // FP
            det("b", [0., 0., 5., 5.], 0.6),     // FP
            det("b", [50., 50., 59., 59.], 0.5), // hit
        ];
        let f = froc(&lesions, &dets);
        assert_eq!((f.images, f.lesions), (3, 3));
        let third = 1.0 / 3.0;
        assert_eq!(
            f.curve,
            vec![
                (0.0, 0.0),
                (0.0, 2.0 / 3.0),
                (0.0, 2.0 / 3.0),
                (third, 2.0 / 3.0),
                (2.0 * third, 2.0 / 3.0),
                (2.0 * third, 1.0)
            ]
        );
        // 0.5 FP/image lies between 1/3 and 2/3 (both at 2/3 sensitivity); 1 and beyond: the end.
        assert!((f.sensitivity[0] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f.sensitivity[1], 1.0);
        assert_eq!(f.sensitivity[5], 1.0);
    }

    #[test]
    fn a_curve_starting_beyond_half_an_fp_interpolates_from_the_origin() {
        let mut lesions = BTreeMap::new();
        lesions.insert("a".to_string(), vec![gt([0., 0., 9., 9.])]);
        // One image, the first detection is a false positive: the curve jumps to 1 FP/image.
        let dets = vec![
            det("a", [50., 50., 60., 60.], 0.9),
            det("a", [0., 0., 9., 9.], 0.8),
        ];
        let f = froc(&lesions, &dets);
        assert_eq!(f.curve, vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]);
        assert_eq!(f.sensitivity[0], 0.0);
        // Exactly at 1 FP/image: the point where the curve reached it.
        assert_eq!(f.sensitivity[1], 0.0);
        assert_eq!(f.sensitivity[2], 1.0);
        assert!((f.mean_first_four() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn uncounted_lesions_absorb_their_detections() {
        let mut lesions = BTreeMap::new();
        lesions.insert(
            "a".to_string(),
            vec![
                gt([0., 0., 9., 9.]),
                Lesion {
                    bbox: [20., 20., 29., 29.],
                    counted: false,
                },
            ],
        );
        let dets = vec![
            det("a", [20., 20., 29., 29.], 0.9),
            det("a", [0., 0., 9., 9.], 0.8),
        ];
        let f = froc(&lesions, &dets);
        assert_eq!(f.lesions, 1);
        assert_eq!(f.curve, vec![(0.0, 0.0), (0.0, 0.0), (0.0, 1.0)]);
        assert!(iou_inclusive(&[0., 0., 9., 9.], &[0., 0., 9., 9.]) == 1.0);
        // +1 convention: [0, 9] and [5, 14] share 5 of 10 columns.
        assert!((iou_inclusive(&[0., 0., 9., 0.], &[5., 0., 14., 0.]) - 5.0 / 15.0).abs() < 1e-12);
    }
}
