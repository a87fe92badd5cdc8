// A3D asymmetric depth fusion: forward, grad-input and deterministic grad-weight kernels.
//
// Operator (docs: shared/docs/operator.md). x, y, dx, dy are contiguous [B, C, D, P] (P = H*W);
// w, dw are contiguous [D, D, C], entry (d, k, c) at (d*D + k)*C + c.
//   forward      y[b,c,k,p]  = sum_d  x[b,c,d,p]  * w[d,k,c]
//   grad input   dx[b,c,d,p] = sum_k  dy[b,c,k,p] * w[d,k,c]
//   grad weight  dw[d,k,c]   = sum_{b,p} x[b,c,d,p] * dy[b,c,k,p]
// Storage f32 / f16 / bf16; arithmetic always in f32 (the last dw reduction step in f64).
//
// ==========================================================================================
// KERNELS (156; the A3D_FUSION_KERNELS X-macro at the end lists them)
//   fusion_forward_<dt>_<dN>(const T* x,  const T* w, T* y,  A3dFusionParams p)
//   fusion_grad_input_<dt>_<dN>(const T* dy, const T* w, T* dx, A3dFusionParams p)
//   fusion_grad_weight_partial_<dt>_<dN>(const T* x, const T* dy, float* partials, A3dFusionParams p)
//   fusion_grad_weight_reduce_<dt>(const float* partials, T* dw, A3dFusionParams p)
// dt: f32 (float), f16 (__half), bf16 (__nv_bfloat16: host compilation and sm_80+ only, see
// A3D_FUSION_BF16_ENABLED). dN: d1..d16 (depth = N at compile time, everything unrolled; the
// kernel uses N and ignores p.depth, which must equal N) or dn (any depth >= 1, from p.depth).
// Block: always (A3D_FUSION_BLOCK = 256, 1, 1). Kernels are declared
// __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS = 2): the explicit minimum of 2
// resident blocks caps registers at 128 and disables ptxas' own occupancy heuristic, which
// otherwise trades a few bytes of spills for occupancy in some kernels (see the note at the
// kernel definitions). Result: no spills / stack frame on sm_75..sm_90, 40..128 registers.
//
// WORK DECOMPOSITION (all kernels but reduce)
//   unit     = V consecutive pixels of one (b, c, slice) row, V = 16 bytes / sizeof(T) (4 for
//              f32, 8 for f16/bf16); a channel has U = B * ceil(P/V) units u = b*ceil(P/V) + j.
//   grid     = 2-D (gx, gy): blockIdx.y is the channel (c = blockIdx.y, += gridDim.y while < C),
//              blockIdx.x splits the U units of that channel (grid-stride). gy = min(C, 65535) is
//              the natural choice; every block therefore works on one channel at a time and
//              stages what it needs of that channel (weights, tiles) in shared memory.
//   vectors  = 16-byte loads/stores (float4, or uint4 holding 8 halves) when all tensor pointers
//              of the launch are 16-byte aligned and P % V == 0 ("vec", decided per launch);
//              otherwise the same units are walked with masked scalar accesses. Both paths do
//              the same arithmetic in the same order: results, dw included, are bitwise
//              independent of the alignment.
//   indexing = 64-bit everywhere; a per-thread cursor walks the units without a division per
//              step.
//
// forward / grad_input, _d1.._d16 -- ANY grid (gx >= 1, gy >= 1) is correct.
//   Both are out[o] = sum_i in[i] * M[o][i] with M[k][d] = w[d,k,c] (forward) or M[d][k] =
//   w[d,k,c] (grad_input); the block stages M (D x D floats) in shared memory per channel.
//   A unit is shared by L = V/4 lanes (f32: 1, 16-bit: 2); lane h owns pixels 4h..4h+3 (a
//   "quad") and holds its D input quads in registers (4*D floats, <= 64), then computes the
//   outputs two rows at a time from broadcast float4 shared-memory reads of M. 16-bit lanes
//   swap one packed row with their partner (2 shuffled words) so that every store is a full
//   16-byte vector. For small D a thread takes R = max(1, 4*L/D) grid steps per iteration (all
//   loads issued together): >= 64 bytes of distinct loads in flight per thread.
//   Units per block per step: UPB = 256/L (f32 256, 16-bit 128); per iteration R*UPB.
//   Recommended grid: gy = min(C, 65535);
//     gx = clamp(ceil(4 * RES / gy), 1, ceil(U / (UPB * R)))
//   where RES = resident blocks on the device = SMs * cuOccupancyMaxActiveBlocksPerMultiprocessor
//   (2..4 per SM here: see the ptxas report that build/cuda.rs writes; 2 * SMs if unknown).
//   That is ~4 waves of equal blocks (tail <= 25%) and never more blocks per channel than there
//   are unit chunks. Memory-level parallelism: every resident thread has R*D 16-byte loads
//   outstanding per iteration (D = 3, f32, 3 blocks/SM: ~36 KiB/SM; D = 7: ~86 KiB/SM).
//
// forward / grad_input, _dn: outputs in blocks of KB = 32/V (f32 8, 16-bit 4; 32 accumulators),
//   inputs streamed 4 slices at a time (raw 16-byte vectors), one unit per thread, M staged in
//   shared memory transposed when D <= 64 (16 KiB), read from global memory (block-uniform
//   broadcast loads through L1) when D > 64. Input slices are re-read once per output block
//   (ceil(D/KB) passes; the repeats mostly hit L1/L2). Grid as above with UPB = 256, R = 1.
//
// grad_weight_partial -- grid (gx = p.partial_blocks, gy = min(C, 65535)); blocks with
//   blockIdx.x >= partial_blocks do nothing. Block bx owns a FIXED subset of the channel's units
//   (function of bx, partial_blocks and the shape only), reduces it with a fixed tree and writes
//   ALL D*D entries of partials[((c*partial_blocks + bx)*D + d)*D + k] (zeros when it had no
//   units). No atomics. Partials buffer: C * partial_blocks * D * D floats.
//   _d1.._d16 (shared-memory staged): tiles of TU consecutive units, tile ti = bx + i*PB.
//     Staging: every thread issues all of its 16-byte loads of the tile at once (8..32 KiB per
//     block in flight), converts to f32 and stores to shared memory. Compute: the DxD matrix is
//     cut into EB x EB entry blocks (EB = min(D, 4)); TPE threads share an entry block, each
//     accumulating its pixel quads with float4 shared loads. Then butterfly shuffles inside
//     groups of min(TPE, 32) lanes and the groups added in order through shared memory.
//        D        1     2     3     4    5-8   9-12  13-16
//        TU f32   256   256   256   256  128   64    64      (units per tile)
//        TU 16b   256   256   128   128  64    32    32
//     Shared memory 8..33 KiB per block.
//   _dn: 4x4 tiles of the DxD matrix, up to ntb = min(32, pow2ceil(#tiles)) tiles per pass
//     (lanes t % ntb), unit lane t / ntb, block bx owning units with (u / (256/ntb)) % PB == bx;
//     ceil(#tiles / ntb) passes re-read the block's units.
//   Recommended: partial_blocks = clamp(ceil(2 * RES / gy), 1, ceil(U / TU)) (for _dn use
//   TU = 256/ntb). The partial sums -- hence the last bits of dw -- depend on partial_blocks:
//   for bitwise agreement across GPU models derive it from the shape only (e.g. RES = 1024).
//
// grad_weight_reduce -- any 1-D grid; thread i (grid-stride) handles entry i = c*D*D + d*D + k
//   (coalesced partial reads), adds its partial_blocks partials in increasing block order in
//   f64, rounds to f32 and then to T, writes dw[(d*D + k)*C + c]. Bitwise reproducible.
//   Grid: min(ceil(C*D*D / 256), 4 * SMs) blocks.
//
// HOST EMULATION (kernels/emulation/cuda_host_shim.h, g++ -std=c++20): uses only threadIdx /
// blockIdx / blockDim / gridDim, __syncthreads (block-uniform control flow only, no early
// return before it), __shfl_xor_sync with the full mask executed by all 32
// lanes (the loops around them have warp-uniform trip counts), statically sized __shared__
// arrays in function bodies, the fp16/bf16 conversion functions and the __half_raw /
// __nv_bfloat16_raw bit views of cuda_fp16.h / cuda_bf16.h, float4/uint2/uint4 with
// reinterpret_cast, templates, `if constexpr`.
// ==========================================================================================

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "fusion_params.h"

