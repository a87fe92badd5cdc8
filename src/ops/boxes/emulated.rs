//! The box kernels (kernels/nms.cu) under the host emulation, with the launch plans of
//! `launch.rs`, the ones the CUDA backend runs.

use super::{check_boxes, cpu_kernel, launch, Nms, PixelConvention};
use crate::backend::emulated::{Buffer, Emulated};
use crate::backend::BoxBackend;
use crate::emulation::arg;
use crate::Result;

impl BoxBackend for Emulated {
    fn iou_matrix(
        &self,
        a: &[[f32; 4]],
        b: &[[f32; 4]],
        convention: PixelConvention,
    ) -> Result<Vec<f32>> {
        check_boxes("a", a, convention)?;
        check_boxes("b", b, convention)?;
        if a.is_empty() || b.is_empty() {
            return Ok(Vec::new());
        }
        let off = self.offset();
        let (ab, bb) = (
            Buffer::from_slice(&launch::boxes_flat(a), off),
            Buffer::from_slice(&launch::boxes_flat(b), off),
        );
        let mut out = Buffer::<f32>::poisoned(a.len() * b.len(), off);
        let (mut pa, mut pb, mut po) = (ab.ptr(), bb.ptr(), out.ptr_mut());
        let mut p = launch::params(a.len(), b.len(), convention.offset(), 0.0, false);
        self.run(
            &launch::iou_matrix(a.len(), b.len()),
            &mut [arg(&mut pa), arg(&mut pb), arg(&mut po), arg(&mut p)],
        )?;
        Ok(out.into_tensor(&[a.len() * b.len()])?.to_vec::<f32>())
    }

    fn nms(&self, nms: &Nms, boxes: &[[f32; 4]], scores: &[f32]) -> Result<Vec<usize>> {
        let order = nms.order(boxes, scores)?;
        let n = order.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let sorted: Vec<[f32; 4]> = order.iter().map(|&i| boxes[i]).collect();
        let off = self.offset();
        let bb = Buffer::from_slice(&launch::boxes_flat(&sorted), off);
        let words = launch::mask_words(n);
        // NaN bit patterns: a word the kernel forgets is all ones, which suppresses everything
        // after it and fails the comparison with the CPU.
        let mut mask = vec![u64::MAX; n * words];
        let (mut pb, mut pu, mut pm) = (bb.ptr(), bb.ptr(), mask.as_mut_ptr());
        let mut p = launch::params(
            n,
            n,
            nms.convention.offset(),
            nms.iou_threshold,
            nms.suppress_equal,
        );
        self.run(
            &launch::nms_mask(n, self.max_grid_y.into()),
            &mut [arg(&mut pb), arg(&mut pu), arg(&mut pm), arg(&mut p)],
        )?;
        let kept = cpu_kernel::scan_mask(n, &mask, nms.keep_top_k);
        Ok(kept.into_iter().map(|k| order[k]).collect())
    }
}
