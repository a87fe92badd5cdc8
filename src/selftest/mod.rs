//! Self-test: runs a backend on fresh random odd-sized inputs and measures every result against
//! the float64 reference. `a3d selftest` prints these checks; a user runs it to trust an install.
//! [`run_fusion`] checks fusion on any [`FusionBackend`]; [`run_a3dconv`] checks A3DConv, which
//! runs on the CPU only (on a GPU, A3DConv is candle's convolution after a3d's fusion).

mod detection;

pub use detection::{run_batchnorm, run_boxes, run_roi_align};

use crate::a3dconv::{self, A3dConv, Conv2dParams};
use crate::backend::{DepthConvBackend, FusionBackend, ShiftBackend};
use crate::fusion::{self, reference, FusionDims, Gradients, Grads};
use crate::rng::SplitMix64;
use crate::{DType, Result, Tensor};

/// Error bound for a dtype, by relative norm against float64 (shared/docs/operator.md).
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
    }
}

/// One measured comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Backend name.
    pub backend: String,
    /// `fusion`, `tsm`, `alignshift`, `depthconv`, `boxes`, `roi_align` or `bn_relu`.
    pub op: &'static str,
    /// `forward`, `grad_input`, `grad_weight`, `iou`, `nms` or `stats`.
    pub pass: &'static str,
    /// Storage dtype.
    pub dtype: DType,
    /// The input's shape (`[B, C, D, H, W]` for the context ops, `[N, C, H, W]` features for
    /// RoIAlign, `[n]` boxes for NMS).
    pub shape: Vec<usize>,
    /// Relative norm error against float64 (infinite on NaN or on a failed call).
    pub error: f64,
    /// Allowed error.
    pub tolerance: f64,
    /// The backend's error message when the call itself failed.
    pub failure: Option<String>,
}

impl Check {
    /// Whether the result is within tolerance.
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.error <= self.tolerance
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(
            f,
            "{:<4} {:<8} {:<10} {:<11} {:<4} [{}]  error {:.2e}  tolerance {:.1e}",
            if self.passed() { "ok" } else { "FAIL" },
            self.backend,
            self.op,
            self.pass,
            self.dtype,
            shape.join(","),
            self.error,
            self.tolerance
        )?;
        if let Some(msg) = &self.failure {
            write!(f, "  ({msg})")?;
        }
        Ok(())
    }
}

/// Shapes the self-test draws its sizes around: odd sizes, every specialised depth class, a
/// general depth, and a plane larger than one CPU work item.
pub const SHAPES: [[usize; 5]; 7] = [
    [1, 1, 1, 1, 1],
    [2, 3, 3, 5, 7],
    [1, 5, 7, 9, 11],
    [3, 2, 2, 1, 13],
    [1, 3, 16, 4, 9],
    [2, 2, 17, 3, 5],
    [1, 2, 3, 91, 97],
];

/// Runs forward, grad-input and grad-weight for every dtype and every shape of [`SHAPES`]
/// (with H and W perturbed by the seed so every run sees fresh sizes).
pub fn run_fusion(backend: &dyn FusionBackend, seed: u64) -> Vec<Check> {
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    for base in SHAPES {
        let mut shape = base;
        // Keep H, W odd and close to the listed sizes.
        shape[3] += 2 * rng.below(2) as usize;
        shape[4] += 2 * rng.below(2) as usize;
        for dtype in DType::ALL {
            checks.extend(check_shape(backend, shape, dtype, &mut rng));
        }
    }
    checks
}