#if defined(A3D_FUSION_BF16_ENABLED)
#error "A3D_FUSION_BF16_ENABLED must not be predefined"
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define A3D_FUSION_BF16_ENABLED 1
#endif

namespace a3d_fusion {

constexpr int kBlock = A3D_FUSION_BLOCK;
constexpr int kWarp = 32;
constexpr int kWarps = kBlock / kWarp;
static_assert(kBlock % kWarp == 0 && kBlock == 256, "the kernels assume 256-thread blocks");
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

// 0 for every reachable value of v (v < 2^63), but not provably so: used to make an expression
// depend on a loop variable so that it is not hoisted out of the loop.
__device__ __forceinline__ int opaque0(uint64_t v) { return static_cast<int>(v >> 63); }

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

// Block-uniform per-launch flags are evaluated inside the channel loop with a `salt` (the loop
// variable) rather than once at kernel entry: a value computed at entry stays live across the
// hot loop, and ptxas prefers spilling such rarely used values to giving up occupancy.
__device__ __forceinline__ uint64_t salted(uint64_t value, uint64_t salt) {
    return value | static_cast<uint64_t>(opaque0(salt));
}

// ------------------------------------------------------------------------------------------
// Storage types: 16-byte raw vector and conversions.
// ------------------------------------------------------------------------------------------
template <typename T> struct Tr;

template <> struct Tr<float> {
    typedef float4 Raw;
    static constexpr int V = 4;
    static __device__ __forceinline__ float to_f(float v) { return v; }
    static __device__ __forceinline__ float from_f(float v) { return v; }
    static __device__ __forceinline__ void unpack(const Raw& r, float (&f)[V]) {
        f[0] = r.x; f[1] = r.y; f[2] = r.z; f[3] = r.w;
    }
    static __device__ __forceinline__ Raw pack(const float (&f)[V]) {
        Raw r;
        r.x = f[0]; r.y = f[1]; r.z = f[2]; r.w = f[3];
        return r;
    }
    // Quads: 4 consecutive pixels (a whole f32 unit). Quad h of a unit (h = 0 here).
    typedef float4 QuadRaw;
    static __device__ __forceinline__ void quad(const Raw& r, int /*h*/, float (&f)[4]) { unpack(r, f); }
    static __device__ __forceinline__ QuadRaw pack_quad(const float (&f)[4]) { return pack(f); }
};

// Eight 16-bit values in a uint4, element 2i in the low half of word i (little endian, the
// memory order). H is __half or __nv_bfloat16, HR its raw (bit) struct.
template <typename H, typename HR> struct Tr16 {
    typedef uint4 Raw;
    static constexpr int V = 8;
    static __device__ __forceinline__ float bits_to_f(uint32_t bits16) {
        HR r;
        r.x = static_cast<unsigned short>(bits16);
        return Tr<H>::to_f(H(r));
    }
    static __device__ __forceinline__ uint32_t f_to_bits(float f) {
        HR r = Tr<H>::from_f(f);
        return static_cast<uint32_t>(r.x);
    }
    static __device__ __forceinline__ void unpack_word(uint32_t w, float& lo, float& hi) {
        lo = bits_to_f(w & 0xffffu);
        hi = bits_to_f(w >> 16);
    }
    static __device__ __forceinline__ uint32_t pack_word(float lo, float hi) {
        return f_to_bits(lo) | (f_to_bits(hi) << 16);
    }
    static __device__ __forceinline__ void unpack(const Raw& r, float (&f)[V]) {
        unpack_word(r.x, f[0], f[1]);
        unpack_word(r.y, f[2], f[3]);
        unpack_word(r.z, f[4], f[5]);
        unpack_word(r.w, f[6], f[7]);
    }
    static __device__ __forceinline__ Raw pack(const float (&f)[V]) {
        Raw r;
        r.x = pack_word(f[0], f[1]);
        r.y = pack_word(f[2], f[3]);
        r.z = pack_word(f[4], f[5]);
        r.w = pack_word(f[6], f[7]);
        return r;
    }
    // Quads: 4 consecutive pixels, half a unit: quad h = words 2h, 2h+1.
    typedef uint2 QuadRaw;
    static __device__ __forceinline__ void quad(const Raw& r, int h, float (&f)[4]) {
        unpack_word(h ? r.z : r.x, f[0], f[1]);
        unpack_word(h ? r.w : r.y, f[2], f[3]);
    }
    static __device__ __forceinline__ QuadRaw pack_quad(const float (&f)[4]) {
        QuadRaw q;
        q.x = pack_word(f[0], f[1]);
        q.y = pack_word(f[2], f[3]);
        return q;
    }
};

template <> struct Tr<__half> : Tr16<__half, __half_raw> {
    static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
};

template <> struct Tr<__nv_bfloat16> : Tr16<__nv_bfloat16, __nv_bfloat16_raw> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};

