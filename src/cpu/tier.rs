//! What the CPU kernels of every op share: the instruction-set tiers they are compiled for
//! ([`Tier`], [`multiversion!`]), streaming stores for large outputs ([`RowWriter`],
//! [`stream_copy`]) and the raw output pointer items of one launch write through
//! ([`SharedOut`]).

use crate::Element;

/// What the kernels need from an instruction-set tier: a multiply-add and a streaming copy.
/// The methods are `#[inline(always)]`, so they compile inside each tier's `target_feature`
/// instantiation with that tier's instructions.
pub(crate) trait Tier {
    /// `a * b + c`: fused where the tier has FMA, separate otherwise (a software `fma` call
    /// would be far slower than two instructions).
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
    /// Bytes of the tier's widest non-temporal store (its required alignment).
    const STREAM_BYTES: usize;
    /// Stores `bytes` bytes from `src` to `dst` (aligned to `STREAM_BYTES`) without
    /// read-for-ownership.
    ///
    /// # Safety
    /// `src` valid for reading and `dst` for writing `bytes` bytes, `bytes` a multiple of
    /// `STREAM_BYTES`, `dst` aligned to it, and the tier's features present.
    unsafe fn stream(dst: *mut u8, src: *const u8, bytes: usize);
    /// Blocks of 16 `f32` lanes the tier's vector registers hold at once: 32 zmm, 16 ymm (two
    /// per block), 16 xmm (four per block). Register-blocked loops size their tiles by it.
    const LANE_BLOCKS: usize;
}

/// AVX-512 + FMA: 64-byte non-temporal stores.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;
#[cfg(target_arch = "x86_64")]
impl Tier for Avx512 {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    const STREAM_BYTES: usize = 64;
    const LANE_BLOCKS: usize = 32;
    #[inline(always)]
    unsafe fn stream(dst: *mut u8, src: *const u8, bytes: usize) {
        use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_stream_si512};
        let mut i = 0;
        while i < bytes {
            // SAFETY: in bounds and aligned by this function's contract.
            unsafe {
                let v = _mm512_loadu_si512(src.add(i).cast::<__m512i>());
                _mm512_stream_si512(dst.add(i).cast::<__m512i>(), v);
            }
            i += 64;
        }
    }
}

/// AVX2 + FMA: 32-byte non-temporal stores.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;
#[cfg(target_arch = "x86_64")]
impl Tier for Avx2 {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    const STREAM_BYTES: usize = 32;
    const LANE_BLOCKS: usize = 8;
    #[inline(always)]
    unsafe fn stream(dst: *mut u8, src: *const u8, bytes: usize) {
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
        let mut i = 0;
        while i < bytes {
            // SAFETY: in bounds and aligned by this function's contract.
            unsafe {
                let v = _mm256_loadu_si256(src.add(i).cast::<__m256i>());
                _mm256_stream_si256(dst.add(i).cast::<__m256i>(), v);
            }
            i += 32;
        }
    }
}

/// The compilation target's baseline: separate multiply and add, SSE2 streaming stores on
/// x86-64, plain copies elsewhere.
pub(crate) struct Baseline;
impl Tier for Baseline {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    const STREAM_BYTES: usize = 16;
    const LANE_BLOCKS: usize = 4;
    #[inline(always)]
    unsafe fn stream(dst: *mut u8, src: *const u8, bytes: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
            let mut i = 0;
            while i < bytes {
                // SAFETY: in bounds and aligned by this function's contract; SSE2 is part of
                // the x86-64 baseline.
                unsafe {
                    let v = _mm_loadu_si128(src.add(i).cast::<__m128i>());
                    _mm_stream_si128(dst.add(i).cast::<__m128i>(), v);
                }
                i += 16;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        // SAFETY: valid, non-overlapping ranges by this function's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(src, dst, bytes)
        };
    }
}

