//! Build script: with feature `emulation`, compiles kernels/*.cu for the CPU under the host
//! shim (build/emulation.rs); with feature `cuda`, compiles them with nvcc into embedded fatbins
//! and fails on any register spill (build/cuda.rs). The default build needs neither.

#[cfg(feature = "cuda")]
#[path = "build/cuda.rs"]
mod cuda;
#[cfg(feature = "emulation")]
#[path = "build/emulation.rs"]
mod emulation;

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
        emulation::compile(&root, &include);
    }

    #[cfg(feature = "cuda")]
    {
        let out =
            std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let nvcc = cuda::find_nvcc(&root).unwrap_or_else(|e| panic!("{e}"));
        cuda::compile_fatbin(
            &nvcc,
            &root.join("kernels/fusion.cu"),
            &[root.join("kernels")],
            &out.join("fusion.fatbin"),
            &out.join("fusion.ptxas.txt"),
        )
        .unwrap_or_else(|e| panic!("compiling kernels/fusion.cu with {}: {e}", nvcc.display()));
    }
}