// Loads the unit (V pixels) starting at ptr: one 16-byte vector when `vec`, else `valid` (<= V)
// scalar loads with the rest zero-filled. (`vec` is a runtime, block-uniform flag rather than a
// template parameter: the arithmetic is emitted once per kernel, which halves compile time.)
template <typename T>
__device__ __forceinline__ void load_unit(const T* __restrict__ ptr, bool vec, uint64_t valid,
                                          float (&f)[Tr<T>::V]) {
    constexpr int V = Tr<T>::V;
    if (vec) {
        const typename Tr<T>::Raw r = *reinterpret_cast<const typename Tr<T>::Raw*>(ptr);
        Tr<T>::unpack(r, f);
    } else {
#pragma unroll
        for (int v = 0; v < V; ++v) f[v] = (static_cast<uint64_t>(v) < valid) ? Tr<T>::to_f(ptr[v]) : 0.0f;
    }
}

// Same, kept as the raw 16-byte vector (the scalar path packs the converted values, which is
// exact: every storage value round-trips through f32).
template <typename T>
__device__ __forceinline__ typename Tr<T>::Raw load_raw(const T* __restrict__ ptr, bool vec, uint64_t valid) {
    if (vec) {
        return *reinterpret_cast<const typename Tr<T>::Raw*>(ptr);
    } else {
        float f[Tr<T>::V];
        load_unit<T>(ptr, false, valid, f);
        return Tr<T>::pack(f);
    }
}

template <typename T>
__device__ __forceinline__ void store_unit(T* __restrict__ ptr, bool vec, uint64_t valid,
                                           const float (&f)[Tr<T>::V]) {
    constexpr int V = Tr<T>::V;
    if (vec) {
        *reinterpret_cast<typename Tr<T>::Raw*>(ptr) = Tr<T>::pack(f);
    } else {
#pragma unroll
        for (int v = 0; v < V; ++v)
            if (static_cast<uint64_t>(v) < valid) ptr[v] = Tr<T>::from_f(f[v]);
    }
}

// 16-bit quad packed in two words (only meaningful for 16-bit types; the f32 instantiation is
// dead code behind `L == 1`).
template <typename T>
__device__ __forceinline__ uint2 pack_quad16(const float (&f)[4]) {
    uint2 q;
    if constexpr (Tr<T>::V == 8) {
        q = Tr<T>::pack_quad(f);
    } else {
        q.x = 0u; q.y = 0u;
        (void)f;
    }
    return q;
}

// Quad h (pixels 4h..4h+3) of the unit at `unit`: the vector path loads the whole 16-byte unit
// (the L = V/4 lanes sharing a unit load the same address; one L1 wavefront serves them) and
// keeps its quad; the scalar path loads only the quad's valid elements.
template <typename T>
__device__ __forceinline__ void load_quad(const T* __restrict__ unit, bool vec, int h, uint64_t valid,
                                          float (&f)[4]) {
    if (vec) {
        const typename Tr<T>::Raw r = *reinterpret_cast<const typename Tr<T>::Raw*>(unit);
        Tr<T>::quad(r, h, f);
    } else {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            const uint64_t e = static_cast<uint64_t>(4 * h + v);
            f[v] = e < valid ? Tr<T>::to_f(unit[e]) : 0.0f;
        }
    }
}

template <typename T>
__device__ __forceinline__ void store_quad_scalar(T* __restrict__ unit, int h, uint64_t valid,
                                                  const float (&f)[4]) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
        const uint64_t e = static_cast<uint64_t>(4 * h + v);
        if (e < valid) unit[e] = Tr<T>::from_f(f[v]);
    }
}

// ------------------------------------------------------------------------------------------
// Cursor over the units u = start, start + stride, ... of channel c (u = b*nunits + j), without
// a division per step. `off` is the element offset of slice 0 of the unit,
// (b*C + c)*D*P + j*V; the unit exists (b < B) iff off < end = (B*C + c)*D*P (C >= 1, D*P >= P).
// Few live 64-bit values on purpose: every register here counts against the budget that keeps
// ptxas from trading spills for occupancy.
// ------------------------------------------------------------------------------------------
struct Cursor {
    uint64_t off, j, end, step, sr, wrap, nunits;
    // nunits > 0 is guaranteed by the callers.
    __device__ __forceinline__ Cursor(uint64_t start, uint64_t stride, uint64_t nunits_, uint64_t B,
                                      uint64_t C, uint64_t c, uint64_t slab, uint64_t V)
        : nunits(nunits_) {
        const uint64_t b = start / nunits;
        j = start - b * nunits;
        const uint64_t sq = stride / nunits;
        sr = stride - sq * nunits;
        off = (b * C + c) * slab + j * V;
        step = sq * C * slab + sr * V;
        wrap = C * slab - nunits * V;
        end = (B * C + c) * slab;
    }
    __device__ __forceinline__ bool live() const { return off < end; }
    __device__ __forceinline__ void next() {
        off += step;
        j += sr;
        if (j >= nunits) {
            j -= nunits;
            off += wrap;
        }
    }
};

// ------------------------------------------------------------------------------------------
// forward / grad_input, compile-time depth.
// Matrix M[o][i] (output slice o, input slice i): forward M[k][d] = w[d,k,c]; grad_input
// M[d][k] = w[d,k,c]. out[o] = sum_i in[i] * M[o][i], i increasing.
// ------------------------------------------------------------------------------------------
// Sum over inputs of one output row o for one quad: acc = sum_i xf[i] * m[o][i], i increasing.
template <int D>
__device__ __forceinline__ void mix_row(const float4* sm, int o, const float (&xf)[D][4], float (&acc)[4]) {
    constexpr int DQ = (D + 3) / 4;
    float m[DQ * 4];
#pragma unroll
    for (int q = 0; q < DQ; ++q) {
        const float4 t = sm[o * DQ + q];
        m[4 * q + 0] = t.x; m[4 * q + 1] = t.y; m[4 * q + 2] = t.z; m[4 * q + 3] = t.w;
    }
#pragma unroll
    for (int v = 0; v < 4; ++v) acc[v] = xf[0][v] * m[0];
#pragma unroll
    for (int i = 1; i < D; ++i) {
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[v] = xf[i][v] * m[i] + acc[v];
    }
}