/// Writes f32 tile rows to output rows of `T`, with non-temporal stores for large outputs: the
/// output is not read again by this pass, and a streaming store skips the read-for-ownership
/// that a plain store to a cold line costs (a third of a memory-bound pass's traffic).
pub(crate) struct RowWriter<F, T> {
    stream: bool,
    scratch: Vec<T>,
    tier: std::marker::PhantomData<F>,
}

impl<F: Tier, T: Element> RowWriter<F, T> {
    pub(crate) fn new(stream: bool, tile: usize) -> RowWriter<F, T> {
        // f32 results stream straight from the tile; other dtypes are rounded into `scratch`.
        let staged = stream && T::f32_as_self(&[]).is_none();
        let scratch = if staged {
            vec![T::from_f32(0.0); tile]
        } else {
            Vec::new()
        };
        RowWriter {
            stream,
            scratch,
            tier: std::marker::PhantomData,
        }
    }

    #[inline(always)]
    pub(crate) fn write(&mut self, src: &[f32], dst: &mut [T]) {
        if !self.stream {
            T::store_f32(src, dst);
        } else if let Some(same) = T::f32_as_self(src) {
            stream_copy::<F, T>(dst, same);
        } else {
            let staged = &mut self.scratch[..src.len()];
            T::store_f32(src, staged);
            stream_copy::<F, T>(dst, staged);
        }
    }

    /// Orders the streaming stores before anything that follows (they are weakly ordered).
    pub(crate) fn finish(&self) {
        #[cfg(target_arch = "x86_64")]
        if self.stream {
            // SAFETY: `sfence` has no memory operands; SSE is part of the x86-64 baseline.
            unsafe { std::arch::x86_64::_mm_sfence() };
        }
    }
}

/// Outputs at least this large are written with non-temporal stores.
pub(crate) const STREAM_BYTES: usize = 16 << 20;

/// `dst.copy_from_slice(src)` with the tier's non-temporal stores for the aligned middle.
#[inline(always)]
pub(crate) fn stream_copy<F: Tier, T: Element>(dst: &mut [T], src: &[T]) {
    if dst.len() != src.len() {
        dst.copy_from_slice(src);
        return;
    }
    let bytes = std::mem::size_of_val(src);
    let (d, s) = (dst.as_mut_ptr().cast::<u8>(), src.as_ptr().cast::<u8>());
    let head = d.align_offset(F::STREAM_BYTES).min(bytes);
    let body = (bytes - head) / F::STREAM_BYTES * F::STREAM_BYTES;
    // SAFETY: `dst` and `src` are distinct slices of `bytes` bytes of plain-old-data (f32, f16,
    // bf16: no invalid bit patterns); head, body and tail partition `0..bytes`; the body starts
    // at a `STREAM_BYTES`-aligned `d + head` and spans whole stores; the tier's features are
    // present because this runs inside that tier's instantiation.
    unsafe {
        std::ptr::copy_nonoverlapping(s, d, head);
        F::stream(d.add(head), s.add(head), body);
        std::ptr::copy_nonoverlapping(s.add(head + body), d.add(head + body), bytes - head - body);
    }
}

/// A raw output pointer shared by the items of one launch.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(pub(crate) *mut T);
// SAFETY: items write disjoint index ranges (see `rows_mut`), so sharing the pointer between
// threads cannot create overlapping accesses.
unsafe impl<T: Send> Send for SharedOut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// Elements `start..start + len` of the buffer.
    ///
    /// # Safety
    /// The buffer must hold at least `start + len` elements and no other live reference may
    /// cover that range.
    pub(crate) unsafe fn slice_mut<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: in bounds and exclusive by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// The `depth` rows of item `(bc, p0..p0+n)` of a `[.., depth, pixels]` buffer.
    ///
    /// # Safety
    /// The buffer must hold at least `(bc + 1) * depth * pixels` elements, `p0 + n <= pixels`,
    /// and no other live reference may cover these rows' ranges (each item calls this once).
    pub(crate) unsafe fn rows_mut<'a>(
        self,
        bc: usize,
        depth: usize,
        pixels: usize,
        p0: usize,
        n: usize,
    ) -> Vec<&'a mut [T]> {
        (0..depth)
            .map(|d| {
                // SAFETY: in bounds and exclusive by this function's contract.
                unsafe {
                    std::slice::from_raw_parts_mut(self.0.add((bc * depth + d) * pixels + p0), n)
                }
            })
            .collect()
    }
}

