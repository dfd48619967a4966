//===- Common.cuh - What every moert kernel header shares -------*- CUDA -*-===//
//
// The device kernel library that programs printed by `moec compile` include.
// Buffers are flat, row-major, contiguous pointers into the rank's arena;
// element types are `float` (fp32 mode) or `__nv_bfloat16` (bf16 compute).
// All arithmetic inside kernels is fp32; values are rounded to the storage
// type on store. Every launch goes on `Context::stream`, so a step can be
// captured as one CUDA graph where no host synchronisation is needed.
//
// This library shares no code with the CPU reference executor
// (lib/Reference), which is the oracle it is checked against.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_COMMON_CUH
#define MOERT_KERNELS_COMMON_CUH

#include "moert/kernels/Context.h"
#include "moert/kernels/ScratchBytes.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <vector>

namespace moert::kernels {

using bf16 = __nv_bfloat16;

__host__ __device__ inline float toFloat(float x) { return x; }
__host__ __device__ inline float toFloat(bf16 x) { return __bfloat162float(x); }

template <class T> __host__ __device__ inline T fromFloat(float x);
template <> __host__ __device__ inline float fromFloat<float>(float x) {
  return x;
}
template <> __host__ __device__ inline bf16 fromFloat<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

/// arith.maximumf: the larger of a and b, NaN when either is NaN.
__device__ inline float maximumf(float a, float b) {
  return a != a || b != b ? __int_as_float(0x7fc00000) : fmaxf(a, b);
}

/// Four consecutive elements as fp32, for 16- and 8-byte vector accesses in
/// element-wise kernels (buffers are 256-byte aligned).
struct Vec4 {
  float v[4];
};
__device__ inline Vec4 load4(const float *p) {
  float4 x = *reinterpret_cast<const float4 *>(p);
  return {{x.x, x.y, x.z, x.w}};
}
__device__ inline Vec4 load4(const bf16 *p) {
  uint2 raw = *reinterpret_cast<const uint2 *>(p);
  float2 a = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&raw.x));
  float2 b = __bfloat1622float2(*reinterpret_cast<__nv_bfloat162 *>(&raw.y));
  return {{a.x, a.y, b.x, b.y}};
}
__device__ inline void store4(float *p, const Vec4 &x) {
  *reinterpret_cast<float4 *>(p) = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
}
__device__ inline void store4(bf16 *p, const Vec4 &x) {
  __nv_bfloat162 a = __floats2bfloat162_rn(x.v[0], x.v[1]);
  __nv_bfloat162 b = __floats2bfloat162_rn(x.v[2], x.v[3]);
  uint2 raw;
  raw.x = *reinterpret_cast<unsigned *>(&a);
  raw.y = *reinterpret_cast<unsigned *>(&b);
  *reinterpret_cast<uint2 *>(p) = raw;
}

/// kWidth consecutive elements of type T as one aligned access (16 bytes
/// at most: the widest load a thread issues).
template <class T, int kWidth> struct alignas(kWidth * sizeof(T)) Pack {
  T x[kWidth];
};

/// Elements of T in one 16-byte access.
template <class T> constexpr int kPackWidth = 16 / sizeof(T);

/// Whether every pointer is aligned for 16-byte accesses.
inline bool aligned16(std::initializer_list<const void *> pointers) {
  for (const void *p : pointers)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return false;
  return true;
}

/// Blocks for a grid-stride loop over `n` elements with 256 threads.
inline int blocksFor(int64_t n, int threads = 256) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1)
    blocks = 1;
  return blocks > 65535 * 16 ? 65535 * 16 : static_cast<int>(blocks);
}

/// out[i] = in[i] rounded to T: an fp32 accumulator stored once.
template <class T>
__global__ void castFromFloat(const float *in, int64_t n, T *out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = fromFloat<T>(in[i]);
}

/// Bytes of `scratch` from `offset`, aligned to 256, checked against the
/// context's size.
template <class T>
inline T *scratchAt(const Context &ctx, int64_t &offset, int64_t count) {
  offset = (offset + 255) / 256 * 256;
  T *p = reinterpret_cast<T *>(ctx.scratch + offset);
  offset += count * static_cast<int64_t>(sizeof(T));
  if (offset > ctx.scratchBytes) {
    std::fprintf(stderr,
                 "moert: kernel scratch needs %lld bytes, the program has "
                 "%lld\n",
                 static_cast<long long>(offset),
                 static_cast<long long>(ctx.scratchBytes));
    std::exit(1);
  }
  return p;
}

/// Warp and block sums (blockDim.x a multiple of 32, at most 1024).
__device__ inline float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/// Sum over the block; every thread gets the result. `shared` holds 32 floats.
__device__ inline float blockSum(float v, float *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warpSum(v);
  __syncthreads();
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : 0.0f;
  return warpSum(v);
}
__device__ inline float blockMax(float v, float *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warpMax(v);
  __syncthreads();
  if (lane == 0)
    shared[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : -INFINITY;
  return warpMax(v);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_COMMON_CUH
