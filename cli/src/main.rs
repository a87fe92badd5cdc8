//! `a3d`: benchmarks and self-tests of the A3D operators.
//!
//! ```text
//! a3d bench fusion --device cpu --dtype f32 --shape 1,128,7,128,128 [--json]
//! a3d bench a3dconv --shape 1,128,3,64,64 --out-channels 32 --kernel 3 [--stride S]
//!     [--padding P] [--dilation L] [--no-fusion] [--no-bias] [--dtype f32] [--json]
//! a3d selftest [--device cpu]
//! ```

mod alloc;
mod bench;
mod bench_a3dconv;
mod bench_context;
mod bench_dense_layer;
mod bench_detection;
mod bench_detector;
mod bench_train;
mod demo;
mod detect;
mod device;
mod eval;
mod files;
mod inspect;
mod inspect_dicom;
mod overlay;
mod plot;
mod train;

/// `println!` that ends the process quietly when stdout is closed (e.g. piped into `head`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}
pub(crate) use say;

use a3d::backend::OpBackend;
use a3d::selftest;
use a3d::DType;
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "a3d",
    version,
    about = "A3D 3D context fusion for CT: demo, lesion detection, training, evaluation, benchmarks and self-tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Synthesise CT scans whose lesions need 3D context, train the tiny A3D detector on them,
    /// and evaluate it on the held-out scans: FROC table, overlays and plots, in minutes on a CPU
    /// (`--compare`: every context operator, one table).
    Demo(demo::DemoArgs),
    /// Detect lesions with the A3D detector in a DeepLesion key slice, a NIfTI volume or a
    /// DICOM series; boxes in original pixels as JSON.
    Detect(detect::DetectArgs),
    /// DeepLesion FROC of a detections file (`a3d detect` JSON or CSV) against DL_info.csv:
    /// sensitivity at 0.5-16 FP per image for all lesions, by slice interval and by type.
    Eval(eval::EvalArgs),
    /// Train the detector on a DeepLesion-format folder with the reference recipe (its
    /// augmentation, schedule and optimiser): checkpoints, validation FROC and a log per epoch;
    /// `--resume` continues a run exactly.
    Train(train::TrainArgs),
    /// Write a synthetic DeepLesion-format dataset whose lesions need 3D context (compact blobs
    /// among vessel-like tubes of the same in-plane look), seeded and reproducible.
    Synth {
        /// The dataset root to create (`Images_png/`, `DL_info.csv`).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Scans (one patient each; split 70 / 15 / 15 %).
        #[arg(long, default_value_t = 60)]
        scans: usize,
        /// Pixels per side.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Distractor tubes per scan, `MIN:MAX` (`0:0` gives a control set that a 2D model can
        /// solve).
        #[arg(long, default_value = "3:6")]
        distractors: String,
    },
    /// Time an operator against a copy of the same bytes measured in the same run.
    Bench(BenchArgs),
    /// What a3d reads from a CT file: a DeepLesion slice PNG (size, HU range, and in a
    /// DeepLesion folder the lesions, spacing and the network input's neighbour slices) or a
    /// NIfTI volume (orientation, spacing, scaling, HU range).
    Inspect {
        /// A 16-bit DeepLesion slice (`Images_png/<series>/<n>.png`), a `.nii` / `.nii.gz`, or a
        /// DICOM folder (searched recursively) or file.
        path: std::path::PathBuf,
        /// The SeriesInstanceUID to read from a DICOM folder holding several CT series.
        #[arg(long)]
        series: Option<String>,
        /// Slices of the network input (odd).
        #[arg(long, default_value_t = 3)]
        depth: usize,
        /// Write a windowed preview of the input's slices side by side to this PNG.
        #[arg(long)]
        png: Option<std::path::PathBuf>,
    },
    /// Check every available backend against a float64 reference on fresh random inputs
    /// (fusion on every backend; A3DConv on the cpu, its only backend).
    Selftest {
        /// Backend to check (`all`: every one available in this build and machine).
        #[arg(long, default_value = "all")]
        device: DeviceArg,
        /// Seed of the random inputs (default: from the clock, so every run sees fresh data).
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Operator to time.
    #[arg(value_enum, default_value = "fusion")]
    op: BenchOp,
    /// Where to run.
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
    /// Storage dtype(s): f32, f16, bf16, a comma list, or `all`.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Input shape (repeatable): `B,C,D,H,W` for the context ops, `N,C,H,W` (the features) for
    /// roi-align, the box count for nms; default: the standard set.
    #[arg(long, value_parser = parse_shape)]
    shape: Vec<Vec<usize>>,
    /// RoIs per run of `a3d bench roi-align`.
    #[arg(long, default_value_t = 300)]
    rois: usize,
    /// The detector preset of `a3d bench train-step` (default: tiny at 128 x 128 and reference
    /// at 512 x 512; with `--shape`, both at that size).
    #[arg(long, value_parser = ["tiny", "reference"])]
    preset: Option<String>,
    /// Timed repetitions per pass (the median is reported).
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Threads (default: rayon's choice, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object per line and pass instead of a table.
    #[arg(long)]
    json: bool,
    /// Cap the CPU kernels' instruction set (to time the narrower tiers on this machine).
    #[arg(long, value_enum)]
    isa: Option<IsaArg>,
    #[command(flatten)]
    conv: ConvArgs,
}

/// The layer of `a3d bench a3dconv`. Without `--shape`, `--out-channels` and `--kernel` the
/// default set runs (see `bench_a3dconv::DEFAULT_CASES`); the other options apply to it too.
#[derive(clap::Args)]
#[command(next_help_heading = "A3DConv options (a3dconv only)")]
struct ConvArgs {
    /// Output channels O (give with --shape and --kernel).
    #[arg(long)]
    out_channels: Option<usize>,
    /// Square kernel size K of the per-slice convolution (give with --shape and --out-channels).
    #[arg(long)]
    kernel: Option<usize>,
    /// Stride of the convolution [default: 1].
    #[arg(long)]
    stride: Option<usize>,
    /// Zero padding on each side [default: K/2].
    #[arg(long)]
    padding: Option<usize>,
    /// Dilation of the convolution [default: 1].
    #[arg(long)]
    dilation: Option<usize>,
    /// No fusion weights: a plain per-slice convolution.
    #[arg(long)]
    no_fusion: bool,
    /// A bias [O] on the convolution (the default, as PyTorch's Conv3d).
    #[arg(long, overrides_with = "no_bias")]
    bias: bool,
    /// No bias.
    #[arg(long, overrides_with = "bias")]
    no_bias: bool,
}

impl ConvArgs {
    /// The first option given, if any (they only apply to `a3dconv`).
    fn any_given(&self) -> Option<&'static str> {
        [
            (self.out_channels.is_some(), "--out-channels"),
            (self.kernel.is_some(), "--kernel"),
            (self.stride.is_some(), "--stride"),
            (self.padding.is_some(), "--padding"),
            (self.dilation.is_some(), "--dilation"),
            (self.no_fusion, "--no-fusion"),
            (self.bias, "--bias"),
            (self.no_bias, "--no-bias"),
        ]
        .into_iter()
        .find_map(|(given, name)| given.then_some(name))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum IsaArg {
    Baseline,
    Avx2,
    Avx512,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchOp {
    /// A3D depth fusion: forward and backward (dx + dw).
    Fusion,
    /// A3DConv (fusion + per-slice KxK conv), CPU: forward and backward (all four gradients).
    #[value(name = "a3dconv")]
    A3dconv,
    /// TSM shift (fold_div 8): forward and backward.
    Tsm,
    /// AlignShift (fold_div 8, 5 mm slices): forward and backward.
    #[value(name = "alignshift")]
    AlignShift,
    /// Symmetric depth convolution (K = 3): forward and backward (dx + dv).
    #[value(name = "depthconv")]
    DepthConv,
    /// RoIAlign 7x7, sampling 2, scale 1/4 (the reference box head), `--rois` proposal-like
    /// boxes: forward and backward (the features' gradient).
    #[value(name = "roi-align")]
    RoiAlign,
    /// NMS at IoU 0.7 of clustered proposal-like boxes (the reference RPN's setting).
    Nms,
    /// One dense layer in training mode (BN-ReLU-A3DConv 1x1 F->128, BN-ReLU-A3DConv 3x3
    /// 128->32), BN-ReLU fused into the convolutions against run one after the other.
    #[value(name = "dense-layer")]
    DenseLayer,
    /// The reference detector (random weights) on one input, `--shape D,H,W`: backbone and
    /// merge, then the whole detection, with the backbone's FLOP rate against a measured peak.
    Detector,
    /// One training iteration of the detector (losses, backward, clipping, SGD): the tiny
    /// preset at 128 x 128 and the reference preset at 512 x 512 (`--shape D,H,W`: both presets
    /// at that size; `--preset` keeps one).
    #[value(name = "train-step")]
    TrainStep,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// Every backend available here.
    All,
    /// The multi-threaded CPU path.
    Cpu,
    /// The CUDA kernels' source run on the CPU (build with `--features emulation`).
    Emulated,
    /// NVIDIA GPUs (build with `--features cuda`).
    Cuda,
}

fn parse_shape(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}")))
        .collect()
}

/// `--shape` values of an op taking `N` dimensions (`layout` names them).
fn shapes_of<const N: usize>(
    given: &[Vec<usize>],
    layout: &str,
) -> Result<Vec<[usize; N]>, String> {
    given
        .iter()
        .map(|d| {
            <[usize; N]>::try_from(d.as_slice())
                .map_err(|_| format!("--shape {d:?}: this op takes {N} dimensions {layout}"))
        })
        .collect()
}

fn parse_dtypes(s: &str) -> Result<Vec<DType>, String> {
    if s == "all" {
        return Ok(DType::ALL.to_vec());
    }
    s.split(',').map(|v| v.trim().parse()).collect()
}

/// Keeps freed memory in glibc's heap for reuse. The detector allocates and frees tensors of
/// tens to hundreds of megabytes per layer. By default glibc maps every block above its mmap
/// threshold (at most 32 MiB) fresh from the kernel and unmaps it when freed, and a thread other
/// than the main one allocates from an arena of its own, whose heaps hold at most 64 MiB, so its
/// large blocks are mapped fresh whatever the threshold. The kernel zeroes each fresh page:
/// `clear_page` was 32-37 % of a reference detection at D = 7 on an Intel Xeon VM
/// (bench/RESULTS.md). So: one arena for every thread (small blocks still come from each
/// thread's cache first), no mapped blocks, and up to 1 GiB free at the top of the heap kept.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes the allocator's tuning parameters; it is called first thing in
    // main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

#[global_allocator]
static ALLOCATOR: alloc::HugePages = alloc::HugePages;

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => match run_bench(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("a3d bench: {e}");
                ExitCode::from(2)
            }
        },
        Command::Selftest { device, seed } => run_selftest(device, seed),
        Command::Synth {
            out,
            scans,
            size,
            seed,
            distractors,
        } => {
            let Some(distractors) = distractors
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .filter(|(a, b): &(usize, usize)| a <= b && *b <= 64)
            else {
                eprintln!("a3d synth: --distractors {distractors}: MIN:MAX, at most 64");
                return ExitCode::from(2);
            };
            let config = a3d_ct::synth::SynthConfig {
                seed,
                scans,
                size,
                distractors,
                ..a3d_ct::synth::SynthConfig::default()
            };
            match a3d_ct::synth::synthesize(&out, &config) {
                Ok(s) => {
                    say!(
                        "wrote {}: {} scans (train/val/test {:?}), {} lesions {:?}, {} slices",
                        out.display(),
                        s.scans.iter().sum::<usize>(),
                        s.scans,
                        s.lesions.iter().sum::<usize>(),
                        s.lesions,
                        s.slices
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("a3d synth: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo(args) => match demo::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("a3d demo: {e}");
                ExitCode::from(2)
            }
        },
        Command::Train(args) => match train::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("a3d train: {e}");
                ExitCode::from(2)
            }
        },
        Command::Eval(args) => match eval::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("a3d eval: {e}");
                ExitCode::from(2)
            }
        },
        Command::Detect(args) => match detect::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("a3d detect: {e}");
                ExitCode::from(2)
            }
        },
        Command::Inspect {
            path,
            series,
            depth,
            png,
        } => {
            if depth % 2 == 0 {
                eprintln!("a3d inspect: --depth {depth}: the input needs an odd number of slices");
                return ExitCode::from(2);
            }
            match inspect::run(&path, series.as_deref(), depth, png.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("a3d inspect: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn run_bench(args: &BenchArgs) -> Result<(), String> {
    let dtypes = parse_dtypes(&args.dtype)?;
    if args.preset.is_some() && !matches!(args.op, BenchOp::TrainStep) {
        return Err("--preset applies to `a3d bench train-step` only".into());
    }
    if let Some(isa) = args.isa {
        let isa = match isa {
            IsaArg::Baseline => a3d::cpu::Isa::Baseline,
            IsaArg::Avx2 => a3d::cpu::Isa::Avx2,
            IsaArg::Avx512 => a3d::cpu::Isa::Avx512,
        };
        if isa > a3d::cpu::detected_isa() {
            return Err(format!(
                "--isa {}: this CPU supports up to {}",
                isa.as_str(),
                a3d::cpu::detected_isa().as_str()
            ));
        }
        a3d::cpu::set_isa_limit(isa);
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let pool = {
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(n) = args.threads {
            b = b.num_threads(n);
        }
        b.build().map_err(|e| e.to_string())?
    };
    match args.op {
        BenchOp::Fusion => {
            if let Some(flag) = args.conv.any_given() {
                return Err(format!("{flag} applies to `a3d bench a3dconv` only"));
            }
            run_fusion_bench(args, &dtypes, &pool)
        }
        BenchOp::A3dconv => run_a3dconv_bench(args, &dtypes, &pool),
        BenchOp::Tsm | BenchOp::AlignShift | BenchOp::DepthConv => {
            if let Some(flag) = args.conv.any_given() {
                return Err(format!("{flag} applies to `a3d bench a3dconv` only"));
            }
            run_fusion_bench(args, &dtypes, &pool)
        }
        BenchOp::RoiAlign | BenchOp::Nms => {
            if let Some(flag) = args.conv.any_given() {
                return Err(format!("{flag} applies to `a3d bench a3dconv` only"));
            }
            run_detection_bench(args, &dtypes, &pool)
        }
        BenchOp::Detector => {
            if !matches!(args.device, DeviceArg::Cpu | DeviceArg::All) || dtypes != [DType::F32] {
                return Err(
                    "detector runs on the CPU in f32 (its CUDA path is not built yet)".into(),
                );
            }
            let shapes = if args.shape.is_empty() {
                bench_detector::DEFAULT_SHAPES.to_vec()
            } else {
                shapes_of::<3>(&args.shape, "D,H,W")?
            };
            let threads = pool.current_num_threads();
            pool.install(|| bench_detector::run(&shapes, args.runs, args.json, threads))
        }
        BenchOp::TrainStep => {
            if !matches!(args.device, DeviceArg::Cpu | DeviceArg::All) || dtypes != [DType::F32] {
                return Err(
                    "train-step runs on the CPU in f32 (its CUDA path is not built yet)".into(),
                );
            }
            let mut cases: Vec<_> = if args.shape.is_empty() {
                bench_train::DEFAULT_CASES.to_vec()
            } else {
                shapes_of::<3>(&args.shape, "D,H,W")?
                    .into_iter()
                    .flat_map(|s| {
                        [
                            (a3d_detector::Preset::Tiny, s),
                            (a3d_detector::Preset::Reference, s),
                        ]
                    })
                    .collect()
            };
            if let Some(p) = args
                .preset
                .as_deref()
                .and_then(a3d_detector::Preset::from_name)
            {
                cases.retain(|c| c.0 == p);
            }
            let threads = pool.current_num_threads();
            pool.install(|| bench_train::run(&cases, args.runs, args.json, threads))
        }
        BenchOp::DenseLayer => {
            if let Some(flag) = args.conv.any_given() {
                return Err(format!("{flag} applies to `a3d bench a3dconv` only"));
            }
            if !matches!(args.device, DeviceArg::Cpu | DeviceArg::All) {
                return Err("dense-layer runs on the CPU (its GPU path is not built yet)".into());
            }
            if dtypes != [DType::F32] {
                return Err("dense-layer times f32 (the layer's PyTorch peer runs f32)".into());
            }
            let shapes = if args.shape.is_empty() {
                bench_dense_layer::DEFAULT_SHAPES.to_vec()
            } else {
                shapes_of::<5>(&args.shape, "B,F,D,H,W")?
            };
            if !args.json {
                bench::print_header(pool.current_num_threads());
            }
            for shape in shapes {
                for row in pool.install(|| bench_dense_layer::dense_layer_cpu(shape, args.runs))? {
                    if args.json {
                        say!("{}", row.to_json());
                    } else {
                        say!("{}", row.to_table_line());
                    }
                }
            }
            Ok(())
        }
    }
}

fn run_fusion_bench(
    args: &BenchArgs,
    dtypes: &[DType],
    pool: &rayon::ThreadPool,
) -> Result<(), String> {
    let shapes = if args.shape.is_empty() {
        bench::DEFAULT_SHAPES.to_vec()
    } else {
        shapes_of::<5>(&args.shape, "B,C,D,H,W")?
    };
    let device = match args.device {
        DeviceArg::Cpu | DeviceArg::All => BenchDevice::Cpu,
        DeviceArg::Emulated => return Err("the emulation is for correctness, not timing".into()),
        DeviceArg::Cuda => cuda_bench_device()?,
    };
    if !args.json {
        bench::print_header(pool.current_num_threads());
    }
    for shape in &shapes {
        for &dtype in dtypes {
            let context = match args.op {
                BenchOp::Tsm => Some(bench_context::ContextOp::Tsm),
                BenchOp::AlignShift => Some(bench_context::ContextOp::AlignShift),
                BenchOp::DepthConv => Some(bench_context::ContextOp::DepthConv),
                BenchOp::Fusion
                | BenchOp::A3dconv
                | BenchOp::RoiAlign
                | BenchOp::Nms
                | BenchOp::DenseLayer
                | BenchOp::Detector
                | BenchOp::TrainStep => None,
            };
            let rows = match (&device, context) {
                (BenchDevice::Cpu, Some(op)) => {
                    pool.install(|| bench_context::context_cpu(op, *shape, dtype, args.runs))?
                }
                (BenchDevice::Cpu, None) => {
                    pool.install(|| bench::fusion_cpu(*shape, dtype, args.runs))?
                }
                #[cfg(feature = "cuda")]
                (BenchDevice::Cuda(dev), Some(op)) => {
                    bench_context::context_cuda(dev, op, *shape, dtype, args.runs)?
                }
                #[cfg(feature = "cuda")]
                (BenchDevice::Cuda(dev), None) => {
                    bench::fusion_cuda(dev, *shape, dtype, args.runs)?
                }
            };
            for row in rows {
                if args.json {
                    say!("{}", row.to_json());
                } else {
                    say!("{}", row.to_table_line());
                }
            }
        }
    }
    Ok(())
}

fn run_detection_bench(
    args: &BenchArgs,
    dtypes: &[DType],
    pool: &rayon::ThreadPool,
) -> Result<(), String> {
    let device = match args.device {
        DeviceArg::Cpu | DeviceArg::All => BenchDevice::Cpu,
        DeviceArg::Emulated => return Err("the emulation is for correctness, not timing".into()),
        DeviceArg::Cuda => cuda_bench_device()?,
    };
    if !args.json {
        bench::print_header(pool.current_num_threads());
    }
    let mut rows = Vec::new();
    if matches!(args.op, BenchOp::Nms) {
        let counts = if args.shape.is_empty() {
            vec![[bench_detection::DEFAULT_NMS_BOXES]]
        } else {
            shapes_of::<1>(&args.shape, "(the box count)")?
        };
        for [n] in counts {
            rows.extend(match &device {
                BenchDevice::Cpu => pool.install(|| bench_detection::nms_cpu(n, args.runs))?,
                #[cfg(feature = "cuda")]
                BenchDevice::Cuda(dev) => bench_detection::nms_cuda(dev, n, args.runs)?,
            });
        }
    } else {
        let shapes = if args.shape.is_empty() {
            vec![bench_detection::DEFAULT_ROI_FEATURES]
        } else {
            shapes_of::<4>(&args.shape, "N,C,H,W")?
        };
        for shape in shapes {
            for &dtype in dtypes {
                rows.extend(match &device {
                    BenchDevice::Cpu => pool.install(|| {
                        bench_detection::roi_align_cpu(shape, args.rois, dtype, args.runs)
                    })?,
                    #[cfg(feature = "cuda")]
                    BenchDevice::Cuda(dev) => {
                        bench_detection::roi_align_cuda(dev, shape, args.rois, dtype, args.runs)?
                    }
                });
            }
        }
    }
    for row in rows {
        if args.json {
            say!("{}", row.to_json());
        } else {
            say!("{}", row.to_table_line());
        }
    }
    Ok(())
}

fn run_a3dconv_bench(
    args: &BenchArgs,
    dtypes: &[DType],
    pool: &rayon::ThreadPool,
) -> Result<(), String> {
    match args.device {
        DeviceArg::Cpu | DeviceArg::All => {}
        DeviceArg::Emulated => return Err("the emulation is for correctness, not timing".into()),
        DeviceArg::Cuda => {
            return Err(
                "a3dconv has no CUDA kernel in a3d (its GPU path is candle's conv2d); \
                 use --device cpu"
                    .into(),
            )
        }
    }
    let c = &args.conv;
    let cases: Vec<([usize; 5], usize, usize)> = match (c.out_channels, c.kernel) {
        (None, None) if args.shape.is_empty() => bench_a3dconv::DEFAULT_CASES.to_vec(),
        (Some(o), Some(k)) if !args.shape.is_empty() => shapes_of::<5>(&args.shape, "B,C,D,H,W")?
            .into_iter()
            .map(|shape| (shape, o, k))
            .collect(),
        _ => {
            return Err(
                "give --shape, --out-channels and --kernel together, or none of them for the \
                 default set"
                    .into(),
            )
        }
    };
    if !args.json {
        bench_a3dconv::print_header(pool.current_num_threads());
    }
    for (shape, out_channels, kernel) in cases {
        let layer = bench_a3dconv::Layer {
            out_channels,
            kernel,
            stride: c.stride.unwrap_or(1),
            padding: c.padding.unwrap_or(kernel / 2),
            dilation: c.dilation.unwrap_or(1),
            fusion: !c.no_fusion,
            bias: !c.no_bias,
        };
        for &dtype in dtypes {
            let rows =
                pool.install(|| bench_a3dconv::a3dconv_cpu(shape, layer, dtype, args.runs))?;
            for row in rows {
                if args.json {
                    say!("{}", row.to_json());
                } else {
                    say!("{}", bench_a3dconv::table_line(&row));
                }
            }
        }
    }
    Ok(())
}

enum BenchDevice {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(a3d::cuda::CudaDevice),
}

#[cfg(feature = "cuda")]
fn cuda_bench_device() -> Result<BenchDevice, String> {
    a3d::cuda::CudaDevice::open(0)
        .map(BenchDevice::Cuda)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_bench_device() -> Result<BenchDevice, String> {
    Err("this a3d was built without CUDA; rebuild with `--features cuda`".into())
}

/// The backends `device` names; a requested backend that is missing is an `Err` line.
fn backends(device: DeviceArg) -> Vec<Result<Box<dyn OpBackend>, String>> {
    let mut out: Vec<Result<Box<dyn OpBackend>, String>> = Vec::new();
    let all = device == DeviceArg::All;
    if all || device == DeviceArg::Cpu {
        out.push(Ok(Box::new(a3d::backend::Cpu)));
    }
    if all || device == DeviceArg::Emulated {
        #[cfg(feature = "emulation")]
        for b in [
            a3d::backend::Emulated::default(),
            a3d::backend::Emulated {
                sm_count: 5,
                misaligned: true,
                reverse_threads: true,
                max_grid_y: 2,
            },
        ] {
            out.push(Ok(Box::new(b)));
        }
        #[cfg(not(feature = "emulation"))]
        out.push(Err(
            "emulated: not built (rebuild with `--features emulation`)".into(),
        ));
    }
    if all || device == DeviceArg::Cuda {
        out.extend(cuda_backends());
    }
    out
}

#[cfg(feature = "cuda")]
fn cuda_backends() -> Vec<Result<Box<dyn OpBackend>, String>> {
    let count = match a3d::cuda::device_count() {
        Ok(0) => return vec![Err("cuda: unavailable (no CUDA device)".into())],
        Ok(n) => n,
        Err(e) => return vec![Err(format!("cuda: unavailable ({e})"))],
    };
    (0..count)
        .map(|i| {
            a3d::cuda::CudaDevice::open(i)
                .map(|device| Box::new(a3d::backend::Cuda { device }) as Box<dyn OpBackend>)
                .map_err(|e| format!("cuda:{i}: unavailable ({e})"))
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda_backends() -> Vec<Result<Box<dyn OpBackend>, String>> {
    vec![Err(
        "cuda: unavailable (not built; rebuild with `--features cuda`)".into(),
    )]
}

fn run_selftest(device: DeviceArg, seed: Option<u64>) -> ExitCode {
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    say!("a3d selftest (seed {seed})");
    let (mut passed, mut failed) = (0usize, 0usize);
    for backend in backends(device) {
        let backend = match backend {
            Ok(b) => b,
            Err(why) => {
                say!("skip {why}");
                // Missing backends only fail the run when the user asked for that one.
                if device != DeviceArg::All {
                    failed += 1;
                }
                continue;
            }
        };
        let checks = selftest::run_fusion(backend.as_ref(), seed)
            .into_iter()
            .chain(selftest::run_shift(backend.as_ref(), seed))
            .chain(selftest::run_depthconv(backend.as_ref(), seed))
            .chain(selftest::run_boxes(backend.as_ref(), seed))
            .chain(selftest::run_roi_align(backend.as_ref(), seed))
            .chain(selftest::run_batchnorm(backend.as_ref(), seed));
        for check in checks {
            say!("{check}");
            if check.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    if matches!(device, DeviceArg::All | DeviceArg::Cpu) {
        for check in selftest::run_a3dconv(seed) {
            say!("{check}");
            if check.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    } else {
        say!("note a3dconv is checked with --device cpu only (a3d has no GPU kernel for it)");
    }
    say!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
