//! `a3d bench roi-align | nms`: the detector's RoI ops with the rows and JSON keys of
//! `a3d bench fusion`. The boxes come from [`proposals`], which `bench/torch_detection.py`
//! reproduces exactly, so the PyTorch peer times the same problem.
//!
//! The copy baseline: RoIAlign forward copies the output's bytes (what the pass must write),
//! its backward the features' bytes (the gradient it must write); NMS copies its boxes and
//! scores (the bytes it must read), a floor far below its time, reported for the JSON keys.

use crate::bench::{interleaved_medians_ms, Copy, Row, RowSet};
use a3d::boxes::Nms;
use a3d::rng::SplitMix64;
use a3d::roi_align::RoiAlign;
use a3d::DType;

/// The box head's features for one 512 x 512 image: `[1, 512, 128, 128]`.
pub const DEFAULT_ROI_FEATURES: [usize; 4] = [1, 512, 128, 128];
/// The RPN's test-time `nms_pre`.
pub const DEFAULT_NMS_BOXES: usize = 6000;
/// Side of the image the boxes lie in.
const IMAGE: f64 = 512.0;
/// Objects the proposals cluster around.
const OBJECTS: u64 = 40;

/// `n` proposal-like boxes in a 512 x 512 image and their scores: 80 % jittered around one of
/// 40 objects (centre +-10 % of the size, size x0.8-1.2), 20 % anywhere; sizes 8-200 px. The
/// draws, in order, are those of `bench/torch_detection.py` (same SplitMix64, same f64 math).
pub fn proposals(n: usize, seed: u64) -> (Vec<[f32; 4]>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let objects: Vec<[f64; 4]> = (0..OBJECTS)
        .map(|_| {
            let (cx, cy) = (rng.uniform(0.0, IMAGE), rng.uniform(0.0, IMAGE));
            [cx, cy, rng.uniform(8.0, 200.0), rng.uniform(8.0, 200.0)]
        })
        .collect();
    let mut boxes = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for _ in 0..n {
        let [cx, cy, w, h] = if rng.next_f64() < 0.8 {
            let o = objects[rng.below(OBJECTS) as usize];
            let (w, h) = (o[2] * rng.uniform(0.8, 1.2), o[3] * rng.uniform(0.8, 1.2));
            [
                o[0] + o[2] * rng.uniform(-0.1, 0.1),
                o[1] + o[3] * rng.uniform(-0.1, 0.1),
                w,
                h,
            ]
        } else {
            let (cx, cy) = (rng.uniform(0.0, IMAGE), rng.uniform(0.0, IMAGE));
            [cx, cy, rng.uniform(8.0, 200.0), rng.uniform(8.0, 200.0)]
        };
        let clip = |v: f64| v.clamp(0.0, IMAGE - 1.0) as f32;
        boxes.push([
            clip(cx - w / 2.0),
            clip(cy - h / 2.0),
            clip(cx + w / 2.0),
            clip(cy + h / 2.0),
        ]);
        scores.push(rng.next_f64() as f32);
    }
    (boxes, scores)
}

/// RoIs for `images` images: the proposals, image `k % images`.
pub fn rois(k: usize, images: usize) -> Vec<[f32; 5]> {
    proposals(k, 0x0b0e5)
        .0
        .into_iter()
        .enumerate()
        .map(|(i, b)| [(i % images.max(1)) as f32, b[0], b[1], b[2], b[3]])
        .collect()
}

/// Forward and backward of the reference RoIAlign on the CPU.
pub fn roi_align_cpu(
    shape: [usize; 4],
    k: usize,
    dtype: DType,
    runs: usize,
) -> Result<Vec<Row>, String> {
    let s = |e: a3d::Error| e.to_string();
    let op = RoiAlign::reference();
    let mut rng = SplitMix64::new(0x5eed);
    let features = crate::bench_context::random_tensor(&shape, dtype, &mut rng)?;
    let r = rois(k, shape[0]);
    let dims = op.check(&features, &r).map_err(s)?;
    let dy = crate::bench_context::random_tensor(&dims.output_shape(), dtype, &mut rng)?;
    let mut y = a3d::Tensor::zeros(&dims.output_shape(), dtype).map_err(s)?;
    let mut dx = a3d::Tensor::zeros(&shape, dtype).map_err(s)?;
    // Valid arguments: checked once so the timed calls cannot fail.
    op.forward_into(&features, &r, &mut y).map_err(s)?;
    op.backward_into(&r, &dy, &mut dx).map_err(s)?;
    let (y_bytes, x_bytes) = (y.size_in_bytes(), features.size_in_bytes());
    let mut copy_y = Copy::try_new(y_bytes)?;
    let mut copy_x = Copy::try_new(x_bytes)?;
    let m = interleaved_medians_ms(
        runs,
        &mut [
            &mut || copy_y.run(),
            &mut || {
                let _ = op.forward_into(&features, &r, &mut y);
            },
            &mut || copy_x.run(),
            &mut || {
                let _ = op.backward_into(&r, &dy, &mut dx);
            },
        ],
    );
    let shape5 = [k, shape[0], shape[1], shape[2], shape[3]];
    let fwd = RowSet {
        copied_bytes: y_bytes,
        ..RowSet::cpu("roi_align", dtype, &shape5, m[0])
    };
    let bwd = RowSet {
        copied_bytes: x_bytes,
        ..RowSet::cpu("roi_align", dtype, &shape5, m[2])
    };
    Ok(vec![
        fwd.row("forward", m[1], y_bytes),
        bwd.row("backward", m[3], y_bytes + x_bytes),
    ])
}

