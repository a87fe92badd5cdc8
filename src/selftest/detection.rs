//! Self-test of the detection ops: IoU and NMS against float64 (NMS as the mismatch count of the
//! kept set against a greedy float64 NMS), RoIAlign forward and backward against the float64
//! reference in every dtype, and the batch-norm statistics and fused BN-ReLU-fusion forward, on
//! random odd-sized problems.

use super::{tolerance, Check};
use crate::backend::{BatchNormBackend, BoxBackend, RoiAlignBackend};
use crate::batchnorm::{self, Affine};
use crate::boxes::{self, Nms, PixelConvention};
use crate::fusion::reference::relative_error;
use crate::rng::SplitMix64;
use crate::roi_align::{self, RoiAlign, RoiAlignMode};
use crate::{DType, Result, Tensor};

fn random_boxes(n: usize, rng: &mut SplitMix64) -> Vec<[f32; 4]> {
    (0..n)
        .map(|_| {
            let v = rng.vec_f32(4, 0.0, 1.0);
            let (cx, cy, w, h) = (
                v[0] * 100.0,
                v[1] * 80.0,
                1.0 + v[2] * 40.0,
                1.0 + v[3] * 40.0,
            );
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
        })
        .collect()
}

fn outcome(result: Result<f64>) -> (f64, Option<String>) {
    match result {
        Ok(e) => (e, None),
        Err(e) => (f64::INFINITY, Some(e.to_string())),
    }
}

/// IoU (relative error against float64) and NMS (1 when the kept set differs from the greedy
/// float64 NMS, else 0) on `backend`.
pub fn run_boxes(backend: &dyn BoxBackend, seed: u64) -> Vec<Check> {
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    for n in [
        1usize,
        37 + rng.below(60) as usize,
        300 + rng.below(100) as usize,
    ] {
        let b = random_boxes(n, &mut rng);
        let scores = rng.vec_f32(n, 0.0, 1.0);
        let conv = PixelConvention::Inclusive;
        let iou = backend.iou_matrix(&b, &b[..n.min(50)], conv).map(|got| {
            let want: Vec<f64> = b
                .iter()
                .flat_map(|&a| {
                    b[..n.min(50)]
                        .iter()
                        .map(move |&c| boxes::reference::iou(a, c, 1.0))
                })
                .collect();
            relative_error(&got.iter().map(|&v| v as f64).collect::<Vec<_>>(), &want)
        });
        let nms = Nms::reference(0.5);
        let kept = backend.nms(&nms, &b, &scores).map(|got| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
            let want: Vec<usize> = boxes::reference::greedy(n, |i, j| {
                boxes::iou_matrix(&[b[order[i]]], &[b[order[j]]], conv)
                    .map(|v| v[0] > 0.5)
                    .unwrap_or(true)
            })
            .into_iter()
            .map(|k| order[k])
            .collect();
            if got == want {
                0.0
            } else {
                1.0
            }
        });
        for (pass, result, tol) in [("iou", iou, 1e-6), ("nms", kept, 0.0)] {
            let (error, failure) = outcome(result);
            checks.push(Check {
                backend: backend.name(),
                op: "boxes",
                pass,
                dtype: DType::F32,
                shape: vec![n],
                error,
                tolerance: tol,
                failure,
            });
        }
    }
    checks
}

