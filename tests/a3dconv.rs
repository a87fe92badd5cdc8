//! A3DConv (A3D fusion, then one 2D convolution applied to every slice) on the CPU: forward and
//! all four gradients against the float64 reference on odd shapes and every stride, padding and
//! dilation class, f16/bf16 storage, finite differences, selective gradients, determinism
//! across thread counts, typed errors, edge cases, and planes that span several im2col slabs.

use std::panic::{catch_unwind, AssertUnwindSafe};

use a3d::a3dconv::{self, reference, A3dConv, Conv2dParams, Gradients, Grads};
use a3d::rng::SplitMix64;
use a3d::TensorInfo;
use a3d::{DType, Error, Tensor};

/// Unit roundoff of f32.
const U32: f64 = f32::EPSILON as f64 / 2.0;
/// An f32-accumulated element may be off by this many `U32 * sqrt(reduction length)` times the
/// largest reference value of its tensor.
const ACCUMULATION_FACTOR: f64 = 8.0;

// ---------------------------------------------------------------------------------------------
// Problems, inputs, comparisons
// ---------------------------------------------------------------------------------------------

/// One A3DConv problem: sizes, convolution parameters, which optional parts exist, dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Case {
    batch: usize,
    channels: usize,
    depth: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel: [usize; 2],
    params: Conv2dParams,
    fused: bool,
    bias: bool,
    dtype: DType,
}

fn params(stride: [usize; 2], padding: [usize; 2], dilation: [usize; 2]) -> Conv2dParams {
    Conv2dParams {
        stride,
        padding,
        dilation,
    }
}

/// An f32 case with fusion weights and bias; `[B, C, D, H, W]`, O, `[kh, kw]`.
fn case(x: [usize; 5], out_channels: usize, kernel: [usize; 2], params: Conv2dParams) -> Case {
    let [batch, channels, depth, height, width] = x;
    Case {
        batch,
        channels,
        depth,
        height,
        width,
        out_channels,
        kernel,
        params,
        fused: true,
        bias: true,
        dtype: DType::F32,
    }
}

impl Case {
    fn x_shape(&self) -> [usize; 5] {
        [
            self.batch,
            self.channels,
            self.depth,
            self.height,
            self.width,
        ]
    }

    fn conv_weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.channels,
            self.kernel[0],
            self.kernel[1],
        ]
    }

    fn fusion_weight_shape(&self) -> [usize; 3] {
        [self.depth, self.depth, self.channels]
    }

    fn size(&self, axis: usize) -> usize {
        [self.height, self.width][axis]
    }

    /// Extent of the dilated kernel along `axis` (0 rows, 1 columns).
    fn span(&self, axis: usize) -> usize {
        (self.kernel[axis] - 1) * self.params.dilation[axis] + 1
    }

    /// Whether the dilated kernel fits the padded input along `axis`.
    fn fits(&self, axis: usize) -> bool {
        self.span(axis) <= self.size(axis) + 2 * self.params.padding[axis]
    }

    fn out_size(&self) -> [usize; 2] {
        let len = |a: usize| {
            (self.size(a) + 2 * self.params.padding[a] - self.span(a)) / self.params.stride[a] + 1
        };
        [len(0), len(1)]
    }

    fn out_shape(&self) -> [usize; 5] {
        let [oh, ow] = self.out_size();
        [self.batch, self.out_channels, self.depth, oh, ow]
    }

    /// Inner iterations of the float64 reference's forward pass.
    fn taps(&self) -> usize {
        let [oh, ow] = self.out_size();
        self.batch
            * self.out_channels
            * self.depth
            * oh
            * ow
            * self.channels
            * self.kernel[0]
            * self.kernel[1]
    }

    /// Products summed into one element of y, dx, d_conv_weight, d_bias, d_fusion_weight.
    fn reductions(&self) -> [usize; 5] {
        let kk = self.kernel[0] * self.kernel[1];
        let [oh, ow] = self.out_size();
        let fused_depth = if self.fused { self.depth } else { 1 };
        [
            self.channels * kk * fused_depth + 1,
            self.out_channels * kk * fused_depth,
            self.batch * self.depth * oh * ow * fused_depth,
            self.batch * self.depth * oh * ow,
            self.batch * self.height * self.width * self.out_channels * kk,
        ]
    }
}

fn random(shape: &[usize], dtype: DType, scale: f32, rng: &mut SplitMix64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(&rng.vec_f32(n, -scale, scale), shape, dtype).unwrap()
}

/// The tensors of one case, random, stored in the case's dtype.
#[derive(Debug, Clone)]
struct Inputs {
    x: Tensor,
    fusion_weight: Option<Tensor>,
    conv_weight: Tensor,
    bias: Option<Tensor>,
    params: Conv2dParams,
}

impl Inputs {
    fn random(case: &Case, rng: &mut SplitMix64) -> Inputs {
        let dt = case.dtype;
        Inputs {
            x: random(&case.x_shape(), dt, 1.0, rng),
            fusion_weight: case
                .fused
                .then(|| random(&case.fusion_weight_shape(), dt, 1.0, rng)),
            conv_weight: random(&case.conv_weight_shape(), dt, 0.5, rng),
            bias: case
                .bias
                .then(|| random(&[case.out_channels], dt, 0.5, rng)),
            params: case.params,
        }
    }

    fn layer(&self) -> A3dConv<'_> {
        A3dConv {
            fusion_weight: self.fusion_weight.as_ref(),
            conv_weight: &self.conv_weight,
            bias: self.bias.as_ref(),
            params: self.params,
        }
    }

    fn args64(&self) -> Args64 {
        Args64 {
            x: self.x.to_f64_vec(),
            fusion_weight: self.fusion_weight.as_ref().map(Tensor::to_f64_vec),
            conv_weight: self.conv_weight.to_f64_vec(),
            bias: self.bias.as_ref().map(Tensor::to_f64_vec),
        }
    }
}

/// The stored (rounded) input values in float64, as the reference takes them.
#[derive(Debug, Clone)]
struct Args64 {
    x: Vec<f64>,
    fusion_weight: Option<Vec<f64>>,
    conv_weight: Vec<f64>,
    bias: Option<Vec<f64>>,
}

impl Args64 {
    fn forward(&self, dims: &a3dconv::A3dConvDims) -> Vec<f64> {
        reference::forward(
            dims,
            &self.x,
            self.fusion_weight.as_deref(),
            &self.conv_weight,
            self.bias.as_deref(),
        )
    }

    fn backward(&self, dims: &a3dconv::A3dConvDims, dy: &[f64]) -> reference::ReferenceGradients {
        reference::backward(
            dims,
            &self.x,
            self.fusion_weight.as_deref(),
            &self.conv_weight,
            dy,
        )
    }
}

/// Shape and dtype only: lets the validation run on shapes that could never be allocated.
struct Meta {
    shape: Vec<usize>,
    dtype: DType,
}

impl TensorInfo for Meta {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
}

fn meta(shape: &[usize]) -> Meta {
    Meta {
        shape: shape.to_vec(),
        dtype: DType::F32,
    }
}

/// Compares `got` with the float64 `want` element by element. Allowed error: f32 accumulation
/// (`ACCUMULATION_FACTOR * U32 * sqrt(reduction) * max|want|`), plus the rounding of the
/// output to its storage dtype. Returns the worst error / allowed ratio.
fn close(
    what: &str,
    got: &[f64],
    want: &[f64],
    reduction: usize,
    dtype: DType,
) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} elements instead of {}",
            got.len(),
            want.len()
        ));
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let atol = ACCUMULATION_FACTOR * U32 * (reduction.max(1) as f64).sqrt() * scale;
    let (rtol, floor) = match dtype {
        DType::F32 => (0.0, 0.0),
        // Half an ulp relative, and half the f16 subnormal spacing (2^-24) below 2^-14.
        DType::F16 => ((2.0f64).powi(-11), (2.0f64).powi(-25)),
        DType::BF16 => ((2.0f64).powi(-8), 0.0),
    };
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let allowed = atol + rtol * (w.abs() + atol) + floor;
        // NaN fails too.
        if err.is_nan() || err > allowed {
            return Err(format!(
                "{what}[{i}]: got {g}, expected {w} (error {err:e} > allowed {allowed:e}; \
                 max |expected| {scale:e}, reduction length {reduction})"
            ));
        }
        if allowed > 0.0 {
            worst = worst.max(err / allowed);
        }
    }
    Ok(worst)
}

/// [`close`] on a tensor that must also have `shape` and `dtype`.
fn compare(
    what: &str,
    got: &Tensor,
    want: &[f64],
    shape: &[usize],
    reduction: usize,
    dtype: DType,
) -> Result<f64, String> {
    if got.dtype() != dtype {
        return Err(format!("{what}: dtype {} instead of {dtype}", got.dtype()));
    }
    if got.shape() != shape {
        return Err(format!(
            "{what}: shape {:?} instead of {shape:?}",
            got.shape()
        ));
    }
    close(what, &got.to_f64_vec(), want, reduction, dtype)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().iter().map(|v| v.to_bits()).collect()
}

