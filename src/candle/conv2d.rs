//! A stride-1 2D convolution with CPU kernels of its own, forward and backward.
//!
//! candle's `conv2d` back-propagates to its input through `conv_transpose2d`, whose CPU
//! implementation is a scalar loop of dot products: for the detector's RPN convolution (3x3,
//! 512 channels, 128 x 128) that one gradient took about a quarter of a whole training step.
//! Its im2col forward and its weight gradient (a convolution of the transposed tensors) were the
//! next largest costs. [`Conv2d`] runs all three as slabbed im2col products
//! ([`conv2d_cpu`](super::conv2d_cpu)): the forward, `dx` as the convolution of `dy` with the
//! kernel flipped and its channel axes swapped (padding `k - 1 - p`), and `dw`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use super::conv2d_cpu::{
    conv_forward, flipped_transposed, weight_gradient, ConvDims, SLAB_ELEMENTS,
};
use super::storage::{contiguous, with_cpu_storage};

/// `x.conv2d(w, padding, 1, 1, 1)` with the gradients of the module docs (CPU, f32).
struct Conv2dOp {
    padding: usize,
}

impl Conv2dOp {
    /// The sizes of `x [B, I, H, W]` convolved with `w [O, I, k, k]`, checked.
    fn dims(&self, x: &[usize], w: &[usize]) -> Result<ConvDims> {
        let (&[batch, in_channels, height, width], &[out_channels, wi, kernel, kw]) = (x, w) else {
            candle_core::bail!("a3d-conv2d: x {x:?} and weight {w:?} must both have rank 4");
        };
        let d = ConvDims {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel,
            padding: self.padding,
        };
        if wi != in_channels || kw != kernel || self.padding >= kernel || d.out_size().is_none() {
            candle_core::bail!(
                "a3d-conv2d: weight {w:?} (padding {}) does not convolve x {x:?}",
                self.padding
            );
        }
        Ok(d)
    }
}

/// The f32 values of a CPU storage's view, in row-major order.
fn f32_values<'a>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    match s {
        CpuStorage::F32(v) => contiguous(v, l),
        _ => candle_core::bail!("a3d-conv2d: f32 only, got {:?}", s.dtype()),
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "a3d-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(xl.dims(), wl.dims())?;
        let y = conv_forward(
            &f32_values(xs, xl)?,
            &f32_values(ws, wl)?,
            &d,
            SLAB_ELEMENTS,
        );
        let (ho, wo) = d.out_size().unwrap_or((0, 0));
        Ok((
            CpuStorage::F32(y),
            Shape::from((d.batch, d.out_channels, ho, wo)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(x.dims(), w.dims())?;
        let (ho, wo) = d.out_size().unwrap_or((0, 0));
        if dy.dims() != [d.batch, d.out_channels, ho, wo] {
            candle_core::bail!("a3d-conv2d: dy has shape {:?}", dy.dims());
        }
        let (dx, dw) = with_cpu_storage("a3d-conv2d", "x", x, |xs, xl| {
            with_cpu_storage("a3d-conv2d", "weight", w, |ws, wl| {
                with_cpu_storage("a3d-conv2d", "dy", dy, |ds, dl| {
                    let (xv, dv) = (f32_values(xs, xl)?, f32_values(ds, dl)?);
                    let flipped = flipped_transposed(&f32_values(ws, wl)?, &d);
                    let dx = conv_forward(&dv, &flipped, &d.transposed(), SLAB_ELEMENTS);
                    Ok((dx, weight_gradient(&xv, &dv, &d, SLAB_ELEMENTS)))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.dims(), x.device())?),
            Some(Tensor::from_vec(dw, w.dims(), w.device())?),
        ))
    }
}

/// A square, stride-1 2D convolution with bias (`weight` `[O, I, k, k]`, `bias` `[O]`, the names
/// of `candle_nn::Conv2d`) with a3d's CPU kernels for the forward and both gradients. Other
/// devices and dtypes use candle's `conv2d` and its autograd.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
}

impl Conv2d {
    /// `weight` and `bias` from `vb` (`weight_init` for a new weight, zero bias).
    pub fn new(
        vb: &VarBuilder,
        (in_channels, out_channels): (usize, usize),
        kernel: usize,
        padding: usize,
        weight_init: Init,
    ) -> Result<Conv2d> {
        if padding >= kernel {
            candle_core::bail!("Conv2d: padding {padding} needs a kernel above it, got {kernel}");
        }
        let weight = vb.get_with_hints(
            (out_channels, in_channels, kernel, kernel),
            "weight",
            weight_init,
        )?;
        let bias = vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?;
        Ok(Conv2d {
            weight,
            bias,
            padding,
        })
    }

    /// The kernel `[O, I, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
        {
            x.apply_op2(
                &self.weight,
                Conv2dOp {
                    padding: self.padding,
                },
            )?
        } else {
            x.conv2d(&self.weight, self.padding, 1, 1, 1)?
        };
        y.broadcast_add(&self.bias.reshape((1, self.bias.dim(0)?, 1, 1))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    /// Forward within float rounding of candle's; gradients of x, weight and bias within float
    /// rounding of candle's own autograd, on odd sizes, for 3x3 (padding 1 and 0) and 1x1.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SplitMix64::new(17);
        for (k, p, (b, i, o, h, w)) in [
            (3, 1, (2, 5, 7, 11, 9)),
            (3, 0, (1, 4, 3, 8, 13)),
            (1, 0, (1, 6, 5, 7, 5)),
        ] {
            let mut map = VarMap::new();
            let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
            let conv = Conv2d::new(&vb, (i, o), k, p, Init::Uniform { lo: -0.5, up: 0.5 })?;
            // A bias that is not zero (set in place: the layer shares the variable).
            map.set_one("bias", Tensor::new(rng.vec_f32(o, -0.5, 0.5), &dev)?)?;
            let x = Var::from_tensor(&Tensor::from_vec(
                rng.vec_f32(b * i * h * w, -1.0, 1.0),
                (b, i, h, w),
                &dev,
            )?)?;
            let ours = conv.forward(x.as_tensor())?;
            let theirs = x
                .as_tensor()
                .conv2d(conv.weight(), p, 1, 1, 1)?
                .broadcast_add(&conv.bias.reshape((1, o, 1, 1))?)?;
            let (a, r) = (
                ours.flatten_all()?.to_vec1::<f32>()?,
                theirs.flatten_all()?.to_vec1::<f32>()?,
            );
            let worst = a
                .iter()
                .zip(&r)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "forward k={k} p={p}: {worst}");
            let g = Tensor::from_vec(rng.vec_f32(a.len(), -1.0, 1.0), ours.shape(), &dev)?;
            let ga = (&ours * &g)?.sum_all()?.backward()?;
            let gb = (&theirs * &g)?.sum_all()?.backward()?;
            for (name, t) in [
                ("x", x.as_tensor()),
                ("weight", &conv.weight),
                ("bias", &conv.bias),
            ] {
                let (u, v) = (
                    ga.get(t).expect("ours").flatten_all()?.to_vec1::<f32>()?,
                    gb.get(t)
                        .expect("candle's")
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
                let worst = u
                    .iter()
                    .zip(&v)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "d{name} k={k} p={p}: {worst}");
            }
        }
        Ok(())
    }
}
