//===- Optimizer.cuh - Global gradient norm and AdamW, multi-tensor -*- CUDA -*-//
//
// moe.global_norm and moe.adamw over all parameters in one launch each: the
// tensors are cut into chunks of kChunk elements, a device table names each
// chunk's tensor and range, and every block takes one chunk. The norm sums
// per-chunk partials in a fixed order (deterministic). AdamW reads the step,
// the learning rate and the gradient norm from device memory, so the whole
// step can be captured in a CUDA graph, and updates parameter and moments in
// place, as torch.optim.AdamW does (decoupled weight decay, bias-corrected
// moments), with the gradient scaled by the clipping coefficient
// min(1, max_norm / (norm + 1e-6)) of torch.nn.utils.clip_grad_norm_.
//
// Types: the state (parameter and moments) is TS and the gradient TG, each
// fp32 or bf16, the same for every tensor of a group (the printer checks):
// fp32 masters with fp32 gradients, or a bf16 model with bf16 state and
// gradients. The arithmetic is fp32 either way; a bf16 state is rounded once
// per update, as torch's fused AdamW does for bf16 parameters.
//
// With skipNonfinite (moe.adamw's `skip_nonfinite`), a norm that is not
// finite makes the update the identity: every block returns before it
// writes, so parameters, moments and copies keep their values, decided on
// the device from the norm it reads anyway (no host sync in the step).
//
// A tensor may name a `copy`: a bf16 buffer that AdamW fills with the
// updated parameter rounded to bf16, the value the next step's cast of the
// parameter would compute (moe-keep-param-copies), in the same pass.
//
// Split masters (adamwRemainders, moert/MasterSplit.h): an fp32 master kept
// as its bf16 copy and a 16-bit remainder, 4 bytes read and written per
// update instead of the master's 8 and the copy's 2. splitMasters and
// joinMasters convert losslessly, and AdamW on the split form computes the
// fp32 AdamW's masters bit for bit; the copy rounds ties away from zero
// where a cast rounds them to even.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_OPTIMIZER_CUH
#define MOERT_KERNELS_OPTIMIZER_CUH

#include "moert/MasterSplit.h"
#include "moert/kernels/Common.cuh"

#include <vector>

namespace moert::kernels {

/// One tensor of a multi-tensor launch, its buffers of the launch's types
/// (see the file comment). For the norm only `grad` is read.
struct OptimizerTensor {
  void *param = nullptr, *expAvg = nullptr, *expAvgSq = nullptr;
  const void *grad = nullptr;
  int64_t count = 0;
  float weightDecay = 0.0f;
  bf16 *copy = nullptr; ///< AdamW: the updated parameter in bf16, or null
  /// adamwRemainders: the low 16 bits of each fp32 master (`copy` holds the
  /// rest; `param` is not read or written).
  uint16_t *remainder = nullptr;
};

struct OptimizerChunk {
  int32_t tensor;
  int64_t begin, end;
};

/// The device tables of one multi-tensor launch, built once at start-up.
class TensorGroup {
public:
  static constexpr int64_t kChunk = kTensorGroupChunk;

  /// Cuts the tensors into chunks of `chunk` elements (a multiple of 8, so
  /// that every chunk starts aligned for 16-byte accesses of either type).
  void init(const std::vector<OptimizerTensor> &tensors,
            int64_t chunk = kChunk) {
    std::vector<OptimizerChunk> chunks;
    for (size_t i = 0; i < tensors.size(); ++i)
      for (int64_t b = 0; b < tensors[i].count; b += chunk)
        chunks.push_back({static_cast<int32_t>(i), b,
                          b + chunk < tensors[i].count ? b + chunk
                                                       : tensors[i].count});
    numChunks = static_cast<int64_t>(chunks.size());
    maxCount = 0;
    for (const OptimizerTensor &t : tensors)
      maxCount = t.count > maxCount ? t.count : maxCount;
    MOERT_CUDA_CHECK(cudaMalloc(&deviceTensors,
                                tensors.size() * sizeof(OptimizerTensor) + 1));
    MOERT_CUDA_CHECK(cudaMalloc(&deviceChunks,
                                chunks.size() * sizeof(OptimizerChunk) + 1));
    MOERT_CUDA_CHECK(cudaMemcpy(deviceTensors, tensors.data(),
                                tensors.size() * sizeof(OptimizerTensor),
                                cudaMemcpyHostToDevice));
    MOERT_CUDA_CHECK(cudaMemcpy(deviceChunks, chunks.data(),
                                chunks.size() * sizeof(OptimizerChunk),
                                cudaMemcpyHostToDevice));
  }