/// Forward and all four gradients of `case` (inputs from `seed`) against the float64 reference
/// evaluated on the same stored values. Returns the worst error / allowed ratio.
fn check_case(case: &Case, seed: u64) -> Result<f64, String> {
    let mut rng = SplitMix64::new(seed);
    let inputs = Inputs::random(case, &mut rng);
    let layer = inputs.layer();
    let dims = layer.dims(&inputs.x).map_err(|e| format!("dims: {e}"))?;
    if dims.out_size != case.out_size() || dims.output_shape() != case.out_shape() {
        return Err(format!(
            "dims: output {:?} instead of {:?}",
            dims.output_shape(),
            case.out_shape()
        ));
    }
    let dt = case.dtype;
    let [n_y, n_dx, n_dcw, n_db, n_dfw] = case.reductions();
    let args = inputs.args64();

    let y = layer
        .forward(&inputs.x)
        .map_err(|e| format!("forward: {e}"))?;
    let mut worst = compare("y", &y, &args.forward(&dims), &case.out_shape(), n_y, dt)?;

    let dy = random(&case.out_shape(), dt, 1.0, &mut rng);
    let g = layer
        .backward(&inputs.x, &dy, Grads::ALL)
        .map_err(|e| format!("backward: {e}"))?;
    let want = args.backward(&dims, &dy.to_f64_vec());
    let missing = |name: &str| format!("{name} missing");
    let dx = g.dx.as_ref().ok_or_else(|| missing("dx"))?;
    worst = worst.max(compare("dx", dx, &want.dx, &case.x_shape(), n_dx, dt)?);
    let dcw = g.d_conv_weight.as_ref().ok_or_else(|| missing("dcw"))?;
    let shape = case.conv_weight_shape();
    worst = worst.max(compare(
        "d_conv_weight",
        dcw,
        &want.d_conv_weight,
        &shape,
        n_dcw,
        dt,
    )?);
    let db = g.d_bias.as_ref().ok_or_else(|| missing("d_bias"))?;
    let shape = [case.out_channels];
    worst = worst.max(compare("d_bias", db, &want.d_bias, &shape, n_db, dt)?);
    match (&g.d_fusion_weight, &want.d_fusion_weight) {
        (Some(got), Some(want)) => {
            let shape = case.fusion_weight_shape();
            worst = worst.max(compare("d_fusion_weight", got, want, &shape, n_dfw, dt)?);
        }
        (None, None) => {}
        (got, _) => {
            return Err(format!(
                "d_fusion_weight present: {} (fused: {})",
                got.is_some(),
                case.fused
            ))
        }
    }
    Ok(worst)
}

