//! `a3d bench a3dconv`: A3DConv (fusion, then a K x K convolution per slice) on the CPU, forward
//! and backward (every gradient), interleaved with a copy of x's bytes like `a3d bench fusion`.
//!
//! Both passes run through the public API (`A3dConv::forward`, `A3dConv::backward` with
//! `Grads::ALL`), so the times include allocating the outputs, as a caller pays them.
//! `bench/torch_a3dconv.py` times PyTorch's side of the same computation with the same keys.

use crate::bench::{interleaved_medians_ms, ConvInfo, Copy, Row};
use a3d::a3dconv::{A3dConv, Conv2dParams, Grads};
use a3d::{fusion, DType, Tensor};

/// The layer of one benchmark case: a square K x K convolution applied to every slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    /// Fusion weights `[D, D, C]` before the convolution.
    pub fusion: bool,
    /// A bias `[O]` (on by default, as in PyTorch's `Conv3d`).
    pub bias: bool,
}

/// The default cases, `(input shape, O, K)`, padding K / 2: the dense layer's 3x3 128 -> 32 at
/// three sizes and the transition-like 1x1 256 -> 128 (shared/docs/detector.md).
pub const DEFAULT_CASES: [([usize; 5], usize, usize); 4] = [
    ([1, 128, 3, 128, 128], 32, 3),
    ([1, 128, 3, 64, 64], 32, 3),
    ([1, 128, 3, 32, 32], 32, 3),
    ([1, 256, 3, 128, 128], 128, 1),
];

pub fn print_header(threads: usize) {
    crate::say!(
        "threads: {threads}; medians of interleaved runs; copy = read + write of x's bytes once; \
         backward = dx + conv weight + bias + fusion weight; GFLOP/s counts the convolution \
         (backward: 2x forward)"
    );
    crate::say!(
        "{:<7} {:<8} {:<4} {:<5} {:<18} {:<26} {:>10} {:>9} {:>7} {:>8}",
        "op",
        "pass",
        "dev",
        "dtype",
        "shape",
        "layer",
        "median_ms",
        "copy_ms",
        "x copy",
        "GFLOP/s"
    );
}

pub fn table_line(row: &Row) -> String {
    let s = &row.shape;
    let layer = match row.conv {
        Some(c) => format!(
            "o{} k{} s{} p{} l{}{}{}",
            c.out_channels,
            c.kernel,
            c.stride,
            c.padding,
            c.dilation,
            if c.fusion { " fusion" } else { "" },
            if c.bias { " bias" } else { "" }
        ),
        None => String::new(),
    };
    format!(
        "{:<7} {:<8} {:<4} {:<5} {:<18} {:<26} {:>10.3} {:>9.3} {:>7.2} {:>8.1}",
        row.op,
        row.pass,
        row.device,
        row.dtype.as_str(),
        format!("[{},{},{},{},{}]", s[0], s[1], s[2], s[3], s[4]),
        layer,
        row.median_ms,
        row.copy_ms,
        row.ratio_to_copy(),
        row.gflops().unwrap_or(f64::NAN)
    )
}

/// Forward and backward (all gradients) of one A3DConv layer on the CPU, with a copy of x's
/// bytes in the same rounds.
pub fn a3dconv_cpu(
    shape: [usize; 5],
    layer: Layer,
    dtype: DType,
    runs: usize,
) -> Result<Vec<Row>, String> {
    let s = |e: a3d::Error| e.to_string();
    let [_, c, d, _, _] = shape;
    let (o, k) = (layer.out_channels, layer.kernel);
    let mut rng = a3d::rng::SplitMix64::new(0x5eed);
    let x = crate::bench_context::random_tensor(&shape, dtype, &mut rng)?;
    let fw = fusion::init_weights(d, c, 7).map_err(s)?.to_dtype(dtype);
    // PyTorch's default init range for the weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    let bound = 1.0 / ((c * k * k).max(1) as f32).sqrt();
    let cw = Tensor::from_f32(
        &rng.vec_f32(o * c * k * k, -bound, bound),
        &[o, c, k, k],
        dtype,
    )
    .map_err(s)?;
    let bias = Tensor::from_f32(&rng.vec_f32(o, -bound, bound), &[o], dtype).map_err(s)?;
    let conv = A3dConv {
        fusion_weight: layer.fusion.then_some(&fw),
        conv_weight: &cw,
        bias: layer.bias.then_some(&bias),
        params: Conv2dParams {
            stride: [layer.stride; 2],
            padding: [layer.padding; 2],
            dilation: [layer.dilation; 2],
        },
    };
    let dims = conv.dims(&x).map_err(s)?;
    let out_shape = dims.output_shape();
    let dy = crate::bench_context::random_tensor(&out_shape, dtype, &mut rng)?;
    // Arguments were built valid above; run once so the timed calls cannot fail.
    conv.forward(&x).map_err(s)?;
    conv.backward(&x, &dy, Grads::ALL).map_err(s)?;

    let size = dtype.size_in_bytes();
    let x_bytes = x.size_in_bytes();
    let y_bytes = out_shape.iter().product::<usize>() * size;
    let param_bytes = (cw.len() + if layer.fusion { fw.len() } else { 0 }) * size
        + if layer.bias { o * size } else { 0 };
    let mut copy = Copy::try_new(x_bytes)?;
    let mut run_copy = || copy.run();
    let mut run_forward = || {
        std::hint::black_box(conv.forward(&x).ok());
    };
    let mut run_backward = || {
        std::hint::black_box(conv.backward(&x, &dy, Grads::ALL).ok());
    };
    let medians = interleaved_medians_ms(
        runs,
        &mut [&mut run_copy, &mut run_forward, &mut run_backward],
    );
    let (copy_ms, fwd, bwd) = (medians[0], medians[1], medians[2]);
    let flops = dims.conv_flops();
    let row = |pass, median_ms, bytes, flops| Row {
        op: "a3dconv",
        pass,
        device: "cpu".into(),
        dtype,
        shape: shape.to_vec(),
        threads: rayon::current_num_threads(),
        median_ms,
        copy_ms,
        copied_bytes: shape.iter().product::<usize>() * dtype.size_in_bytes(),
        bytes,
        conv: Some(ConvInfo {
            out_channels: o,
            kernel: k,
            stride: layer.stride,
            padding: layer.padding,
            dilation: layer.dilation,
            fusion: layer.fusion,
            bias: layer.bias,
            flops,
        }),
    };
    Ok(vec![
        // Read x and the parameters, write y.
        row("forward", fwd, x_bytes + param_bytes + y_bytes, flops),
        // Read x, dy and the parameters, write dx and the parameters' gradients.
        row(
            "backward",
            bwd,
            2 * x_bytes + y_bytes + 2 * param_bytes,
            2.0 * flops,
        ),
    ])
}