  OptimizerTensor *deviceTensors = nullptr;
  OptimizerChunk *deviceChunks = nullptr;
  int64_t numChunks = 0;
  int64_t maxCount = 0; ///< the largest tensor's elements
};

/// Elements per chunk (one block) of an AdamW launch over state of type TS.
/// fp32 state moves 28-30 bytes per element: smaller chunks, more blocks in
/// flight, reach more of the HBM bandwidth. Measured on an H200 over
/// mixtral-8x7b-2l's parameters (512 threads): fp32 state with bf16
/// gradients 22.15 ms at 65536 elements, 21.96 at 32768, 21.80 at 16384,
/// 21.63 at 8192 (4.10 TB/s); bf16 state 10.85 ms at 65536 and 12.37 at
/// 8192, and the norm 1.53 ms at 65536 and 2.63 at 8192: those keep the
/// default (docs/benchmarks.md, "AdamW's chunk").
template <class TS>
constexpr int64_t kAdamWChunk =
    sizeof(TS) == 4 ? int64_t(1) << 13 : kTensorGroupChunk;

namespace detail {
/// Elements per access of the optimizer kernels: 16 bytes of T (8 bf16 or
/// 4 fp32), the widest load a thread issues; AdamW goes by the state's
/// type, the norm by the gradient's. (At 8 bytes bf16 AdamW took 5% longer
/// on an H200: DenseKernelsTest --bench-optimizer, docs/benchmarks.md.)
template <class TS> constexpr int kOptimizerWidth = 16 / sizeof(TS);

/// Whether p is aligned for a kWidth-element access.
template <class T, int kWidth> __device__ inline bool alignedFor(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & (kWidth * sizeof(T) - 1)) == 0;
}

template <class TG, int kWidth = kOptimizerWidth<TG>>
__global__ void sumSquaresKernel(const OptimizerTensor *tensors,
                                 const OptimizerChunk *chunks,
                                 double *partial) {
  __shared__ float shared[32];
  OptimizerChunk c = chunks[blockIdx.x];
  const TG *g = static_cast<const TG *>(tensors[c.tensor].grad) + c.begin;
  int64_t n = c.end - c.begin, vectors = 0;
  // kWidth elements per access where aligned (as in adamwKernel), squares
  // summed in fp32 per access and in fp64 across accesses.
  if (alignedFor<TG, kWidth>(g))
    vectors = n / kWidth;
  using GPack = Pack<TG, kWidth>;
  double s = 0.0;
  for (int64_t j = threadIdx.x; j < vectors; j += blockDim.x) {
    GPack x = reinterpret_cast<const GPack *>(g)[j];
    float a = 0.0f;
#pragma unroll
    for (int e = 0; e < kWidth; ++e)
      a += toFloat(x.x[e]) * toFloat(x.x[e]);
    s += a;
  }
  for (int64_t i = kWidth * vectors + threadIdx.x; i < n; i += blockDim.x) {
    double x = toFloat(g[i]);
    s += x * x;
  }
  s = blockSum(static_cast<float>(s), shared);
  if (threadIdx.x == 0)
    partial[blockIdx.x] = s;
}

__global__ void normFromPartialsKernel(const double *partial, int64_t n,
                                       float *norm) {
  // One warp; each lane sums a strided slice in fp64, then a fixed-order
  // shuffle reduction.
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += 32)
    s += partial[i];
  for (int o = 16; o > 0; o >>= 1)
    s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x == 0)
    *norm = static_cast<float>(sqrt(s));
}

struct AdamWConfig {
  float beta1, beta2, epsilon, maxGradNorm;
  bool skipNonfinite;
};

/// One element's AdamW update.
struct AdamWElement {
  float beta1, beta2, epsilon, scale, decay, stepSize, bias2Sqrt;

