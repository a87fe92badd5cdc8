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
    static __device__ __forceinline__ float bits_to_f(uint32_t bits) {
        __half_raw r;
        r.x = static_cast<unsigned short>(bits);
        return __half2float(__half(r));
    }
    static __device__ __forceinline__ uint32_t f_to_bits(float v) {
        const __half_raw r = __float2half_rn(v);
        return r.x;
    }
};

#if defined(A3D_BF16_ENABLED)
template <> struct Storage<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
    static __device__ __forceinline__ float bits_to_f(uint32_t bits) {
        __nv_bfloat16_raw r;
        r.x = static_cast<unsigned short>(bits);
        return __bfloat162float(__nv_bfloat16(r));
    }
    static __device__ __forceinline__ uint32_t f_to_bits(float v) {
        const __nv_bfloat16_raw r = __float2bfloat16_rn(v);
        return r.x;
    }
};
#endif

// V = 16 / sizeof(T) consecutive elements moved as one 16-byte access, held as four 32-bit
// words (element access by shifts and masks with constant indices, so packs stay in registers;
// arrays of 16-bit values would go through local memory).
template <typename T> struct Pack {
    static constexpr int V = 16 / sizeof(T);
    uint4 raw;

    __device__ __forceinline__ uint32_t word(int i) const {
        return i == 0 ? raw.x : i == 1 ? raw.y : i == 2 ? raw.z : raw.w;
    }
    __device__ __forceinline__ void set_word(int i, uint32_t v) {
        if (i == 0) raw.x = v;
        else if (i == 1) raw.y = v;
        else if (i == 2) raw.z = v;
        else raw.w = v;
    }
    // Element i as float (i a compile-time constant after unrolling).
    __device__ __forceinline__ float get(int i) const {
        if constexpr (sizeof(T) == 4) {
            return __uint_as_float(word(i));
        } else {
            return Storage<T>::bits_to_f((word(i / 2) >> (16 * (i % 2))) & 0xffffu);
        }
    }
    __device__ __forceinline__ void set(int i, float v) {
        if constexpr (sizeof(T) == 4) {
            set_word(i, __float_as_uint(v));
        } else {
            const uint32_t bits = Storage<T>::f_to_bits(v);
            const int sh = 16 * (i % 2);
            set_word(i / 2, (word(i / 2) & ~(0xffffu << sh)) | (bits << sh));
        }
    }
};

__device__ __forceinline__ bool aligned16(const void* ptr) {
    return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
    Pack<T> r;
    r.raw = *reinterpret_cast<const uint4*>(p);
    return r;
}

template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
    *reinterpret_cast<uint4*>(p) = v.raw;
}

// All-zero bits: 0.0 in f32, f16 and bf16.
template <typename T> __device__ __forceinline__ Pack<T> zero_pack() {
    Pack<T> r;
    r.raw = make_uint4(0u, 0u, 0u, 0u);
    return r;
}

}  // namespace

#endif  // A3D_STORAGE_CUH