fn check_shape(
    backend: &dyn FusionBackend,
    shape: [usize; 5],
    dtype: DType,
    rng: &mut SplitMix64,
) -> Vec<Check> {
    let check = |pass: &'static str, result: Result<Vec<f64>>, want: &[f64]| {
        let (error, failure) = match result {
            Ok(got) => (reference::relative_error(&got, want), None),
            Err(e) => (f64::INFINITY, Some(e.to_string())),
        };
        Check {
            backend: backend.name(),
            op: "fusion",
            pass,
            dtype,
            shape: shape.to_vec(),
            error,
            tolerance: tolerance(dtype),
            failure,
        }
    };
    let inputs = (|| -> Result<(FusionDims, Tensor, Tensor, Tensor)> {
        let dims = FusionDims::from_input_shape(&shape)?;
        let x = Tensor::from_f32(&rng.vec_f32(dims.len(), -1.0, 1.0), &shape, dtype)?;
        let w = fusion::init_weights(shape[2], shape[1], rng.next_u64())?.to_dtype(dtype);
        let dy = Tensor::from_f32(&rng.vec_f32(dims.len(), -1.0, 1.0), &shape, dtype)?;
        Ok((dims, x, w, dy))
    })();
    let (dims, x, w, dy) = match inputs {
        Ok(v) => v,
        Err(e) => return vec![check("setup", Err(e), &[])],
    };
    // The reference sees exactly the rounded values the backend sees.
    let (xf, wf, dyf) = (x.to_f64_vec(), w.to_f64_vec(), dy.to_f64_vec());
    let y = backend.forward(&x, &w).map(|t| t.to_f64_vec());
    let grads = backend.backward(&x, &w, &dy, Grads::BOTH);
    let (dx, dw) = match grads {
        Ok(Gradients {
            dx: Some(dx),
            dw: Some(dw),
        }) => (Ok(dx.to_f64_vec()), Ok(dw.to_f64_vec())),
        Ok(_) => {
            let missing = || crate::Error::Backend {
                backend: "selftest",
                message: "backward returned no gradient".into(),
            };
            (Err(missing()), Err(missing()))
        }
        Err(e) => (Err(e.clone()), Err(e)),
    };
    vec![
        check("forward", y, &reference::forward(&dims, &xf, &wf)),
        check("grad_input", dx, &reference::grad_input(&dims, &wf, &dyf)),
        check("grad_weight", dw, &reference::grad_weight(&dims, &xf, &dyf)),
    ]
}

/// A measured pass of a symmetric operator: the backend's result against float64.
fn measured(
    backend: String,
    op: &'static str,
    pass: &'static str,
    dtype: DType,
    shape: [usize; 5],
    result: Result<Tensor>,
    want: &[f64],
) -> Check {
    let (error, failure) = match result {
        Ok(got) => (reference::relative_error(&got.to_f64_vec(), want), None),
        Err(e) => (f64::INFINITY, Some(e.to_string())),
    };
    Check {
        backend,
        op,
        pass,
        dtype,
        shape: shape.to_vec(),
        error,
        // TSM moves values: exact.
        tolerance: if op == "tsm" { 0.0 } else { tolerance(dtype) },
        failure,
    }
}

/// The shapes of [`SHAPES`] with H and W perturbed by the seed (odd, close to the listed ones).
fn perturbed_shapes(rng: &mut SplitMix64) -> Vec<[usize; 5]> {
    SHAPES
        .iter()
        .map(|&base| {
            let mut shape = base;
            shape[3] += 2 * rng.below(2) as usize;
            shape[4] += 2 * rng.below(2) as usize;
            shape
        })
        .collect()
}

/// TSM (fold_div 2 or the channel count, whichever is smaller) and AlignShift (a thick and a
/// thin sample, `padding_zero` on) forward and backward, every dtype, every shape of [`SHAPES`].
pub fn run_shift(backend: &dyn ShiftBackend, seed: u64) -> Vec<Check> {
    use crate::shift::reference::ShiftProblem;
    use crate::shift::Shift;
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    for shape in perturbed_shapes(&mut rng) {
        let fold_div = shape[1].min(2);
        let thickness: Vec<f32> = (0..shape[0]).map(|b| [5.0, 1.0, 3.0][b % 3]).collect();
        let th64: Vec<f64> = thickness.iter().map(|&t| t as f64).collect();
        let cases = [
            (
                "tsm",
                Shift::tsm(fold_div),
                ShiftProblem::tsm(shape, fold_div),
            ),
            (
                "alignshift",
                Shift::align_shift(&thickness, 2.0, true, fold_div),
                ShiftProblem::align_shift(shape, fold_div, &th64, 2.0, true),
            ),
        ];
        for (op, shift, problem) in cases {
            for dtype in DType::ALL {
                let n: usize = shape.iter().product();
                let x = Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), &shape, dtype);
                let dy = Tensor::from_f32(&rng.vec_f32(n, -1.0, 1.0), &shape, dtype);
                let (shift, x, dy) = match (&shift, x, dy) {
                    (Ok(s), Ok(x), Ok(dy)) => (s, x, dy),
                    (s, x, dy) => {
                        let e = s.clone().err().or(x.err()).or(dy.err());
                        let e = e.unwrap_or(crate::Error::Unavailable("setup".into()));
                        checks.push(measured(
                            backend.name(),
                            op,
                            "setup",
                            dtype,
                            shape,
                            Err(e),
                            &[],
                        ));
                        continue;
                    }
                };
                let y = backend.shift_forward(shift, &x);
                checks.push(measured(
                    backend.name(),
                    op,
                    "forward",
                    dtype,
                    shape,
                    y,
                    &problem.forward(&x.to_f64_vec()),
                ));
                let dx = backend.shift_backward(shift, &dy);
                checks.push(measured(
                    backend.name(),
                    op,
                    "grad_input",
                    dtype,
                    shape,
                    dx,
                    &problem.backward(&dy.to_f64_vec()),
                ));
            }
        }
    }
    checks
}