// Stores output rows o (a0) and o+1 (a1, if `two`) of one quad. 16-bit types: the two lanes of
// a unit build the 16-byte vectors together -- each lane sends its partner the row it does not
// store (2 shuffled words), lane 0 stores row o, lane 1 row o+1. The shuffles run on every lane
// (`live` only gates the stores), so the caller's loop must be warp-uniform.
template <typename T>
__device__ __forceinline__ void store_rows(T* __restrict__ row0, uint64_t P, bool two, bool vec,
                                           bool live, int h, uint64_t valid, const float (&a0)[4],
                                           const float (&a1)[4]) {
    constexpr int L = Tr<T>::V / 4;
    T* row1 = row0 + P;
    if (vec) {
        if constexpr (L == 1) {
            if (live) {
                *reinterpret_cast<typename Tr<T>::QuadRaw*>(row0) = Tr<T>::pack_quad(a0);
                if (two) *reinterpret_cast<typename Tr<T>::QuadRaw*>(row1) = Tr<T>::pack_quad(a1);
            }
        } else {
            const uint2 q0 = pack_quad16<T>(a0), q1 = pack_quad16<T>(a1);
            const uint2 send = h ? q0 : q1;
            uint2 recv;
            recv.x = __shfl_xor_sync(kFullMask, send.x, 1);
            recv.y = __shfl_xor_sync(kFullMask, send.y, 1);
            if (live) {
                uint4 r;
                if (h == 0) {
                    r.x = q0.x; r.y = q0.y; r.z = recv.x; r.w = recv.y;
                    *reinterpret_cast<uint4*>(row0) = r;
                } else if (two) {
                    r.x = recv.x; r.y = recv.y; r.z = q1.x; r.w = q1.y;
                    *reinterpret_cast<uint4*>(row1) = r;
                }
            }
        }
    } else if (live) {
        store_quad_scalar<T>(row0, h, valid, a0);
        if (two) store_quad_scalar<T>(row1, h, valid, a1);
    }
}

// One unit (V pixels) is handled by L = V/4 adjacent lanes, lane h owning pixels 4h..4h+3 (a
// "quad"): every thread holds 4*D input values whatever the dtype. For small D a thread takes
// R = max(1, 4*L/D) consecutive grid-stride steps per iteration (R units, all loads issued
// together), so that it keeps >= 64 bytes of distinct loads in flight (the L lanes of a unit
// load the same 16-byte vectors). The loop runs a warp-uniform number of iterations
// (16-bit stores shuffle); lanes past the end of the channel ("!live") compute on zeros and
// store nothing.
template <typename T, int D>
__device__ __forceinline__ void mix_units(const T* __restrict__ in, T* __restrict__ out,
                                          const float4* s_m4, bool vec, uint64_t c, uint64_t B,
                                          uint64_t C, uint64_t P, uint64_t nunits) {
    constexpr int V = Tr<T>::V;
    constexpr int L = V / 4;           // lanes per unit
    constexpr int UPB = kBlock / L;    // units per block per step
    constexpr int UPW = kWarp / L;     // units per warp per step
    constexpr int R = 4 * L / D > 1 ? 4 * L / D : 1;  // steps per iteration
    // For D >= 5 the D*D weights must not be hoisted out of the unit loop into registers (the
    // compiler does that with loop-invariant shared loads and then spills): the shared-memory
    // address gets an opaque zero that changes with the loop.
    constexpr bool kHoist = D * D <= 16;
    const int h = static_cast<int>(threadIdx.x % L);
    const uint64_t units = B * nunits;
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * UPB;
    const uint64_t first = static_cast<uint64_t>(blockIdx.x) * UPB;
    const uint64_t wfirst = first + static_cast<uint64_t>(threadIdx.x / kWarp) * UPW;
    const uint64_t steps = wfirst < units ? (units - 1 - wfirst) / stride + 1 : 0;
    const uint64_t iters = (steps + R - 1) / R;  // warp-uniform
    const uint64_t slab = static_cast<uint64_t>(D) * P;
    Cursor it(first + threadIdx.x / L, stride, nunits, B, C, c, slab, V);
    for (uint64_t n = iters; n != 0; --n) {
        uint64_t base[R], valid[R];
        bool live[R];
        float xf[R][D][4];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            live[r] = it.live();
            base[r] = it.off;
            valid[r] = min_u64(V, P - it.j * V);
            it.next();
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int i = 0; i < D; ++i) {
                if (live[r]) {
                    load_quad<T>(in + base[r] + static_cast<uint64_t>(i) * P, vec, h, valid[r], xf[r][i]);
                } else {
#pragma unroll
                    for (int v = 0; v < 4; ++v) xf[r][i][v] = 0.0f;
                }
            }
        }
        const float4* sm = kHoist ? s_m4 : s_m4 + opaque0(base[0]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
            for (int o = 0; o < D; o += 2) {
                const bool two = o + 1 < D;  // compile-time after unrolling
                float a0[4], a1[4];
                mix_row<D>(sm, o, xf[r], a0);
                if (two) {
                    mix_row<D>(sm, o + 1, xf[r], a1);
                } else {
#pragma unroll
                    for (int v = 0; v < 4; ++v) a1[v] = 0.0f;
                }
                store_rows<T>(out + base[r] + static_cast<uint64_t>(o) * P, P, two, vec, live[r], h,
                              valid[r], a0, a1);
            }
        }
    }
}

template <typename T, int D, bool kTrans>
__device__ __forceinline__ void mix_kernel(const T* __restrict__ in, const T* __restrict__ w,
                                           T* __restrict__ out, const A3dFusionParams& p) {
    constexpr int V = Tr<T>::V;
    constexpr int DQ = (D + 3) / 4;
    constexpr int DW = DQ * 4;
    __shared__ float4 s_m4[D * DQ];
    const uint64_t B = p.batch, C = p.channels, P = p.pixels;
    const uint64_t nunits = (P + V - 1) / V;
    const bool has_work = B > 0 && nunits > 0;
    float* s_m = reinterpret_cast<float*>(s_m4);
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        const bool vec = salted(P, c) % V == 0 && aligned16(in) && aligned16(out);
        __syncthreads();  // the previous channel's readers are done with s_m
        for (int e = static_cast<int>(salted(threadIdx.x, c)); e < D * DW; e += kBlock) {
            const int o = e / DW, i = e - (e / DW) * DW;
            float m = 0.0f;
            if (i < D) {
                const uint64_t dk = kTrans ? static_cast<uint64_t>(o) * D + i : static_cast<uint64_t>(i) * D + o;
                m = Tr<T>::to_f(w[dk * C + c]);
            }
            s_m[e] = m;
        }
        __syncthreads();
        if (has_work) mix_units<T, D>(in, out, s_m4, vec, c, B, C, P, nunits);
    }
}

// ------------------------------------------------------------------------------------------
// forward / grad_input, any depth.
// ------------------------------------------------------------------------------------------
// Output slices per pass: KB * V = 32 accumulators (8 for f32, 4 for 16-bit types).
template <typename T> struct DnCfg { static constexpr int KB = 32 / Tr<T>::V; };
constexpr int kDnIC = 4;          // input slices loaded together (raw 16-byte vectors)
constexpr int kDnStageMax = 64;   // weights staged in shared memory when D <= this

