// Self-check kernels for the host emulator (kernels/emulation/emulator.cpp).
//
// Plain CUDA (nvcc compiles this file as it is); under the emulator they prove that it catches
// the bug classes that matter for hand-written kernels:
//   - selfcheck_block_reduce_f32: a correct block reduction (warp shuffles, shared memory,
//     __syncthreads); must give the exact sums.
//   - selfcheck_block_reduce_nosync_f32: the same without its __syncthreads; must give a WRONG
//     result (deterministically, under the emulator's schedule).
//   - selfcheck_shift_nosync: a missing barrier whose reader has the higher thread index: right
//     in the default (ascending) thread order, wrong in the reverse order.
//   - selfcheck_divergent_barrier, selfcheck_early_return_barrier, selfcheck_split_barrier:
//     barriers that not every thread reaches, or not the same one; the launch must fail with a
//     deadlock / divergence message instead of hanging.
//   - selfcheck_warp_divergent_shuffle, selfcheck_partial_mask_shuffle: warp-level misuse.
//   - selfcheck_warp_shuffle: __shfl_sync/_up/_down/_xor with known results.
//   - selfcheck_atomics: atomicAdd/Max/Min on the types the kernels use.
//   - selfcheck_builtins: threadIdx/blockIdx/blockDim/gridDim in 3-D, __syncthreads_count.
//   - selfcheck_half_vec: __half/__nv_bfloat16 conversions, float4/uint4 vector accesses.
//   - selfcheck_barrier_bench: four barriers per thread, to time the emulator.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#define SELFCHECK_BLOCK 256

namespace {

template <typename T>
__device__ __forceinline__ T warp_sum_down(T v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum_xor(T v) {
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, mask);
    return v;
}

// Sum of `n` floats starting at `in` over the block; the result is valid in thread 0.
// blockDim.x must be a multiple of 32. With kSync = false the barrier between the warp partials
// and their final reduction is missing (the bug the emulator must expose).
template <bool kSync>
__device__ __forceinline__ float block_sum(const float* __restrict__ in, int n) {
    __shared__ float partial[32];
    const int tid = threadIdx.x;
    const int lane = tid % warpSize;
    const int warp = tid / warpSize;
    const int warps = blockDim.x / warpSize;

    float v = 0.0f;
    for (int i = tid; i < n; i += blockDim.x) v += __ldg(in + i);
    v = warp_sum_down(v);
    if (lane == 0) partial[warp] = v;
    if (kSync) __syncthreads();
    if (warp == 0) {
        v = lane < warps ? partial[lane] : 0.0f;
        v = warp_sum_down(v);
    }
    return v;
}

}  // namespace