  /// The update of step `step` at rate `lr` for a tensor of weight decay
  /// `weightDecay`, the gradient clipped by the global `norm`.
  __device__ static AdamWElement make(const AdamWConfig &config,
                                      float weightDecay, int64_t step,
                                      float lr, float norm) {
    double stepD = static_cast<double>(step);
    AdamWElement u;
    u.beta1 = config.beta1;
    u.beta2 = config.beta2;
    u.epsilon = config.epsilon;
    u.scale = config.maxGradNorm > 0.0f
                  ? fminf(1.0f, config.maxGradNorm / (norm + 1e-6f))
                  : 1.0f;
    u.decay = 1.0f - lr * weightDecay;
    u.stepSize = lr / static_cast<float>(
                          1.0 - pow(static_cast<double>(config.beta1), stepD));
    u.bias2Sqrt = static_cast<float>(
        sqrt(1.0 - pow(static_cast<double>(config.beta2), stepD)));
    return u;
  }

  /// Every rounding is spelled out (__f*_rn are never contracted): nvcc
  /// otherwise fuses a multiply and an add into an FMA where it sees fit,
  /// which differs between kernels that inline this, and the split-master
  /// AdamW must give the fp32 AdamW's masters bit for bit (measured: a
  /// fifth of the elements differed by one rounding).
  __device__ void operator()(float &p, float &m, float &v, float g) const {
    g = __fmul_rn(g, scale);
    m = __fmaf_rn(beta1, m, __fmul_rn(1.0f - beta1, g));
    v = __fmaf_rn(beta2, v, __fmul_rn(__fmul_rn(1.0f - beta2, g), g));
    float denominator =
        __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bias2Sqrt), epsilon);
    p = __fmaf_rn(p, decay, -__fdiv_rn(__fmul_rn(stepSize, m), denominator));
  }
};