/// Defines `$entry::<T, D>`, which runs `$body::<F, T, D>` through the widest instantiation this
/// CPU supports: AVX-512 or AVX2 (with FMA and F16C), or the baseline. `D` is the op's
/// compile-time size (a depth, a tap count; 0 = read at run time).
macro_rules! multiversion {
    ($entry:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $entry<T: Element, const D: usize>(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
                unsafe fn avx512<T: Element, const D: usize>($($arg: $ty),*) {
                    $body::<$crate::cpu::tier::Avx512, T, D>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2<T: Element, const D: usize>($($arg: $ty),*) {
                    $body::<$crate::cpu::tier::Avx2, T, D>($($arg),*)
                }
                match isa {
                    // SAFETY: callers pass `active_isa()`, which never exceeds the detected tier,
                    // and the AVX-512 tier is detected with every feature of this instantiation.
                    Isa::Avx512 => return unsafe { avx512::<T, D>($($arg),*) },
                    // SAFETY: as above, for the AVX2 tier.
                    Isa::Avx2 => return unsafe { avx2::<T, D>($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $body::<$crate::cpu::tier::Baseline, T, D>($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// Selects the instantiation of `$f::<$t, D>` for a runtime depth: a constant D for 1..=16
/// (loops fully unrolled), `D = 0` (depth read at run time) beyond.
macro_rules! by_depth {
    ($depth:expr, $f:ident::<$t:ty>) => {
        match $depth {
            1 => $f::<$t, 1> as _,
            2 => $f::<$t, 2> as _,
            3 => $f::<$t, 3> as _,
            4 => $f::<$t, 4> as _,
            5 => $f::<$t, 5> as _,
            6 => $f::<$t, 6> as _,
            7 => $f::<$t, 7> as _,
            8 => $f::<$t, 8> as _,
            9 => $f::<$t, 9> as _,
            10 => $f::<$t, 10> as _,
            11 => $f::<$t, 11> as _,
            12 => $f::<$t, 12> as _,
            13 => $f::<$t, 13> as _,
            14 => $f::<$t, 14> as _,
            15 => $f::<$t, 15> as _,
            16 => $f::<$t, 16> as _,
            _ => $f::<$t, 0> as _,
        }
    };
}

pub(crate) use by_depth;

/// The depth an instantiation runs with: its constant, or the runtime value for `D = 0`.
#[inline(always)]
pub(crate) const fn depth_of<const D: usize>(runtime: usize) -> usize {
    if D == 0 {
        runtime
    } else {
        D
    }
}

/// Prefetch hint of [`prefetch_rows`]: into every cache level (x86's `_MM_HINT_T0`).
pub(crate) const PREFETCH_L1: i32 = 3;

/// Asks the cache for every line of `rows` ahead of the loop that reads them (`HINT` as x86's
/// `_mm_prefetch`; nothing on other architectures).
///
/// The kernels read `D` (or `2 * D`) planes at once, one plane apart; that is more streams than
/// the hardware prefetchers follow, so without this the first touch of each tile misses.
#[inline(always)]
pub(crate) fn prefetch_rows<T, const HINT: i32>(rows: &[&[T]]) {
    #[cfg(target_arch = "x86_64")]
    for row in rows {
        let bytes = std::mem::size_of_val(*row);
        let base = row.as_ptr().cast::<i8>();
        let mut off = 0;
        while off < bytes {
            // SAFETY: `base + off` lies inside `row`; a prefetch never faults and writes nothing.
            unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(base.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = rows;
}
