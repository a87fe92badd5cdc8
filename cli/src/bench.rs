//! `a3d bench`: median timings of an operator next to the time of copying its input once
//! (read + write of the same bytes), measured in the same run on the same threads. The copy is
//! the hardware limit of a memory-bound pass: `ratio_to_copy` says how far from it we are.

use a3d::fusion::{self, FusionDims};
use a3d::{DType, Tensor};
use rayon::prelude::*;
use std::time::Instant;

/// The default shapes of `a3d bench fusion`.
pub const DEFAULT_SHAPES: [[usize; 5]; 3] = [
    [1, 128, 7, 128, 128],
    [1, 256, 3, 128, 128],
    [2, 64, 7, 64, 64],
];

/// One timed pass.
pub struct Row {
    pub op: &'static str,
    pub pass: &'static str,
    pub device: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub threads: usize,
    pub median_ms: f64,
    pub copy_ms: f64,
    /// Bytes the copy baseline reads (and writes): x's bytes for the memory-bound ops.
    pub copied_bytes: usize,
    /// Bytes the pass must move at the least (read inputs once, write outputs once).
    pub bytes: usize,
    /// The convolution of an A3DConv pass (`None` for fusion, whose JSON keeps its keys).
    pub conv: Option<ConvInfo>,
}

/// What an A3DConv row adds: the layer and the FLOPs its pass counts.
#[derive(Debug, Clone, Copy)]
pub struct ConvInfo {
    pub out_channels: usize,
    /// Square kernel size K (a K x K convolution per slice).
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    /// Whether the layer has fusion weights.
    pub fusion: bool,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Convolution FLOPs of the pass (2 x multiply-adds; backward: dx + dw, twice the forward).
    pub flops: f64,
}

/// What the rows of one measured problem share; [`RowSet::row`] adds a pass.
pub struct RowSet {
    pub op: &'static str,
    pub device: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// CPU threads (0 on a GPU).
    pub threads: usize,
    pub copy_ms: f64,
    /// Bytes the copy baseline reads (and writes).
    pub copied_bytes: usize,
}

impl RowSet {
    /// The rows of a CPU run on the current rayon pool.
    pub fn cpu(op: &'static str, dtype: DType, shape: &[usize], copy_ms: f64) -> RowSet {
        RowSet {
            op,
            device: "cpu".into(),
            dtype,
            shape: shape.to_vec(),
            threads: rayon::current_num_threads(),
            copy_ms,
            copied_bytes: shape.iter().product::<usize>() * dtype.size_in_bytes(),
        }
    }

    /// The rows of a GPU run: the copy moves x's bytes.
    #[cfg(feature = "cuda")]
    pub fn cuda(
        op: &'static str,
        dev: &a3d::cuda::CudaDevice,
        dtype: DType,
        shape: &[usize],
        copy_ms: f64,
    ) -> RowSet {
        RowSet {
            device: format!("cuda:{}", dev.ordinal()),
            threads: 0,
            ..RowSet::cpu(op, dtype, shape, copy_ms)
        }
    }

    /// One pass of a memory-bound op moving at least `bytes`.
    pub fn row(&self, pass: &'static str, median_ms: f64, bytes: usize) -> Row {
        Row {
            op: self.op,
            pass,
            device: self.device.clone(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            threads: self.threads,
            median_ms,
            copy_ms: self.copy_ms,
            copied_bytes: self.copied_bytes,
            bytes,
            conv: None,
        }
    }
}

impl Row {
    pub fn ratio_to_copy(&self) -> f64 {
        self.median_ms / self.copy_ms
    }

    fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.median_ms * 1e-3) / 1e9
    }

    /// The copy moves its bytes twice (read + write).
    fn copy_gbps(&self) -> f64 {
        2.0 * self.copied_bytes as f64 / (self.copy_ms * 1e-3) / 1e9
    }

    /// Convolution GFLOP/s of an A3DConv pass.
    pub fn gflops(&self) -> Option<f64> {
        self.conv.map(|c| c.flops / (self.median_ms * 1e-3) / 1e9)
    }

    pub fn to_json(&self) -> String {
        let mut j = serde_json::json!({
            "op": self.op,
            "pass": self.pass,
            "device": self.device,
            "dtype": self.dtype.as_str(),
            "shape": self.shape,
            "threads": self.threads,
            "median_ms": self.median_ms,
            "copy_ms": self.copy_ms,
            "ratio_to_copy": self.ratio_to_copy(),
            "min_bytes": self.bytes,
            "gb_per_s": self.gbps(),
            "copy_gb_per_s": self.copy_gbps(),
        });
        if let (true, Some(map)) = (self.device == "cpu", j.as_object_mut()) {
            map.insert("isa".into(), a3d::cpu::active_isa().as_str().into());
        }
        if let (Some(c), Some(gflops), Some(map)) = (self.conv, self.gflops(), j.as_object_mut()) {
            for (key, value) in [
                ("gflops", serde_json::json!(gflops)),
                ("out_channels", c.out_channels.into()),
                ("kernel", c.kernel.into()),
                ("stride", c.stride.into()),
                ("padding", c.padding.into()),
                ("dilation", c.dilation.into()),
                ("fusion", c.fusion.into()),
                ("bias", c.bias.into()),
            ] {
                map.insert(key.into(), value);
            }
        }
        j.to_string()
    }

    pub fn to_table_line(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        format!(
            "{:<13} {:<16} {:<5} {:<5} {:<20} {:>10.3} {:>10.3} {:>8.2} {:>8.1}",
            self.op,
            self.pass,
            self.device,
            self.dtype.as_str(),
            format!("[{}]", shape.join(",")),
            self.median_ms,
            self.copy_ms,
            self.ratio_to_copy(),
            self.gbps()
        )
    }
}

pub fn print_header(threads: usize) {
    crate::say!(
        "threads: {threads}; medians of interleaved runs; copy = read + write of x's bytes once"
    );
    crate::say!(
        "{:<13} {:<16} {:<5} {:<5} {:<20} {:>10} {:>10} {:>8} {:>8}",
        "op",
        "pass",
        "dev",
        "dtype",
        "shape",
        "median_ms",
        "copy_ms",
        "x copy",
        "GB/s"
    );
}