template <class TS, class TG, int kWidth = kOptimizerWidth<TS>>
__global__ void adamwKernel(const OptimizerTensor *tensors,
                            const OptimizerChunk *chunks, const int64_t *step,
                            const float *lr, const float *norm,
                            AdamWConfig config) {
  if (config.skipNonfinite && !isfinite(*norm))
    return;
  OptimizerChunk c = chunks[blockIdx.x];
  OptimizerTensor t = tensors[c.tensor];
  AdamWElement update = AdamWElement::make(config, t.weightDecay, *step, *lr,
                                           *norm);
  TS *param = static_cast<TS *>(t.param) + c.begin;
  TS *expAvg = static_cast<TS *>(t.expAvg) + c.begin;
  TS *expAvgSq = static_cast<TS *>(t.expAvgSq) + c.begin;
  const TG *grad = static_cast<const TG *>(t.grad) + c.begin;
  bf16 *copy = t.copy ? t.copy + c.begin : nullptr;
  // kWidth elements per access (16 bytes of the state) where the chunk's
  // start is aligned for it in all the tensors (chunks start at multiples
  // of kChunk, tensors at 256-byte offsets), then the tail one by one.
  int64_t n = c.end - c.begin, vectors = 0;
  if (alignedFor<TS, kWidth>(param) && alignedFor<TS, kWidth>(expAvg) &&
      alignedFor<TS, kWidth>(expAvgSq) && alignedFor<TG, kWidth>(grad) &&
      (!copy || alignedFor<bf16, kWidth>(copy)))
    vectors = n / kWidth;
  using SPack = Pack<TS, kWidth>;
  using GPack = Pack<TG, kWidth>;
  using CPack = Pack<bf16, kWidth>;
  for (int64_t j = threadIdx.x; j < vectors; j += blockDim.x) {
    SPack p = reinterpret_cast<const SPack *>(param)[j],
          m = reinterpret_cast<const SPack *>(expAvg)[j],
          v = reinterpret_cast<const SPack *>(expAvgSq)[j];
    GPack g = reinterpret_cast<const GPack *>(grad)[j];
    CPack out;
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      float pe = toFloat(p.x[e]), me = toFloat(m.x[e]), ve = toFloat(v.x[e]);
      update(pe, me, ve, toFloat(g.x[e]));
      p.x[e] = fromFloat<TS>(pe);
      m.x[e] = fromFloat<TS>(me);
      v.x[e] = fromFloat<TS>(ve);
      out.x[e] = fromFloat<bf16>(pe);
    }
    reinterpret_cast<SPack *>(param)[j] = p;
    reinterpret_cast<SPack *>(expAvg)[j] = m;
    reinterpret_cast<SPack *>(expAvgSq)[j] = v;
    if (copy)
      reinterpret_cast<CPack *>(copy)[j] = out;
  }
  for (int64_t i = kWidth * vectors + threadIdx.x; i < n; i += blockDim.x) {
    float p = toFloat(param[i]), m = toFloat(expAvg[i]),
          v = toFloat(expAvgSq[i]);
    update(p, m, v, toFloat(grad[i]));
    param[i] = fromFloat<TS>(p);
    expAvg[i] = fromFloat<TS>(m);
    expAvgSq[i] = fromFloat<TS>(v);
    if (copy) // = the stored parameter rounded: rounding to bf16 is idempotent
      copy[i] = fromFloat<bf16>(p);
  }
}
/// AdamW on masters kept as copy + remainder (see the file comment): reads
/// copy, remainder, moments and gradient, writes copy, remainder and
/// moments; fp32 moments, gradients of type TG. Four elements per access.
template <class TG>
__global__ void adamwRemaindersKernel(const OptimizerTensor *tensors,
                                      const OptimizerChunk *chunks,
                                      const int64_t *step, const float *lr,
                                      const float *norm, AdamWConfig config) {
  constexpr int kWidth = 4;
  if (config.skipNonfinite && !isfinite(*norm))
    return;
  OptimizerChunk c = chunks[blockIdx.x];
  OptimizerTensor t = tensors[c.tensor];
  AdamWElement update = AdamWElement::make(config, t.weightDecay, *step, *lr,
                                           *norm);
  uint16_t *hi = reinterpret_cast<uint16_t *>(t.copy) + c.begin;
  uint16_t *lo = t.remainder + c.begin;
  float *expAvg = static_cast<float *>(t.expAvg) + c.begin;
  float *expAvgSq = static_cast<float *>(t.expAvgSq) + c.begin;
  const TG *grad = static_cast<const TG *>(t.grad) + c.begin;
  int64_t n = c.end - c.begin, vectors = 0;
  if (alignedFor<uint16_t, kWidth>(hi) && alignedFor<uint16_t, kWidth>(lo) &&
      alignedFor<float, kWidth>(expAvg) &&
      alignedFor<float, kWidth>(expAvgSq) && alignedFor<TG, kWidth>(grad))
    vectors = n / kWidth;
  using HPack = Pack<uint16_t, kWidth>;
  using FPack = Pack<float, kWidth>;
  using GPack = Pack<TG, kWidth>;
  for (int64_t j = threadIdx.x; j < vectors; j += blockDim.x) {
    HPack h = reinterpret_cast<const HPack *>(hi)[j],
          l = reinterpret_cast<const HPack *>(lo)[j];
    FPack m = reinterpret_cast<const FPack *>(expAvg)[j],
          v = reinterpret_cast<const FPack *>(expAvgSq)[j];
    GPack g = reinterpret_cast<const GPack *>(grad)[j];
#pragma unroll
    for (int e = 0; e < kWidth; ++e) {
      float p = joinMaster(h.x[e], l.x[e]);
      update(p, m.x[e], v.x[e], toFloat(g.x[e]));
      splitMaster(p, h.x[e], l.x[e]);
    }
    reinterpret_cast<HPack *>(hi)[j] = h;
    reinterpret_cast<HPack *>(lo)[j] = l;
    reinterpret_cast<FPack *>(expAvg)[j] = m;
    reinterpret_cast<FPack *>(expAvgSq)[j] = v;
  }
  for (int64_t i = kWidth * vectors + threadIdx.x; i < n; i += blockDim.x) {
    float p = joinMaster(hi[i], lo[i]);
    update(p, expAvg[i], expAvgSq[i], toFloat(grad[i]));
    splitMaster(p, hi[i], lo[i]);
  }
}