// out[b] = sum of in[b * n .. b * n + n).
extern "C" __global__ void __launch_bounds__(SELFCHECK_BLOCK)
    selfcheck_block_reduce_f32(const float* __restrict__ in, float* __restrict__ out, int n) {
    const float s = block_sum<true>(in + static_cast<size_t>(blockIdx.x) * n, n);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// Same as selfcheck_block_reduce_f32 with the __syncthreads removed: a data race on `partial`.
extern "C" __global__ void __launch_bounds__(SELFCHECK_BLOCK)
    selfcheck_block_reduce_nosync_f32(const float* __restrict__ in, float* __restrict__ out,
                                      int n) {
    const float s = block_sum<false>(in + static_cast<size_t>(blockIdx.x) * n, n);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// out[t] = in[t - 1] (0 for t = 0) through shared memory, with the __syncthreads between the write
// and the read missing. The reader's writer has a LOWER thread index, so the emulator's forward
// order (writer runs first) hides the race and its reverse order exposes it.
extern "C" __global__ void selfcheck_shift_nosync(const int* __restrict__ in,
                                                  int* __restrict__ out) {
    __shared__ int s[SELFCHECK_BLOCK];
    const int t = threadIdx.x;
    s[t] = in[blockIdx.x * blockDim.x + t];
    // __syncthreads() missing here
    out[blockIdx.x * blockDim.x + t] = t > 0 ? s[t - 1] : 0;
}

// __syncthreads inside a branch that only the first 64 threads take.
extern "C" __global__ void selfcheck_divergent_barrier(int* __restrict__ out) {
    __shared__ int s[SELFCHECK_BLOCK];
    const int tid = threadIdx.x;
    s[tid] = tid;
    if (tid < 64) {
        __syncthreads();
        out[tid] = s[(tid + 1) % 64];
    }
}

// The classic bug: threads past the end return before a barrier the others wait at.
extern "C" __global__ void selfcheck_early_return_barrier(const float* __restrict__ in,
                                                          float* __restrict__ out, int n) {
    __shared__ float tile[SELFCHECK_BLOCK];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    tile[threadIdx.x] = in[i];
    __syncthreads();
    out[i] = tile[(threadIdx.x + 1) % blockDim.x];
}

// Every thread reaches "a" barrier, but even and odd threads reach different ones.
extern "C" __global__ void selfcheck_split_barrier(int* __restrict__ out) {
    const int tid = threadIdx.x;
    if (tid % 2 == 0) {
        __syncthreads();
        out[tid] = 0;
    } else {
        __syncthreads();
        out[tid] = 1;
    }
}

// A full-mask shuffle executed by half of a warp only.
extern "C" __global__ void selfcheck_warp_divergent_shuffle(float* __restrict__ out) {
    float v = static_cast<float>(threadIdx.x);
    if (threadIdx.x % warpSize < 16) v = warp_sum_xor(v);
    out[threadIdx.x] = v;
}

// A shuffle with a partial mask (not supported by the emulator: must fail loudly).
extern "C" __global__ void selfcheck_partial_mask_shuffle(float* __restrict__ out) {
    float v = static_cast<float>(threadIdx.x);
    v += __shfl_down_sync(0x0000ffffu, v, 1);
    out[threadIdx.x] = v;
}

// Shuffle results for a block of blockDim.x threads (a multiple of 32). With i = threadIdx.x and
// N = blockDim.x, out_f has 6 * N entries and out_i, out_u, out_d have N entries each:
//   out_f[0N+i] = __shfl_down_sync(in, 1)        out_f[1N+i] = __shfl_up_sync(in, 3)
//   out_f[2N+i] = __shfl_xor_sync(in, 5)         out_f[3N+i] = __shfl_sync(in, 7)
//   out_f[4N+i] = __shfl_down_sync(in, 2, w=8)   out_f[5N+i] = warp_sum_xor(in)   (all lanes)
//   out_i[i] = warp_sum_down(int)  out_u[i] = __shfl_sync(unsigned, lane 31 - lane, w=16)
//   out_d[i] = warp_sum_xor(double)
extern "C" __global__ void selfcheck_warp_shuffle(const float* __restrict__ in,
                                                  float* __restrict__ out_f,
                                                  int* __restrict__ out_i,
                                                  unsigned* __restrict__ out_u,
                                                  double* __restrict__ out_d) {
    const int i = threadIdx.x;
    const int n = blockDim.x;
    const int lane = i % warpSize;
    const float v = in[i];
    out_f[0 * n + i] = __shfl_down_sync(0xffffffffu, v, 1);
    out_f[1 * n + i] = __shfl_up_sync(0xffffffffu, v, 3);
    out_f[2 * n + i] = __shfl_xor_sync(0xffffffffu, v, 5);
    out_f[3 * n + i] = __shfl_sync(0xffffffffu, v, 7);
    out_f[4 * n + i] = __shfl_down_sync(0xffffffffu, v, 2, 8);
    out_f[5 * n + i] = warp_sum_xor(v);
    out_i[i] = warp_sum_down(i * 3 - 7);
    out_u[i] = __shfl_sync(0xffffffffu, static_cast<unsigned>(i * 1000u), 31 - lane, 16);
    out_d[i] = warp_sum_xor(static_cast<double>(v) * 0.5);
    __syncwarp();
}

// Histogram and global extrema over keys[0..n): hist[k % bins] += 1 (int), fsum += key (float),
// usum += key (u64), dsum += key (double), imax = max, imin = min, ucount += 1 (unsigned).
extern "C" __global__ void selfcheck_atomics(const int* __restrict__ keys, int n, int bins,
                                             int* __restrict__ hist, float* __restrict__ fsum,
                                             unsigned long long* __restrict__ usum,
                                             double* __restrict__ dsum, int* __restrict__ imax,
                                             int* __restrict__ imin,
                                             unsigned* __restrict__ ucount) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int k = keys[i];
        atomicAdd(&hist[k % bins], 1);
        atomicAdd(fsum, static_cast<float>(k));
        atomicAdd(usum, static_cast<unsigned long long>(k));
        atomicAdd(dsum, static_cast<double>(k));
        atomicMax(imax, k);
        atomicMin(imin, k);
        atomicAdd(ucount, 1u);
    }
}

