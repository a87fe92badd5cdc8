//! CUDA side of the build script: locating nvcc, compiling `kernels/fusion.cu` into a fatbin,
//! and turning ptxas' resource report into a per-kernel, per-architecture table.
//!
//! Included by the crate's `build.rs` as
//!
//! ```ignore
//! #[path = "build/cuda.rs"]
//! mod cuda;
//! ```
//!
//! std only. Cargo directives printed from here:
//! - [`find_nvcc`] prints `cargo:rerun-if-env-changed=` for `NVCC`, `CUDA_HOME`, `CUDA_PATH`.
//! - [`compile_fatbin`] prints `cargo:rerun-if-changed=` for the `.cu` source and for every
//!   header (`*.h`, `*.cuh`, `*.hpp`) in the source's directory and in the include directories.
//!
//! Typical use from `build.rs`:
//!
//! ```ignore
//! let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
//! let out = PathBuf::from(env::var("OUT_DIR").unwrap());
//! let nvcc = cuda::find_nvcc(&root)?;
//! cuda::compile_fatbin(&nvcc, &root.join("kernels/fusion.cu"), &[root.join("kernels")],
//!                      &out.join("fusion.fatbin"), &out.join("fusion-ptxas.txt"))?;
//! ```
#![allow(dead_code)]

use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Architectures that get machine code. `(virtual arch, real archs)`: every kernel is compiled
/// to PTX once per virtual architecture and assembled by ptxas for each real one.
/// sm_75 gets its own front-end pass (`__CUDA_ARCH__ == 750` leaves out the bf16 kernels); the
/// sm_80+ machine code is assembled from one `compute_80` PTX (the kernels use nothing newer,
/// and one front-end pass instead of four keeps the build well under two minutes on 2 cores).
pub const GENCODE: &[(&str, &[&str])] = &[
    ("compute_75", &["sm_75"]),
    ("compute_80", &["sm_80", "sm_86", "sm_89", "sm_90"]),
];

/// The PTX embedded in the fatbin (JIT-compiled by the driver on GPUs newer than sm_90).
pub const PTX_ARCH: &str = "compute_75";

/// Where `scripts/install-cuda-toolchain.sh` puts nvcc, relative to the repository root.
pub const LOCAL_TOOLCHAIN_NVCC: &str = ".cuda-toolchain/cu13/bin/nvcc";

/// Finds nvcc: `$NVCC`, then `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, then `nvcc` on
/// `PATH`, then `<repo_root>/.cuda-toolchain/cu13/bin/nvcc` (installed by
/// `scripts/install-cuda-toolchain.sh`). An `NVCC` that is set but does not name an existing
/// file is an error (it was asked for explicitly); a `CUDA_HOME`/`CUDA_PATH` without nvcc is
/// skipped and mentioned in the error if nothing is found.
pub fn find_nvcc(repo_root: &Path) -> Result<PathBuf, String> {
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    find_nvcc_with(repo_root, |name| env::var_os(name))
}

fn exe_name(stem: &str) -> String {
    format!("{stem}{}", env::consts::EXE_SUFFIX)
}

fn is_executable_file(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// [`find_nvcc`] with the environment supplied by `get` (testable).
fn find_nvcc_with(
    repo_root: &Path,
    get: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, String> {
    let nvcc = exe_name("nvcc");
    let mut tried = Vec::new();

    if let Some(explicit) = get("NVCC").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&explicit);
        if is_executable_file(&path) {
            return Ok(path);
        }
        // A bare name ("nvcc") is looked up on PATH.
        if path.components().count() == 1 {
            if let Some(found) = search_path(get("PATH"), &path.to_string_lossy()) {
                return Ok(found);
            }
        }
        return Err(format!(
            "NVCC is set to `{}`, which is not an executable file. Unset it, or point it at nvcc \
             (scripts/install-cuda-toolchain.sh installs the pinned CUDA 13.0 nvcc and prints its path).",
            path.display()
        ));
    }

    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = get(var).filter(|v| !v.is_empty()) {
            let candidate = PathBuf::from(home).join("bin").join(&nvcc);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
            tried.push(format!("{var}/bin: {} (missing)", candidate.display()));
        }
    }

    if let Some(found) = search_path(get("PATH"), &nvcc) {
        return Ok(found);
    }
    tried.push("PATH: no nvcc".to_string());

    let local = repo_root.join(LOCAL_TOOLCHAIN_NVCC);
    if is_executable_file(&local) {
        return Ok(local);
    }
    tried.push(format!("{} (missing)", local.display()));

    Err(format!(
        "nvcc not found (looked at: {}). Run scripts/install-cuda-toolchain.sh to install the \
         pinned CUDA 13.0 compiler into .cuda-toolchain/, or set NVCC / CUDA_HOME.",
        tried.join("; ")
    ))
}

