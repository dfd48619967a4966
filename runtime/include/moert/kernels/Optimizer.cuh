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
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_OPTIMIZER_CUH
#define MOERT_KERNELS_OPTIMIZER_CUH

#include "moert/kernels/Common.cuh"

#include <vector>

namespace moert::kernels {

/// One tensor of a multi-tensor launch. For the norm only `grad` is read.
struct OptimizerTensor {
  float *param = nullptr, *expAvg = nullptr, *expAvgSq = nullptr;
  const float *grad = nullptr;
  int64_t count = 0;
  float weightDecay = 0.0f;
};

struct OptimizerChunk {
  int32_t tensor;
  int64_t begin, end;
};

/// The device tables of one multi-tensor launch, built once at start-up.
class TensorGroup {
public:
  static constexpr int64_t kChunk = 1 << 16;

  void init(const std::vector<OptimizerTensor> &tensors) {
    std::vector<OptimizerChunk> chunks;
    for (size_t i = 0; i < tensors.size(); ++i)
      for (int64_t b = 0; b < tensors[i].count; b += kChunk)
        chunks.push_back({static_cast<int32_t>(i), b,
                          b + kChunk < tensors[i].count ? b + kChunk
                                                        : tensors[i].count});
    numChunks = static_cast<int64_t>(chunks.size());
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
};

namespace detail {
__global__ void sumSquaresKernel(const OptimizerTensor *tensors,
                                 const OptimizerChunk *chunks,
                                 double *partial) {
  __shared__ float shared[32];
  OptimizerChunk c = chunks[blockIdx.x];
  const float *g = tensors[c.tensor].grad;
  double s = 0.0;
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x)
    s += static_cast<double>(g[i]) * g[i];
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
};

/// One element's AdamW update.
struct AdamWElement {
  float beta1, beta2, epsilon, scale, decay, stepSize, bias2Sqrt;
  __device__ void operator()(float &p, float &m, float &v, float g) const {
    g *= scale;
    m = beta1 * m + (1.0f - beta1) * g;
    v = beta2 * v + (1.0f - beta2) * g * g;
    p = p * decay - stepSize * m / (sqrtf(v) / bias2Sqrt + epsilon);
  }
};

__global__ void adamwKernel(const OptimizerTensor *tensors,
                            const OptimizerChunk *chunks, const int64_t *step,
                            const float *lr, const float *norm,
                            AdamWConfig config) {
  OptimizerChunk c = chunks[blockIdx.x];
  OptimizerTensor t = tensors[c.tensor];
  double stepD = static_cast<double>(*step);
  float rate = *lr;
  AdamWElement update;
  update.beta1 = config.beta1;
  update.beta2 = config.beta2;
  update.epsilon = config.epsilon;
  update.scale = config.maxGradNorm > 0.0f
                     ? fminf(1.0f, config.maxGradNorm / (*norm + 1e-6f))
                     : 1.0f;
  update.decay = 1.0f - rate * t.weightDecay;
  update.stepSize = rate / static_cast<float>(
                               1.0 - pow(static_cast<double>(config.beta1), stepD));
  update.bias2Sqrt = static_cast<float>(
      sqrt(1.0 - pow(static_cast<double>(config.beta2), stepD)));
  // Four elements per load where the chunk's start is 16-byte aligned in
  // all four tensors (chunks start at multiples of kChunk, tensors at
  // 256-byte offsets), then the tail one by one.
  int64_t n = c.end - c.begin, vectors = 0;
  auto aligned = [&](const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
  };
  if (aligned(t.param + c.begin) && aligned(t.expAvg + c.begin) &&
      aligned(t.expAvgSq + c.begin) && aligned(t.grad + c.begin))
    vectors = n / 4;
  float4 *p4 = reinterpret_cast<float4 *>(t.param + c.begin);
  float4 *m4 = reinterpret_cast<float4 *>(t.expAvg + c.begin);
  float4 *v4 = reinterpret_cast<float4 *>(t.expAvgSq + c.begin);
  const float4 *g4 = reinterpret_cast<const float4 *>(t.grad + c.begin);
  for (int64_t j = threadIdx.x; j < vectors; j += blockDim.x) {
    float4 p = p4[j], m = m4[j], v = v4[j], g = g4[j];
    update(p.x, m.x, v.x, g.x);
    update(p.y, m.y, v.y, g.y);
    update(p.z, m.z, v.z, g.z);
    update(p.w, m.w, v.w, g.w);
    p4[j] = p;
    m4[j] = m;
    v4[j] = v;
  }
  for (int64_t i = c.begin + 4 * vectors + threadIdx.x; i < c.end;
       i += blockDim.x)
    update(t.param[i], t.expAvg[i], t.expAvgSq[i], t.grad[i]);
}
} // namespace detail

inline int64_t globalNormScratchBytes(const TensorGroup &group) {
  return group.numChunks * 8 + 256;
}

/// norm = sqrt(Σ over the group's gradients of g²), a device fp32 scalar.
inline void globalNorm(const Context &ctx, const TensorGroup &group,
                       float *norm) {
  int64_t offset = 0;
  double *partial = scratchAt<double>(ctx, offset, group.numChunks);
  if (group.numChunks > 0)
    detail::sumSquaresKernel<<<group.numChunks, 512, 0, ctx.stream>>>(
        group.deviceTensors, group.deviceChunks, partial);
  detail::normFromPartialsKernel<<<1, 32, 0, ctx.stream>>>(
      partial, group.numChunks, norm);
}

/// One AdamW step over every tensor of the group, in place.
inline void adamw(const Context &ctx, const TensorGroup &group,
                  const int64_t *step, const float *lr, const float *norm,
                  float beta1, float beta2, float epsilon,
                  float maxGradNorm) {
  if (group.numChunks == 0)
    return;
  detail::adamwKernel<<<group.numChunks, 512, 0, ctx.stream>>>(
      group.deviceTensors, group.deviceChunks, step, lr, norm,
      detail::AdamWConfig{beta1, beta2, epsilon, maxGradNorm});
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_OPTIMIZER_CUH
