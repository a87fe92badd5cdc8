//! Host emulation of the CUDA kernels (cargo feature `emulation`).
//!
//! build.rs compiles every `kernels/*.cu` (and the emulator's own self-check kernels) as C++ under
//! `kernels/emulation/cuda_host_shim.h` and links the fiber runtime
//! `kernels/emulation/emulator.cpp`, so tests run the very kernel source that runs on GPUs, on a
//! machine without one. The threads of a block run as fibers in a fixed order, blocks one after
//! another; launches are serialised by a global lock. A missing `__syncthreads` gives a
//! deterministic wrong result; a barrier or full-mask shuffle that not every thread reaches makes
//! the launch fail with a "deadlock (... divergence)" message instead of hanging.
//!
//! Not caught: missing `__threadfence` between blocks (blocks never run concurrently), reads of
//! uninitialised shared memory (shared arrays start zeroed and keep the previous block's values),
//! races between blocks, anything about performance. Spinning on a value another thread of the
//! same block must change never terminates (fibers do not preempt).

// The crate's own users are tests; keep non-test builds with the feature warning-free.
#![cfg_attr(not(test), allow(dead_code))]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

mod ffi {
    use super::{c_char, c_int, c_uint, c_void};

    unsafe extern "C" {
        /// Runs `kernel` over the grid; `args[i]` points at the i-th argument's value (as for
        /// `cuLaunchKernel`). Returns 0, or non-zero with the reason in `a3d_emu_last_error`.
        pub(super) fn a3d_emu_launch(
            kernel: *const c_char,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            args: *mut *mut c_void,
        ) -> c_int;
        /// `a3d_emu_launch` with the threads of each block run in ascending (`order` 0) or
        /// descending (1) thread order.
        pub(super) fn a3d_emu_launch_ordered(
            kernel: *const c_char,
            gx: c_uint,
            gy: c_uint,
            gz: c_uint,
            bx: c_uint,
            by: c_uint,
            bz: c_uint,
            args: *mut *mut c_void,
            order: c_int,
        ) -> c_int;
        /// The message of this OS thread's last failed launch (NUL-terminated, valid until this
        /// thread's next launch).
        pub(super) fn a3d_emu_last_error() -> *const c_char;
        /// 1 if `name` is a registered kernel.
        pub(super) fn a3d_emu_has_kernel(name: *const c_char) -> c_int;
        /// The number of parameters of kernel `name`, -1 if it is unknown.
        pub(super) fn a3d_emu_kernel_arity(name: *const c_char) -> c_int;
    }
}

/// Order in which the emulator runs the threads of a block, each until it blocks at a barrier or
/// shuffle (or exits). A missing barrier shows as a wrong result when the reading thread runs
/// before the writing one: in `Ascending` order when the writer has the higher thread index, in
/// `Descending` order when it has the lower one. Launching a pure kernel in both orders and
/// comparing the outputs catches most missing barriers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Thread 0 first (the default of [`launch`]).
    Ascending,
    /// The last thread first.
    Descending,
}

/// Type-erases one kernel argument for [`launch`]: `value` must have exactly the type of the
/// kernel's parameter (e.g. a `*const f32` variable for a `const float*` parameter, an `i32` for
/// an `int`, an `A3dFusionParams` for the struct) and outlive the launch.
pub(crate) fn arg<T>(value: &mut T) -> *mut c_void {
    std::ptr::from_mut(value).cast()
}

/// Whether the emulator knows a kernel of this name.
pub(crate) fn has_kernel(name: &str) -> bool {
    let Ok(name) = CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the function only
    // reads it.
    unsafe { ffi::a3d_emu_has_kernel(name.as_ptr()) == 1 }
}

/// Number of parameters of kernel `name`, or `None` if it is unknown.
pub(crate) fn kernel_arity(name: &str) -> Option<usize> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the function only
    // reads it.
    let arity = unsafe { ffi::a3d_emu_kernel_arity(name.as_ptr()) };
    usize::try_from(arity).ok()
}