// For each thread of a 3-D launch, 9 values at out[9 * global_linear_id]: threadIdx.xyz,
// blockIdx.xyz, blockDim.x * 10000 + blockDim.y * 100 + blockDim.z, gridDim likewise,
// __syncthreads_count(threadIdx.x == 0).
extern "C" __global__ void selfcheck_builtins(unsigned* __restrict__ out) {
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned local = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 9u * (block * threads + local);
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = blockDim.x * 10000u + blockDim.y * 100u + blockDim.z;
    o[7] = gridDim.x * 10000u + gridDim.y * 100u + gridDim.z;
    o[8] = static_cast<unsigned>(__syncthreads_count(threadIdx.x == 0));
}

// Vector and 16-bit float handling, one thread per group of 8 elements (n a multiple of 8):
//   out_h[i] = __float2half_rn(2 * in[i]) (copied through uint4), out_b[i] = bf16(in[i] + 1),
//   out_f[i] = __half2float(out_h[i]) + __bfloat162float(out_b[i]) (via float4 stores).
extern "C" __global__ void selfcheck_half_vec(const float* __restrict__ in,
                                              __half* __restrict__ out_h,
                                              __nv_bfloat16* __restrict__ out_b,
                                              float* __restrict__ out_f, int n) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (8 * g >= n) return;
    const float4 a = reinterpret_cast<const float4*>(in)[2 * g];
    const float4 b = reinterpret_cast<const float4*>(in)[2 * g + 1];
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    __half h[8];
    __nv_bfloat16 bf[8];
    float f[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        h[k] = __float2half_rn(2.0f * v[k]);
        bf[k] = __float2bfloat16(v[k] + 1.0f);
        f[k] = __half2float(h[k]) + __bfloat162float(bf[k]);
    }
    reinterpret_cast<uint4*>(out_h)[g] = *reinterpret_cast<const uint4*>(h);
    reinterpret_cast<uint4*>(out_b)[g] = *reinterpret_cast<const uint4*>(bf);
    reinterpret_cast<float4*>(out_f)[2 * g] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4*>(out_f)[2 * g + 1] = make_float4(f[4], f[5], f[6], f[7]);
}

// Four barriers per thread with shared-memory traffic between them: out[b] = sum over the block
// of (tid + 1) * 4 = 4 * N * (N + 1) / 2 for N = blockDim.x.
extern "C" __global__ void __launch_bounds__(SELFCHECK_BLOCK)
    selfcheck_barrier_bench(float* __restrict__ out) {
    __shared__ float s[SELFCHECK_BLOCK];
    const int tid = threadIdx.x;
    s[tid] = static_cast<float>(tid + 1);
    __syncthreads();
    const float mine = s[(tid + 1) % blockDim.x];
    __syncthreads();
    s[tid] = 4.0f * mine;
    __syncthreads();
    if (tid == 0) {
        float acc = 0.0f;
        for (int i = 0; i < static_cast<int>(blockDim.x); ++i) acc += s[i];
        out[blockIdx.x] = acc;
    }
    __syncthreads();
}

// Kernels of this file, for the emulator's registry (see kernels/emulation/emulator.cpp).
#define A3D_SELFCHECK_KERNELS(X)            \
    X(selfcheck_block_reduce_f32)           \
    X(selfcheck_block_reduce_nosync_f32)    \
    X(selfcheck_shift_nosync)               \
    X(selfcheck_divergent_barrier)          \
    X(selfcheck_early_return_barrier)       \
    X(selfcheck_split_barrier)              \
    X(selfcheck_warp_divergent_shuffle)     \
    X(selfcheck_partial_mask_shuffle)       \
    X(selfcheck_warp_shuffle)               \
    X(selfcheck_atomics)                    \
    X(selfcheck_builtins)                   \
    X(selfcheck_half_vec)                   \
    X(selfcheck_barrier_bench)
