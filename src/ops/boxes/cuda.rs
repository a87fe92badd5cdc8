//! IoU and NMS on NVIDIA GPUs (feature `cuda`): the kernels of kernels/nms.cu with the plans of
//! `launch.rs` (the ones the host emulation runs in CI). The boxes are few (thousands), so these
//! take host slices: upload, kernel, download; NMS's final serial walk over the bitmask runs on
//! the host, as in the reference.

use super::{check_boxes, cpu_kernel, launch, Nms, PixelConvention};
use crate::cuda::launch::prepare;
use crate::cuda::{driver_error, CudaDevice};
use crate::kernel_params::A3dBoxParams;
use crate::ops::common::MAX_GRID_YZ;
use crate::Result;
use cudarc::driver::{DeviceRepr, PushKernelArg};

// SAFETY: A3dBoxParams is `#[repr(C)]` plain data (two u64, two f32, two u32), laid out exactly
// as the C struct the kernels take by value (bindgen's layout assertions check it).
unsafe impl DeviceRepr for A3dBoxParams {}

/// `IoU(a[i], b[j])` at `[i * b.len() + j]`, as [`super::iou_matrix`].
pub fn iou_matrix(
    device: &CudaDevice,
    a: &[[f32; 4]],
    b: &[[f32; 4]],
    convention: PixelConvention,
) -> Result<Vec<f32>> {
    check_boxes("a", a, convention)?;
    check_boxes("b", b, convention)?;
    if a.is_empty() || b.is_empty() {
        return Ok(Vec::new());
    }
    let stream = device.stream();
    let ad = stream
        .clone_htod(&launch::boxes_flat(a))
        .map_err(driver_error)?;
    let bd = stream
        .clone_htod(&launch::boxes_flat(b))
        .map_err(driver_error)?;
    let mut out = stream
        .clone_htod(&vec![f32::NAN; a.len() * b.len()])
        .map_err(driver_error)?;
    let params = launch::params(a.len(), b.len(), convention.offset(), 0.0, false);
    let (f, cfg) = prepare(device, &launch::iou_matrix(a.len(), b.len()))?;
    let mut l = stream.launch_builder(&f);
    l.arg(&ad).arg(&bd).arg(&mut out).arg(&params);
    // SAFETY: iou_matrix_f32 takes (const float* a, const float* b, float* out, A3dBoxParams);
    // a and b hold 4 * n_a and 4 * n_b floats, out n_a * n_b.
    unsafe { l.launch(cfg) }.map_err(driver_error)?;
    stream.clone_dtoh(&out).map_err(driver_error)
}

/// [`Nms::run`] with the suppression bitmask computed on the GPU.
pub fn nms(
    device: &CudaDevice,
    nms: &Nms,
    boxes: &[[f32; 4]],
    scores: &[f32],
) -> Result<Vec<usize>> {
    let order = nms.order(boxes, scores)?;
    let n = order.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let sorted: Vec<[f32; 4]> = order.iter().map(|&i| boxes[i]).collect();
    let stream = device.stream();
    let bd = stream
        .clone_htod(&launch::boxes_flat(&sorted))
        .map_err(driver_error)?;
    let words = launch::mask_words(n);
    let mut mask = stream
        .clone_htod(&vec![u64::MAX; n * words])
        .map_err(driver_error)?;
    let params = launch::params(
        n,
        n,
        nms.convention.offset(),
        nms.iou_threshold,
        nms.suppress_equal,
    );
    let (f, cfg) = prepare(device, &launch::nms_mask(n, MAX_GRID_YZ))?;
    let mut l = stream.launch_builder(&f);
    l.arg(&bd).arg(&bd).arg(&mut mask).arg(&params);
    // SAFETY: nms_mask_f32 takes (const float* boxes, const float* unused, u64* mask,
    // A3dBoxParams); boxes holds 4 * n floats and mask n * ceil(n / 64) words.
    unsafe { l.launch(cfg) }.map_err(driver_error)?;
    let mask = stream.clone_dtoh(&mask).map_err(driver_error)?;
    let kept = cpu_kernel::scan_mask(n, &mask, nms.keep_top_k);
    Ok(kept.into_iter().map(|k| order[k]).collect())
}
