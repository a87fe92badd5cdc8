//! Storage dtypes and the element trait that converts them to and from f32 in bulk.

use half::{bf16, f16};
use std::fmt;

/// Storage type of a tensor. Arithmetic always happens in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
}

impl DType {
    /// All dtypes, in the order reports list them.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Short lowercase name (`f32`, `f16`, `bf16`), as used by the CLI and kernel names.
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, f16 or bf16)"
            )),
        }
    }
}

/// Runs `$body` with the type alias `$T` bound to the Rust element type of `$dtype` (`f32`,
/// `half::f16`, `half::bf16`): the crate's one dtype dispatch.
///
/// ```ignore
/// with_dtype!(x.dtype(), T => kernel::<T>(x.as_slice::<T>()?))
/// ```
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                #[allow(dead_code)]
                type $T = half::f16;
                $body
            }
            $crate::DType::BF16 => {
                #[allow(dead_code)]
                type $T = half::bf16;
                $body
            }
        }
    };
}
pub(crate) use with_dtype;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type a3d stores: `f32`, `half::f16` or `half::bf16`.
///
/// The slice conversions are the hot path of the half-precision kernels: they are written so
/// the compiler vectorises them (and `half` uses F16C where the CPU has it).
pub trait Element: sealed::Sealed + Copy + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The dtype tag of this type.
    const DTYPE: DType;
    /// Widen one value.
    fn to_f32(self) -> f32;
    /// Round one value to this type (round to nearest even).
    fn from_f32(v: f32) -> Self;
    /// Widen `src` into `dst` (equal lengths).
    fn load_f32(src: &[Self], dst: &mut [f32]);
    /// Round `src` into `dst` (equal lengths).
    fn store_f32(src: &[f32], dst: &mut [Self]);
    /// The slice itself when `Self` is `f32` (lets kernels skip a staging copy).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    /// The slice itself when `Self` is `f32`.
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
    /// An f32 slice as `&[Self]` when `Self` is `f32`.
    fn f32_as_self(s: &[f32]) -> Option<&[Self]>;
}

/// `src` as f32 values: the slice itself for f32 storage, else widened into `buf` (reused
/// across calls by the kernels that stage one row or plane at a time).
#[inline]
pub(crate) fn f32_values<'a, T: Element>(src: &'a [T], buf: &'a mut Vec<f32>) -> &'a [f32] {
    match T::as_f32(src) {
        Some(s) => s,
        None => {
            buf.resize(src.len(), 0.0);
            T::load_f32(src, buf);
            buf
        }
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    #[inline(always)]
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
    #[inline(always)]
    fn f32_as_self(s: &[f32]) -> Option<&[Self]> {
        Some(s)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline(always)]
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f16_bits_to_f32(s.to_bits());
        }
    }
    #[inline(always)]
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f16::from_bits(f32_to_f16_bits(*s));
        }
    }
    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn f32_as_self(_: &[f32]) -> Option<&[Self]> {
        None
    }
}

/// f16 bits -> f32, exact for every input (normals, subnormals, infinities; NaN made quiet).
/// Branch-free so loops vectorise; bit-identical to `half::f16::to_f32`.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let magnitude = (h & 0x7fff) << 13;
    // Rebias by multiplying with 2^112: exact for normals and subnormals alike.
    let scaled = (f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)).to_bits();
    let quiet = if h & 0x03ff != 0 { 0x0040_0000 } else { 0 };
    let inf_nan = magnitude | 0x7f80_0000 | quiet;
    let bits = if (h & 0x7c00) == 0x7c00 {
        inf_nan
    } else {
        scaled
    };
    f32::from_bits(bits | sign)
}

