//! CPU instruction-set selection of the CPU kernels.
//!
//! The kernels are compiled three times (baseline x86-64 or the target's default, AVX2 + FMA +
//! F16C, and AVX-512) and the widest one the CPU supports runs. Results are bitwise identical
//! run to run and for any thread count; between tiers they may differ in the last bit (the
//! AVX2 and AVX-512 tiers fuse multiply-adds, the baseline does not). A user who needs the same
//! bits on different machines can cap every machine at the same tier with [`set_isa_limit`].

pub(crate) mod tier;

use std::sync::atomic::{AtomicU8, Ordering};

/// Instruction-set tiers, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Whatever the compilation target guarantees (SSE2 on x86-64); separate multiply and add.
    Baseline,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512 (F, BW, VL) with FMA and F16C.
    Avx512,
}

impl Isa {
    /// All tiers, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    /// Lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn from_u8(v: u8) -> Isa {
        match v {
            0 => Isa::Baseline,
            1 => Isa::Avx2,
            _ => Isa::Avx512,
        }
    }
}

/// The widest tier this CPU supports.
pub fn detected_isa() -> Isa {
    static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    })
}

static LIMIT: AtomicU8 = AtomicU8::new(Isa::Avx512 as u8);

/// Caps the tier the CPU kernels use (process-wide; calls already running are unaffected).
pub fn set_isa_limit(limit: Isa) {
    LIMIT.store(limit as u8, Ordering::Relaxed);
}

/// The tier the CPU kernels use now: the detected one, capped by [`set_isa_limit`].
pub fn active_isa() -> Isa {
    detected_isa().min(Isa::from_u8(LIMIT.load(Ordering::Relaxed)))
}
