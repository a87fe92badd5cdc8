// Storage helpers shared by the op kernels written after fusion.cu (shift.cu, depthconv.cu):
// f32 / f16 / bf16 to and from float, and 16-byte packs of V = 16 / sizeof(T) elements, the
// unit every memory-bound kernel here loads and stores. Everything is in an anonymous
// namespace: each .cu is its own translation unit under nvcc, but the host emulation links all
// of them into one library.
#ifndef A3D_STORAGE_CUH
#define A3D_STORAGE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// bf16 arithmetic exists from sm_80 on; the host emulation always has it.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define A3D_BF16_ENABLED 1
#endif

namespace {

template <typename T> struct Storage;

template <> struct Storage<float> {
    static __device__ __forceinline__ float to_f(float v) { return v; }
    static __device__ __forceinline__ float from_f(float v) { return v; }
};

template <> struct Storage<__half> {
    static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
};

#if defined(A3D_BF16_ENABLED)
template <> struct Storage<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};
#endif

// V consecutive elements moved as one 16-byte access.
template <typename T> struct alignas(16) Pack {
    static constexpr int V = 16 / sizeof(T);
    T v[V];
};

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
    return *reinterpret_cast<const Pack<T>*>(p);
}

template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
    *reinterpret_cast<Pack<T>*>(p) = v;
}

// All-zero bits: 0.0 in f32, f16 and bf16.
template <typename T> __device__ __forceinline__ Pack<T> zero_pack() {
    uint4 z = make_uint4(0u, 0u, 0u, 0u);
    Pack<T> r;
    static_assert(sizeof(r) == sizeof(z), "a pack is 16 bytes");
    memcpy(&r, &z, sizeof(r));
    return r;
}

}  // namespace

#endif  // A3D_STORAGE_CUH
