// A3D asymmetric depth fusion: forward, grad-input and deterministic grad-weight kernels.
//
// Operator (docs: shared/docs/operator.md). x, y, dx, dy are contiguous [B, C, D, P] (P = H*W);
// w, dw are contiguous [D, D, C], entry (d, k, c) at (d*D + k)*C + c.
//   forward      y[b,c,k,p]  = sum_d  x[b,c,d,p]  * w[d,k,c]
//   grad input   dx[b,c,d,p] = sum_k  dy[b,c,k,p] * w[d,k,c]
//   grad weight  dw[d,k,c]   = sum_{b,p} x[b,c,d,p] * dy[b,c,k,p]
// Storage f32 / f16 / bf16, accumulation always f32 (the final dw reduction in f64).
//
// ------------------------------------------------------------------------------------------
// Kernels (suffix _d1.._d16 = depth fixed at compile time, _dn = any depth >= 1):
//   fusion_forward_<dt>_<dN|dn>(const T* x,  const T* w, T* y,  A3dFusionParams p)
//   fusion_grad_input_<dt>_<dN|dn>(const T* dy, const T* w, T* dx, A3dFusionParams p)
//   fusion_grad_weight_partial_<dt>_<dN|dn>(const T* x, const T* dy, float* partials, A3dFusionParams p)
//   fusion_grad_weight_reduce_<dt>(const float* partials, T* dw, A3dFusionParams p)
// dt = f32 (float), f16 (__half), bf16 (__nv_bfloat16; compiled only for sm_80+ and for the
// host). All kernels take blockDim = (A3D_FUSION_BLOCK = 256, 1, 1); the A3D_FUSION_KERNELS
// X-macro at the end of the file lists every name. A specialised kernel `_dN` requires
// p.depth == N (the kernel uses N and ignores p.depth).
//
// Work decomposition. A "unit" is V consecutive pixels of one (b, c) row, V = 16 bytes /
// sizeof(T) (4 for f32, 8 for f16/bf16); a channel has U = B * ceil(P / V) units, numbered
// u = b * ceil(P/V) + j. Every kernel uses the SAME 2-D grid shape (gx, gy):
//   blockIdx.y selects the channel, c = blockIdx.y, blockIdx.y + gridDim.y, ... < C, so each
//   block works on ONE channel at a time (the channel's weights are staged in shared memory
//   once per channel) and gy = min(C, 65535) is the natural choice; blockIdx.x splits the U
//   units of that channel (grid-stride).
// Loads/stores are 16-byte vectors (float4 / uint4 holding 8 halves) when every tensor pointer
// of the launch is 16-byte aligned and P % V == 0; otherwise a scalar path walks the same
// units element by element (tails masked). Both paths perform identical arithmetic in the same
// order, so results (dw included) do not depend on the pointers' alignment.
//
// forward / grad_input: ANY grid (gx >= 1, gy >= 1) is correct. Thread t of block bx handles
//   units u = bx*256 + t + i*gx*256 of each of its channels (one unit per thread per iteration,
//   loads of all D input slices of the unit issued back to back, then the D outputs computed one
//   at a time from the D inputs held in registers: D*V input registers + V accumulators, weights
//   read from shared memory as broadcast float4). Recommended host grid:
//     gy = min(C, 65535)
//     R  = resident blocks on the device = SMs * max active blocks per SM (cuOccupancy... for the
//          function; without it use 8 per SM on sm_80/86/89/90 -- 2048 threads -- and 4 on sm_75;
//          the D >= 11 f16/bf16 kernels use > 128 registers and fit one block per SM, see the
//          ptxas report written by build/cuda.rs)
//     gx = clamp(ceil(4 * R / gy), 1, ceil(U / 256))
//   i.e. about 4 waves of blocks (every SM saturated, tail < 25%) and never more blocks per
//   channel than there are 256-unit chunks. When U < 256 (tiny images, B*P < 256*V) a block is
//   partly idle; such launches are latency-bound anyway.
//   Bytes in flight per thread per iteration: D*16 (D vector loads issued before any use); at
//   full occupancy (2048 threads/SM) >= 32 KiB/SM even for D = 1, and for the register-heavy
//   large-D kernels 256..512 threads * 16*D bytes = 64..128 KiB/SM.
//
// grad_weight_partial: grid (gx = p.partial_blocks, gy = min(C, 65535)). For D <= 16, G threads
//   (G = 1 for D <= 8, 2 for D = 9..10, 4 for D = 11..16) share a unit; thread t has
//   k-subset g = t % G (KS = ceil(D/G) output slices, so D*KS <= 64 accumulators) and unit lane
//   t / G; block bx owns units u with (u / (256/G)) % partial_blocks == bx, visited in
//   increasing u (fixed subset, depends only on bx, partial_blocks and the shape). Per thread
//   the products are accumulated unit by unit, pixel by pixel in order; then a fixed
//   reduction tree: xor-butterfly warp shuffles over the lanes sharing a k-subset, then the 8
//   warp sums added in warp order from shared memory. Result: partials[((c*partial_blocks +
//   bx)*D + d)*D + k] for ALL d, k < D (zeros when the block had no units). No atomics.
//   _dn: the DxD matrix is cut into 8x8 tiles (nt = ceil(D/8)^2); up to ntb = min(32,
//   pow2ceil(nt)) tiles are processed per pass by lanes t % ntb, unit lane t / ntb; block bx
//   owns units with (u / (256/ntb)) % partial_blocks == bx; passes = ceil(nt / ntb) re-read
//   the block's units (mostly from L2).
//   Recommended: partial_blocks = clamp(ceil(2 * R / gy), 1, ceil(U * G / 256)) (for _dn use
//   G = ntb). The partial sums -- hence the last bits of dw -- depend on partial_blocks: for
//   results that are identical across GPU models compute it from the shape only (e.g. with a
//   fixed R = 1024) rather than from the SM count. Partials buffer: C * partial_blocks * D * D
//   floats.
// grad_weight_reduce: any 1-D grid; thread i (grid-stride) handles entry i = c*D*D + d*D + k
//   (reads are coalesced), sums its partial_blocks partials in increasing block order in f64,
//   rounds to f32 and then to T, writes dw[(d*D + k)*C + c]. ceil(C*D*D / 256) blocks (capped
//   at e.g. 8*SMs) is plenty.
//
// _dn forward/grad_input: outputs in blocks of KB = 16 (16*V accumulators), inputs streamed in
//   chunks of 8 slices (8 raw 16-byte vectors in flight per thread), the block's weight matrix
//   staged in shared memory (transposed, rows padded to 16) when D <= 64, read through L1 from
//   global memory (block-uniform broadcast loads) when D > 64. Input slices are re-read once
//   per output block (ceil(D/16) passes; the repeats are mostly L1/L2 hits).
//
// Constraints honoured for the host emulation (kernels/emulation/cuda_host_shim.h): only
// threadIdx/blockIdx/blockDim/gridDim, __syncthreads (never in divergent code, no early return
// before it), __shfl_xor_sync with full mask by all 32 lanes, statically sized __shared__
// arrays in function bodies, fp16/bf16 conversion functions (plus the __half_raw /
// __nv_bfloat16_raw bit views of cuda_fp16.h / cuda_bf16.h), float4/uint4 via reinterpret_cast.
// ------------------------------------------------------------------------------------------

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