fn last_error() -> String {
    // SAFETY: takes no arguments; returns null or a pointer to this thread's error string.
    let msg = unsafe { ffi::a3d_emu_last_error() };
    if msg.is_null() {
        return String::from("emulated launch failed (no message)");
    }
    // SAFETY: `msg` is non-null and NUL-terminated, and the string is thread-local: nothing
    // changes it before this thread's next launch, and it is copied out right here.
    unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned()
}

/// Runs `kernel` on the CPU over `grid` blocks of `block` threads; returns when all blocks have
/// finished. Threads run in [`Order::Ascending`]. `Err` carries the emulator's message: unknown
/// kernel, wrong number of arguments, zero or too large dimensions, deadlock / barrier or warp
/// divergence (naming the block, the source sites and the thread counts), partial shuffle masks.
///
/// # Safety
/// As for a CUDA launch: `args` has one entry per kernel parameter, and `args[i]` points at a
/// live value of exactly the type of the kernel's i-th parameter (see [`arg`]). Every pointer
/// passed that way must be valid for every access the kernel makes through it for this grid
/// (bounds, alignment -- e.g. 16 bytes for `float4`/`uint4` accesses -- and no other live Rust
/// reference to memory the kernel writes). The launch is synchronous, so the pointed-to values
/// need only outlive the call.
pub(crate) unsafe fn launch(
    kernel: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    args: &mut [*mut c_void],
) -> Result<(), String> {
    // SAFETY: forwarded unchanged; the caller upholds `launch_ordered`'s contract, which is this
    // function's.
    unsafe { launch_ordered(kernel, grid, block, args, Order::Ascending) }
}

/// [`launch`] with an explicit thread [`Order`].
///
/// # Safety
/// Exactly as for [`launch`].
pub(crate) unsafe fn launch_ordered(
    kernel: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    args: &mut [*mut c_void],
    order: Order,
) -> Result<(), String> {
    let name =
        CString::new(kernel).map_err(|_| format!("kernel name {kernel:?} contains a NUL byte"))?;
    let Some(arity) = kernel_arity(kernel) else {
        return Err(format!("unknown kernel '{kernel}'"));
    };
    if arity != args.len() {
        return Err(format!(
            "{kernel}: takes {arity} arguments, {} given",
            args.len()
        ));
    }
    let (gx, gy, gz) = grid;
    let (bx, by, bz) = block;
    let (name_ptr, args_ptr) = (name.as_ptr(), args.as_mut_ptr());
    // SAFETY: `name` is NUL-terminated and outlives the call; `args` holds exactly `arity`
    // pointers (checked above), each pointing at a value of the kernel's parameter type with
    // buffers valid for the kernel's accesses (the caller's contract). The call is synchronous
    // and does not keep any pointer.
    let rc = unsafe {
        match order {
            Order::Ascending => ffi::a3d_emu_launch(name_ptr, gx, gy, gz, bx, by, bz, args_ptr),
            Order::Descending => {
                ffi::a3d_emu_launch_ordered(name_ptr, gx, gy, gz, bx, by, bz, args_ptr, 1)
            }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error())
    }
}

#[cfg(test)]
mod tests {
    use super::{arg, has_kernel, kernel_arity, launch, launch_ordered, Order};
    use std::ffi::c_void;

    const BLOCK: u32 = 256;

