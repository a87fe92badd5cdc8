//! Build script: with feature `emulation`, compiles every `kernels/*.cu` for the CPU under the
//! host shim (build/emulation.rs); with feature `cuda`, compiles every `kernels/*.cu` with nvcc
//! into an embedded fatbin and fails on any register spill (build/cuda.rs). The default build
//! needs neither. Adding an op family is adding `kernels/<family>.cu`: both builds pick it up,
//! and `src/cuda/` loads its module by the file stem (`CudaDevice::function("<family>", name)`).

#[cfg(feature = "cuda")]
#[path = "build/cuda.rs"]
mod cuda;
#[cfg(feature = "emulation")]
#[path = "build/emulation.rs"]
mod emulation;

/// The kernel sources, `kernels/*.cu`, sorted by name: the one list both builds use.
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
fn kernel_sources(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = root.join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut sources: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "cu"))
        .collect();
    sources.sort();
    sources
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let _ = &root;

    #[cfg(feature = "emulation")]
    {
        let include = emulation::find_cuda_include(&root).unwrap_or_else(|| {
            panic!(
                "feature `emulation` needs CUDA's host headers (cuda_fp16.h): run \
                 scripts/install-cuda-toolchain.sh, or set A3D_CUDA_INCLUDE to a directory \
                 holding them"
            )
        });
        emulation::compile(&root, &include, &kernel_sources(&root));
    }

    #[cfg(feature = "cuda")]
    {
        use std::fmt::Write as _;
        let out =
            std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let nvcc = cuda::find_nvcc(&root).unwrap_or_else(|e| panic!("{e}"));
        // One embedded module per source, named by its stem; src/cuda/mod.rs includes the table.
        let mut table = String::from("&[\n");
        for source in kernel_sources(&root) {
            let stem = source
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_else(|| panic!("{} has no UTF-8 stem", source.display()))
                .to_owned();
            let fatbin = out.join(format!("{stem}.fatbin"));
            let report = out.join(format!("{stem}.ptxas.txt"));
            cuda::compile_fatbin(&nvcc, &source, &[root.join("kernels")], &fatbin, &report)
                .unwrap_or_else(|e| {
                    panic!(
                        "compiling {} with {}: {e}",
                        source.display(),
                        nvcc.display()
                    )
                });
            let _ = writeln!(
                table,
                "    KernelModule {{ name: {stem:?}, fatbin: include_bytes!({:?}), \
                 ptxas_report: include_str!({:?}) }},",
                fatbin.display().to_string(),
                report.display().to_string()
            );
        }
        table.push(']');
        std::fs::write(out.join("kernel_modules.rs"), table)
            .unwrap_or_else(|e| panic!("writing kernel_modules.rs: {e}"));
    }
}