/// copy, remainder <- split(param) (toward the split form) or param <-
/// join(copy, remainder) (back to fp32), over the elements [from, to) of
/// every tensor of the group.
template <bool kSplit>
__global__ void convertMastersKernel(const OptimizerTensor *tensors,
                                     const OptimizerChunk *chunks,
                                     int64_t from, int64_t to) {
  OptimizerChunk c = chunks[blockIdx.x];
  int64_t begin = c.begin > from ? c.begin : from;
  int64_t end = c.end < to ? c.end : to;
  OptimizerTensor t = tensors[c.tensor];
  float *param = static_cast<float *>(t.param);
  uint16_t *hi = reinterpret_cast<uint16_t *>(t.copy);
  // Each element read whole before it is written: element 0's remainder
  // is the low half of master 0 itself.
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    if (kSplit) {
      float p = param[i];
      splitMaster(p, hi[i], t.remainder[i]);
    } else {
      float p = joinMaster(hi[i], t.remainder[i]);
      param[i] = p;
    }
  }
}
} // namespace detail

inline int64_t globalNormScratchBytes(const TensorGroup &group) {
  return globalNormScratchBytes(group.numChunks);
}

/// norm = sqrt(Σ over the group's gradients (of type TG) of g²), a device
/// fp32 scalar.
template <class TG>
void globalNorm(const Context &ctx, const TensorGroup &group, float *norm) {
  int64_t offset = 0;
  double *partial = scratchAt<double>(ctx, offset, group.numChunks);
  if (group.numChunks > 0)
    detail::sumSquaresKernel<TG><<<group.numChunks, 512, 0, ctx.stream>>>(
        group.deviceTensors, group.deviceChunks, partial);
  detail::normFromPartialsKernel<<<1, 32, 0, ctx.stream>>>(
      partial, group.numChunks, norm);
}

/// One AdamW step over every tensor of the group (state TS, gradients TG),
/// in place; with `skipNonfinite`, none when *norm is not finite.
template <class TS, class TG>
void adamw(const Context &ctx, const TensorGroup &group, const int64_t *step,
           const float *lr, const float *norm, float beta1, float beta2,
           float epsilon, float maxGradNorm, bool skipNonfinite = false) {
  if (group.numChunks == 0)
    return;
  detail::adamwKernel<TS, TG><<<group.numChunks, 512, 0, ctx.stream>>>(
      group.deviceTensors, group.deviceChunks, step, lr, norm,
      detail::AdamWConfig{beta1, beta2, epsilon, maxGradNorm, skipNonfinite});
}

/// adamw<float, TG> on masters kept as copy + remainder (every tensor of
/// the group names both; `param` is neither read nor written).
template <class TG>
void adamwRemainders(const Context &ctx, const TensorGroup &group,
                     const int64_t *step, const float *lr, const float *norm,
                     float beta1, float beta2, float epsilon,
                     float maxGradNorm, bool skipNonfinite = false) {
  if (group.numChunks == 0)
    return;
  detail::adamwRemaindersKernel<TG><<<group.numChunks, 512, 0, ctx.stream>>>(
      group.deviceTensors, group.deviceChunks, step, lr, norm,
      detail::AdamWConfig{beta1, beta2, epsilon, maxGradNorm, skipNonfinite});
}

/// Every tensor's fp32 `param` split into its `copy` and `remainder`, and
/// back (joinMasters: exactly the master splitMasters and adamwRemainders
/// left). The remainders may live in the first half of the masters' own
/// fp32 slots (`remainder` = `param`, as the printed programs keep them):
/// element i's remainder then overlaps half of master i/2, so the
/// elements go in launches over [0, 1), [1, 2), [2, 4), [4, 8), ...: a
/// split writes only over masters an earlier launch has read, and a join,
/// the launches in the opposite order, only over remainders an earlier
/// launch has read. About log2(largest tensor) launches, at a run's start
/// and before a save.
inline void splitMasters(const Context &ctx, const TensorGroup &group) {
  if (group.numChunks == 0)
    return;
  for (int64_t to = 1; to / 2 < group.maxCount; to *= 2) // [0, 1), [1, 2), ...
    detail::convertMastersKernel<true>
        <<<group.numChunks, 512, 0, ctx.stream>>>(
            group.deviceTensors, group.deviceChunks, to / 2, to);
}

inline void joinMasters(const Context &ctx, const TensorGroup &group) {
  if (group.numChunks == 0)
    return;
  int64_t to = 1;
  while (to < group.maxCount)
    to *= 2;
  for (; to >= 1; to /= 2) // splitMasters' launches, last first
    detail::convertMastersKernel<false>
        <<<group.numChunks, 512, 0, ctx.stream>>>(
            group.deviceTensors, group.deviceChunks, to / 2, to);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_OPTIMIZER_CUH