template <typename T, bool kTrans>
__device__ __forceinline__ void mix_units_dn(const T* __restrict__ in, const T* __restrict__ w,
                                             T* __restrict__ out, const float* s_mt, bool vec,
                                             bool staged, uint64_t c, uint64_t B, uint64_t C,
                                             uint64_t D, uint64_t P, uint64_t nunits) {
    constexpr int V = Tr<T>::V;
    constexpr int KB = DnCfg<T>::KB;
    typedef typename Tr<T>::Raw Raw;
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kBlock;
    const uint64_t start = static_cast<uint64_t>(blockIdx.x) * kBlock + threadIdx.x;
    const uint64_t slab = D * P;
    const uint64_t row = (D + KB - 1) / KB * KB;  // staged row length (outputs)
    Cursor it(start, stride, nunits, B, C, c, slab, V);
    while (it.live()) {
        const uint64_t base = it.off;
        const uint64_t valid = min_u64(V, P - it.j * V);
        for (uint64_t k0 = 0; k0 < D; k0 += KB) {
            float acc[KB][V];
#pragma unroll
            for (int kk = 0; kk < KB; ++kk)
#pragma unroll
                for (int v = 0; v < V; ++v) acc[kk][v] = 0.0f;
            for (uint64_t i0 = 0; i0 < D; i0 += kDnIC) {
                Raw xr[kDnIC];
#pragma unroll
                for (int ii = 0; ii < kDnIC; ++ii) {
                    if (i0 + ii < D) xr[ii] = load_raw<T>(in + base + (i0 + ii) * P, vec, valid);
                }
#pragma unroll
                for (int ii = 0; ii < kDnIC; ++ii) {
                    const uint64_t i = i0 + ii;
                    if (i < D) {
                        float xf[V];
                        Tr<T>::unpack(xr[ii], xf);
                        float m[KB];
                        if (staged) {
                            const float4* r4 = reinterpret_cast<const float4*>(s_mt + i * row + k0);
#pragma unroll
                            for (int q = 0; q < KB / 4; ++q) {
                                const float4 t = r4[q];
                                m[4 * q + 0] = t.x; m[4 * q + 1] = t.y; m[4 * q + 2] = t.z; m[4 * q + 3] = t.w;
                            }
                        } else {
#pragma unroll
                            for (int kk = 0; kk < KB; ++kk) {
                                const uint64_t o = k0 + kk;
                                float mv = 0.0f;
                                if (o < D) mv = Tr<T>::to_f(w[(kTrans ? o * D + i : i * D + o) * C + c]);
                                m[kk] = mv;
                            }
                        }
#pragma unroll
                        for (int kk = 0; kk < KB; ++kk)
#pragma unroll
                            for (int v = 0; v < V; ++v) acc[kk][v] = xf[v] * m[kk] + acc[kk][v];
                    }
                }
            }
#pragma unroll
            for (int kk = 0; kk < KB; ++kk) {
                if (k0 + kk < D) store_unit<T>(out + base + (k0 + kk) * P, vec, valid, acc[kk]);
            }
        }
        it.next();
    }
}

template <typename T, bool kTrans>
__device__ __forceinline__ void mix_kernel_dn(const T* __restrict__ in, const T* __restrict__ w,
                                              T* __restrict__ out, const A3dFusionParams& p) {
    constexpr int V = Tr<T>::V;
    constexpr int KB = DnCfg<T>::KB;
    constexpr int kStageFloats = kDnStageMax * kDnStageMax;
    __shared__ float4 s_mt4[kStageFloats / 4];
    const uint64_t B = p.batch, C = p.channels, D = p.depth, P = p.pixels;
    const uint64_t nunits = (P + V - 1) / V;
    const bool has_work = B > 0 && nunits > 0 && D > 0;
    const uint64_t row = (D + KB - 1) / KB * KB;
    float* s_mt = reinterpret_cast<float*>(s_mt4);
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        const bool vec = salted(P, c) % V == 0 && aligned16(in) && aligned16(out);
        const bool staged = salted(D, c) <= static_cast<uint64_t>(kDnStageMax);
        // s_mt[i*row + o] = M[o][i], zero padded to `row` outputs (staged only; the condition is
        // uniform over the block, so the barriers are not divergent).
        __syncthreads();
        if (staged) {
            for (uint64_t e = salted(threadIdx.x, c); e < D * row; e += kBlock) {
                const uint64_t i = e / row, o = e - (e / row) * row;
                float m = 0.0f;
                if (o < D) m = Tr<T>::to_f(w[(kTrans ? o * D + i : i * D + o) * C + c]);
                s_mt[e] = m;
            }
        }
        __syncthreads();
        if (has_work) mix_units_dn<T, kTrans>(in, w, out, s_mt, vec, staged, c, B, C, D, P, nunits);
    }
}

// ------------------------------------------------------------------------------------------
// grad_weight partials, compile-time depth.
// ------------------------------------------------------------------------------------------
// Shared-memory staged: the block walks its tiles of TU consecutive units of channel c (tile
// ti = blockIdx.x + i*partial_blocks). Per tile:
//  1. staging -- every thread loads its SLOTS 16-byte vectors of the tile (unit t % TU, slices
//     t / TU + i*(256/TU) of x then dy), all issued before any is used, converts them to f32 and
//     stores them to xs[Dp][TP] / gs[Dp][TP] (8..32 KiB in flight per block);
//  2. compute -- the DxD matrix is cut into EB x EB entry blocks (EB = min(D, 4)); TPE threads
//     share an entry block, each owning pixel quads p = (q*TPE + t % TPE)*4, q < QPT, and
//     accumulating acc[r][s] += x[d0+r][p+v] * dy[k0+s][p+v] (float4 shared loads).
// After the last tile: butterfly over the (<= 32) lanes of an entry block's group, then the
// groups of an entry block added in order through shared memory. Everything (tile order, quad
// order, tree) is fixed by blockIdx.x, partial_blocks and the shape; the vector and the scalar
// staging produce the same shared-memory contents, so the result does not depend on alignment.
template <int D, int V> struct DwCfg {
    static constexpr int pow2floor(int v) { return v >= 256 ? 256 : v >= 128 ? 128 : v >= 64 ? 64 : v >= 32 ? 32 : v >= 16 ? 16 : v >= 8 ? 8 : v >= 4 ? 4 : v >= 2 ? 2 : 1; }
    static constexpr int min_i(int a, int b) { return a < b ? a : b; }
    static constexpr int EB = D < 4 ? D : 4;                 // entry block edge
    static constexpr int NEd = (D + EB - 1) / EB;
    static constexpr int NE = NEd * NEd;                     // entry blocks (<= 16)
    static constexpr int Dp = NEd * EB;                      // padded rows (zero-filled)
    static constexpr int TPE = pow2floor(kBlock / NE);       // threads per entry block
    static constexpr int kStageFloats = 8192;                // 32 KiB for xs + gs
    static constexpr int QPT = min_i(min_i(4, pow2floor(kStageFloats / (2 * Dp) / (4 * TPE))),
                                     kBlock * V / (4 * TPE));  // quads per thread per tile
    static constexpr int TP = 4 * TPE * QPT;                 // pixels per tile
    static constexpr int TU = TP / V;                        // units per tile (<= 256)
    static constexpr int TPU = kBlock / TU;                  // staging threads per unit
    static constexpr int SLOTS = (2 * D + TPU - 1) / TPU;    // staged vectors per thread
    static constexpr int GW = TPE < kWarp ? TPE : kWarp;     // reduction group width
    static constexpr int NG = TPE / GW;                      // groups per entry block
    static_assert(QPT >= 1 && TU >= 1 && TU <= kBlock && kBlock % TU == 0, "tile shape");
    static_assert(2 * Dp * TP <= kStageFloats, "staging buffer");
    static_assert(NE * TPE <= kBlock && (kBlock / GW) * EB * EB <= 256, "reduction buffer");
};