/// Median wall times in milliseconds of each of `passes`, over `runs` rounds after two warm-up
/// rounds. Every round runs every pass once, so a change of machine load during the benchmark
/// shifts all of them alike and their ratios stay meaningful.
pub fn interleaved_medians_ms(runs: usize, passes: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(runs); passes.len()];
    for round in 0..runs + 2 {
        for (pass, t) in passes.iter_mut().zip(&mut times) {
            let start = Instant::now();
            pass();
            if round >= 2 {
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// Copies `bytes` bytes once between two preallocated buffers, split over the current rayon
/// pool (on a memory-bound machine one core cannot reach the copy bandwidth).
pub struct Copy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Copy {
    /// Two buffers of `bytes`; a size this machine cannot hold is an error, not an abort.
    pub fn try_new(bytes: usize) -> Result<Copy, String> {
        let alloc = |what: &str| -> Result<Vec<u8>, String> {
            let mut v = Vec::new();
            v.try_reserve_exact(bytes).map_err(|_| {
                format!("cannot allocate the {bytes}-byte {what} buffer of the copy baseline")
            })?;
            Ok(v)
        };
        let (mut src, mut dst) = (alloc("source")?, alloc("destination")?);
        src.extend((0..bytes).map(|i| (i * 31 % 251) as u8));
        dst.resize(bytes, 0);
        Ok(Copy { src, dst })
    }

    pub fn run(&mut self) {
        let block = (self.src.len() / (4 * rayon::current_num_threads())).clamp(1 << 16, 1 << 22);
        self.dst
            .par_chunks_mut(block)
            .zip(self.src.par_chunks(block))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&self.dst);
    }
}

/// Forward and backward (dx + dw) of fusion on the CPU, outputs preallocated (as for the copy).
pub fn fusion_cpu(shape: [usize; 5], dtype: DType, runs: usize) -> Result<Vec<Row>, String> {
    let dims = FusionDims::from_input_shape(&shape).map_err(|e| e.to_string())?;
    let mut rng = a3d::rng::SplitMix64::new(0x5eed);
    let x = crate::bench_context::random_tensor(&dims.input_shape(), dtype, &mut rng)?;
    let dy = crate::bench_context::random_tensor(&dims.input_shape(), dtype, &mut rng)?;
    let w = fusion::init_weights(shape[2], shape[1], 7)
        .map_err(|e| e.to_string())?
        .to_dtype(dtype);
    let mut y = Tensor::zeros(&shape, dtype).map_err(|e| e.to_string())?;
    let mut dx = Tensor::zeros(&shape, dtype).map_err(|e| e.to_string())?;
    let mut dw = Tensor::zeros(w.shape(), dtype).map_err(|e| e.to_string())?;

    let x_bytes = x.size_in_bytes();
    let mut copy = Copy::try_new(x_bytes)?;
    // Arguments were built valid above; check once so the timed calls cannot fail.
    fusion::forward_into(&x, &w, &mut y).map_err(|e| e.to_string())?;
    fusion::backward_into(&x, &w, &dy, Some(&mut dx), Some(&mut dw)).map_err(|e| e.to_string())?;
    let mut run_copy = || copy.run();
    let mut run_forward = || {
        let _ = fusion::forward_into(&x, &w, &mut y);
    };
    let mut run_backward = || {
        let _ = fusion::backward_into(&x, &w, &dy, Some(&mut dx), Some(&mut dw));
    };
    let medians = interleaved_medians_ms(
        runs,
        &mut [&mut run_copy, &mut run_forward, &mut run_backward],
    );
    let (copy, fwd, bwd) = (medians[0], medians[1], medians[2]);
    let rows = RowSet::cpu("fusion", dtype, &shape, copy);
    Ok(vec![
        rows.row("forward", fwd, 2 * x_bytes),
        rows.row("backward", bwd, 3 * x_bytes),
    ])
}

/// Median of `runs` GPU timings (events around each call) after two warm-up calls.
#[cfg(feature = "cuda")]
pub fn median_gpu_ms(
    dev: &a3d::cuda::CudaDevice,
    runs: usize,
    mut f: impl FnMut() -> a3d::Result<()>,
) -> Result<f64, String> {
    for _ in 0..2 {
        f().map_err(|e| e.to_string())?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        t.push(dev.time_ms(&mut f).map_err(|e| e.to_string())? as f64);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Forward, grad-input, grad-weight and backward (both) on a GPU, next to a device-to-device
/// copy of x's bytes timed the same way in the same run.
#[cfg(feature = "cuda")]
pub fn fusion_cuda(
    dev: &a3d::cuda::CudaDevice,
    shape: [usize; 5],
    dtype: DType,
    runs: usize,
) -> Result<Vec<Row>, String> {
    use a3d::cuda::CudaTensor;
    use a3d::fusion::cuda as fc;
    let s = |e: a3d::Error| e.to_string();
    let dims = FusionDims::from_input_shape(&shape).map_err(s)?;
    let mut rng = a3d::rng::SplitMix64::new(0x5eed);
    let host = |rng: &mut a3d::rng::SplitMix64| {
        Tensor::from_f32(&rng.vec_f32(dims.len(), -1.0, 1.0), &shape, dtype)
    };
    let x = CudaTensor::upload(&host(&mut rng).map_err(s)?, dev).map_err(s)?;
    let dy = CudaTensor::upload(&host(&mut rng).map_err(s)?, dev).map_err(s)?;
    let w_host = fusion::init_weights(shape[2], shape[1], 7)
        .map_err(s)?
        .to_dtype(dtype);
    let w = CudaTensor::upload(&w_host, dev).map_err(s)?;
    let mut y = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let mut dx = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;
    let mut dw = CudaTensor::zeros(w_host.shape(), dtype, dev).map_err(s)?;
    let mut copy_dst = CudaTensor::zeros(&shape, dtype, dev).map_err(s)?;

    let x_bytes = dims.len() * dtype.size_in_bytes();
    let copy = median_gpu_ms(dev, runs, || copy_dst.copy_from(&x))?;
    let fwd = median_gpu_ms(dev, runs, || fc::forward_into(&x, &w, &mut y))?;
    let gin = median_gpu_ms(dev, runs, || {
        fc::backward_into(&x, &w, &dy, Some(&mut dx), None)
    })?;
    let gw = median_gpu_ms(dev, runs, || {
        fc::backward_into(&x, &w, &dy, None, Some(&mut dw))
    })?;
    let both = median_gpu_ms(dev, runs, || {
        fc::backward_into(&x, &w, &dy, Some(&mut dx), Some(&mut dw))
    })?;
    let rows = RowSet::cuda("fusion", dev, dtype, &shape, copy);
    Ok(vec![
        rows.row("forward", fwd, 2 * x_bytes),
        rows.row("grad_input", gin, 2 * x_bytes),
        rows.row("grad_weight", gw, 2 * x_bytes),
        rows.row("backward", both, 4 * x_bytes),
    ])
}
