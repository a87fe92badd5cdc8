//! The unit tests of the build script's CUDA module (nvcc discovery, nvcc arguments, the ptxas
//! report parser behind the no-spill check). A build-script module is not a test target of its
//! own, so this file compiles it as one; it needs no toolkit.

#[path = "../build/cuda.rs"]
mod cuda;