template <typename T, int D>
__device__ __forceinline__ void dw_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                          float* __restrict__ partials, const A3dFusionParams& p) {
    constexpr int V = Tr<T>::V;
    typedef DwCfg<D, V> Cfg;
    constexpr int EB = Cfg::EB, NEd = Cfg::NEd, NE = Cfg::NE, Dp = Cfg::Dp, TPE = Cfg::TPE;
    constexpr int QPT = Cfg::QPT, TP = Cfg::TP, TU = Cfg::TU, TPU = Cfg::TPU, SLOTS = Cfg::SLOTS;
    constexpr int GW = Cfg::GW, NG = Cfg::NG;
    __shared__ float4 s_stage4[2 * Dp * TP / 4];  // xs rows 0..Dp-1, then gs rows
    __shared__ float s_red[256];
    float* s_stage = reinterpret_cast<float*>(s_stage4);
    const uint64_t B = p.batch, C = p.channels, P = p.pixels, PB = p.partial_blocks;
    const uint64_t nunits = (P + V - 1) / V;
    const uint64_t units = B * nunits;
    const uint64_t slab = static_cast<uint64_t>(D) * P;
    // Padding rows (D <= d < Dp) of both halves are never staged: zero them once.
    if constexpr (Dp > D) {
        constexpr int kPad = (Dp - D) * TP;
        for (int e = threadIdx.x; e < 2 * kPad; e += kBlock) s_stage[((e / kPad) * Dp + D) * TP + e % kPad] = 0.0f;
    }
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        const bool active = salted(blockIdx.x, c) < PB;  // blocks beyond partial_blocks own nothing
        const bool vec = salted(P, c) % V == 0 && aligned16(x) && aligned16(dy);
        const uint64_t tiles = (units + TU - 1) / TU;
        const uint64_t my_tiles = active && blockIdx.x < tiles ? (tiles - 1 - blockIdx.x) / PB + 1 : 0;
        float acc[EB][EB];
#pragma unroll
        for (int r = 0; r < EB; ++r)
#pragma unroll
            for (int s = 0; s < EB; ++s) acc[r][s] = 0.0f;
        const int tu = static_cast<int>(threadIdx.x % TU);
        Cursor it(static_cast<uint64_t>(blockIdx.x) * TU + tu, PB * TU, nunits > 0 ? nunits : 1, B, C, c, slab, V);
        for (uint64_t n = my_tiles; n != 0; --n) {
            const bool live = it.live();
            const uint64_t base = it.off;
            const uint64_t valid = min_u64(V, P - it.j * V);
            it.next();
            float f[SLOTS][V];
#pragma unroll
            for (int i = 0; i < SLOTS; ++i) {
                const int slot = static_cast<int>(threadIdx.x / TU) + i * TPU;  // 0..2D-1: x rows, then dy rows
                if (live && (SLOTS * TPU == 2 * D || slot < 2 * D)) {
                    const T* src = slot < D ? x + base + static_cast<uint64_t>(slot) * P
                                            : dy + base + static_cast<uint64_t>(slot - D) * P;
                    load_unit<T>(src, vec, valid, f[i]);
                } else {
#pragma unroll
                    for (int v = 0; v < V; ++v) f[i][v] = 0.0f;
                }
            }
            __syncthreads();  // the previous tile's readers are done
#pragma unroll
            for (int i = 0; i < SLOTS; ++i) {
                const int slot = static_cast<int>(threadIdx.x / TU) + i * TPU;
                if (SLOTS * TPU == 2 * D || slot < 2 * D) {
                    const int row = slot < D ? slot : Dp + slot - D;
                    float4* dst = reinterpret_cast<float4*>(s_stage + row * TP + tu * V);
#pragma unroll
                    for (int q = 0; q < V / 4; ++q) {
                        float4 t;
                        t.x = f[i][4 * q + 0]; t.y = f[i][4 * q + 1]; t.z = f[i][4 * q + 2]; t.w = f[i][4 * q + 3];
                        dst[q] = t;
                    }
                }
            }
            __syncthreads();
            if (NE * TPE == kBlock || static_cast<int>(threadIdx.x) < NE * TPE) {
                const int e = static_cast<int>(threadIdx.x) / TPE, pg = static_cast<int>(threadIdx.x) % TPE;
                const int d0 = (e / NEd) * EB, k0 = (e % NEd) * EB;
#pragma unroll
                for (int q = 0; q < QPT; ++q) {
                    const int px = (q * TPE + pg) * 4;
                    float xq[EB][4], gq[EB][4];
#pragma unroll
                    for (int r = 0; r < EB; ++r) {
                        const float4 a = *reinterpret_cast<const float4*>(s_stage + (d0 + r) * TP + px);
                        xq[r][0] = a.x; xq[r][1] = a.y; xq[r][2] = a.z; xq[r][3] = a.w;
                        const float4 g = *reinterpret_cast<const float4*>(s_stage + (Dp + k0 + r) * TP + px);
                        gq[r][0] = g.x; gq[r][1] = g.y; gq[r][2] = g.z; gq[r][3] = g.w;
                    }
#pragma unroll
                    for (int r = 0; r < EB; ++r)
#pragma unroll
                        for (int s = 0; s < EB; ++s)
#pragma unroll
                            for (int v = 0; v < 4; ++v) acc[r][s] = xq[r][v] * gq[s][v] + acc[r][s];
                }
            }
        }
        // Reduction over the TPE threads of each entry block: butterfly within groups of GW
        // lanes, then the NG groups in order.
#pragma unroll
        for (int off = GW / 2; off >= 1; off /= 2) {
#pragma unroll
            for (int r = 0; r < EB; ++r)
#pragma unroll
                for (int s = 0; s < EB; ++s) acc[r][s] += __shfl_xor_sync(kFullMask, acc[r][s], off);
        }
        const int t = static_cast<int>(salted(threadIdx.x, c));
        if (t % GW == 0) {
#pragma unroll
            for (int r = 0; r < EB; ++r)
#pragma unroll
                for (int s = 0; s < EB; ++s) s_red[(t / GW) * EB * EB + r * EB + s] = acc[r][s];
        }
        __syncthreads();
        if (active) {
            for (int idx = t; idx < NE * EB * EB; idx += kBlock) {
                const int e = idx / (EB * EB), f = idx % (EB * EB);
                const int d = (e / NEd) * EB + f / EB, k = (e % NEd) * EB + f % EB;
                if (d < D && k < D) {
                    float sum = s_red[(e * NG) * EB * EB + f];
#pragma unroll
                    for (int g = 1; g < NG; ++g) sum += s_red[(e * NG + g) * EB * EB + f];
                    partials[((c * PB + blockIdx.x) * D + d) * D + k] = sum;
                }
            }
        }
        __syncthreads();  // s_red and the staging buffer are reused for the next channel
    }
}