/// RoIAlign on a GPU (a3d's kernels on device tensors), copies timed the same way.
#[cfg(feature = "cuda")]
pub fn roi_align_cuda(
    dev: &a3d::cuda::CudaDevice,
    shape: [usize; 4],
    k: usize,
    dtype: DType,
    runs: usize,
) -> Result<Vec<Row>, String> {
    use a3d::cuda::CudaTensor;
    use a3d::roi_align::cuda as rc;
    let s = |e: a3d::Error| e.to_string();
    let op = RoiAlign::reference();
    let mut rng = SplitMix64::new(0x5eed);
    let host = crate::bench_context::random_tensor(&shape, dtype, &mut rng)?;
    let r = rois(k, shape[0]);
    let dims = op.check(&host, &r).map_err(s)?;
    let dy_host = crate::bench_context::random_tensor(&dims.output_shape(), dtype, &mut rng)?;
    let features = CudaTensor::upload(&host, dev).map_err(s)?;
    let dy = CudaTensor::upload(&dy_host, dev).map_err(s)?;
    let mut y = CudaTensor::zeros(&dims.output_shape(), dtype, dev).map_err(s)?;
    let mut y2 = CudaTensor::zeros(&dims.output_shape(), dtype, dev).map_err(s)?;
    let mut dx = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let mut x2 = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let copy_y = crate::bench::median_gpu_ms(dev, runs, || y2.copy_from(&dy))?;
    let fwd =
        crate::bench::median_gpu_ms(dev, runs, || rc::forward_into(&op, &features, &r, &mut y))?;
    let copy_x = crate::bench::median_gpu_ms(dev, runs, || x2.copy_from(&features))?;
    let bwd = crate::bench::median_gpu_ms(dev, runs, || rc::backward_into(&op, &r, &dy, &mut dx))?;
    let (y_bytes, x_bytes) = (dy_host.size_in_bytes(), host.size_in_bytes());
    let shape5 = [k, shape[0], shape[1], shape[2], shape[3]];
    let fset = RowSet {
        copied_bytes: y_bytes,
        ..RowSet::cuda("roi_align", dev, dtype, &shape5, copy_y)
    };
    let bset = RowSet {
        copied_bytes: x_bytes,
        ..RowSet::cuda("roi_align", dev, dtype, &shape5, copy_x)
    };
    Ok(vec![
        fset.row("forward", fwd, y_bytes),
        bset.row("backward", bwd, y_bytes + x_bytes),
    ])
}

/// The NMS problem of `a3d bench nms`: `n` proposals, the RPN's NMS (IoU 0.7, +1 areas).
fn nms_problem(n: usize) -> (Vec<[f32; 4]>, Vec<f32>, Nms) {
    let (boxes, scores) = proposals(n, 0x0b0e5);
    (boxes, scores, Nms::reference(0.7))
}

/// NMS on the CPU.
pub fn nms_cpu(n: usize, runs: usize) -> Result<Vec<Row>, String> {
    let (boxes, scores, nms) = nms_problem(n);
    let kept = nms.run(&boxes, &scores).map_err(|e| e.to_string())?.len();
    eprintln!("nms: {n} boxes, {kept} kept");
    let bytes = n * 20;
    let mut copy = Copy::try_new(bytes.max(1))?;
    let m = interleaved_medians_ms(
        runs,
        &mut [&mut || copy.run(), &mut || {
            let _ = nms.run(&boxes, &scores);
        }],
    );
    let set = RowSet {
        copied_bytes: bytes,
        ..RowSet::cpu("nms", DType::F32, &[n], m[0])
    };
    Ok(vec![set.row("forward", m[1], bytes)])
}

/// NMS with the bitmask kernel on a GPU; the time includes the upload of the sorted boxes, the
/// download of the mask and the host's walk over it.
#[cfg(feature = "cuda")]
pub fn nms_cuda(dev: &a3d::cuda::CudaDevice, n: usize, runs: usize) -> Result<Vec<Row>, String> {
    let (boxes, scores, nms) = nms_problem(n);
    let s = |e: a3d::Error| e.to_string();
    let kept = a3d::boxes::cuda::nms(dev, &nms, &boxes, &scores)
        .map_err(s)?
        .len();
    eprintln!("nms: {n} boxes, {kept} kept");
    let t = crate::bench::median_gpu_ms(dev, runs, || {
        a3d::boxes::cuda::nms(dev, &nms, &boxes, &scores).map(|_| ())
    })?;
    let bytes = n * 20;
    let host = a3d::Tensor::zeros(&[n.max(1), 5], DType::F32).map_err(s)?;
    let src = a3d::cuda::CudaTensor::upload(&host, dev).map_err(s)?;
    let mut dst = a3d::cuda::CudaTensor::upload(&host, dev).map_err(s)?;
    let copy = crate::bench::median_gpu_ms(dev, runs, || dst.copy_from(&src))?;
    let set = RowSet {
        copied_bytes: bytes,
        ..RowSet::cuda("nms", dev, DType::F32, &[n], copy)
    };
    Ok(vec![set.row("forward", t, bytes)])
}

#[cfg(test)]
mod tests {
    /// The first and last of the default 6000 proposals as `bench/torch_detection.py` prints
    /// them: the PyTorch peer times the same boxes.
    #[test]
    fn proposals_match_the_pytorch_script() {
        let (b, s) = super::proposals(6000, 0x0b0e5);
        assert_eq!(b[0], [177.17891, 335.73538, 318.66257, 420.4286]);
        assert_eq!(b[5999], [164.22993, 263.89868, 228.58704, 328.83978]);
        assert_eq!((s[0], s[5999]), (0.4456001, 0.8722218));
    }
}