/// RoIAlign forward and backward, both conventions, every dtype, against float64.
pub fn run_roi_align(backend: &dyn RoiAlignBackend, seed: u64) -> Vec<Check> {
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    let shape = [
        2,
        3,
        9 + 2 * rng.below(3) as usize,
        11 + 2 * rng.below(3) as usize,
    ];
    let rois: Vec<[f32; 5]> = (0..9)
        .map(|k| {
            let v = rng.vec_f32(4, -0.2, 1.0);
            let (x, y) = (v[0] * 50.0, v[1] * 40.0);
            [
                (k % 2) as f32,
                x,
                y,
                x + v[2].abs() * 30.0,
                y + v[3].abs() * 30.0,
            ]
        })
        .collect();
    for (mode, sampling) in [(RoiAlignMode::Reference, 2), (RoiAlignMode::Aligned, 0)] {
        let op = RoiAlign {
            mode,
            sampling_ratio: sampling,
            pooled_h: 3,
            pooled_w: 5,
            ..RoiAlign::reference()
        };
        for dtype in DType::ALL {
            let n: usize = shape.iter().product();
            let out_shape = [rois.len(), shape[1], op.pooled_h, op.pooled_w];
            let xv = rng.vec_f32(n, -1.0, 1.0);
            let dyv = rng.vec_f32(out_shape.iter().product(), -1.0, 1.0);
            let prepared = Tensor::from_f32(&xv, &shape, dtype)
                .and_then(|x| Ok((x, Tensor::from_f32(&dyv, &out_shape, dtype)?)));
            let (fwd, bwd) = match prepared {
                Ok((x, dy)) => {
                    let want_y = roi_align::reference::forward(&op, &x.to_f64_vec(), shape, &rois);
                    let want_dx =
                        roi_align::reference::backward(&op, shape, &rois, &dy.to_f64_vec());
                    (
                        backend
                            .roi_align_forward(&op, &x, &rois)
                            .map(|y| relative_error(&y.to_f64_vec(), &want_y)),
                        backend
                            .roi_align_backward(&op, &shape, &rois, &dy)
                            .map(|dx| relative_error(&dx.to_f64_vec(), &want_dx)),
                    )
                }
                Err(e) => (Err(e.clone()), Err(e)),
            };
            for (pass, result) in [("forward", fwd), ("grad_input", bwd)] {
                let (error, failure) = outcome(result);
                checks.push(Check {
                    backend: backend.name(),
                    op: "roi_align",
                    pass,
                    dtype,
                    shape: shape.to_vec(),
                    error,
                    tolerance: tolerance(dtype),
                    failure,
                });
            }
        }
    }
    checks
}

/// Batch-norm statistics and the BN-ReLU(-fusion) forward, every dtype, against float64.
pub fn run_batchnorm(backend: &dyn BatchNormBackend, seed: u64) -> Vec<Check> {
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    let shape = [
        2,
        3,
        3 + 2 * rng.below(2) as usize,
        9,
        7 + 2 * rng.below(3) as usize,
    ];
    let (b, c, d, rest) = (shape[0], shape[1], shape[2], shape[2] * shape[3] * shape[4]);
    let n: usize = shape.iter().product();
    for dtype in DType::ALL {
        let xv = rng.vec_f32(n, -1.0, 1.0);
        let a = Affine {
            scale: rng.vec_f32(c, -1.5, 1.5),
            shift: rng.vec_f32(c, -0.5, 0.5),
        };
        let result = || -> Result<(f64, f64)> {
            let x = Tensor::from_f32(&xv, &shape, dtype)?;
            let x64 = x.to_f64_vec();
            let (mean, var) = batchnorm::reference::stats(&x64, b, c, rest);
            let st = backend.channel_stats(&x)?;
            let f = |v: &[f32]| v.iter().map(|&q| q as f64).collect::<Vec<_>>();
            let stats_err =
                relative_error(&f(&st.mean), &mean).max(relative_error(&f(&st.var), &var));
            let w = crate::fusion::init_weights(d, c, 3)?.to_dtype(dtype);
            let zeros = vec![0.0; n];
            let (act, ..) =
                batchnorm::reference::bn_relu(&x64, &f(&a.scale), &f(&a.shift), &zeros, c, rest);
            let dims = crate::fusion::FusionDims::from_input_shape(&shape)?;
            let want = crate::fusion::reference::forward(&dims, &act, &w.to_f64_vec());
            let y = backend.bn_relu_fusion_forward(&x, &a, Some(&w))?;
            Ok((stats_err, relative_error(&y.to_f64_vec(), &want)))
        };
        let (stats, fwd) = match result() {
            Ok((s, f)) => (Ok(s), Ok(f)),
            Err(e) => (Err(e.clone()), Err(e)),
        };
        for (pass, r, tol) in [
            ("stats", stats, 1e-6),
            ("forward", fwd, 2.0 * tolerance(dtype)),
        ] {
            let (error, failure) = outcome(r);
            checks.push(Check {
                backend: backend.name(),
                op: "bn_relu",
                pass,
                dtype,
                shape: shape.to_vec(),
                error,
                tolerance: tol,
                failure,
            });
        }
    }
    checks
}