// One unit (V pixels) is handled by L = V/4 adjacent lanes, lane h owning pixels 4h..4h+3 (a
// "quad"): every thread holds 4*D input values whatever the dtype. For 16-bit types the two
// lanes of a unit build the 16-byte output vectors together: per output pair (o, o+1) each lane
// computes both rows of its quad, sends the one it does not store to its partner (2 shuffled
// words) and stores one full 16-byte vector (lane 0 row o, lane 1 row o+1). The loop runs a
// warp-uniform number of iterations (so the shuffles see all 32 lanes); lanes past the end of
// the channel ("!live") compute on zeros and store nothing.
template <typename T, int D>
__device__ __forceinline__ void mix_units(const T* __restrict__ in, T* __restrict__ out,
                                          const float4* s_m4, bool vec, uint64_t c, uint64_t B,
                                          uint64_t C, uint64_t P, uint64_t nunits) {
    constexpr int V = Tr<T>::V;
    constexpr int L = V / 4;           // lanes per unit
    constexpr int UPB = kBlock / L;    // units per block per step
    constexpr int UPW = kWarp / L;     // units per warp per step
    // For D >= 5 the D*D weights must not be hoisted out of the unit loop into registers (the
    // compiler does that with loop-invariant shared loads and then spills): the shared-memory
    // address gets an opaque zero that changes with the loop.
    constexpr bool kHoist = D * D <= 16;
    const int h = static_cast<int>(threadIdx.x % L);
    const uint64_t U = B * nunits;
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * UPB;
    const uint64_t first = static_cast<uint64_t>(blockIdx.x) * UPB;
    const uint64_t wfirst = first + static_cast<uint64_t>(threadIdx.x / kWarp) * UPW;
    const uint64_t iters = wfirst < U ? (U - 1 - wfirst) / stride + 1 : 0;  // warp-uniform
    const uint64_t slab = static_cast<uint64_t>(D) * P;
    Cursor it(first + threadIdx.x / L, stride, nunits, B, C, c, slab, V);
    for (uint64_t n = iters; n != 0; --n) {
        const bool live = it.live();
        const uint64_t base = it.off;
        const uint64_t valid = min_u64(V, P - it.j * V);
        const float4* sm = kHoist ? s_m4 : s_m4 + opaque0(base);
        float xf[D][4];
#pragma unroll
        for (int i = 0; i < D; ++i) {
            if (live) {
                load_quad<T>(in + base + static_cast<uint64_t>(i) * P, vec, h, valid, xf[i]);
            } else {
#pragma unroll
                for (int v = 0; v < 4; ++v) xf[i][v] = 0.0f;
            }
        }
#pragma unroll
        for (int o = 0; o < D; o += 2) {
            const bool two = o + 1 < D;  // compile-time after unrolling
            float a0[4], a1[4];
            mix_row<D>(sm, o, xf, a0);
            if (two) {
                mix_row<D>(sm, o + 1, xf, a1);
            } else {
#pragma unroll
                for (int v = 0; v < 4; ++v) a1[v] = 0.0f;
            }
            T* row0 = out + base + static_cast<uint64_t>(o) * P;
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
        it.next();
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
    const bool vec = (P % V == 0) && aligned16(in) && aligned16(out);
    float* s_m = reinterpret_cast<float*>(s_m4);
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        __syncthreads();  // the previous channel's readers are done with s_m
        for (int e = threadIdx.x; e < D * DW; e += kBlock) {
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
    const bool vec = (P % V == 0) && aligned16(in) && aligned16(out);
    const bool staged = D <= static_cast<uint64_t>(kDnStageMax);
    const uint64_t row = (D + KB - 1) / KB * KB;
    float* s_mt = reinterpret_cast<float*>(s_mt4);
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        // s_mt[i*row + o] = M[o][i], zero padded to `row` outputs (staged only; the condition is
        // uniform over the block, so the barriers are not divergent).
        __syncthreads();
        if (staged) {
            for (uint64_t e = threadIdx.x; e < D * row; e += kBlock) {
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
// A unit is shared by L = V/4 quad lanes (pixels 4h..4h+3) times G k-subset lanes; lane
// (h, g) accumulates acc[d][s] = sum x[d] * dy[g*KS + s] over its quads for all d < D and its
// KS = ceil(D/G) output slices. G is the smallest power of two with D*KS + 4*KS <= 40 (the
// accumulators plus the held dy quads) and G*L <= 16 (a warp still covers >= 2 units, i.e.
// >= 32 contiguous bytes per slice per load instruction).
template <int D, int L> struct DwCfg {
    static constexpr int ks(int g) { return (D + g - 1) / g; }
    static constexpr bool fits(int g) { return D * ks(g) + 4 * ks(g) <= 40 && g * L <= 16; }
    static constexpr int G = fits(1) ? 1 : fits(2) ? 2 : fits(4) ? 4 : fits(8) ? 8 : 16;
    static constexpr int KS = ks(G);
    static constexpr int LPU = G * L;          // lanes per unit
    static constexpr int UPB = kBlock / LPU;   // units per block per step
    static constexpr int UPW = kWarp / LPU;    // units per warp per step
    static_assert(fits(G), "too many accumulators");
};
constexpr int kDwChunk = 4;  // x slices loaded per scheduling chunk

template <typename T, int D>
__device__ __forceinline__ void dw_units(const T* __restrict__ x, const T* __restrict__ dy,
                                         bool vec, uint64_t c, uint64_t B, uint64_t C, uint64_t P,
                                         uint64_t nunits, uint64_t PB,
                                         float (&acc)[D][DwCfg<D, Tr<T>::V / 4>::KS]) {
    constexpr int V = Tr<T>::V;
    typedef DwCfg<D, V / 4> Cfg;
    constexpr int G = Cfg::G, KS = Cfg::KS, L = V / 4;
    const int g = static_cast<int>(threadIdx.x % G);
    const int h = static_cast<int>((threadIdx.x / G) % L);
    const uint64_t U = B * nunits;
    const uint64_t stride = PB * Cfg::UPB;
    const uint64_t first = static_cast<uint64_t>(blockIdx.x) * Cfg::UPB;
    const uint64_t wfirst = first + static_cast<uint64_t>(threadIdx.x / kWarp) * Cfg::UPW;
    const uint64_t iters = wfirst < U ? (U - 1 - wfirst) / stride + 1 : 0;  // warp-uniform
    const uint64_t slab = static_cast<uint64_t>(D) * P;
    Cursor it(first + threadIdx.x / Cfg::LPU, stride, nunits, B, C, c, slab, V);
    for (uint64_t n = iters; n != 0; --n) {
        const bool live = it.live();
        const uint64_t base = it.off;
        const uint64_t valid = min_u64(V, P - it.j * V);
        float gq[KS][4];
#pragma unroll
        for (int s = 0; s < KS; ++s) {
            const int k = g * KS + s;
            if (live && (G * KS == D || k < D)) {
                load_quad<T>(dy + base + static_cast<uint64_t>(k) * P, vec, h, valid, gq[s]);
            } else {
#pragma unroll
                for (int v = 0; v < 4; ++v) gq[s][v] = 0.0f;
            }
        }
#pragma unroll
        for (int d0 = 0; d0 < D; d0 += kDwChunk) {
            float xq[kDwChunk][4];
#pragma unroll
            for (int r = 0; r < kDwChunk; ++r) {
                if (d0 + r < D) {
                    if (live) {
                        load_quad<T>(x + base + static_cast<uint64_t>(d0 + r) * P, vec, h, valid, xq[r]);
                    } else {
#pragma unroll
                        for (int v = 0; v < 4; ++v) xq[r][v] = 0.0f;
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < kDwChunk; ++r) {
                if (d0 + r < D) {
#pragma unroll
                    for (int s = 0; s < KS; ++s)
#pragma unroll
                        for (int v = 0; v < 4; ++v) acc[d0 + r][s] = xq[r][v] * gq[s][v] + acc[d0 + r][s];
                }
            }
            // Scheduling fence: keeps the compiler from hoisting the next chunk's loads above
            // this chunk's arithmetic (which would hold all D slices in registers and make
            // ptxas spill). Warp-uniform: every lane runs the same number of iterations.
            if (d0 + kDwChunk < D) __syncwarp();
        }
        it.next();
    }
}

template <typename T, int D>
__device__ __forceinline__ void dw_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                          float* __restrict__ partials, const A3dFusionParams& p) {
    constexpr int V = Tr<T>::V;
    typedef DwCfg<D, V / 4> Cfg;
    constexpr int G = Cfg::G, KS = Cfg::KS;
    __shared__ float s_red[kWarps * G * D * KS];
    const uint64_t B = p.batch, C = p.channels, P = p.pixels, PB = p.partial_blocks;
    const uint64_t nunits = (P + V - 1) / V;
    const bool active = blockIdx.x < PB;  // blocks beyond partial_blocks own nothing
    const bool has_work = active && B > 0 && nunits > 0;
    const bool vec = (P % V == 0) && aligned16(x) && aligned16(dy);
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
        float acc[D][KS];
#pragma unroll
        for (int d = 0; d < D; ++d)
#pragma unroll
            for (int s = 0; s < KS; ++s) acc[d][s] = 0.0f;
        if (has_work) dw_units<T, D>(x, dy, vec, c, B, C, P, nunits, PB, acc);
        // Lanes with equal lane % G share a k-subset: butterfly over the other lane bits (quads
        // and units), a fixed tree.
#pragma unroll
        for (int off = kWarp / 2; off >= G; off /= 2) {
#pragma unroll
            for (int d = 0; d < D; ++d)
#pragma unroll
                for (int s = 0; s < KS; ++s) acc[d][s] += __shfl_xor_sync(kFullMask, acc[d][s], off);
        }
        if (lane < G) {
#pragma unroll
            for (int d = 0; d < D; ++d)
#pragma unroll
                for (int s = 0; s < KS; ++s) s_red[((warp * G + lane) * D + d) * KS + s] = acc[d][s];
        }
        __syncthreads();
        if (active) {
            // `+ opaque0(c)` keeps the compiler from computing these per-thread indices once at
            // kernel entry and carrying (then spilling) them across the hot loop.
            for (int e = threadIdx.x + opaque0(c); e < D * D; e += kBlock) {
                const int d = e / D, k = e % D;
                const int g = k / KS, s = k % KS;
                float sum = s_red[(g * D + d) * KS + s];
#pragma unroll
                for (int wp = 1; wp < kWarps; ++wp) sum += s_red[((wp * G + g) * D + d) * KS + s];
                partials[((c * PB + blockIdx.x) * D + d) * D + k] = sum;
            }
        }
        __syncthreads();  // s_red is rewritten for the next channel
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
    const bool active = blockIdx.x < PB;
    const bool has_work = active && B > 0 && nunits > 0;
    const bool vec = (P % V == 0) && aligned16(x) && aligned16(dy);
    const uint64_t ntd = (D + kTD - 1) / kTD, ntk = (D + kTK - 1) / kTK;
    const uint64_t nt = ntd * ntk;
    uint64_t ntb = 1;  // tiles per pass: power of two <= 32
    while (ntb < nt && ntb < static_cast<uint64_t>(kWarp)) ntb *= 2;
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const uint64_t tl = threadIdx.x % ntb;
    for (uint64_t c = blockIdx.y; c < C; c += gridDim.y) {
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
// ------------------------------------------------------------------------------------------
#define A3D_FUSION_DEFINE_DEPTH(dt, T, N)                                                              \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK) fusion_forward_##dt##_d##N(        \
        const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, A3dFusionParams p) {     \
        a3d_fusion::mix_kernel<T, N, false>(x, w, y, p);                                               \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK) fusion_grad_input_##dt##_d##N(     \
        const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, A3dFusionParams p) {   \
        a3d_fusion::mix_kernel<T, N, true>(dy, w, dx, p);                                              \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK)                                     \
        fusion_grad_weight_partial_##dt##_d##N(const T* __restrict__ x, const T* __restrict__ dy,      \
                                               float* __restrict__ partials, A3dFusionParams p) {      \
        a3d_fusion::dw_kernel<T, N>(x, dy, partials, p);                                               \
    }

#define A3D_FUSION_DEFINE_DTYPE(dt, T)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 1)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 2)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 3)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 4)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 5)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 6)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 7)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 8)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 9)                                                                  \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 10)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 11)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 12)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 13)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 14)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 15)                                                                 \
    A3D_FUSION_DEFINE_DEPTH(dt, T, 16)                                                                 \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK) fusion_forward_##dt##_dn(          \
        const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, A3dFusionParams p) {     \
        a3d_fusion::mix_kernel_dn<T, false>(x, w, y, p);                                               \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK) fusion_grad_input_##dt##_dn(       \
        const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, A3dFusionParams p) {   \
        a3d_fusion::mix_kernel_dn<T, true>(dy, w, dx, p);                                              \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK) fusion_grad_weight_partial_##dt##_dn( \
        const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ partials,               \
        A3dFusionParams p) {                                                                           \
        a3d_fusion::dw_kernel_dn<T>(x, dy, partials, p);                                               \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(A3D_FUSION_BLOCK) fusion_grad_weight_reduce_##dt(    \
        const float* __restrict__ partials, T* __restrict__ dw, A3dFusionParams p) {                   \
        a3d_fusion::dw_reduce<T>(partials, dw, p);                                                     \
    }

A3D_FUSION_DEFINE_DTYPE(f32, float)
A3D_FUSION_DEFINE_DTYPE(f16, __half)
#if defined(A3D_FUSION_BF16_ENABLED)
A3D_FUSION_DEFINE_DTYPE(bf16, __nv_bfloat16)
#endif

#undef A3D_FUSION_DEFINE_DTYPE
#undef A3D_FUSION_DEFINE_DEPTH

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