// ------------------------------------------------------------------------------------------
// grad_weight partials, any depth: the DxD matrix is cut into tiles of kTD (d) x kTK (k).
// ------------------------------------------------------------------------------------------
constexpr int kTD = 4;
constexpr int kTK = 4;
constexpr int kRedChunk = 16;  // accumulators exchanged through shared memory per round
static_assert((kTD * kTK) % kRedChunk == 0, "chunking");

template <typename T>
__device__ __forceinline__ void dw_units_dn(const T* __restrict__ x, const T* __restrict__ dy,
                                            bool vec, uint64_t c, uint64_t B, uint64_t C,
                                            uint64_t D, uint64_t P, uint64_t nunits, uint64_t PB,
                                            uint64_t ntb, uint64_t d0, uint64_t k0,
                                            float (&acc)[kTD][kTK]) {
    constexpr int V = Tr<T>::V;
    const uint64_t upb = kBlock / ntb;
    const uint64_t start = static_cast<uint64_t>(blockIdx.x) * upb + threadIdx.x / ntb;
    const uint64_t stride = PB * upb;
    const uint64_t slab = D * P;
    Cursor it(start, stride, nunits, B, C, c, slab, V);
    while (it.live()) {
        const uint64_t base = it.off;
        const uint64_t valid = min_u64(V, P - it.j * V);
        float gf[kTK][V];
#pragma unroll
        for (int s = 0; s < kTK; ++s) {
            if (k0 + s < D) {
                load_unit<T>(dy + base + (k0 + s) * P, vec, valid, gf[s]);
            } else {
#pragma unroll
                for (int v = 0; v < V; ++v) gf[s][v] = 0.0f;
            }
        }
#pragma unroll
        for (int r = 0; r < kTD; ++r) {
            if (d0 + r < D) {
                float xf[V];
                load_unit<T>(x + base + (d0 + r) * P, vec, valid, xf);
#pragma unroll
                for (int s = 0; s < kTK; ++s)
#pragma unroll
                    for (int v = 0; v < V; ++v) acc[r][s] = xf[v] * gf[s][v] + acc[r][s];
            }
        }
        it.next();
    }
}

template <typename T>
__device__ __forceinline__ void dw_kernel_dn(const T* __restrict__ x, const T* __restrict__ dy,
                                             float* __restrict__ partials, const A3dFusionParams& p) {
    constexpr int V = Tr<T>::V;
    __shared__ float s_red[kWarps * kWarp * kRedChunk];
    const uint64_t B = p.batch, C = p.channels, D = p.depth, P = p.pixels, PB = p.partial_blocks;
    const uint64_t nunits = (P + V - 1) / V;
    const uint64_t ntd = (D + kTD - 1) / kTD, ntk = (D + kTK - 1) / kTK;
    const uint64_t nt = ntd * ntk;
    uint64_t ntb = 1;  // tiles per pass: power of two <= 32
    while (ntb < nt && ntb < static_cast<uint64_t>(kWarp)) ntb *= 2;
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const uint64_t tl = threadIdx.x % ntb;
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        const bool active = salted(blockIdx.x, c) < PB;  // blocks beyond partial_blocks own nothing
        const bool has_work = active && B > 0 && nunits > 0;
        const bool vec = salted(P, c) % V == 0 && aligned16(x) && aligned16(dy);
        for (uint64_t tb = 0; tb < nt; tb += ntb) {
            const uint64_t tile = tb + tl;
            const uint64_t d0 = (tile / ntk) * kTD, k0 = (tile % ntk) * kTK;
            float acc[kTD][kTK];
#pragma unroll
            for (int r = 0; r < kTD; ++r)
#pragma unroll
                for (int s = 0; s < kTK; ++s) acc[r][s] = 0.0f;
            if (has_work && tile < nt) dw_units_dn<T>(x, dy, vec, c, B, C, D, P, nunits, PB, ntb, d0, k0, acc);
            // Lanes with equal lane % ntb share a tile: butterfly over the other lane bits.
            for (uint64_t off = kWarp / 2; off >= ntb; off /= 2) {
#pragma unroll
                for (int r = 0; r < kTD; ++r)
#pragma unroll
                    for (int s = 0; s < kTK; ++s)
                        acc[r][s] += __shfl_xor_sync(kFullMask, acc[r][s], static_cast<int>(off));
            }
            // Lanes < ntb of each warp now hold the warp sums of tile tb + lane; add the warps in
            // order, kRedChunk accumulators at a time.
#pragma unroll
            for (int q = 0; q < kTD * kTK / kRedChunk; ++q) {
                if (static_cast<uint64_t>(lane) < ntb) {
#pragma unroll
                    for (int e = 0; e < kRedChunk; ++e) {
                        const int f = q * kRedChunk + e;
                        s_red[(warp * kWarp + lane) * kRedChunk + e] = acc[f / kTK][f % kTK];
                    }
                }
                __syncthreads();
                if (active) {
                    for (uint64_t idx = threadIdx.x + opaque0(tb); idx < ntb * kRedChunk; idx += kBlock) {
                        const uint64_t t2 = idx / kRedChunk;
                        const int e = static_cast<int>(idx % kRedChunk);
                        const uint64_t tile2 = tb + t2;
                        const int f = q * kRedChunk + e;
                        const uint64_t d = (tile2 / ntk) * kTD + f / kTK;
                        const uint64_t k = (tile2 % ntk) * kTK + f % kTK;
                        if (tile2 < nt && d < D && k < D) {
                            float sum = s_red[t2 * kRedChunk + e];
#pragma unroll
                            for (int wp = 1; wp < kWarps; ++wp) sum += s_red[(wp * kWarp + t2) * kRedChunk + e];
                            partials[((c * PB + blockIdx.x) * D + d) * D + k] = sum;
                        }
                    }
                }
                __syncthreads();
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// grad_weight final reduction: deterministic, increasing block order, f64.
// ------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void dw_reduce(const float* __restrict__ partials, T* __restrict__ dw,
                                          const A3dFusionParams& p) {
    const uint64_t C = p.channels, D = p.depth, PB = p.partial_blocks;
    const uint64_t dd = D * D;
    const uint64_t n = C * dd;
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
    for (uint64_t e = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
        const uint64_t c = e / dd, dk = e - c * dd;
        const float* src = partials + c * PB * dd + dk;
        double sum = 0.0;
        for (uint64_t blk = 0; blk < PB; ++blk) sum += static_cast<double>(src[blk * dd]);
        dw[dk * C + c] = Tr<T>::from_f(static_cast<float>(sum));
    }
}

}  // namespace a3d_fusion

// ------------------------------------------------------------------------------------------
// Kernel entry points.
//
// __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS): the second argument (at least 2
// resident blocks per SM, i.e. at most 128 registers per thread) replaces ptxas' occupancy
// heuristic. Without it ptxas squeezes some kernels to 48/64/80 registers to fit one more block
// and pays with a few bytes of spills (which the build rejects); which kernels are hit changes
// with every edit and architecture. With it no kernel spills on sm_75..sm_90, and the small-D
// kernels still use well under 128 registers (3..4 resident blocks). The host emulation's
// __launch_bounds__(...) accepts both arguments.
// ------------------------------------------------------------------------------------------
#define A3D_FUSION_MIN_BLOCKS 2

#define A3D_FUSION_DEFINE_DEPTH(dt, T, N)                                                          \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_forward_##dt##_d##N(const T* __restrict__ x, const T* __restrict__ w,               \
                                   T* __restrict__ y, A3dFusionParams p) {                         \
        a3d_fusion::mix_kernel<T, N, false>(x, w, y, p);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_grad_input_##dt##_d##N(const T* __restrict__ dy, const T* __restrict__ w,           \
                                      T* __restrict__ dx, A3dFusionParams p) {                     \
        a3d_fusion::mix_kernel<T, N, true>(dy, w, dx, p);                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_grad_weight_partial_##dt##_d##N(const T* __restrict__ x, const T* __restrict__ dy,  \
                                               float* __restrict__ partials, A3dFusionParams p) {  \
        a3d_fusion::dw_kernel<T, N>(x, dy, partials, p);                                           \
    }