/// f32 -> f16 bits, round to nearest even, overflow to infinity, NaN kept quiet with its top
/// payload bits. Branch-free so loops vectorise; bit-identical to `half::f16::from_f32`.
#[inline(always)]
pub(crate) fn f32_to_f16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let a = bits & 0x7fff_ffff;
    // >= 65520 rounds to infinity; NaN keeps its payload's top bits and is made quiet.
    let nan = 0x7e00 | ((a >> 13) & 0x3ff);
    let big = if a > 0x7f80_0000 { nan } else { 0x7c00 };
    // Below 2^-14 the result is subnormal: adding 0.5 aligns the mantissa so the FPU's own
    // round-to-nearest-even does the rounding.
    let denorm_magic = 0x3f00_0000u32;
    let small = (f32::from_bits(a) + f32::from_bits(denorm_magic))
        .to_bits()
        .wrapping_sub(denorm_magic);
    // Normal range: rebias the exponent and round to nearest even on the dropped 13 bits.
    let odd = (a >> 13) & 1;
    let normal = a.wrapping_add(0xc800_0fff).wrapping_add(odd) >> 13;
    let out = if a >= 0x477f_f000 {
        big
    } else if a < 0x3880_0000 {
        small
    } else {
        normal
    };
    (out | sign) as u16
}

/// f32 -> bf16 bits, round to nearest even, NaN kept quiet. Branch-free so loops vectorise;
/// bit-identical to `half::bf16::from_f32`.
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let quiet_nan = (b >> 16) | 0x0040;
    let is_nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits(v))
    }
    #[inline(always)]
    fn load_f32(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    #[inline(always)]
    fn store_f32(src: &[f32], dst: &mut [Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = bf16::from_bits(f32_to_bf16_bits(*s));
        }
    }
    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn f32_as_self(_: &[f32]) -> Option<&[Self]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0x3f80_8000), // tie, even below
            f32::from_bits(0x3f81_8000), // tie, odd below
            f32::from_bits(0x7f7f_ffff),
        ];
        let mut state = 0x1234_5678_9abc_def0u64;
        let randoms = (0..100_000).map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            f32::from_bits((state >> 32) as u32)
        });
        for v in specials.into_iter().chain(randoms) {
            assert_eq!(
                f32_to_bf16_bits(v),
                bf16::from_f32(v).to_bits(),
                "value {v:e} ({:#x})",
                v.to_bits()
            );
        }
    }

    #[test]
    fn f16_conversions_match_half_bitwise() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits(),
                "f16 {h:#06x}: {got:e} vs {want:e}"
            );
        }
        let mut state = 0x0bad_5eedu64;
        let edges = [
            0.0f32,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            1e9,
            -1e9,
            6.1035156e-5,
            6.097555e-5,
            5.9604645e-8,
            2.9802322e-8,
            2.9802326e-8,
            1e-10,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0x7fc1_2345),
        ];
        let randoms = (0..200_000).map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            f32::from_bits((state >> 32) as u32)
        });
        // Every f16 value and every midpoint between neighbours (the rounding ties).
        let ties = (0..0x7c00u16).flat_map(|h| {
            let a = f16::from_bits(h).to_f32() as f64;
            let b = f16::from_bits(h + 1).to_f32() as f64;
            [a as f32, ((a + b) / 2.0) as f32, -(((a + b) / 2.0) as f32)]
        });
        for v in edges.into_iter().chain(randoms).chain(ties) {
            assert_eq!(
                f32_to_f16_bits(v),
                f16::from_f32(v).to_bits(),
                "f32 {v:e} ({:#010x})",
                v.to_bits()
            );
        }
    }

    #[test]
    fn slice_conversions_round_trip() {
        let src: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let mut h = vec![f16::ZERO; src.len()];
        let mut b = vec![bf16::ZERO; src.len()];
        f16::store_f32(&src, &mut h);
        bf16::store_f32(&src, &mut b);
        let mut back = vec![0.0f32; src.len()];
        f16::load_f32(&h, &mut back);
        for (x, y) in src.iter().zip(&back) {
            assert!((x - y).abs() <= x.abs() * 1e-3);
        }
        bf16::load_f32(&b, &mut back);
        for (x, y) in src.iter().zip(&back) {
            assert!((x - y).abs() <= x.abs() * 8e-3);
        }
    }

    #[test]
    fn dtype_names_parse() {
        for dt in DType::ALL {
            assert_eq!(dt.as_str().parse::<DType>(), Ok(dt));
        }
        assert!("f64".parse::<DType>().is_err());
    }
}