/// The depth convolution with K = 3 (and K = 5 where D >= 3), forward and both gradients,
/// every dtype, every shape of [`SHAPES`].
pub fn run_depthconv(backend: &dyn DepthConvBackend, seed: u64) -> Vec<Check> {
    use crate::depthconv::{self, reference as dref, DepthConvDims};
    let mut rng = SplitMix64::new(seed);
    let mut checks = Vec::new();
    for shape in perturbed_shapes(&mut rng) {
        let taps_list: &[usize] = if shape[2] >= 3 { &[3, 5] } else { &[3] };
        for &taps in taps_list {
            for dtype in DType::ALL {
                let setup = (|| -> Result<(DepthConvDims, Tensor, Tensor, Tensor)> {
                    let input = FusionDims::from_input_shape(&shape)?;
                    let x = Tensor::from_f32(&rng.vec_f32(input.len(), -1.0, 1.0), &shape, dtype)?;
                    let v =
                        depthconv::init_weights(taps, shape[1], rng.next_u64())?.to_dtype(dtype);
                    let dy = Tensor::from_f32(&rng.vec_f32(input.len(), -1.0, 1.0), &shape, dtype)?;
                    Ok((DepthConvDims { input, taps }, x, v, dy))
                })();
                let (dims, x, v, dy) = match setup {
                    Ok(s) => s,
                    Err(e) => {
                        checks.push(measured(
                            backend.name(),
                            "depthconv",
                            "setup",
                            dtype,
                            shape,
                            Err(e),
                            &[],
                        ));
                        continue;
                    }
                };
                let (xf, vf, dyf) = (x.to_f64_vec(), v.to_f64_vec(), dy.to_f64_vec());
                let y = backend.depthconv_forward(&x, &v);
                checks.push(measured(
                    backend.name(),
                    "depthconv",
                    "forward",
                    dtype,
                    shape,
                    y,
                    &dref::forward(&dims, &xf, &vf),
                ));
                let (dx, dv) = match backend.depthconv_backward(&x, &v, &dy, Grads::BOTH) {
                    Ok(Gradients {
                        dx: Some(dx),
                        dw: Some(dv),
                    }) => (Ok(dx), Ok(dv)),
                    Ok(_) => {
                        let missing =
                            crate::Error::Unavailable("backward returned no gradient".into());
                        (Err(missing.clone()), Err(missing))
                    }
                    Err(e) => (Err(e.clone()), Err(e)),
                };
                checks.push(measured(
                    backend.name(),
                    "depthconv",
                    "grad_input",
                    dtype,
                    shape,
                    dx,
                    &dref::grad_input(&dims, &vf, &dyf),
                ));
                checks.push(measured(
                    backend.name(),
                    "depthconv",
                    "grad_weight",
                    dtype,
                    shape,
                    dv,
                    &dref::grad_weight(&dims, &xf, &dyf),
                ));
            }
        }
    }
    checks
}

/// One A3DConv layer of the self-test: input shape, convolution and which parameters it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvCase {
    /// `[B, C, D, H, W]` before the seed's perturbation of H and W.
    pub shape: [usize; 5],
    /// O
    pub out_channels: usize,
    /// `[kh, kw]`
    pub kernel: [usize; 2],
    /// Stride, padding, dilation.
    pub params: Conv2dParams,
    /// Whether the layer has fusion weights.
    pub fusion: bool,
    /// Whether the layer has a bias.
    pub bias: bool,
}

