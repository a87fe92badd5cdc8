//! `a3d`: benchmarks and self-tests of the A3D operators.
//!
//! ```text
//! a3d bench fusion --device cpu --dtype f32 --shape 1,128,7,128,128 [--json]
//! a3d selftest [--device cpu]
//! ```

mod bench;

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

use a3d::selftest::{self, FusionBackend};
use a3d::DType;
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "a3d",
    version,
    about = "A3D depth fusion: benchmarks and self-tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time an operator against a copy of the same bytes measured in the same run.
    Bench(BenchArgs),
    /// Check every available backend against a float64 reference on fresh random inputs.
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
    /// Input shape `B,C,D,H,W` (repeatable); default: the standard set.
    #[arg(long, value_parser = parse_shape)]
    shape: Vec<[usize; 5]>,
    /// Timed repetitions per pass (the median is reported).
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Threads (default: rayon's choice, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON object per line and pass instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchOp {
    /// A3D depth fusion: forward and backward (dx + dw).
    Fusion,
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

fn parse_shape(s: &str) -> Result<[usize; 5], String> {
    let dims: Vec<usize> = s
        .split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}")))
        .collect::<Result<_, _>>()?;
    dims.try_into()
        .map_err(|d: Vec<usize>| format!("shape needs 5 dimensions B,C,D,H,W, got {}", d.len()))
}

fn parse_dtypes(s: &str) -> Result<Vec<DType>, String> {
    if s == "all" {
        return Ok(DType::ALL.to_vec());
    }
    s.split(',').map(|v| v.trim().parse()).collect()
}

fn main() -> ExitCode {
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
    }
}

fn run_bench(args: &BenchArgs) -> Result<(), String> {
    let dtypes = parse_dtypes(&args.dtype)?;
    let shapes = if args.shape.is_empty() {
        bench::DEFAULT_SHAPES.to_vec()
    } else {
        args.shape.clone()
    };
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
    let BenchOp::Fusion = args.op;
    let device = match args.device {
        DeviceArg::Cpu | DeviceArg::All => BenchDevice::Cpu,
        DeviceArg::Emulated => return Err("the emulation is for correctness, not timing".into()),
        DeviceArg::Cuda => cuda_bench_device()?,
    };
    if !args.json {
        bench::print_header(pool.current_num_threads());
    }
    for shape in &shapes {
        for &dtype in &dtypes {
            let rows = match &device {
                BenchDevice::Cpu => pool.install(|| bench::fusion_cpu(*shape, dtype, args.runs))?,
                #[cfg(feature = "cuda")]
                BenchDevice::Cuda(dev) => bench::fusion_cuda(dev, *shape, dtype, args.runs)?,
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
fn backends(device: DeviceArg) -> Vec<Result<Box<dyn FusionBackend>, String>> {
    let mut out: Vec<Result<Box<dyn FusionBackend>, String>> = Vec::new();
    let all = device == DeviceArg::All;
    if all || device == DeviceArg::Cpu {
        out.push(Ok(Box::new(selftest::Cpu)));
    }
    if all || device == DeviceArg::Emulated {
        #[cfg(feature = "emulation")]
        for b in [
            selftest::Emulated::default(),
            selftest::Emulated {
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
fn cuda_backends() -> Vec<Result<Box<dyn FusionBackend>, String>> {
    let count = match a3d::cuda::device_count() {
        Ok(0) => return vec![Err("cuda: unavailable (no CUDA device)".into())],
        Ok(n) => n,
        Err(e) => return vec![Err(format!("cuda: unavailable ({e})"))],
    };
    (0..count)
        .map(|i| {
            a3d::cuda::CudaDevice::open(i)
                .map(|device| Box::new(selftest::Cuda { device }) as Box<dyn FusionBackend>)
                .map_err(|e| format!("cuda:{i}: unavailable ({e})"))
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda_backends() -> Vec<Result<Box<dyn FusionBackend>, String>> {
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
        for check in selftest::run_fusion(backend.as_ref(), seed) {
            say!("{check}");
            if check.passed() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    say!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