fn search_path(path_var: Option<OsString>, name: &str) -> Option<PathBuf> {
    let path_var = path_var?;
    env::split_paths(&path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

/// Resources of one function for one architecture, as reported by `ptxas -v`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    /// Function name (entry kernels are `extern "C"`, so unmangled).
    pub name: String,
    /// `sm_XX`.
    pub arch: String,
    /// `true` for `__global__` entry points, `false` for non-inlined device functions.
    pub entry: bool,
    /// Registers per thread (`None` for device functions: ptxas reports them only for entries).
    pub registers: Option<u32>,
    pub stack_frame: u64,
    pub spill_stores: u64,
    pub spill_loads: u64,
    /// Static shared memory per block, bytes.
    pub smem: u64,
}

impl KernelResources {
    /// Uses local memory (spills or a stack frame): forbidden for the fusion kernels.
    pub fn uses_local_memory(&self) -> bool {
        self.stack_frame != 0 || self.spill_stores != 0 || self.spill_loads != 0
    }
}

/// Number in front of `unit` in `text` (e.g. `"40 registers"` -> 40 for unit `"registers"`).
fn number_before(text: &str, unit: &str) -> Option<u64> {
    let idx = text.find(unit)?;
    let head = text[..idx].trim_end();
    let digits: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if digits.is_empty() {
        return None;
    }
    digits.chars().rev().collect::<String>().parse().ok()
}

fn quoted_after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let rest = rest.trim_start().strip_prefix('\'')?;
    Some(&rest[..rest.find('\'')?])
}

/// Parses the stderr of `nvcc -Xptxas -v` (or of ptxas itself). nvcc runs one ptxas per real
/// architecture and prints each one's report as a block that starts with `... bytes gmem`;
/// only `Compiling entry function '<name>' for '<arch>'` lines name the architecture, so
/// device-function records take the architecture of the entries of their block.
pub fn parse_ptxas_report(text: &str) -> Vec<KernelResources> {
    // Split into per-ptxas blocks.
    let mut blocks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        if line.contains("bytes gmem") && !blocks.last().unwrap().is_empty() {
            blocks.push(Vec::new());
        }
        blocks.last_mut().unwrap().push(line);
    }

    let mut out = Vec::new();
    let mut last_arch = String::from("unknown");
    for block in blocks {
        let block_arch = block
            .iter()
            .filter(|l| l.contains("Compiling entry function"))
            .find_map(|l| quoted_after(l, " for "))
            .map(str::to_string);
        if let Some(a) = &block_arch {
            last_arch = a.clone();
        }
        let mut current: Option<KernelResources> = None;
        let mut entry_pending: Option<(String, String)> = None; // (name, arch)
        for line in block {
            if line.contains("Compiling entry function") {
                if let Some(done) = current.take() {
                    out.push(done);
                }
                if let Some(name) = quoted_after(line, "Compiling entry function") {
                    let arch = quoted_after(line, " for ")
                        .map(str::to_string)
                        .unwrap_or_else(|| last_arch.clone());
                    entry_pending = Some((name.to_string(), arch));
                }
            } else if let Some(pos) = line.find("Function properties for ") {
                if let Some(done) = current.take() {
                    out.push(done);
                }
                let name = line[pos + "Function properties for ".len()..]
                    .trim()
                    .to_string();
                let (entry, arch) = match &entry_pending {
                    Some((n, a)) if *n == name => (true, a.clone()),
                    _ => (false, last_arch.clone()),
                };
                if entry {
                    entry_pending = None;
                }
                current = Some(KernelResources {
                    name,
                    arch,
                    entry,
                    registers: None,
                    stack_frame: 0,
                    spill_stores: 0,
                    spill_loads: 0,
                    smem: 0,
                });
            } else if line.contains("bytes stack frame") {
                if let Some(k) = current.as_mut() {
                    k.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
                    k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                    k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
                }
            } else if line.contains("Used ") && line.contains(" registers") {
                if let Some(k) = current.as_mut() {
                    k.registers = number_before(line, "registers").map(|r| r as u32);
                    k.smem = number_before(line, "bytes smem").unwrap_or(0);
                    // Older ptxas reports the stack size only here.
                    if let Some(stack) = number_before(line, "bytes cumulative stack size") {
                        k.stack_frame = k.stack_frame.max(stack);
                    }
                }
            }
        }
        if let Some(done) = current.take() {
            out.push(done);
        }
    }
    out.sort_by(|a, b| {
        (a.name.as_str(), arch_key(&a.arch)).cmp(&(b.name.as_str(), arch_key(&b.arch)))
    });
    out
}