impl std::fmt::Display for ConvCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [b, c, d, h, w] = self.shape;
        let p = &self.params;
        let pair = |v: [usize; 2]| {
            if v[0] == v[1] {
                v[0].to_string()
            } else {
                format!("{},{}", v[0], v[1])
            }
        };
        write!(
            f,
            "[{b},{c},{d},{h},{w}] o{} k{}x{} s{} p{} l{}{}{}",
            self.out_channels,
            self.kernel[0],
            self.kernel[1],
            pair(p.stride),
            pair(p.padding),
            pair(p.dilation),
            if self.fusion { " fusion" } else { "" },
            if self.bias { " bias" } else { "" },
        )
    }
}

const fn conv_case(
    shape: [usize; 5],
    out_channels: usize,
    kernel: [usize; 2],
    [stride, padding, dilation]: [[usize; 2]; 3],
    fusion: bool,
    bias: bool,
) -> ConvCase {
    ConvCase {
        shape,
        out_channels,
        kernel,
        params: Conv2dParams {
            stride,
            padding,
            dilation,
        },
        fusion,
        bias,
    }
}

/// The A3DConv layers the self-test checks. On an AVX-512 CPU stride-1 layers that are not
/// pointwise run the direct convolution, the others the im2col + GEMM path, and a 1x1 stride-1
/// unpadded layer the plain GEMM: 3x3 padded; stride 2 unpadded at D = 7; dilation 2 with
/// padding 2 at D = 1; a pointwise 1x1; a non-square kernel with unequal padding and dilation,
/// without fusion or bias; a plane larger than one slab with more output channels than one
/// block of the direct kernel; an even, non-square kernel with unequal strides.
#[rustfmt::skip]
pub const CONV_CASES: [ConvCase; 7] = [
    conv_case([2, 3, 3, 9, 11], 4, [3, 3], [[1, 1], [1, 1], [1, 1]], true, true),
    conv_case([1, 5, 7, 13, 10], 3, [3, 3], [[2, 2], [0, 0], [1, 1]], true, true),
    conv_case([2, 4, 1, 12, 9], 6, [3, 3], [[1, 1], [2, 2], [2, 2]], true, false),
    conv_case([1, 16, 3, 7, 8], 8, [1, 1], [[1, 1], [0, 0], [1, 1]], true, true),
    conv_case([1, 3, 5, 11, 9], 5, [5, 3], [[1, 1], [2, 0], [1, 2]], false, false),
    conv_case([1, 8, 2, 45, 51], 10, [3, 3], [[1, 1], [1, 1], [1, 1]], true, true),
    conv_case([2, 6, 4, 10, 13], 5, [2, 3], [[1, 2], [1, 1], [1, 1]], true, true),
];

/// One measured comparison of A3DConv against the float64 reference.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvCheck {
    /// Backend name (`cpu`: A3DConv has no other backend in a3d).
    pub backend: String,
    /// The layer and input, with the sizes actually run.
    pub case: ConvCase,
    /// `forward`, `grad_input`, `grad_conv_weight`, `grad_bias` or `grad_fusion_weight`.
    pub pass: &'static str,
    /// Storage dtype.
    pub dtype: DType,
    /// Relative norm error against float64 (infinite on NaN or on a failed call).
    pub error: f64,
    /// Allowed error.
    pub tolerance: f64,
    /// The error message when the call itself failed.
    pub failure: Option<String>,
}

impl ConvCheck {
    /// Whether the result is within tolerance.
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.error <= self.tolerance
    }
}

impl std::fmt::Display for ConvCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:<8} a3dconv {:<18} {:<4} {}  error {:.2e}  tolerance {:.1e}",
            if self.passed() { "ok" } else { "FAIL" },
            self.backend,
            self.pass,
            self.dtype,
            self.case,
            self.error,
            self.tolerance
        )?;
        if let Some(msg) = &self.failure {
            write!(f, "  ({msg})")?;
        }
        Ok(())
    }
}

/// Runs A3DConv forward and backward ([`Grads::ALL`](a3dconv::Grads::ALL)) on the CPU for every
/// dtype and every case of [`CONV_CASES`] (H and W perturbed by the seed) and compares the
/// output and each gradient the layer has with [`a3dconv::reference`], at the fusion's
/// [`tolerance`].
pub fn run_a3dconv(seed: u64) -> Vec<ConvCheck> {
    // Its own stream, so the fusion checks of a seed stay what they were.
    let mut rng = SplitMix64::new(seed ^ 0xa3dc_0a3d_c0a3_dc0a);
    let mut checks = Vec::new();
    for base in CONV_CASES {
        let mut case = base;
        case.shape[3] += rng.below(3) as usize;
        case.shape[4] += rng.below(3) as usize;
        for dtype in DType::ALL {
            checks.extend(check_conv_case(case, dtype, &mut rng));
        }
    }
    checks
}