#define A3D_FUSION_DEFINE_DTYPE(dt, T)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 1)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 2)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 3)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 4)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 5)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 6)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 7)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 8)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 9)                                                              \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 10)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 11)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 12)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 13)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 14)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 15)                                                             \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 16)                                                             \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_forward_##dt##_dn(const T* __restrict__ x, const T* __restrict__ w,                 \
                                 T* __restrict__ y, A3dFusionParams p) {                           \
        a3d_fusion::mix_kernel_dn<T, false>(x, w, y, p);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_grad_input_##dt##_dn(const T* __restrict__ dy, const T* __restrict__ w,             \
                                    T* __restrict__ dx, A3dFusionParams p) {                       \
        a3d_fusion::mix_kernel_dn<T, true>(dy, w, dx, p);                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_grad_weight_partial_##dt##_dn(const T* __restrict__ x, const T* __restrict__ dy,    \
                                             float* __restrict__ partials, A3dFusionParams p) {    \
        a3d_fusion::dw_kernel_dn<T>(x, dy, partials, p);                                           \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK, A3D_FUSION_MIN_BLOCKS)          \
        fusion_grad_weight_reduce_##dt(const float* __restrict__ partials, T* __restrict__ dw,     \
                                       A3dFusionParams p) {                                        \
        a3d_fusion::dw_reduce<T>(partials, dw, p);                                                 \
    }

A3D_FUSION_DEFINE_DTYPE(f32, float)
A3D_FUSION_DEFINE_DTYPE(f16, __half)
#if defined(A3D_FUSION_BF16_ENABLED)
A3D_FUSION_DEFINE_DTYPE(bf16, __nv_bfloat16)
#endif

#undef A3D_FUSION_DEFINE_DTYPE
#undef A3D_FUSION_DEFINE_DEPTH

#if defined(A3D_HOST_EMULATION)
// Host-only query of the grad-weight tile size DwCfg<D, V>::TU (units per tile), so that the
// launch planner's table (src/ops/fusion/launch.rs) is checked against the kernels' own in the
// emulation tests. -1 for a depth without a specialised kernel.
namespace {
template <int V, int... Ds>
int a3d_fusion_tile_units_of(int depth, std::integer_sequence<int, Ds...>) {
    int units = -1;
    ((depth == Ds + 1 ? (units = a3d_fusion::DwCfg<Ds + 1, V>::TU, 0) : 0), ...);
    return units;
}
}  // namespace
extern "C" int a3d_fusion_dw_tile_units(int depth, int vector_width) {
    const auto depths = std::make_integer_sequence<int, 16>{};
    if (vector_width == 4) return a3d_fusion_tile_units_of<4>(depth, depths);
    if (vector_width == 8) return a3d_fusion_tile_units_of<8>(depth, depths);
    return -1;
}
#endif

// ------------------------------------------------------------------------------------------
// X-macro of every kernel name (host emulation builds its kernel table from it).
//   A3D_FUSION_KERNELS(X)          all 156 kernels (f32, f16, bf16)
//   A3D_FUSION_KERNELS_DTYPE(X,dt) the 52 kernels of one dtype (dt = f32 | f16 | bf16)
// bf16 kernels exist in host compilation and for __CUDA_ARCH__ >= 800 only; device-side users
// of the list must test A3D_FUSION_BF16_ENABLED.
// ------------------------------------------------------------------------------------------
#define A3D_FUSION_KERNELS_OP_DTYPE(X, op, dt)                                                         \
    X(fusion_##op##_##dt##_d1) X(fusion_##op##_##dt##_d2) X(fusion_##op##_##dt##_d3)                   \
    X(fusion_##op##_##dt##_d4) X(fusion_##op##_##dt##_d5) X(fusion_##op##_##dt##_d6)                   \
    X(fusion_##op##_##dt##_d7) X(fusion_##op##_##dt##_d8) X(fusion_##op##_##dt##_d9)                   \
    X(fusion_##op##_##dt##_d10) X(fusion_##op##_##dt##_d11) X(fusion_##op##_##dt##_d12)                \
    X(fusion_##op##_##dt##_d13) X(fusion_##op##_##dt##_d14) X(fusion_##op##_##dt##_d15)                \
    X(fusion_##op##_##dt##_d16) X(fusion_##op##_##dt##_dn)

#define A3D_FUSION_KERNELS_DTYPE(X, dt)                                                                \
    A3D_FUSION_KERNELS_OP_DTYPE(X, forward, dt)                                                        \
    A3D_FUSION_KERNELS_OP_DTYPE(X, grad_input, dt)                                                     \
    A3D_FUSION_KERNELS_OP_DTYPE(X, grad_weight_partial, dt)                                            \
    X(fusion_grad_weight_reduce_##dt)

#define A3D_FUSION_KERNELS(X)                                                                          \
    A3D_FUSION_KERNELS_DTYPE(X, f32) A3D_FUSION_KERNELS_DTYPE(X, f16) A3D_FUSION_KERNELS_DTYPE(X, bf16)
