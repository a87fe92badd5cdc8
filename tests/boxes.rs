//! IoU and NMS on every backend of the build against float64 references, and the box geometry
//! (anchors, delta coding) against hand-computed values and the reference's rules.

mod common;

use a3d::boxes::{reference, Nms, PixelConvention};
use a3d::rng::SplitMix64;
use common::box_backends;

/// Random boxes with many overlaps: centres in a small field, sizes 1-40 px, one degenerate
/// (zero width under the continuous convention) and some duplicated exactly.
fn random_boxes(n: usize, rng: &mut SplitMix64) -> Vec<[f32; 4]> {
    let mut out: Vec<[f32; 4]> = (0..n)
        .map(|_| {
            let v = rng.vec_f32(4, 0.0, 1.0);
            let (cx, cy) = (v[0] * 120.0, v[1] * 90.0);
            let (w, h) = (1.0 + v[2] * 40.0, 1.0 + v[3] * 40.0);
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
        })
        .collect();
    if n > 10 {
        out[3] = out[1];
        out[7] = [out[7][0], out[7][1], out[7][0], out[7][1]];
    }
    out
}

#[test]
fn iou_matrix_matches_float64_on_every_backend() {
    let mut rng = SplitMix64::new(11);
    let a = random_boxes(37, &mut rng);
    let b = random_boxes(53, &mut rng);
    for backend in box_backends() {
        for conv in [PixelConvention::Inclusive, PixelConvention::Continuous] {
            let got = backend.iou_matrix(&a, &b, conv).unwrap();
            assert_eq!(got.len(), a.len() * b.len());
            for (i, ai) in a.iter().enumerate() {
                for (j, bj) in b.iter().enumerate() {
                    let want = reference::iou(*ai, *bj, conv.offset() as f64);
                    let g = got[i * b.len() + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-6,
                        "{} {conv:?} ({i}, {j}): {g} vs {want}",
                        backend.name()
                    );
                }
            }
            // Every backend gives the CPU's bits (same f32 operations in the same order).
            let cpu = a3d::boxes::iou_matrix(&a, &b, conv).unwrap();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                cpu.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{}",
                backend.name()
            );
        }
    }
}

/// NMS on every backend against the greedy reference over float64 IoUs, for both comparison
/// rules, both conventions, top-k before and after, and box counts around the 64-box tiles.
#[test]
fn nms_matches_the_greedy_reference_on_every_backend() {
    let mut rng = SplitMix64::new(5);
    for n in [0usize, 1, 63, 64, 65, 200] {
        let boxes = random_boxes(n, &mut rng);
        let mut scores = rng.vec_f32(n, 0.0, 1.0);
        if n > 20 {
            scores[12] = scores[11]; // a tie: input order decides
        }
        for (threshold, equal, conv) in [
            (0.7, false, PixelConvention::Inclusive),
            (0.5, true, PixelConvention::Inclusive),
            (0.3, false, PixelConvention::Continuous),
        ] {
            let nms = Nms {
                iou_threshold: threshold,
                convention: conv,
                suppress_equal: equal,
                pre_top_k: (n > 64).then(|| n - 7),
                keep_top_k: (n > 64).then_some(40),
            };
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
            order.truncate(nms.pre_top_k.unwrap_or(n));
            let off = conv.offset() as f64;
            let t = threshold as f64;
            let mut want: Vec<usize> = reference::greedy(order.len(), |i, j| {
                let (bi, bj) = (boxes[order[i]], boxes[order[j]]);
                let v = reference::iou(bi, bj, off);
                if (v - t).abs() > 1e-6 {
                    return v > t; // clear cases: decided in float64
                }
                // At the threshold the f32 IoU the operator defines decides.
                let v32 = a3d::boxes::iou_matrix(&[bi], &[bj], conv).unwrap()[0];
                if equal {
                    v32 >= threshold
                } else {
                    v32 > threshold
                }
            })
            .into_iter()
            .map(|k| order[k])
            .collect();
            want.truncate(nms.keep_top_k.unwrap_or(usize::MAX));
            for backend in box_backends() {
                let got = backend.nms(&nms, &boxes, &scores).unwrap();
                assert_eq!(got, want, "{} n = {n} thr = {threshold}", backend.name());
            }
        }
    }
}

#[test]
fn batched_nms_never_crosses_groups() {
    let boxes = [
        [0., 0., 9., 9.],
        [0., 0., 9., 9.],
        [1., 1., 9., 9.],
        [50., 50., 60., 60.],
    ];
    let scores = [0.9, 0.8, 0.95, 0.1];
    let nms = Nms::reference(0.5);
    // Alone: box 2 (highest) suppresses 0 and 1.
    assert_eq!(nms.run(&boxes, &scores).unwrap(), vec![2, 3]);
    // Box 0 in its own group survives; merged order is by score.
    assert_eq!(
        nms.run_batched(&boxes, &scores, &[0, 1, 1, 1]).unwrap(),
        vec![2, 0, 3]
    );
    assert!(nms.run_batched(&boxes, &scores, &[0]).is_err());
}

#[test]
fn reference_and_cpu_comparison_rules_differ_at_equality() {
    // IoU exactly 0.5: 10x10 boxes sharing 2/3 of their area (inclusive pixels).
    let boxes = [[0., 0., 9., 9.], [0., 0., 4., 9.]]; // areas 100 and 50, inter 50 -> 0.5
    let scores = [0.9, 0.8];
    assert_eq!(
        Nms::reference(0.5).run(&boxes, &scores).unwrap(),
        vec![0, 1]
    );
    let cpu_rule = Nms {
        suppress_equal: true,
        ..Nms::reference(0.5)
    };
    assert_eq!(cpu_rule.run(&boxes, &scores).unwrap(), vec![0]);
}

#[test]
fn bad_input_is_a_typed_error() {
    let ok = [[0., 0., 5., 5.]];
    for b in box_backends() {
        let name = b.name();
        assert!(b.nms(&Nms::reference(1.5), &ok, &[1.0]).is_err(), "{name}");
        assert!(
            b.nms(&Nms::reference(f32::NAN), &ok, &[1.0]).is_err(),
            "{name}"
        );
        assert!(
            b.nms(&Nms::reference(0.5), &ok, &[f32::NAN]).is_err(),
            "{name}"
        );
        assert!(
            b.nms(&Nms::reference(0.5), &ok, &[1.0, 2.0]).is_err(),
            "{name}"
        );
        assert!(
            b.nms(&Nms::reference(0.5), &[[0., f32::NAN, 5., 5.]], &[1.0])
                .is_err(),
            "{name}"
        );
        assert!(
            b.nms(&Nms::reference(0.5), &[[5., 0., 2., 5.]], &[1.0])
                .is_err(),
            "{name}"
        );
        assert_eq!(
            b.nms(&Nms::reference(0.5), &[], &[]).unwrap(),
            Vec::<usize>::new(),
            "{name}"
        );
        assert!(
            b.iou_matrix(
                &[[0., 0., f32::INFINITY, 1.]],
                &ok,
                PixelConvention::Inclusive
            )
            .is_err(),
            "{name}"
        );
        assert!(
            b.iou_matrix(&[], &ok, PixelConvention::Inclusive)
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}