fn arch_key(arch: &str) -> u32 {
    arch.trim_start_matches("sm_")
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0)
}

/// Plain-text table of `rows` (already sorted by [`parse_ptxas_report`]), with a summary.
pub fn format_report(rows: &[KernelResources]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<width$}  {:<6}  {:>4}  {:>5}  {:>11}  {:>10}  {:>10}",
        "kernel", "arch", "regs", "stack", "spill_store", "spill_load", "smem_bytes"
    );
    for r in rows {
        let regs = r
            .registers
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        let name = if r.entry {
            r.name.clone()
        } else {
            format!("{} (device fn)", r.name)
        };
        let _ = writeln!(
            s,
            "{:<width$}  {:<6}  {:>4}  {:>5}  {:>11}  {:>10}  {:>10}",
            name, r.arch, regs, r.stack_frame, r.spill_stores, r.spill_loads, r.smem
        );
    }
    let entries: Vec<_> = rows.iter().filter(|r| r.entry).collect();
    let kernels: std::collections::BTreeSet<_> = entries.iter().map(|r| r.name.as_str()).collect();
    let archs: std::collections::BTreeSet<_> = entries.iter().map(|r| r.arch.as_str()).collect();
    let max_regs = entries
        .iter()
        .filter_map(|r| r.registers)
        .max()
        .unwrap_or(0);
    let offenders = rows.iter().filter(|r| r.uses_local_memory()).count();
    let _ = writeln!(
        s,
        "# {} kernels x {} archs ({}), max {} registers, {} rows with spills/stack",
        kernels.len(),
        archs.len(),
        archs.iter().copied().collect::<Vec<_>>().join(" "),
        max_regs,
        offenders
    );
    s
}

/// Prints `cargo:rerun-if-changed` for `source` and the headers next to it / in `include_dirs`.
fn emit_rerun_if_changed(source: &Path, include_dirs: &[PathBuf]) {
    println!("cargo:rerun-if-changed={}", source.display());
    let mut dirs: Vec<PathBuf> = include_dirs.to_vec();
    if let Some(parent) = source.parent() {
        dirs.push(parent.to_path_buf());
    }
    let mut headers = std::collections::BTreeSet::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_header = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("h" | "cuh" | "hpp")
            );
            if is_header && path.is_file() {
                headers.insert(path);
            }
        }
    }
    for h in headers {
        println!("cargo:rerun-if-changed={}", h.display());
    }
}