fn check_conv_case(case: ConvCase, dtype: DType, rng: &mut SplitMix64) -> Vec<ConvCheck> {
    let check = |pass: &'static str, result: Result<Vec<f64>>, want: &[f64]| {
        let (error, failure) = match result {
            Ok(got) => (reference::relative_error(&got, want), None),
            Err(e) => (f64::INFINITY, Some(e.to_string())),
        };
        ConvCheck {
            backend: "cpu".into(),
            case,
            pass,
            dtype,
            error,
            tolerance: tolerance(dtype),
            failure,
        }
    };
    let [_, c, d, _, _] = case.shape;
    let [kh, kw] = case.kernel;
    let o = case.out_channels;
    let inputs = (|| -> Result<[Tensor; 5]> {
        let x_len = crate::tensor::element_count(&case.shape)?;
        let x = Tensor::from_f32(&rng.vec_f32(x_len, -1.0, 1.0), &case.shape, dtype)?;
        let fw = fusion::init_weights(d, c, rng.next_u64())?.to_dtype(dtype);
        let bound = 1.0 / ((c * kh * kw) as f32).sqrt();
        let cw_shape = [o, c, kh, kw];
        let cw = Tensor::from_f32(
            &rng.vec_f32(o * c * kh * kw, -bound, bound),
            &cw_shape,
            dtype,
        )?;
        let bias = Tensor::from_f32(&rng.vec_f32(o, -0.5, 0.5), &[o], dtype)?;
        let dims = a3dconv::check_forward(&x, Some(&fw), &cw, Some(&bias), &case.params)?;
        let out_shape = dims.output_shape();
        let dy_len = crate::tensor::element_count(&out_shape)?;
        let dy = Tensor::from_f32(&rng.vec_f32(dy_len, -1.0, 1.0), &out_shape, dtype)?;
        Ok([x, fw, cw, bias, dy])
    })();
    let [x, fw, cw, bias, dy] = match inputs {
        Ok(v) => v,
        Err(e) => return vec![check("setup", Err(e), &[])],
    };
    let layer = A3dConv {
        fusion_weight: case.fusion.then_some(&fw),
        conv_weight: &cw,
        bias: case.bias.then_some(&bias),
        params: case.params,
    };
    let dims = match layer.dims(&x) {
        Ok(dims) => dims,
        Err(e) => return vec![check("setup", Err(e), &[])],
    };
    // The reference sees exactly the rounded values the kernels see.
    let (xf, cwf, dyf) = (x.to_f64_vec(), cw.to_f64_vec(), dy.to_f64_vec());
    let fwf = case.fusion.then(|| fw.to_f64_vec());
    let biasf = case.bias.then(|| bias.to_f64_vec());
    let want_y = a3dconv::reference::forward(&dims, &xf, fwf.as_deref(), &cwf, biasf.as_deref());
    let want = a3dconv::reference::backward(&dims, &xf, fwf.as_deref(), &cwf, &dyf);

    let y = layer.forward(&x).map(|t| t.to_f64_vec());
    let grads = layer.backward(&x, &dy, a3dconv::Grads::ALL);
    let grad = |pick: fn(&a3dconv::Gradients) -> Option<&Tensor>| -> Result<Vec<f64>> {
        match &grads {
            Ok(g) => pick(g)
                .map(Tensor::to_f64_vec)
                .ok_or(crate::Error::Backend {
                    backend: "selftest",
                    message: "backward returned no such gradient".into(),
                }),
            Err(e) => Err(e.clone()),
        }
    };
    let mut checks = vec![
        check("forward", y, &want_y),
        check("grad_input", grad(|g| g.dx.as_ref()), &want.dx),
        check(
            "grad_conv_weight",
            grad(|g| g.d_conv_weight.as_ref()),
            &want.d_conv_weight,
        ),
    ];
    if case.bias {
        checks.push(check(
            "grad_bias",
            grad(|g| g.d_bias.as_ref()),
            &want.d_bias,
        ));
    }
    if let Some(want_dfw) = &want.d_fusion_weight {
        checks.push(check(
            "grad_fusion_weight",
            grad(|g| g.d_fusion_weight.as_ref()),
            want_dfw,
        ));
    }
    checks
}