    /// Input of the reduction tests: block b sums n values (b + 1) * (1 + i % 5), so every
    /// warp's partial sum grows with b and stale partials of an earlier block are always smaller.
    fn reduction_input(blocks: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let mut input = Vec::with_capacity(blocks * n);
        let mut expected = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let mut sum = 0u64;
            for i in 0..n {
                let v = (b as u64 + 1) * (1 + i as u64 % 5);
                sum += v;
                input.push(v as f32);
            }
            expected.push(sum as f32);
        }
        (input, expected)
    }

    fn run_reduction(kernel: &str, input: &[f32], blocks: usize, n: usize) -> Vec<f32> {
        run_reduction_ordered(kernel, input, blocks, n, Order::Ascending)
    }

    fn run_reduction_ordered(
        kernel: &str,
        input: &[f32],
        blocks: usize,
        n: usize,
        order: Order,
    ) -> Vec<f32> {
        assert_eq!(input.len(), blocks * n);
        let mut out = vec![0.0f32; blocks];
        let mut in_ptr = input.as_ptr();
        let mut out_ptr = out.as_mut_ptr();
        let mut n_arg = i32::try_from(n).unwrap();
        let mut args = [arg(&mut in_ptr), arg(&mut out_ptr), arg(&mut n_arg)];
        // SAFETY: the kernel is (const float*, float*, int); block b reads input[b*n..(b+1)*n]
        // and thread 0 writes out[b], all in bounds.
        unsafe {
            launch_ordered(
                kernel,
                (blocks as u32, 1, 1),
                (BLOCK, 1, 1),
                &mut args,
                order,
            )
        }
        .unwrap();
        out
    }

    #[test]
    fn selfcheck_kernels_are_registered() {
        for name in [
            "selfcheck_block_reduce_f32",
            "selfcheck_block_reduce_nosync_f32",
            "selfcheck_shift_nosync",
            "selfcheck_divergent_barrier",
            "selfcheck_early_return_barrier",
            "selfcheck_split_barrier",
            "selfcheck_warp_divergent_shuffle",
            "selfcheck_partial_mask_shuffle",
            "selfcheck_warp_shuffle",
            "selfcheck_atomics",
            "selfcheck_builtins",
            "selfcheck_half_vec",
            "selfcheck_barrier_bench",
        ] {
            assert!(has_kernel(name), "{name} is not registered");
        }
        assert_eq!(kernel_arity("selfcheck_block_reduce_f32"), Some(3));
        assert_eq!(kernel_arity("selfcheck_atomics"), Some(10));
        assert!(!has_kernel("no_such_kernel"));
        assert!(!has_kernel("bad\0name"));
        assert_eq!(kernel_arity("no_such_kernel"), None);
    }

    #[test]
    fn block_reduction_is_exact() {
        let (blocks, n) = (6, 1000);
        let (input, expected) = reduction_input(blocks, n);
        for order in [Order::Ascending, Order::Descending] {
            let out = run_reduction_ordered("selfcheck_block_reduce_f32", &input, blocks, n, order);
            assert_eq!(out, expected, "{order:?}");
        }
    }

    #[test]
    fn block_reduction_without_barrier_is_wrong() {
        let (blocks, n) = (6, 1000);
        let (input, expected) = reduction_input(blocks, n);
        let out = run_reduction("selfcheck_block_reduce_nosync_f32", &input, blocks, n);
        for (b, (got, want)) in out.iter().zip(&expected).enumerate() {
            assert!(
                got != want,
                "block {b}: the race went unnoticed ({got} == {want})"
            );
        }
        // The schedule is deterministic: warp 0 reads the other warps' partials before they are
        // written, so for b >= 1 it sees block b-1's (smaller) partials.
        for (b, (got, want)) in out.iter().zip(&expected).enumerate().skip(1) {
            assert!(got < want, "block {b}: {got} vs {want}");
        }
        // In descending order the writers (warps 1..7) run before the reader (warp 0): this race
        // is only visible in ascending order.
        let out = run_reduction_ordered(
            "selfcheck_block_reduce_nosync_f32",
            &input,
            blocks,
            n,
            Order::Descending,
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn missing_barrier_with_lower_writer_shows_in_descending_order() {
        let blocks = 3usize;
        let n = blocks * BLOCK as usize;
        let input: Vec<i32> = (0..n as i32).map(|i| 3 * i + 1).collect();
        let expected: Vec<i32> = (0..n)
            .map(|i| {
                if i % BLOCK as usize == 0 {
                    0
                } else {
                    input[i - 1]
                }
            })
            .collect();
        let run = |order| {
            let mut out = vec![-1i32; n];
            let mut p_in = input.as_ptr();
            let mut p_out = out.as_mut_ptr();
            let mut args = [arg(&mut p_in), arg(&mut p_out)];
            // SAFETY: (const int*, int*); thread t of block b reads and writes index
            // b * 256 + t < n.
            unsafe {
                launch_ordered(
                    "selfcheck_shift_nosync",
                    (blocks as u32, 1, 1),
                    (BLOCK, 1, 1),
                    &mut args,
                    order,
                )
            }
            .unwrap();
            out
        };
        assert_eq!(run(Order::Ascending), expected);
        let out = run(Order::Descending);
        for b in 0..blocks {
            let range = b * BLOCK as usize + 1..(b + 1) * BLOCK as usize;
            assert!(
                out[range.clone()] != expected[range],
                "block {b}: the race went unnoticed"
            );
        }
    }

    #[test]
    fn divergent_barrier_is_a_deadlock_error() {
        let mut out = vec![0i32; BLOCK as usize];
        let mut out_ptr = out.as_mut_ptr();
        let mut args = [arg(&mut out_ptr)];
        // SAFETY: (int*); threads write out[tid] for tid < 64 < out.len().
        let err = unsafe {
            launch(
                "selfcheck_divergent_barrier",
                (1, 1, 1),
                (BLOCK, 1, 1),
                &mut args,
            )
        }
        .unwrap_err();
        assert!(err.contains("deadlock"), "{err}");
        assert!(err.contains("divergence"), "{err}");
        assert!(err.contains("block (0,0,0)"), "{err}");
        assert!(
            err.contains("64 of 256 threads wait at __syncthreads"),
            "{err}"
        );
        assert!(err.contains("192 threads have exited"), "{err}");
        assert!(err.contains("selfcheck.cu:"), "{err}");

        // A failed launch leaves the emulator usable.
        let (input, expected) = reduction_input(2, 300);
        let sums = run_reduction("selfcheck_block_reduce_f32", &input, 2, 300);
        assert_eq!(sums, expected);
    }

    #[test]
    fn early_return_before_barrier_is_a_deadlock_error() {
        let n = 300usize; // block 1 has 44 live threads
        let input = vec![1.0f32; n];
        let mut out = vec![0.0f32; n];
        let mut in_ptr = input.as_ptr();
        let mut out_ptr = out.as_mut_ptr();
        let mut n_arg = n as i32;
        let mut args = [arg(&mut in_ptr), arg(&mut out_ptr), arg(&mut n_arg)];
        // SAFETY: (const float*, float*, int); threads with i < n access index i only.
        let err = unsafe {
            launch(
                "selfcheck_early_return_barrier",
                (2, 1, 1),
                (BLOCK, 1, 1),
                &mut args,
            )
        }
        .unwrap_err();
        assert!(err.contains("deadlock"), "{err}");
        assert!(err.contains("block (1,0,0)"), "{err}");
        assert!(err.contains("44 of 256 threads wait"), "{err}");
        assert!(err.contains("212 threads have exited"), "{err}");
    }

    #[test]
    fn barriers_at_different_sites_are_divergence() {
        let mut out = vec![0i32; 64];
        let mut out_ptr = out.as_mut_ptr();
        let mut args = [arg(&mut out_ptr)];
        // SAFETY: (int*); thread t writes out[t], t < 64.
        let err = unsafe { launch("selfcheck_split_barrier", (1, 1, 1), (64, 1, 1), &mut args) }
            .unwrap_err();
        assert!(err.contains("barrier divergence"), "{err}");
    }

    #[test]
    fn shuffle_in_half_a_warp_is_a_deadlock_error() {
        let mut out = vec![0.0f32; 64];
        let mut out_ptr = out.as_mut_ptr();
        let mut args = [arg(&mut out_ptr)];
        // SAFETY: (float*); thread t writes out[t], t < 64.
        let err = unsafe {
            launch(
                "selfcheck_warp_divergent_shuffle",
                (1, 1, 1),
                (64, 1, 1),
                &mut args,
            )
        }
        .unwrap_err();
        assert!(err.contains("deadlock (warp divergence)"), "{err}");
        assert!(
            err.contains("16 of 32 lanes of warp 0 wait at __shfl_xor_sync"),
            "{err}"
        );
    }

    #[test]
    fn partial_shuffle_mask_is_reported() {
        let mut out = vec![0.0f32; 32];
        let mut out_ptr = out.as_mut_ptr();
        let mut args = [arg(&mut out_ptr)];
        // SAFETY: (float*); thread t writes out[t], t < 32.
        let err = unsafe {
            launch(
                "selfcheck_partial_mask_shuffle",
                (1, 1, 1),
                (32, 1, 1),
                &mut args,
            )
        }
        .unwrap_err();
        assert!(err.contains("partial warp mask 0x0000ffff"), "{err}");
    }

    /// Source lane of a CUDA shuffle (`None`: the lane keeps its own value).
    fn shfl_src(kind: &str, lane: usize, arg: usize, width: usize) -> usize {
        let seg = lane / width * width;
        match kind {
            "down" if lane % width + arg < width => lane + arg,
            "up" if lane % width >= arg => lane - arg,
            "xor" => lane ^ arg,
            "idx" => seg + arg % width,
            _ => lane,
        }
    }

    #[test]
    fn warp_shuffles_match_cuda_semantics() {
        for order in [Order::Ascending, Order::Descending] {
            check_warp_shuffles(order);
        }
    }

    fn check_warp_shuffles(order: Order) {
        let n = 64usize;
        let input: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 + 1.0).collect();
        let mut out_f = vec![0.0f32; 6 * n];
        let mut out_i = vec![0i32; n];
        let mut out_u = vec![0u32; n];
        let mut out_d = vec![0.0f64; n];
        let mut p_in = input.as_ptr();
        let (mut p_f, mut p_i) = (out_f.as_mut_ptr(), out_i.as_mut_ptr());
        let (mut p_u, mut p_d) = (out_u.as_mut_ptr(), out_d.as_mut_ptr());
        let mut args = [
            arg(&mut p_in),
            arg(&mut p_f),
            arg(&mut p_i),
            arg(&mut p_u),
            arg(&mut p_d),
        ];
        // SAFETY: (const float*, float*, int*, unsigned*, double*); thread i reads input[i] and
        // writes out_f[k * n + i] (k < 6), out_i[i], out_u[i], out_d[i].
        unsafe {
            launch_ordered(
                "selfcheck_warp_shuffle",
                (1, 1, 1),
                (n as u32, 1, 1),
                &mut args,
                order,
            )
        }
        .unwrap();

        for i in 0..n {
            let (base, lane) = (i / 32 * 32, i % 32);
            let from = |kind, a, w| input[base + shfl_src(kind, lane, a, w)];
            assert_eq!(out_f[i], from("down", 1, 32), "down 1, thread {i}");
            assert_eq!(out_f[n + i], from("up", 3, 32), "up 3, thread {i}");
            assert_eq!(out_f[2 * n + i], from("xor", 5, 32), "xor 5, thread {i}");
            assert_eq!(out_f[3 * n + i], from("idx", 7, 32), "idx 7, thread {i}");
            assert_eq!(
                out_f[4 * n + i],
                from("down", 2, 8),
                "down 2 w8, thread {i}"
            );
            let warp_sum: f32 = input[base..base + 32].iter().sum();
            assert_eq!(out_f[5 * n + i], warp_sum, "xor all-reduce, thread {i}");
            let src = base + shfl_src("idx", lane, 31 - lane, 16);
            assert_eq!(out_u[i], src as u32 * 1000, "idx u32 w16, thread {i}");
            let dsum: f64 = input[base..base + 32]
                .iter()
                .map(|&v| f64::from(v) * 0.5)
                .sum();
            assert_eq!(out_d[i], dsum, "xor all-reduce f64, thread {i}");
        }
        // Tree reduction with __shfl_down_sync: every lane's partial, not just lane 0's.
        for warp in 0..n / 32 {
            let mut v: Vec<i32> = (0..32).map(|l| (warp * 32 + l) as i32 * 3 - 7).collect();
            for offset in [16, 8, 4, 2, 1] {
                let prev = v.clone();
                for (l, x) in v.iter_mut().enumerate() {
                    *x += if l + offset < 32 {
                        prev[l + offset]
                    } else {
                        prev[l]
                    };
                }
            }
            assert_eq!(&out_i[warp * 32..warp * 32 + 32], &v[..], "int down-reduce");
        }
    }

    #[test]
    fn atomics_accumulate() {
        let n = 10_000usize;
        let bins = 16usize;
        let keys: Vec<i32> = (0..n).map(|i| ((i * 37) % 1000) as i32).collect();
        let mut hist = vec![0i32; bins];
        let (mut fsum, mut usum, mut dsum) = (0.0f32, 0u64, 0.0f64);
        let (mut imax, mut imin, mut count) = (i32::MIN, i32::MAX, 0u32);
        let mut p_keys = keys.as_ptr();
        let mut n_arg = n as i32;
        let mut bins_arg = bins as i32;
        let mut p_hist = hist.as_mut_ptr();
        let mut p_fsum: *mut f32 = &mut fsum;
        let mut p_usum: *mut u64 = &mut usum;
        let mut p_dsum: *mut f64 = &mut dsum;
        let mut p_imax: *mut i32 = &mut imax;
        let mut p_imin: *mut i32 = &mut imin;
        let mut p_count: *mut u32 = &mut count;
        let mut args = [
            arg(&mut p_keys),
            arg(&mut n_arg),
            arg(&mut bins_arg),
            arg(&mut p_hist),
            arg(&mut p_fsum),
            arg(&mut p_usum),
            arg(&mut p_dsum),
            arg(&mut p_imax),
            arg(&mut p_imin),
            arg(&mut p_count),
        ];
        // SAFETY: the parameter types match (const int*, int, int, int*, float*,
        // unsigned long long*, double*, int*, int*, unsigned*); keys has n entries, hist has
        // `bins`, the scalars are single values; no Rust reference to them is used during the
        // launch.
        unsafe { launch("selfcheck_atomics", (8, 1, 1), (128, 1, 1), &mut args) }.unwrap();

        let mut want_hist = vec![0i32; bins];
        for &k in &keys {
            want_hist[k as usize % bins] += 1;
        }
        let total: i64 = keys.iter().map(|&k| i64::from(k)).sum();
        assert_eq!(hist, want_hist);
        assert_eq!(fsum, total as f32);
        assert_eq!(usum, total as u64);
        assert_eq!(dsum, total as f64);
        assert_eq!((imax, imin, count), (999, 0, n as u32));
    }

    #[test]
    fn builtins_in_three_dimensions() {
        let grid = (2u32, 3u32, 2u32);
        let block = (4u32, 2u32, 3u32); // 24 threads: one partial warp
        let threads = (block.0 * block.1 * block.2) as usize;
        let blocks = (grid.0 * grid.1 * grid.2) as usize;
        let mut out = vec![u32::MAX; 9 * threads * blocks];
        let mut p_out = out.as_mut_ptr();
        let mut args = [arg(&mut p_out)];
        // SAFETY: (unsigned*); each thread writes its 9 values inside out.
        unsafe { launch("selfcheck_builtins", grid, block, &mut args) }.unwrap();
        let mut k = 0;
        for bz in 0..grid.2 {
            for by in 0..grid.1 {
                for bx in 0..grid.0 {
                    for tz in 0..block.2 {
                        for ty in 0..block.1 {
                            for tx in 0..block.0 {
                                let want = [
                                    tx,
                                    ty,
                                    tz,
                                    bx,
                                    by,
                                    bz,
                                    block.0 * 10000 + block.1 * 100 + block.2,
                                    grid.0 * 10000 + grid.1 * 100 + grid.2,
                                    block.1 * block.2, // threads with threadIdx.x == 0
                                ];
                                assert_eq!(out[9 * k..9 * k + 9], want, "thread {k}");
                                k += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    #[repr(C, align(16))]
    #[derive(Clone, Copy)]
    struct F32x4([f32; 4]);
    #[repr(C, align(16))]
    #[derive(Clone, Copy)]
    struct U16x8([u16; 8]);

    #[test]
    fn half_bf16_and_vector_types() {
        let n = 64usize; // 8 groups of 8
        let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        let input: Vec<F32x4> = values
            .chunks(4)
            .map(|c| F32x4([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut out_h = vec![U16x8([0; 8]); n / 8];
        let mut out_b = vec![U16x8([0; 8]); n / 8];
        let mut out_f = vec![F32x4([0.0; 4]); n / 4];
        let mut p_in = input.as_ptr().cast::<f32>();
        let mut p_h = out_h.as_mut_ptr().cast::<u16>();
        let mut p_b = out_b.as_mut_ptr().cast::<u16>();
        let mut p_f = out_f.as_mut_ptr().cast::<f32>();
        let mut n_arg = n as i32;
        let mut args = [
            arg(&mut p_in),
            arg(&mut p_h),
            arg(&mut p_b),
            arg(&mut p_f),
            arg(&mut n_arg),
        ];
        // SAFETY: (const float*, __half*, __nv_bfloat16*, float*, int): pointers to 16-bit
        // values are ABI-identical for u16 and __half/__nv_bfloat16; all buffers hold n values
        // and are 16-byte aligned for the float4/uint4 accesses.
        unsafe { launch("selfcheck_half_vec", (2, 1, 1), (4, 1, 1), &mut args) }.unwrap();
        let halves: Vec<u16> = out_h.iter().flat_map(|h| h.0).collect();
        let bf16s: Vec<u16> = out_b.iter().flat_map(|h| h.0).collect();
        let floats: Vec<f32> = out_f.iter().flat_map(|f| f.0).collect();
        for (i, &v) in values.iter().enumerate() {
            let h = half::f16::from_f32(2.0 * v);
            let b = half::bf16::from_f32(v + 1.0);
            assert_eq!(halves[i], h.to_bits(), "half {i}");
            assert_eq!(bf16s[i], b.to_bits(), "bf16 {i}");
            assert_eq!(floats[i], h.to_f32() + b.to_f32(), "sum {i}");
        }
    }

    #[test]
    fn barrier_bench_kernel_output() {
        let blocks = 3usize;
        let mut out = vec![0.0f32; blocks];
        let mut p_out = out.as_mut_ptr();
        let mut args = [arg(&mut p_out)];
        // SAFETY: (float*); thread 0 of block b writes out[b].
        unsafe {
            launch(
                "selfcheck_barrier_bench",
                (blocks as u32, 1, 1),
                (BLOCK, 1, 1),
                &mut args,
            )
        }
        .unwrap();
        let n = BLOCK as f32;
        assert_eq!(out, vec![4.0 * n * (n + 1.0) / 2.0; blocks]);
    }

    #[test]
    fn launch_errors_are_reported() {
        let mut out = vec![0.0f32; 8];
        let mut p_out = out.as_mut_ptr();
        let try_launch = |kernel: &str, grid, block, args: &mut [*mut c_void]| {
            // SAFETY: every call below passes either no arguments, a null argument or one
            // `float*` to 8 floats (selfcheck_barrier_bench's only parameter; thread 0 of block b
            // writes out[b]), and each is rejected before any block runs.
            unsafe { launch(kernel, grid, block, args) }.unwrap_err()
        };
        let err = try_launch("nope", (1, 1, 1), (32, 1, 1), &mut [arg(&mut p_out)]);
        assert!(err.contains("unknown kernel 'nope'"), "{err}");
        let bench = "selfcheck_barrier_bench";
        let err = try_launch(bench, (1, 1, 1), (32, 1, 1), &mut []);
        assert!(err.contains("takes 1 arguments, 0 given"), "{err}");
        for block in [(1025, 1, 1), (64, 32, 1), (1, 1, 65)] {
            let err = try_launch(bench, (1, 1, 1), block, &mut [arg(&mut p_out)]);
            assert!(err.contains("block too large"), "{block:?}: {err}");
        }
        for (grid, block) in [((0, 1, 1), (32, 1, 1)), ((1, 1, 1), (32, 1, 0))] {
            let err = try_launch(bench, grid, block, &mut [arg(&mut p_out)]);
            assert!(err.contains("zero launch dimension"), "{err}");
        }
        let err = try_launch(bench, (1, 70_000, 1), (32, 1, 1), &mut [arg(&mut p_out)]);
        assert!(err.contains("grid too large"), "{err}");
        let err = try_launch(bench, (1, 1, 1), (32, 1, 1), &mut [std::ptr::null_mut()]);
        assert!(err.contains("args[0] is null"), "{err}");
        assert_eq!(out, vec![0.0; 8]);
    }

    #[test]
    fn concurrent_launches_are_serialised() {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..5 {
                        let (blocks, n) = (3 + t, 200 + 37 * round);
                        let (input, expected) = reduction_input(blocks, n);
                        let out = run_reduction("selfcheck_block_reduce_f32", &input, blocks, n);
                        assert_eq!(out, expected, "thread {t}, round {round}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}