/// Runs every case (a panic counts as a failure of that case only) and fails with the list of
/// failing cases.
fn run_cases(label: &str, cases: &[(Case, u64)]) {
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for (case, seed) in cases {
        match catch_unwind(AssertUnwindSafe(|| check_case(case, *seed))) {
            Ok(Ok(ratio)) => worst = worst.max(ratio),
            Ok(Err(msg)) => failures.push(format!("{case:?} seed {seed}: {msg}")),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{case:?} seed {seed}: PANIC {msg}"));
            }
        }
    }
    eprintln!(
        "{label}: {} cases, {} failed, worst error/allowed {worst:.3}",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 1, 2: rotation through odd shapes and parameters, f32 and half storage
// ---------------------------------------------------------------------------------------------

const SIZES: [usize; 4] = [1, 5, 17, 33];
const KERNELS: [[usize; 2]; 5] = [[1, 1], [3, 3], [1, 3], [3, 1], [5, 5]];
const CHANNELS: [usize; 4] = [1, 3, 5, 17];
const DEPTHS: [usize; 3] = [1, 3, 7];
const STRIDES: [usize; 2] = [1, 2];
const PADDINGS: [usize; 4] = [0, 1, 2, 3];
const DILATIONS: [usize; 2] = [1, 2];

fn pick<T: Copy>(rng: &mut SplitMix64, list: &[T]) -> T {
    list[rng.below(list.len() as u64) as usize]
}

fn draw(rng: &mut SplitMix64, height: usize, width: usize, kernel: [usize; 2]) -> Case {
    let mut pair = |list: &[usize]| [pick(rng, list), pick(rng, list)];
    let p = params(pair(&STRIDES), pair(&PADDINGS), pair(&DILATIONS));
    Case {
        batch: pick(rng, &[1, 2]),
        channels: pick(rng, &CHANNELS),
        depth: pick(rng, &DEPTHS),
        height,
        width,
        out_channels: pick(rng, &CHANNELS),
        kernel,
        params: p,
        fused: rng.below(2) == 0,
        bias: rng.below(2) == 0,
        dtype: DType::F32,
    }
}

/// A kernel that does not fit the padded input is refused with `InvalidArgument` naming the
/// dimension (rows are checked first), by the validation, forward and backward alike.
fn assert_refused(case: &Case) {
    let axis = if case.fits(0) { 1 } else { 0 };
    assert!(!case.fits(axis), "{case:?} fits");
    let expected_arg = ["params (rows)", "params (columns)"][axis];
    let t = |shape: &[usize]| Tensor::zeros(shape, case.dtype).unwrap();
    let x = t(&case.x_shape());
    let cw = t(&case.conv_weight_shape());
    let fw = case.fused.then(|| t(&case.fusion_weight_shape()));
    let bias = case.bias.then(|| t(&[case.out_channels]));
    let layer = A3dConv {
        fusion_weight: fw.as_ref(),
        conv_weight: &cw,
        bias: bias.as_ref(),
        params: case.params,
    };
    let dy = t(&[case.batch, case.out_channels, case.depth, 1, 1]);
    for (what, result) in [
        ("check_forward", layer.dims(&x).map(|_| ())),
        ("forward", layer.forward(&x).map(|_| ())),
        (
            "check_backward",
            a3dconv::check_backward(&x, fw.as_ref(), &cw, &dy, &case.params).map(|_| ()),
        ),
        ("backward", layer.backward(&x, &dy, Grads::ALL).map(|_| ())),
    ] {
        match result {
            Err(Error::InvalidArgument { arg, message }) => {
                assert_eq!(arg, expected_arg, "{what} {case:?}: {message}");
                assert!(message.contains("exceeds"), "{what}: {message}");
            }
            other => panic!("{what} {case:?}: expected InvalidArgument, got {other:?}"),
        }
    }
}

/// One case per `(H, W, kernel)`: parameters drawn until one fits (each refused draw is checked
/// to be refused) and the reference stays within `budget` taps. Returns the cases and the
/// number of refused draws.
fn rotation(
    seed: u64,
    planes: &[(usize, usize)],
    dtypes: &[DType],
    budget: usize,
) -> (Vec<(Case, u64)>, usize) {
    let mut rng = SplitMix64::new(seed);
    let mut cases = Vec::new();
    let mut refused = 0;
    for &(h, w) in planes {
        for kernel in KERNELS {
            let dtype = dtypes[cases.len() % dtypes.len()];
            let mut tries = 0;
            let case = loop {
                tries += 1;
                assert!(tries < 10_000, "no case fits for {h}x{w} {kernel:?}");
                let case = Case {
                    dtype,
                    ..draw(&mut rng, h, w, kernel)
                };
                if !(case.fits(0) && case.fits(1)) {
                    assert_refused(&case);
                    refused += 1;
                } else if case.taps() <= budget {
                    break case;
                }
            };
            cases.push((case, rng.next_u64()));
        }
    }
    (cases, refused)
}

/// Every listed value of every parameter appears among the cases.
fn assert_covers(cases: &[(Case, u64)]) {
    let has = |f: &dyn Fn(&Case) -> bool| cases.iter().any(|(c, _)| f(c));
    for s in SIZES {
        assert!(has(&|c| c.height == s), "H = {s} missing");
        assert!(has(&|c| c.width == s), "W = {s} missing");
    }
    for k in KERNELS {
        assert!(has(&|c| c.kernel == k), "kernel {k:?} missing");
    }
    for axis in 0..2 {
        for s in STRIDES {
            assert!(has(&|c| c.params.stride[axis] == s), "stride {s} missing");
        }
        for p in PADDINGS {
            assert!(has(&|c| c.params.padding[axis] == p), "padding {p} missing");
        }
        for d in DILATIONS {
            assert!(
                has(&|c| c.params.dilation[axis] == d && c.kernel[axis] > 1),
                "dilation {d} missing"
            );
        }
    }
    for d in DEPTHS {
        assert!(has(&|c| c.depth == d), "D = {d} missing");
    }
    for n in CHANNELS {
        assert!(has(&|c| c.channels == n), "C = {n} missing");
        assert!(has(&|c| c.out_channels == n), "O = {n} missing");
    }
    for b in [false, true] {
        assert!(has(&|c| c.fused == b), "fused = {b} missing");
        assert!(has(&|c| c.bias == b), "bias = {b} missing");
        assert!(has(&|c| c.fused == b && c.depth == 7), "D = 7, fused = {b}");
    }
    assert!(has(&|c| c.batch == 2), "B = 2 missing");
}

#[test]
fn forward_and_gradients_match_float64_reference_on_odd_shapes() {
    let planes: Vec<(usize, usize)> = SIZES
        .iter()
        .flat_map(|&h| SIZES.iter().map(move |&w| (h, w)))
        .collect();
    let (cases, refused) = rotation(101, &planes, &[DType::F32], 150_000);
    assert_eq!(cases.len(), 16 * KERNELS.len());
    assert!(
        refused > 0,
        "no draw exercised the refusal of a kernel too large"
    );
    assert_covers(&cases);
    run_cases("f32 rotation", &cases);
}

#[test]
fn half_precision_storage_matches_reference_on_rounded_inputs() {
    let planes = [(5, 17), (17, 5), (1, 33), (33, 1), (17, 17), (5, 5)];
    let (cases, _) = rotation(202, &planes, &[DType::F16, DType::BF16], 60_000);
    for dtype in [DType::F16, DType::BF16] {
        for fused in [false, true] {
            assert!(
                cases
                    .iter()
                    .any(|(c, _)| c.dtype == dtype && c.fused == fused),
                "{dtype} fused {fused} missing"
            );
        }
    }
    run_cases("f16/bf16 rotation", &cases);
}

#[test]
fn half_precision_results_are_not_computed_in_half_precision() {
    // Sums of many terms rounded once at the end: against the reference, the error is one
    // output rounding, far below what accumulating in bf16 would give.
    let c = Case {
        dtype: DType::BF16,
        ..case([1, 17, 3, 9, 9], 5, [3, 3], Conv2dParams::padded(1))
    };
    let mut rng = SplitMix64::new(3);
    let inputs = Inputs::random(&c, &mut rng);
    let layer = inputs.layer();
    let dims = layer.dims(&inputs.x).unwrap();
    let y = layer.forward(&inputs.x).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want = inputs.args64().forward(&dims);
    let err = a3d::fusion::reference::relative_error(&y.to_f64_vec(), &want);
    assert!(err < 3e-3, "bf16 relative error {err:e}");
    assert!(err > 0.0, "bf16 output cannot be exact");
}

// ---------------------------------------------------------------------------------------------
// 3: finite differences
// ---------------------------------------------------------------------------------------------

fn fd_cases() -> Vec<Case> {
    vec![
        case([1, 2, 3, 5, 4], 3, [3, 3], Conv2dParams::padded(1)),
        case([2, 3, 2, 9, 8], 2, [3, 3], params([2, 2], [2, 2], [2, 2])),
        Case {
            fused: false,
            bias: false,
            ..case([1, 2, 1, 6, 7], 2, [2, 3], params([1, 2], [0, 1], [2, 1]))
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Param {
    X,
    FusionWeight,
    ConvWeight,
    Bias,
}

const PARAMS: [Param; 4] = [
    Param::X,
    Param::FusionWeight,
    Param::ConvWeight,
    Param::Bias,
];

fn slot(a: &mut Args64, p: Param) -> Option<&mut Vec<f64>> {
    match p {
        Param::X => Some(&mut a.x),
        Param::FusionWeight => a.fusion_weight.as_mut(),
        Param::ConvWeight => Some(&mut a.conv_weight),
        Param::Bias => a.bias.as_mut(),
    }
}

fn tensor_slot(inputs: &mut Inputs, p: Param) -> Option<&mut Tensor> {
    match p {
        Param::X => Some(&mut inputs.x),
        Param::FusionWeight => inputs.fusion_weight.as_mut(),
        Param::ConvWeight => Some(&mut inputs.conv_weight),
        Param::Bias => inputs.bias.as_mut(),
    }
}

/// The fast op's gradient for `p`, and the reference's (d_bias: of the layer's bias).
fn gradient_of(g: &Gradients, p: Param) -> Option<&Tensor> {
    match p {
        Param::X => g.dx.as_ref(),
        Param::FusionWeight => g.d_fusion_weight.as_ref(),
        Param::ConvWeight => g.d_conv_weight.as_ref(),
        Param::Bias => g.d_bias.as_ref(),
    }
}

fn reference_gradient_of(g: &reference::ReferenceGradients, p: Param) -> Option<&[f64]> {
    match p {
        Param::X => Some(&g.dx),
        Param::FusionWeight => g.d_fusion_weight.as_deref(),
        Param::ConvWeight => Some(&g.d_conv_weight),
        Param::Bias => Some(&g.d_bias),
    }
}

fn reduction_of(c: &Case, p: Param) -> usize {
    let [_, n_dx, n_dcw, n_db, n_dfw] = c.reductions();
    match p {
        Param::X => n_dx,
        Param::FusionWeight => n_dfw,
        Param::ConvWeight => n_dcw,
        Param::Bias => n_db,
    }
}

#[test]
fn gradients_match_finite_differences_of_the_float64_reference() {
    // L = sum(y * r) is linear in each single element, so a central difference of the float64
    // reference forward is exact up to f64 rounding: it checks the reference backward tightly
    // and the fast backward to f32 accuracy.
    for (n, c) in fd_cases().into_iter().enumerate() {
        let mut rng = SplitMix64::new(40 + n as u64);
        let inputs = Inputs::random(&c, &mut rng);
        let dims = inputs.layer().dims(&inputs.x).unwrap();
        let r = random(&c.out_shape(), DType::F32, 1.0, &mut rng);
        let rf = r.to_f64_vec();
        let fast = inputs.layer().backward(&inputs.x, &r, Grads::ALL).unwrap();
        let args = inputs.args64();
        let refg = args.backward(&dims, &rf);
        let loss =
            |a: &Args64| -> f64 { a.forward(&dims).iter().zip(&rf).map(|(y, r)| y * r).sum() };
        let h = 0.5;
        let mut checked = 0;
        for p in PARAMS {
            let mut a = args.clone();
            let Some(len) = slot(&mut a, p).map(|v| v.len()) else {
                if p == Param::FusionWeight {
                    assert!(fast.d_fusion_weight.is_none() && refg.d_fusion_weight.is_none());
                }
                continue;
            };
            let fd: Vec<f64> = (0..len)
                .map(|i| {
                    let v = slot(&mut a, p).unwrap();
                    let orig = v[i];
                    v[i] = orig + h;
                    let plus = loss(&a);
                    slot(&mut a, p).unwrap()[i] = orig - h;
                    let minus = loss(&a);
                    slot(&mut a, p).unwrap()[i] = orig;
                    (plus - minus) / (2.0 * h)
                })
                .collect();
            let scale = fd.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let want = reference_gradient_of(&refg, p).unwrap();
            for (i, (f, w)) in fd.iter().zip(want).enumerate() {
                assert!(
                    (f - w).abs() <= 1e-10 * scale,
                    "reference {p:?}[{i}] {c:?}: backward {w} vs finite difference {f}"
                );
            }
            let got = gradient_of(&fast, p).unwrap_or_else(|| panic!("{p:?} missing"));
            close(
                &format!("{p:?} vs finite differences, {c:?}"),
                &got.to_f64_vec(),
                &fd,
                reduction_of(&c, p),
                DType::F32,
            )
            .unwrap();
            checked += len;
        }
        assert!(checked > 0);
    }
}

#[test]
fn gradients_match_finite_differences_of_the_fast_forward() {
    // Central differences of the f32 fast forward itself (the loss is linear in each element,
    // so a large step is exact up to f32 rounding of y).
    for (n, c) in fd_cases().into_iter().enumerate() {
        let mut rng = SplitMix64::new(50 + n as u64);
        let inputs = Inputs::random(&c, &mut rng);
        let r = random(&c.out_shape(), DType::F32, 1.0, &mut rng).to_f64_vec();
        let rt = Tensor::from_f32(
            &r.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            &c.out_shape(),
            DType::F32,
        )
        .unwrap();
        let g = inputs.layer().backward(&inputs.x, &rt, Grads::ALL).unwrap();
        let loss = |inp: &Inputs| -> f64 {
            let y = inp.layer().forward(&inp.x).unwrap().to_f64_vec();
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let h = 0.25f32;
        for p in PARAMS {
            let mut probe = inputs.clone();
            let Some(len) = tensor_slot(&mut probe, p).map(|t| t.len()) else {
                continue;
            };
            let analytic = gradient_of(&g, p).unwrap().to_f64_vec();
            // Every element on the smallest problem, a sample on the others.
            let picks: Vec<usize> = if n == 0 {
                (0..len).collect()
            } else {
                (0..len.min(24))
                    .map(|_| rng.below(len as u64) as usize)
                    .collect()
            };
            for i in picks {
                let mut step = |delta: f32| -> (f64, f64) {
                    let t = tensor_slot(&mut probe, p).unwrap();
                    let mut v = inputs_tensor(&inputs, p).to_f32_vec();
                    v[i] += delta;
                    let moved = v[i] as f64;
                    *t = Tensor::from_vec(v, t.shape()).unwrap();
                    (loss(&probe), moved)
                };
                let (plus, xp) = step(h);
                let (minus, xm) = step(-h);
                let fd = (plus - minus) / (xp - xm);
                assert!(
                    (fd - analytic[i]).abs() <= 1e-4 * (1.0 + fd.abs()),
                    "{p:?}[{i}] {c:?}: analytic {} vs finite difference {fd}",
                    analytic[i]
                );
            }
        }
    }
}

fn inputs_tensor(inputs: &Inputs, p: Param) -> &Tensor {
    match p {
        Param::X => &inputs.x,
        Param::FusionWeight => inputs.fusion_weight.as_ref().unwrap(),
        Param::ConvWeight => &inputs.conv_weight,
        Param::Bias => inputs.bias.as_ref().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// 4: selective gradients
// ---------------------------------------------------------------------------------------------

fn only(p: Param) -> Grads {
    Grads {
        input: p == Param::X,
        conv_weight: p == Param::ConvWeight,
        bias: p == Param::Bias,
        fusion_weight: p == Param::FusionWeight,
    }
}

fn present(g: &Gradients) -> [bool; 4] {
    [
        g.dx.is_some(),
        g.d_fusion_weight.is_some(),
        g.d_conv_weight.is_some(),
        g.d_bias.is_some(),
    ]
}

#[test]
fn selected_gradients_are_the_only_ones_returned_and_equal_the_full_run() {
    let shapes = [
        case([2, 3, 3, 7, 6], 4, [3, 3], Conv2dParams::padded(1)),
        case([2, 3, 3, 7, 6], 4, [1, 1], Conv2dParams::default()),
        case([1, 5, 2, 9, 8], 3, [3, 1], params([2, 1], [1, 0], [1, 1])),
    ];
    for base in shapes {
        for fused in [true, false] {
            for dtype in [DType::F32, DType::BF16] {
                let c = Case {
                    fused,
                    dtype,
                    ..base
                };
                let mut rng = SplitMix64::new(60);
                let inputs = Inputs::random(&c, &mut rng);
                let dy = random(&c.out_shape(), dtype, 1.0, &mut rng);
                let layer = inputs.layer();
                let all = layer.backward(&inputs.x, &dy, Grads::ALL).unwrap();
                assert_eq!(present(&all), [true, fused, true, true], "{c:?}");
                for p in PARAMS {
                    let g = layer.backward(&inputs.x, &dy, only(p)).unwrap();
                    let expect = PARAMS.map(|q| q == p && (fused || p != Param::FusionWeight));
                    assert_eq!(present(&g), expect, "{p:?} only, {c:?}");
                    if let Some(t) = gradient_of(&g, p) {
                        let full = gradient_of(&all, p).unwrap();
                        assert_eq!(t.dtype(), dtype);
                        assert_eq!(t.shape(), full.shape());
                        assert_eq!(bits(t), bits(full), "{p:?} only vs ALL, {c:?}");
                    }
                }
                let none = Grads {
                    input: false,
                    conv_weight: false,
                    bias: false,
                    fusion_weight: false,
                };
                let g = layer.backward(&inputs.x, &dy, none).unwrap();
                assert_eq!(present(&g), [false; 4]);
                let g = layer.backward(&inputs.x, &dy, Grads::PARAMETERS).unwrap();
                assert_eq!(present(&g), [false, fused, true, true]);
                for p in [Param::FusionWeight, Param::ConvWeight, Param::Bias] {
                    if let Some(t) = gradient_of(&g, p) {
                        assert_eq!(bits(t), bits(gradient_of(&all, p).unwrap()));
                    }
                }
                // A layer without bias still reports the bias gradient it was asked for.
                let no_bias = A3dConv {
                    bias: None,
                    ..layer
                };
                let g = no_bias.backward(&inputs.x, &dy, only(Param::Bias)).unwrap();
                assert_eq!(
                    bits(g.d_bias.as_ref().unwrap()),
                    bits(all.d_bias.as_ref().unwrap())
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5: determinism
// ---------------------------------------------------------------------------------------------

fn all_bits(inputs: &Inputs, dy: &Tensor) -> Vec<Vec<u32>> {
    let layer = inputs.layer();
    let y = layer.forward(&inputs.x).unwrap();
    let g = layer.backward(&inputs.x, dy, Grads::ALL).unwrap();
    vec![
        bits(&y),
        bits(g.dx.as_ref().unwrap()),
        bits(g.d_conv_weight.as_ref().unwrap()),
        bits(g.d_bias.as_ref().unwrap()),
        g.d_fusion_weight.as_ref().map(bits).unwrap_or_default(),
    ]
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn results_are_bitwise_identical_for_any_thread_count() {
    let cases = [
        // The shape of the issue: one slab per slice, six tasks.
        case([2, 5, 3, 33, 33], 7, [3, 3], Conv2dParams::padded(1)),
        Case {
            dtype: DType::BF16,
            ..case([2, 5, 3, 33, 33], 7, [3, 3], Conv2dParams::padded(1))
        },
        // One output row per slab: 36 tasks, more than the 32 weight-gradient groups.
        case([1, 64, 3, 12, 70], 3, [5, 5], Conv2dParams::padded(2)),
        // 1x1: the GEMM path without im2col, two uneven pixel slabs per slice.
        case([2, 64, 3, 50, 50], 64, [1, 1], Conv2dParams::default()),
        Case {
            fused: false,
            ..case([2, 64, 3, 50, 50], 64, [1, 1], Conv2dParams::default())
        },
    ];
    for (n, c) in cases.iter().enumerate() {
        let mut rng = SplitMix64::new(70 + n as u64);
        let inputs = Inputs::random(c, &mut rng);
        let dy = random(&c.out_shape(), c.dtype, 1.0, &mut rng);
        let one = in_pool(1, || all_bits(&inputs, &dy));
        let three = in_pool(3, || all_bits(&inputs, &dy));
        let four = in_pool(4, || all_bits(&inputs, &dy));
        let again = in_pool(4, || all_bits(&inputs, &dy));
        let global = all_bits(&inputs, &dy);
        let names = ["y", "dx", "d_conv_weight", "d_bias", "d_fusion_weight"];
        for (i, name) in names.iter().enumerate() {
            assert_eq!(one[i], three[i], "{name}: 1 vs 3 threads, {c:?}");
            assert_eq!(one[i], four[i], "{name}: 1 vs 4 threads, {c:?}");
            assert_eq!(four[i], again[i], "{name}: run to run, {c:?}");
            assert_eq!(one[i], global[i], "{name}: 1 thread vs global pool, {c:?}");
        }
        // Not a comparison of empty or zero results.
        assert!(one[2].iter().any(|&b| f32::from_bits(b).abs() > 1.0));
        assert_eq!(one[4].is_empty(), !c.fused);
    }
}

// ---------------------------------------------------------------------------------------------
// 6: errors
// ---------------------------------------------------------------------------------------------

/// The error of forward (and of `check_forward`, which must agree) on bad arguments.
fn forward_error(
    x: &Tensor,
    fw: Option<&Tensor>,
    cw: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
) -> Error {
    let layer = A3dConv {
        fusion_weight: fw,
        conv_weight: cw,
        bias,
        params: p,
    };
    let e = layer
        .forward(x)
        .expect_err("forward accepted bad arguments");
    assert_eq!(a3dconv::check_forward(x, fw, cw, bias, &p).unwrap_err(), e);
    e
}

/// The error of backward on bad arguments.
fn backward_error(
    x: &Tensor,
    fw: Option<&Tensor>,
    cw: &Tensor,
    bias: Option<&Tensor>,
    dy: &Tensor,
    p: Conv2dParams,
) -> Error {
    let layer = A3dConv {
        fusion_weight: fw,
        conv_weight: cw,
        bias,
        params: p,
    };
    layer
        .backward(x, dy, Grads::ALL)
        .expect_err("backward accepted bad arguments")
}

#[test]
fn bad_inputs_return_typed_errors() {
    let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32).unwrap();
    // B=2, C=3, D=4, H=5, W=6, O=2, 3x3, padding 1.
    let x = z(&[2, 3, 4, 5, 6]);
    let fw = z(&[4, 4, 3]);
    let cw = z(&[2, 3, 3, 3]);
    let bias = z(&[2]);
    let dy = z(&[2, 2, 4, 5, 6]);
    let p = Conv2dParams::padded(1);
    let (f, b) = (Some(&fw), Some(&bias));

    // The valid arguments pass.
    let layer = A3dConv {
        fusion_weight: f,
        conv_weight: &cw,
        bias: b,
        params: p,
    };
    assert_eq!(layer.forward(&x).unwrap().shape(), &[2, 2, 4, 5, 6]);
    layer.backward(&x, &dy, Grads::ALL).unwrap();

    // Ranks.
    let x4 = z(&[2, 3, 4, 5]);
    let e = forward_error(&x4, f, &cw, b, p);
    assert!(
        matches!(
            e,
            Error::Rank {
                arg: "x",
                expected: 5,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(matches!(
        backward_error(&x4, f, &cw, b, &dy, p),
        Error::Rank { arg: "x", .. }
    ));
    for shape in [&[2, 3, 3][..], &[2, 3, 3, 3, 1], &[9]] {
        let e = forward_error(&x, f, &z(shape), b, p);
        assert_eq!(
            e,
            Error::Rank {
                arg: "conv_weight",
                expected: 4,
                layout: "[O, C, kh, kw]",
                got: shape.to_vec()
            }
        );
        assert!(matches!(
            backward_error(&x, f, &z(shape), b, &dy, p),
            Error::Rank {
                arg: "conv_weight",
                ..
            }
        ));
    }
    for shape in [&[2, 2, 4, 5][..], &[2, 2, 4, 5, 6, 1]] {
        assert!(matches!(
            backward_error(&x, f, &cw, b, &z(shape), p),
            Error::Rank {
                arg: "dy",
                expected: 5,
                ..
            }
        ));
    }

    // conv_weight's C, and zero kernel dimensions.
    for (shape, expected) in [
        ([2, 4, 3, 3], [2, 3, 3, 3]),
        ([2, 1, 3, 3], [2, 3, 3, 3]),
        ([2, 3, 0, 3], [2, 3, 1, 3]),
        ([2, 3, 3, 0], [2, 3, 3, 1]),
    ] {
        let e = forward_error(&x, f, &z(&shape), b, p);
        assert_eq!(
            e,
            Error::Shape {
                arg: "conv_weight",
                expected: expected.to_vec(),
                got: shape.to_vec()
            }
        );
        assert_eq!(backward_error(&x, f, &z(&shape), b, &dy, p), e);
    }

    // Fusion weights.
    for shape in [[4, 4, 2], [3, 4, 3], [4, 3, 3], [4, 4, 4]] {
        let w = z(&shape);
        let e = forward_error(&x, Some(&w), &cw, b, p);
        assert_eq!(
            e,
            Error::Shape {
                arg: "fusion_weight",
                expected: vec![4, 4, 3],
                got: shape.to_vec()
            }
        );
        assert_eq!(backward_error(&x, Some(&w), &cw, b, &dy, p), e);
    }
    let w2 = z(&[16, 3]);
    assert!(matches!(
        forward_error(&x, Some(&w2), &cw, b, p),
        Error::Rank {
            arg: "fusion_weight",
            expected: 3,
            ..
        }
    ));

    // Bias.
    for shape in [&[3][..], &[1], &[2, 1], &[]] {
        let bad = z(shape);
        let e = forward_error(&x, f, &cw, Some(&bad), p);
        assert_eq!(
            e,
            Error::Shape {
                arg: "bias",
                expected: vec![2],
                got: shape.to_vec()
            }
        );
        assert_eq!(backward_error(&x, f, &cw, Some(&bad), &dy, p), e);
    }

    // Dtypes.
    let mismatch = |arg: &'static str, expected: DType, got: DType| Error::DTypeMismatch {
        arg,
        expected,
        got,
    };
    let cw16 = cw.to_dtype(DType::F16);
    assert_eq!(
        forward_error(&x, f, &cw16, b, p),
        mismatch("conv_weight", DType::F32, DType::F16)
    );
    assert_eq!(
        backward_error(&x, f, &cw16, b, &dy, p),
        mismatch("conv_weight", DType::F32, DType::F16)
    );
    let fw_b = fw.to_dtype(DType::BF16);
    assert_eq!(
        forward_error(&x, Some(&fw_b), &cw, b, p),
        mismatch("fusion_weight", DType::F32, DType::BF16)
    );
    assert_eq!(
        backward_error(&x, Some(&fw_b), &cw, b, &dy, p),
        mismatch("fusion_weight", DType::F32, DType::BF16)
    );
    let bias16 = bias.to_dtype(DType::F16);
    assert_eq!(
        forward_error(&x, f, &cw, Some(&bias16), p),
        mismatch("bias", DType::F32, DType::F16)
    );
    assert_eq!(
        backward_error(&x, f, &cw, Some(&bias16), &dy, p),
        mismatch("bias", DType::F32, DType::F16)
    );
    assert_eq!(
        backward_error(&x, f, &cw, b, &dy.to_dtype(DType::BF16), p),
        mismatch("dy", DType::F32, DType::BF16)
    );
    // x in half precision, everything else f32: the first other argument is named.
    assert_eq!(
        forward_error(&x.to_dtype(DType::BF16), f, &cw, b, p),
        mismatch("conv_weight", DType::BF16, DType::F32)
    );

    // Stride, dilation, kernel size.
    let invalid = |e: Error, expected_arg: &str, needle: &str| match e {
        Error::InvalidArgument { arg, message } => {
            assert_eq!(arg, expected_arg, "{message}");
            assert!(message.contains(needle), "{message} lacks {needle}");
        }
        other => panic!("expected InvalidArgument for {expected_arg}, got {other:?}"),
    };
    let bad_params = [
        (params([0, 1], [1, 1], [1, 1]), "params (rows)", "stride"),
        (params([1, 0], [1, 1], [1, 1]), "params (columns)", "stride"),
        (params([1, 1], [1, 1], [0, 1]), "params (rows)", "dilation"),
        (
            params([1, 1], [1, 1], [1, 0]),
            "params (columns)",
            "dilation",
        ),
        (params([0, 0], [1, 1], [0, 0]), "params (rows)", "stride"),
        // Dilated 3x3 wider than the padded input: 2*4+1 = 9 > 6+2.
        (
            params([1, 1], [1, 1], [1, 4]),
            "params (columns)",
            "exceeds",
        ),
        (params([1, 1], [1, 1], [4, 1]), "params (rows)", "exceeds"),
        (
            params([1, 1], [usize::MAX, 0], [1, 1]),
            "params (rows)",
            "overflow",
        ),
        (
            params([1, 1], [0, 0], [1, usize::MAX]),
            "params (columns)",
            "overflow",
        ),
    ];
    for (bad, arg, needle) in bad_params {
        invalid(forward_error(&x, f, &cw, b, bad), arg, needle);
        invalid(backward_error(&x, f, &cw, b, &dy, bad), arg, needle);
    }
    // Kernels larger than the padded input (5 rows + 2, 6 columns + 2).
    invalid(
        forward_error(&x, f, &z(&[2, 3, 8, 3]), b, p),
        "params (rows)",
        "exceeds",
    );
    invalid(
        forward_error(&x, f, &z(&[2, 3, 3, 9]), b, p),
        "params (columns)",
        "exceeds",
    );
    invalid(
        backward_error(&x, f, &z(&[2, 3, 6, 6]), b, &dy, Conv2dParams::default()),
        "params (rows)",
        "exceeds",
    );

    // dy's shape: [B, O, D, H', W'].
    for shape in [
        [2, 2, 4, 5, 7],
        [2, 3, 4, 5, 6],
        [1, 2, 4, 5, 6],
        [2, 2, 3, 5, 6],
        [2, 2, 4, 3, 4],
    ] {
        assert_eq!(
            backward_error(&x, f, &cw, b, &z(&shape), p),
            Error::Shape {
                arg: "dy",
                expected: vec![2, 2, 4, 5, 6],
                got: shape.to_vec()
            }
        );
    }
    // Without padding H', W' shrink, and the old dy no longer fits.
    assert_eq!(
        backward_error(&x, f, &cw, b, &dy, Conv2dParams::default()),
        Error::Shape {
            arg: "dy",
            expected: vec![2, 2, 4, 3, 4],
            got: vec![2, 2, 4, 5, 6]
        }
    );
    assert!(matches!(
        a3dconv::check_backward(&x, f, &cw, &z(&[2, 2, 4, 5, 7]), &p),
        Err(Error::Shape { arg: "dy", .. })
    ));

    // Shapes beyond any memory are refused before anything is allocated.
    let m = meta;
    let err = a3dconv::check_forward(
        &m(&[usize::MAX / 2, 3, 1, 1, 1]),
        None,
        &m(&[2, 3, 1, 1]),
        None,
        &p,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ElementCountOverflow { .. }), "{err:?}");
    let err = a3dconv::check_forward(
        &m(&[1, 3, 1, 1, 1]),
        None,
        &m(&[1 << 40, 3, 1 << 20, 1]),
        None,
        &params([1, 1], [1 << 20, 0], [1, 1]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ElementCountOverflow { .. }), "{err:?}");
    let err = a3dconv::check_forward(
        &m(&[1 << 20, 1, 1, 1, 1]),
        None,
        &m(&[1 << 20, 1, 1, 1]),
        None,
        &params([1, 1], [1 << 12, 1 << 12], [1, 1]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ElementCountOverflow { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// 7: edge cases
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_batch_or_depth_gives_empty_outputs_and_zero_parameter_gradients() {
    for x_shape in [[0, 3, 3, 5, 7], [2, 3, 0, 5, 7], [0, 3, 0, 1, 1]] {
        for fused in [true, false] {
            for dtype in DType::ALL {
                let kernel = if x_shape[3] == 1 { [1, 1] } else { [3, 3] };
                let c = Case {
                    fused,
                    dtype,
                    ..case(x_shape, 4, kernel, Conv2dParams::padded(1))
                };
                let mut rng = SplitMix64::new(80);
                let inputs = Inputs::random(&c, &mut rng);
                let layer = inputs.layer();
                let y = layer.forward(&inputs.x).unwrap();
                assert_eq!(y.shape(), &c.out_shape());
                assert!(y.is_empty() && y.dtype() == dtype);
                let dy = Tensor::zeros(&c.out_shape(), dtype).unwrap();
                let g = layer.backward(&inputs.x, &dy, Grads::ALL).unwrap();
                let dx = g.dx.unwrap();
                assert_eq!(dx.shape(), &x_shape);
                assert!(dx.is_empty());
                let zero = |t: &Tensor, shape: &[usize]| {
                    assert_eq!(t.shape(), shape);
                    assert_eq!(t.dtype(), dtype);
                    assert!(t.to_f32_vec().iter().all(|v| v.to_bits() == 0), "{c:?}");
                };
                zero(&g.d_conv_weight.unwrap(), &c.conv_weight_shape());
                zero(&g.d_bias.unwrap(), &[4]);
                match g.d_fusion_weight {
                    Some(t) => zero(&t, &c.fusion_weight_shape()),
                    None => assert!(!fused),
                }
            }
        }
    }
}

#[test]
fn tiny_planes_and_exact_fit_kernels_match_reference() {
    let cases = [
        // C channels of a 1x1 input with padding: only the kernel's centre (or nothing) reads x.
        case([2, 5, 3, 1, 1], 4, [3, 3], Conv2dParams::padded(1)),
        case([1, 17, 7, 1, 1], 3, [3, 3], Conv2dParams::padded(2)),
        case([2, 3, 3, 1, 1], 2, [3, 3], params([2, 2], [3, 3], [1, 1])),
        case([2, 3, 3, 1, 1], 2, [1, 1], Conv2dParams::padded(1)),
        // A kernel exactly the size of the padded input: a 1x1 output.
        case([2, 3, 3, 3, 4], 5, [5, 6], Conv2dParams::padded(1)),
        case([1, 3, 7, 5, 5], 2, [3, 3], params([1, 1], [0, 0], [2, 2])),
        case([2, 3, 3, 5, 7], 2, [5, 7], Conv2dParams::default()),
        case([2, 3, 3, 5, 7], 2, [5, 7], params([3, 2], [0, 0], [1, 1])),
        case([1, 2, 3, 1, 5], 3, [3, 3], params([1, 2], [1, 0], [1, 1])),
        // H or W = 1.
        case([2, 3, 3, 1, 17], 4, [1, 3], params([1, 1], [0, 1], [1, 1])),
        case([2, 3, 3, 17, 1], 4, [3, 1], params([1, 1], [1, 0], [1, 1])),
        case([2, 3, 3, 1, 17], 4, [3, 3], Conv2dParams::padded(1)),
        case([2, 3, 3, 17, 1], 4, [3, 3], params([2, 1], [1, 1], [2, 1])),
        case([1, 3, 7, 1, 33], 5, [1, 5], params([1, 2], [0, 2], [1, 2])),
    ];
    let mut all = Vec::new();
    for (n, c) in cases.into_iter().enumerate() {
        for fused in [true, false] {
            all.push((Case { fused, ..c }, 90 + n as u64));
        }
        all.push((
            Case {
                bias: false,
                dtype: DType::F16,
                ..c
            },
            190 + n as u64,
        ));
    }
    run_cases("tiny planes", &all);
    // One row or column beyond the exact fit is refused.
    for c in [
        case([2, 3, 3, 3, 4], 5, [6, 6], Conv2dParams::padded(1)),
        case([2, 3, 3, 3, 4], 5, [5, 7], Conv2dParams::padded(1)),
        case([1, 3, 7, 5, 5], 2, [3, 4], params([1, 1], [0, 0], [2, 2])),
    ] {
        assert_refused(&c);
    }
}

/// A zero-sized dimension that `check_forward` accepts must give the reference's results (a
/// refusal with a typed error would also do); a panic is neither.
fn check_case_or_refused(case: &Case, seed: u64) -> Result<f64, String> {
    let mut rng = SplitMix64::new(seed);
    let inputs = Inputs::random(case, &mut rng);
    let layer = inputs.layer();
    match layer.dims(&inputs.x) {
        Ok(_) => check_case(case, seed),
        Err(e @ (Error::Shape { .. } | Error::InvalidArgument { .. })) => {
            let dy_shape = [case.batch, case.out_channels, case.depth, 1, 1];
            let dy = Tensor::zeros(&dy_shape, case.dtype).unwrap();
            if layer.forward(&inputs.x).err().as_ref() != Some(&e)
                || layer.backward(&inputs.x, &dy, Grads::ALL).err().as_ref() != Some(&e)
            {
                return Err(format!("refused by dims ({e}) but not by forward/backward"));
            }
            Ok(0.0)
        }
        Err(e) => Err(format!("unexpected error {e:?}")),
    }
}

#[test]
fn zero_channels_or_rows_are_computed_or_refused_never_a_panic() {
    let cases = [
        // C = 0: x is empty, y = bias.
        case([2, 0, 3, 5, 5], 3, [3, 3], Conv2dParams::padded(1)),
        // O = 0: y is empty, dx is zero (not empty), d_fusion_weight zero.
        case([2, 3, 3, 5, 5], 0, [3, 3], Conv2dParams::padded(1)),
        // Zero rows or columns padded into a plane: x is empty, y = bias.
        case([2, 3, 2, 0, 4], 3, [1, 1], params([1, 1], [1, 0], [1, 1])),
        case([2, 3, 2, 4, 0], 3, [3, 3], params([1, 1], [1, 2], [1, 1])),
    ];
    let mut failures = Vec::new();
    for (n, base) in cases.into_iter().enumerate() {
        for (fused, dtype) in [(true, DType::F32), (false, DType::F32), (true, DType::F16)] {
            let c = Case {
                fused,
                dtype,
                ..base
            };
            match catch_unwind(AssertUnwindSafe(|| {
                check_case_or_refused(&c, 600 + n as u64)
            })) {
                Ok(Ok(_)) => {}
                Ok(Err(msg)) => failures.push(format!("{c:?}: {msg}")),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failures.push(format!("{c:?}: PANIC {msg}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kernel_taps_that_only_ever_read_padding_match_reference() {
    // Taps whose input column is in the padding for every output position (dilated kernel
    // wider than the input plus one side's padding), on the stride-1 column path; the row
    // versions and stride-2 columns alongside.
    let cases = [
        // A 'same' 1x5 / 5x5 convolution of a one-column or 1x1 input.
        case([1, 2, 3, 4, 1], 2, [1, 5], params([1, 1], [0, 2], [1, 1])),
        case([2, 3, 3, 1, 1], 2, [5, 5], Conv2dParams::padded(2)),
        case([1, 2, 3, 7, 5], 3, [3, 3], params([1, 1], [1, 2], [1, 4])),
        case([1, 2, 3, 4, 1], 2, [1, 3], params([1, 1], [0, 2], [1, 2])),
        // Rows instead of columns.
        case([1, 2, 3, 1, 4], 2, [5, 1], params([1, 1], [2, 0], [1, 1])),
        case([1, 2, 3, 5, 7], 3, [3, 3], params([1, 1], [2, 1], [4, 1])),
        // Stride 2 along the columns.
        case([1, 2, 3, 4, 1], 2, [1, 5], params([1, 2], [0, 2], [1, 1])),
    ];
    let all: Vec<(Case, u64)> = cases
        .into_iter()
        .enumerate()
        .map(|(n, c)| (c, 300 + n as u64))
        .collect();
    run_cases("taps in padding only", &all);
}

#[test]
fn nan_in_x_propagates_to_the_outputs_that_read_it() {
    // x[0, 1, 2, 3, 0] = NaN, H=7, W=6, 3x3 padding 1: outputs of batch 0 in rows 2..=4,
    // columns 0..=1 read it (every slice with fusion, slice 2 without).
    for fused in [true, false] {
        for dtype in [DType::F32, DType::BF16] {
            let c = Case {
                fused,
                dtype,
                ..case([2, 3, 3, 7, 6], 4, [3, 3], Conv2dParams::padded(1))
            };
            let mut rng = SplitMix64::new(95);
            let mut inputs = Inputs::random(&c, &mut rng);
            let mut xv = inputs.x.to_f32_vec();
            // ((b * C + c) * D + d) * H + h) * W + w with b = 0, c = 1, d = 2, h = 3, w = 0.
            let nan_at = ((3 + 2) * 7 + 3) * 6;
            xv[nan_at] = f32::NAN;
            inputs.x = Tensor::from_f32(&xv, &c.x_shape(), dtype).unwrap();
            let layer = inputs.layer();
            let dims = layer.dims(&inputs.x).unwrap();
            let args = inputs.args64();
            let [n_y, n_dx, n_dcw, n_db, n_dfw] = c.reductions();

            let y = layer.forward(&inputs.x).unwrap().to_f64_vec();
            let want = args.forward(&dims);
            let nans = y.iter().filter(|v| v.is_nan()).count();
            let slices = if fused { 3 } else { 1 };
            assert_eq!(nans, 4 * slices * 3 * 2, "NaN outputs, {c:?}");
            for (b, o, d, i, j) in [(0, 2, 2, 3, 0), (0, 0, 2, 2, 1), (0, 3, 2, 4, 1)] {
                assert!(y[(((b * 4 + o) * 3 + d) * 7 + i) * 6 + j].is_nan());
            }
            // Neighbours and the other batch stay finite.
            for (b, o, d, i, j) in [(0, 2, 2, 1, 0), (0, 2, 2, 3, 2), (1, 2, 2, 3, 0)] {
                assert!(y[(((b * 4 + o) * 3 + d) * 7 + i) * 6 + j].is_finite());
            }
            nan_close("y", &y, &want, n_y, dtype);

            let dy = random(&c.out_shape(), dtype, 1.0, &mut rng);
            let g = layer.backward(&inputs.x, &dy, Grads::ALL).unwrap();
            let want = args.backward(&dims, &dy.to_f64_vec());
            let dx = g.dx.unwrap().to_f64_vec();
            // dx does not depend on x.
            assert!(dx.iter().all(|v| v.is_finite()));
            nan_close("dx", &dx, &want.dx, n_dx, dtype);
            let dcw = g.d_conv_weight.unwrap().to_f64_vec();
            // Channel 1's taps that read column 0 from some output (kernel columns 0 and 1).
            assert_eq!(dcw.iter().filter(|v| v.is_nan()).count(), 4 * 3 * 2);
            nan_close("d_conv_weight", &dcw, &want.d_conv_weight, n_dcw, dtype);
            let db = g.d_bias.unwrap().to_f64_vec();
            nan_close("d_bias", &db, &want.d_bias, n_db, dtype);
            match (g.d_fusion_weight, want.d_fusion_weight) {
                (Some(got), Some(want)) => {
                    let got = got.to_f64_vec();
                    // dfw[e=2, d, c=1] for every d.
                    assert_eq!(got.iter().filter(|v| v.is_nan()).count(), 3);
                    nan_close("d_fusion_weight", &got, &want, n_dfw, dtype);
                }
                (None, None) => assert!(!fused),
                _ => panic!("d_fusion_weight presence"),
            }
        }
    }
}

/// NaN exactly where the reference has NaN, [`close`] elsewhere.
fn nan_close(what: &str, got: &[f64], want: &[f64], reduction: usize, dtype: DType) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.is_nan(), w.is_nan(), "{what}[{i}]: {g} vs reference {w}");
    }
    let keep = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .zip(want)
            .filter(|(_, w)| !w.is_nan())
            .map(|(g, _)| *g)
            .collect()
    };
    close(what, &keep(got), &keep(want), reduction, dtype).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8: planes larger than one slab, checked element by element against direct sums
// ---------------------------------------------------------------------------------------------

/// Single elements of A3DConv and its gradients straight from the definition, in float64 and
/// sharing no code with the reference, for planes too large for the full reference in debug.
struct Direct {
    c: Case,
    x: Vec<f64>,
    z: Vec<f64>,
    fw: Option<Vec<f64>>,
    cw: Vec<f64>,
    bias: Option<Vec<f64>>,
    dy: Vec<f64>,
}

impl Direct {
    fn new(c: &Case, inputs: &Inputs, dy: &Tensor) -> Direct {
        let x = inputs.x.to_f64_vec();
        let fw = inputs.fusion_weight.as_ref().map(Tensor::to_f64_vec);
        let (dn, cn, pn) = (c.depth, c.channels, c.height * c.width);
        let z = match &fw {
            None => x.clone(),
            Some(w) => {
                let mut z = vec![0.0; x.len()];
                for (n, v) in z.iter_mut().enumerate() {
                    let p = n % pn;
                    let d = (n / pn) % dn;
                    let bc = n / (pn * dn);
                    let ch = bc % cn;
                    *v = (0..dn)
                        .map(|e| x[(bc * dn + e) * pn + p] * w[(e * dn + d) * cn + ch])
                        .sum();
                }
                z
            }
        };
        Direct {
            c: *c,
            x,
            z,
            fw,
            cw: inputs.conv_weight.to_f64_vec(),
            bias: inputs.bias.as_ref().map(Tensor::to_f64_vec),
            dy: dy.to_f64_vec(),
        }
    }

    fn xi(&self, b: usize, ch: usize, d: usize, h: usize, w: usize) -> usize {
        let c = &self.c;
        (((b * c.channels + ch) * c.depth + d) * c.height + h) * c.width + w
    }

    fn yi(&self, b: usize, o: usize, d: usize, i: usize, j: usize) -> usize {
        let c = &self.c;
        let [oh, ow] = c.out_size();
        (((b * c.out_channels + o) * c.depth + d) * oh + i) * ow + j
    }

    fn wi(&self, o: usize, ch: usize, p: usize, q: usize) -> usize {
        let c = &self.c;
        ((o * c.channels + ch) * c.kernel[0] + p) * c.kernel[1] + q
    }

    /// Input index read by output position `i` through tap `p` along `axis`.
    fn source(&self, axis: usize, i: usize, p: usize) -> Option<usize> {
        let pr = &self.c.params;
        (i * pr.stride[axis] + p * pr.dilation[axis])
            .checked_sub(pr.padding[axis])
            .filter(|&v| v < self.c.size(axis))
    }

    /// Output position that reads input `v` through tap `p` along `axis`.
    fn reader(&self, axis: usize, v: usize, p: usize) -> Option<usize> {
        let pr = &self.c.params;
        let num = (v + pr.padding[axis]).checked_sub(p * pr.dilation[axis])?;
        let i = num / pr.stride[axis];
        (num % pr.stride[axis] == 0 && i < self.c.out_size()[axis]).then_some(i)
    }

    fn y(&self, b: usize, o: usize, d: usize, i: usize, j: usize) -> f64 {
        let mut s = self.bias.as_ref().map_or(0.0, |v| v[o]);
        for ch in 0..self.c.channels {
            for p in 0..self.c.kernel[0] {
                let Some(h) = self.source(0, i, p) else {
                    continue;
                };
                for q in 0..self.c.kernel[1] {
                    if let Some(w) = self.source(1, j, q) {
                        s += self.cw[self.wi(o, ch, p, q)] * self.z[self.xi(b, ch, d, h, w)];
                    }
                }
            }
        }
        s
    }

    /// The gradient at the convolution's input (after the fusion).
    fn dz(&self, b: usize, ch: usize, d: usize, h: usize, w: usize) -> f64 {
        let mut s = 0.0;
        for o in 0..self.c.out_channels {
            for p in 0..self.c.kernel[0] {
                let Some(i) = self.reader(0, h, p) else {
                    continue;
                };
                for q in 0..self.c.kernel[1] {
                    if let Some(j) = self.reader(1, w, q) {
                        s += self.cw[self.wi(o, ch, p, q)] * self.dy[self.yi(b, o, d, i, j)];
                    }
                }
            }
        }
        s
    }

    fn dx(&self, b: usize, ch: usize, e: usize, h: usize, w: usize) -> f64 {
        let c = &self.c;
        match &self.fw {
            None => self.dz(b, ch, e, h, w),
            Some(fw) => (0..c.depth)
                .map(|d| fw[(e * c.depth + d) * c.channels + ch] * self.dz(b, ch, d, h, w))
                .sum(),
        }
    }

    fn d_conv_weight(&self, o: usize, ch: usize, p: usize, q: usize) -> f64 {
        let [oh, ow] = self.c.out_size();
        let mut s = 0.0;
        for b in 0..self.c.batch {
            for d in 0..self.c.depth {
                for i in 0..oh {
                    let Some(h) = self.source(0, i, p) else {
                        continue;
                    };
                    for j in 0..ow {
                        if let Some(w) = self.source(1, j, q) {
                            s += self.dy[self.yi(b, o, d, i, j)] * self.z[self.xi(b, ch, d, h, w)];
                        }
                    }
                }
            }
        }
        s
    }

    fn d_bias(&self) -> Vec<f64> {
        let [oh, ow] = self.c.out_size();
        let block = self.c.depth * oh * ow;
        let mut s = vec![0.0; self.c.out_channels];
        for (n, g) in self.dy.iter().enumerate() {
            s[(n / block) % self.c.out_channels] += g;
        }
        s
    }

    /// `d_fusion_weight[e, d, ch]` for every `(e, d)` of channel `ch`, row-major.
    fn d_fusion_weight(&self, ch: usize) -> Vec<f64> {
        let c = &self.c;
        let dn = c.depth;
        let mut s = vec![0.0; dn * dn];
        for b in 0..c.batch {
            for d in 0..dn {
                for h in 0..c.height {
                    for w in 0..c.width {
                        let g = self.dz(b, ch, d, h, w);
                        for e in 0..dn {
                            s[e * dn + d] += self.x[self.xi(b, ch, e, h, w)] * g;
                        }
                    }
                }
            }
        }
        s
    }
}

/// Columns checked on every row: both edges (padding) and the middle.
fn edge_columns(len: usize) -> Vec<usize> {
    let mut cols = vec![0, 1.min(len - 1), len / 2, len.saturating_sub(2), len - 1];
    cols.sort_unstable();
    cols.dedup();
    cols
}

/// Forward and all four gradients of a large case: y and dx on every row (so every slab
/// boundary, wherever the CPU path puts it) at the edge columns, plus one whole plane of each
/// (pixel slabs of the 1x1 path end mid-row); sampled d_conv_weight elements, two channels of
/// d_fusion_weight, and all of d_bias.
fn check_sampled(c: &Case, seed: u64) -> Result<(), String> {
    let mut rng = SplitMix64::new(seed);
    let inputs = Inputs::random(c, &mut rng);
    let dy = random(&c.out_shape(), c.dtype, 1.0, &mut rng);
    let layer = inputs.layer();
    let y = layer.forward(&inputs.x).map_err(|e| e.to_string())?;
    let g = layer
        .backward(&inputs.x, &dy, Grads::ALL)
        .map_err(|e| e.to_string())?;
    let direct = Direct::new(c, &inputs, &dy);
    let [oh, ow] = c.out_size();
    let [n_y, n_dx, n_dcw, n_db, n_dfw] = c.reductions();
    let dt = c.dtype;

    let yv = y.to_f64_vec();
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let last = (c.batch - 1, c.out_channels - 1, c.depth - 1);
    for b in 0..c.batch {
        for o in 0..c.out_channels {
            for d in 0..c.depth {
                let cols = if (b, o, d) == last {
                    (0..ow).collect()
                } else {
                    edge_columns(ow)
                };
                for i in 0..oh {
                    for &j in &cols {
                        got.push(yv[direct.yi(b, o, d, i, j)]);
                        want.push(direct.y(b, o, d, i, j));
                    }
                }
            }
        }
    }
    close("y (every row)", &got, &want, n_y, dt)?;

    let dx = g.dx.ok_or("dx missing")?.to_f64_vec();
    let (mut got, mut want) = (Vec::new(), Vec::new());
    let last = (c.batch - 1, c.channels - 1, c.depth - 1);
    for b in 0..c.batch {
        for ch in 0..c.channels {
            for e in 0..c.depth {
                let cols = if (b, ch, e) == last {
                    (0..c.width).collect()
                } else {
                    edge_columns(c.width)
                };
                for h in 0..c.height {
                    for &w in &cols {
                        got.push(dx[direct.xi(b, ch, e, h, w)]);
                        want.push(direct.dx(b, ch, e, h, w));
                    }
                }
            }
        }
    }
    close("dx (every row)", &got, &want, n_dx, dt)?;

    let dcw = g.d_conv_weight.ok_or("d_conv_weight missing")?.to_f64_vec();
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for _ in 0..48 {
        let o = rng.below(c.out_channels as u64) as usize;
        let ch = rng.below(c.channels as u64) as usize;
        let p = rng.below(c.kernel[0] as u64) as usize;
        let q = rng.below(c.kernel[1] as u64) as usize;
        got.push(dcw[direct.wi(o, ch, p, q)]);
        want.push(direct.d_conv_weight(o, ch, p, q));
    }
    close("d_conv_weight (sampled)", &got, &want, n_dcw, dt)?;

    let db = g.d_bias.ok_or("d_bias missing")?.to_f64_vec();
    close("d_bias", &db, &direct.d_bias(), n_db, dt)?;

    if let Some(dfw) = g.d_fusion_weight {
        let dfw = dfw.to_f64_vec();
        for ch in [0, c.channels - 1] {
            let got: Vec<f64> = (0..c.depth * c.depth)
                .map(|n| dfw[n * c.channels + ch])
                .collect();
            close(
                &format!("d_fusion_weight[.., .., {ch}]"),
                &got,
                &direct.d_fusion_weight(ch),
                n_dfw,
                dt,
            )?;
        }
    } else if c.fused {
        return Err("d_fusion_weight missing".into());
    }
    Ok(())
}

#[test]
fn direct_sums_agree_with_the_reference() {
    // The element-wise helpers of the large-plane test, validated on small problems.
    for (n, c) in [
        case([2, 3, 3, 9, 8], 2, [3, 3], params([2, 1], [1, 2], [1, 2])),
        Case {
            fused: false,
            ..case([1, 2, 2, 7, 5], 3, [1, 3], params([1, 2], [0, 1], [1, 1]))
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = SplitMix64::new(400 + n as u64);
        let inputs = Inputs::random(&c, &mut rng);
        let dy = random(&c.out_shape(), DType::F32, 1.0, &mut rng);
        let dims = inputs.layer().dims(&inputs.x).unwrap();
        let args = inputs.args64();
        let y = args.forward(&dims);
        let g = args.backward(&dims, &dy.to_f64_vec());
        let direct = Direct::new(&c, &inputs, &dy);
        let [oh, ow] = c.out_size();
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-12 * (1.0 + b.abs());
        for b in 0..c.batch {
            for d in 0..c.depth {
                for o in 0..c.out_channels {
                    for i in 0..oh {
                        for j in 0..ow {
                            let k = direct.yi(b, o, d, i, j);
                            assert!(near(direct.y(b, o, d, i, j), y[k]), "y[{k}]");
                        }
                    }
                }
                for ch in 0..c.channels {
                    for h in 0..c.height {
                        for w in 0..c.width {
                            let k = direct.xi(b, ch, d, h, w);
                            assert!(near(direct.dx(b, ch, d, h, w), g.dx[k]), "dx[{k}]");
                        }
                    }
                }
            }
        }
        for o in 0..c.out_channels {
            for ch in 0..c.channels {
                for p in 0..c.kernel[0] {
                    for q in 0..c.kernel[1] {
                        let k = direct.wi(o, ch, p, q);
                        assert!(near(direct.d_conv_weight(o, ch, p, q), g.d_conv_weight[k]));
                    }
                }
            }
        }
        for (a, b) in direct.d_bias().iter().zip(&g.d_bias) {
            assert!(near(*a, *b));
        }
        if let Some(dfw) = &g.d_fusion_weight {
            for ch in 0..c.channels {
                for (n, v) in direct.d_fusion_weight(ch).iter().enumerate() {
                    assert!(near(*v, dfw[n * c.channels + ch]));
                }
            }
        }
    }
}

#[test]
fn planes_spanning_several_slabs_match_direct_sums() {
    // The CPU path works on slabs of rows sized to stay in L2 (0.5-1 MiB of im2col), and on
    // smaller ones when a problem has few rows. Bytes of one im2col row, C*kh*kw*W'*4:
    let cases = [
        // 22680: tens of rows per slab, several slabs (70 rows); dx: O*kh*kw*W*4 = 12600.
        case([1, 9, 3, 70, 70], 5, [3, 3], Conv2dParams::padded(1)),
        // 448000: one or two rows per slab.
        case([1, 64, 2, 9, 70], 3, [5, 5], Conv2dParams::padded(2)),
        // 1216000: one row per slab in any plan.
        Case {
            bias: false,
            ..case([1, 64, 1, 4, 190], 2, [5, 5], Conv2dParams::padded(2))
        },
        // dx: O*kh*kw*W*4 = 544000, one input row per slab.
        Case {
            bias: false,
            ..case([1, 3, 1, 5, 170], 32, [5, 5], Conv2dParams::padded(2))
        },
        // Strided, no fusion, two batch items.
        Case {
            fused: false,
            ..case(
                [2, 20, 1, 71, 69],
                5,
                [3, 3],
                params([2, 2], [1, 1], [1, 1]),
            )
        },
        // Dilated, bf16.
        Case {
            dtype: DType::BF16,
            ..case([1, 9, 3, 70, 70], 5, [3, 3], params([1, 1], [2, 2], [2, 2]))
        },
        // 1x1: slabs of pixels, not of rows, ending mid-row.
        case([1, 32, 3, 70, 70], 4, [1, 1], Conv2dParams::default()),
        Case {
            fused: false,
            ..case([2, 48, 1, 67, 71], 3, [1, 1], Conv2dParams::default())
        },
    ];
    let mut failures = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        match catch_unwind(AssertUnwindSafe(|| check_sampled(c, 500 + n as u64))) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => failures.push(format!("{c:?}: {msg}")),
            Err(_) => failures.push(format!("{c:?}: PANIC")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

#[test]
fn dims_report_shapes_flops_and_the_pointwise_class() {
    let x = meta(&[2, 3, 4, 17, 33]);
    let fw = meta(&[4, 4, 3]);
    let dims = a3dconv::check_forward(
        &x,
        Some(&fw),
        &meta(&[5, 3, 3, 1]),
        None,
        &params([2, 1], [1, 0], [2, 1]),
    )
    .unwrap();
    // Rows: (17 + 2 - 5) / 2 + 1 = 8; columns: 33 - 1 + 1 = 33.
    assert_eq!(dims.out_size, [8, 33]);
    assert_eq!(dims.output_shape(), [2, 5, 4, 8, 33]);
    assert_eq!(dims.conv_weight_shape(), [5, 3, 3, 1]);
    assert_eq!(dims.kernel, [3, 1]);
    assert!(dims.fused);
    assert_eq!(dims.conv_flops(), 2.0 * (2 * 4 * 5 * 8 * 33 * 3 * 3) as f64);
    assert!(!dims.is_pointwise());
    let dims =
        a3dconv::check_forward(&x, None, &meta(&[5, 3, 1, 1]), None, &Default::default()).unwrap();
    assert!(dims.is_pointwise() && !dims.fused);
    let padded = a3dconv::check_forward(
        &x,
        None,
        &meta(&[5, 3, 1, 1]),
        None,
        &Conv2dParams::padded(1),
    )
    .unwrap();
    assert!(!padded.is_pointwise());
    assert_eq!(padded.out_size, [19, 35]);
}