/// The nvcc arguments (after the nvcc path) used by [`compile_fatbin`].
pub fn nvcc_args(source: &Path, include_dirs: &[PathBuf], out_fatbin: &Path) -> Vec<OsString> {
    // `-compress-mode=size`: the fully unrolled kernels make ~4 MiB of SASS per architecture;
    // size-mode compression brings the fatbin from ~21 MiB to ~2 MiB (the driver decompresses it
    // once, at module load).
    let mut args: Vec<OsString> = [
        "-fatbin",
        "-O3",
        "-std=c++17",
        "-Xptxas",
        "-v",
        "--threads",
        "0",
        "-compress-mode=size",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    for (virt, reals) in GENCODE {
        let mut codes: Vec<String> = reals.iter().map(|r| r.to_string()).collect();
        if *virt == PTX_ARCH {
            codes.push(PTX_ARCH.to_string());
        }
        args.push("-gencode".into());
        args.push(format!("arch={virt},code=[{}]", codes.join(",")).into());
    }
    for dir in include_dirs {
        let mut flag = OsString::from("-I");
        flag.push(dir.as_os_str());
        args.push(flag);
    }
    args.push(source.as_os_str().to_owned());
    args.push("-o".into());
    args.push(out_fatbin.as_os_str().to_owned());
    args
}

/// Compiles `source` into `out_fatbin`: machine code for sm_75, sm_80, sm_86, sm_89, sm_90 and
/// compute_75 PTX, with `-O3 -std=c++17 -Xptxas -v --threads 0 -compress-mode=size` (about a
/// minute on 2 cores for kernels/fusion.cu). Writes the ptxas resource
/// table (registers, stack frame, spill stores/loads, shared memory per kernel and arch) to
/// `out_report`, and fails, naming the offenders, if any function spills or has a stack frame.
pub fn compile_fatbin(
    nvcc: &Path,
    source: &Path,
    include_dirs: &[PathBuf],
    out_fatbin: &Path,
    out_report: &Path,
) -> Result<(), String> {
    emit_rerun_if_changed(source, include_dirs);
    let args = nvcc_args(source, include_dirs, out_fatbin);
    let started = Instant::now();
    let output = Command::new(nvcc)
        .args(&args)
        .output()
        .map_err(|e| format!("failed to run {}: {e}", nvcc.display()))?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let command_line = format!(
        "{} {}",
        nvcc.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !output.status.success() {
        let log: String = format!("{stdout}{stderr}");
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("ptxas info"))
            .collect();
        let start = tail.len().saturating_sub(60);
        return Err(format!(
            "nvcc failed ({}):\n{command_line}\n{}",
            output.status,
            tail[start..].join("\n")
        ));
    }

    let rows = parse_ptxas_report(&format!("{stdout}\n{stderr}"));
    let mut report = format!(
        "# {command_line}\n# nvcc wall time {:.1} s\n",
        elapsed.as_secs_f64()
    );
    report.push_str(&format_report(&rows));
    fs::write(out_report, &report)
        .map_err(|e| format!("cannot write {}: {e}", out_report.display()))?;

    // Every target architecture must have been reported (guards against a silently missing
    // `-Xptxas -v` report, which would make the spill check vacuous). Per-arch kernel counts
    // may differ: the bf16 kernels do not exist for sm_75.
    let missing: Vec<&str> = GENCODE
        .iter()
        .flat_map(|(_, reals)| reals.iter().copied())
        .filter(|arch| !rows.iter().any(|r| r.entry && r.arch == *arch))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "ptxas reported no entry functions for {}; is the `-Xptxas -v` output missing? See {}",
            missing.join(", "),
            out_report.display()
        ));
    }
    let offenders: Vec<String> = rows
        .iter()
        .filter(|r| r.uses_local_memory())
        .map(|r| {
            format!(
                "{} ({}): {} bytes stack frame, {} bytes spill stores, {} bytes spill loads, {} registers",
                r.name,
                r.arch,
                r.stack_frame,
                r.spill_stores,
                r.spill_loads,
                r.registers.map_or_else(|| "?".to_string(), |v| v.to_string())
            )
        })
        .collect();
    if !offenders.is_empty() {
        return Err(format!(
            "{} kernel/arch combinations use local memory (register spills or a stack frame), which \
             the kernels must avoid; full table in {}:\n  {}",
            offenders.len(),
            out_report.display(),
            offenders.join("\n  ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from `nvcc -fatbin -Xptxas -v --threads 0` (CUDA 13.0) on a test file with a
    // non-inlined device function using a local array; trimmed to two architectures.
    const SNIPPET: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'kc' for 'sm_86'
ptxas info    : Function properties for kc
    128 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 128 bytes cumulative stack size, 364 bytes cmem[0]
ptxas info    : Compile time = 5.770 ms
ptxas info    : Function properties for _Z6helperPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'kb' for 'sm_86'
ptxas info    : Function properties for kb
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 364 bytes cmem[0]
ptxas info    : Compile time = 13.234 ms
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperPfi
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'fusion_forward_f32_d1' for 'sm_90'
ptxas info    : Function properties for fusion_forward_f32_d1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 16 bytes smem
ptxas info    : Compile time = 19.062 ms
ptxas info    : Compiling entry function 'fusion_grad_input_bf16_dn' for 'sm_90'
ptxas info    : Function properties for fusion_grad_input_bf16_dn
    112 bytes stack frame, 138 bytes spill stores, 684 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 112 bytes cumulative stack size, 16384 bytes smem
ptxas info    : Compile time = 554.135 ms
ptxas info    : Compiling entry function 'ka' for 'sm_90'
ptxas info    : Function properties for ka
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : Compile time = 3.040 ms
";

    fn find<'a>(rows: &'a [KernelResources], name: &str, arch: &str) -> &'a KernelResources {
        rows.iter()
            .find(|r| r.name == name && r.arch == arch)
            .unwrap_or_else(|| panic!("{name} {arch} missing from {rows:#?}"))
    }

    #[test]
    fn parses_entries_and_device_functions() {
        let rows = parse_ptxas_report(SNIPPET);
        assert_eq!(rows.len(), 7, "{rows:#?}");

        let kc = find(&rows, "kc", "sm_86");
        assert!(kc.entry);
        assert_eq!(
            (
                kc.registers,
                kc.stack_frame,
                kc.spill_stores,
                kc.spill_loads,
                kc.smem
            ),
            (Some(40), 128, 0, 0, 0)
        );
        assert!(kc.uses_local_memory());

        let kb = find(&rows, "kb", "sm_86");
        assert_eq!((kb.registers, kb.smem), (Some(40), 256));
        assert!(!kb.uses_local_memory());

        let f = find(&rows, "fusion_forward_f32_d1", "sm_90");
        assert_eq!((f.registers, f.stack_frame, f.smem), (Some(40), 0, 16));

        let bad = find(&rows, "fusion_grad_input_bf16_dn", "sm_90");
        assert_eq!(
            (
                bad.registers,
                bad.stack_frame,
                bad.spill_stores,
                bad.spill_loads,
                bad.smem
            ),
            (Some(255), 112, 138, 684, 16384)
        );

        let ka = find(&rows, "ka", "sm_90");
        assert_eq!((ka.registers, ka.smem), (Some(8), 0));

        // Device functions: not entries, no register count, arch of their block (the second
        // block's helper is printed before any entry of that block).
        let h86 = find(&rows, "_Z6helperPfi", "sm_86");
        assert!(!h86.entry && h86.registers.is_none() && !h86.uses_local_memory());
        let h90 = find(&rows, "_Z6helperPfi", "sm_90");
        assert_eq!(
            (h90.stack_frame, h90.spill_stores, h90.spill_loads),
            (8, 4, 4)
        );
    }

    #[test]
    fn rows_are_sorted_and_report_lists_offenders() {
        let rows = parse_ptxas_report(SNIPPET);
        let keys: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.name.clone(), r.arch.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let text = format_report(&rows);
        assert!(text.starts_with("kernel"));
        assert!(text.contains("fusion_grad_input_bf16_dn"));
        assert!(text.contains("_Z6helperPfi (device fn)"));
        assert!(text.contains("3 rows with spills/stack"), "{text}");
        assert!(text.contains("max 255 registers"), "{text}");
    }

    #[test]
    fn arch_sort_is_numeric() {
        let text = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_100'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_75'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
";
        let archs: Vec<String> = parse_ptxas_report(text)
            .into_iter()
            .map(|r| r.arch)
            .collect();
        assert_eq!(archs, ["sm_75", "sm_90", "sm_100"]);
    }

    #[test]
    fn nvcc_arguments() {
        let args: Vec<String> = nvcc_args(
            Path::new("kernels/fusion.cu"),
            &[PathBuf::from("kernels")],
            Path::new("out/fusion.fatbin"),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        let joined = args.join(" ");
        assert!(
            joined
                .starts_with("-fatbin -O3 -std=c++17 -Xptxas -v --threads 0 -compress-mode=size "),
            "{joined}"
        );
        assert!(
            joined.contains("-gencode arch=compute_75,code=[sm_75,compute_75]"),
            "{joined}"
        );
        assert!(
            joined.contains("-gencode arch=compute_80,code=[sm_80,sm_86,sm_89,sm_90]"),
            "{joined}"
        );
        assert!(
            joined.ends_with("-Ikernels kernels/fusion.cu -o out/fusion.fatbin"),
            "{joined}"
        );
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("a3d-cuda-rs-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    fn make_exe(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn nvcc_search_order() {
        let root = temp_dir("search");
        let explicit = root.join("explicit/nvcc");
        let home = root.join("home");
        let on_path = root.join("pathdir");
        let local = root.join(LOCAL_TOOLCHAIN_NVCC);
        for p in [
            &explicit,
            &home.join("bin/nvcc"),
            &on_path.join("nvcc"),
            &local,
        ] {
            make_exe(p);
        }
        let env_of = |pairs: Vec<(&'static str, OsString)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let path_var = env::join_paths([root.join("empty"), on_path.clone()]).unwrap();

        let all = env_of(vec![
            ("NVCC", explicit.clone().into()),
            ("CUDA_HOME", home.clone().into()),
            ("PATH", path_var.clone()),
        ]);
        assert_eq!(find_nvcc_with(&root, all).unwrap(), explicit);

        let no_nvcc = env_of(vec![
            ("CUDA_HOME", home.clone().into()),
            ("PATH", path_var.clone()),
        ]);
        assert_eq!(
            find_nvcc_with(&root, no_nvcc).unwrap(),
            home.join("bin/nvcc")
        );

        let cuda_path = env_of(vec![
            ("CUDA_HOME", root.join("nothing-here").into()),
            ("CUDA_PATH", home.clone().into()),
        ]);
        assert_eq!(
            find_nvcc_with(&root, cuda_path).unwrap(),
            home.join("bin/nvcc")
        );

        let path_only = env_of(vec![("PATH", path_var.clone())]);
        assert_eq!(
            find_nvcc_with(&root, path_only).unwrap(),
            on_path.join("nvcc")
        );

        let nothing = env_of(vec![]);
        assert_eq!(find_nvcc_with(&root, nothing).unwrap(), local);

        fs::remove_file(&local).unwrap();
        let err = find_nvcc_with(
            &root,
            env_of(vec![("CUDA_HOME", root.join("nothing-here").into())]),
        )
        .unwrap_err();
        assert!(err.contains("scripts/install-cuda-toolchain.sh"), "{err}");
        assert!(err.contains("nothing-here"), "{err}");

        let bad = find_nvcc_with(
            &root,
            env_of(vec![("NVCC", root.join("no/such/nvcc").into())]),
        )
        .unwrap_err();
        assert!(
            bad.contains("NVCC") && bad.contains("scripts/install-cuda-toolchain.sh"),
            "{bad}"
        );

        let _ = fs::remove_dir_all(&root);
    }
}
