//! Parity with PyTorch: RoIAlign (torchvision's `roi_align(aligned=True)` and a PyTorch
//! implementation of the reference's mmdetection 1.0 rules, forward and autograd backward), NMS
//! (torchvision's `nms`, the reference's +1-area greedy NMS) and the IoU matrix (torchvision's
//! `box_iou`), on every backend of the build, against committed fixtures
//! (tests/fixtures/detection.safetensors, written by scripts/torch_detection_fixtures.py).

mod common;

use a3d::boxes::{Nms, PixelConvention};
use a3d::roi_align::{RoiAlign, RoiAlignMode};
use a3d::DType;
use common::{box_backends, relative_error, roi_align_backends, Fixtures};

fn boxes4(v: &[f64]) -> Vec<[f32; 4]> {
    v.chunks_exact(4)
        .map(|c| [c[0] as f32, c[1] as f32, c[2] as f32, c[3] as f32])
        .collect()
}

#[test]
fn roi_align_matches_torchvision_and_the_reference_rules() {
    let fx = Fixtures::load("detection");
    let features = fx.tensor("roi.features", DType::F32);
    let (r, _) = fx.values("roi.rois");
    let rois: Vec<[f32; 5]> = r
        .chunks_exact(5)
        .map(|c| std::array::from_fn(|i| c[i] as f32))
        .collect();
    for case in ["s2", "adaptive"] {
        let pooled: Vec<usize> = fx
            .meta(&format!("roi.{case}.pooled"))
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        let base = RoiAlign {
            pooled_h: pooled[0],
            pooled_w: pooled[1],
            spatial_scale: fx.meta(&format!("roi.{case}.scale")).parse().unwrap(),
            sampling_ratio: fx.meta(&format!("roi.{case}.sampling")).parse().unwrap(),
            mode: RoiAlignMode::Reference,
        };
        let dy = fx.tensor(&format!("roi.{case}.dy"), DType::F32);
        for (mode, who) in [
            (RoiAlignMode::Aligned, "torchvision"),
            (RoiAlignMode::Reference, "mmdet"),
        ] {
            let op = RoiAlign { mode, ..base };
            let (want_y, y_shape) = fx.values(&format!("roi.{case}.{who}_y"));
            let (want_dx, _) = fx.values(&format!("roi.{case}.{who}_dx"));
            for b in roi_align_backends() {
                let y = b.roi_align_forward(&op, &features, &rois).unwrap();
                assert_eq!(y.shape(), &y_shape[..]);
                let e = relative_error(&y.to_f64_vec(), &want_y);
                assert!(e < 1e-6, "{} {case} {who} forward: {e}", b.name());
                let dx = b
                    .roi_align_backward(&op, features.shape(), &rois, &dy)
                    .unwrap();
                let e = relative_error(&dx.to_f64_vec(), &want_dx);
                assert!(e < 1e-6, "{} {case} {who} backward: {e}", b.name());
            }
        }
    }
}

#[test]
fn nms_and_iou_match_torchvision_and_the_reference() {
    let fx = Fixtures::load("detection");
    let boxes = boxes4(&fx.values("nms.boxes").0);
    let scores: Vec<f32> = fx
        .values("nms.scores")
        .0
        .iter()
        .map(|&v| v as f32)
        .collect();
    let want_tv: Vec<usize> = fx
        .values("nms.torchvision_keep_0.5")
        .0
        .iter()
        .map(|&v| v as usize)
        .collect();
    let want_ref: Vec<usize> = fx
        .values("nms.reference_keep_0.7")
        .0
        .iter()
        .map(|&v| v as usize)
        .collect();
    let torchvision = Nms {
        convention: PixelConvention::Continuous,
        ..Nms::reference(0.5)
    };
    let (a, b) = (boxes4(&fx.values("iou.a").0), boxes4(&fx.values("iou.b").0));
    let (want_iou, _) = fx.values("iou.torchvision");
    for backend in box_backends() {
        let name = backend.name();
        assert_eq!(
            backend.nms(&torchvision, &boxes, &scores).unwrap(),
            want_tv,
            "{name}"
        );
        assert_eq!(
            backend.nms(&Nms::reference(0.7), &boxes, &scores).unwrap(),
            want_ref,
            "{name}"
        );
        let iou = backend
            .iou_matrix(&a, &b, PixelConvention::Continuous)
            .unwrap();
        let got: Vec<f64> = iou.iter().map(|&v| v as f64).collect();
        let e = relative_error(&got, &want_iou);
        assert!(e < 1e-6, "{name} iou: {e}");
    }
}
