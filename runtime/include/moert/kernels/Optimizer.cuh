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
  float s = 0.0f;
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x)
    s += g[i] * g[i];
  s = blockSum(s, shared);
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

__global__ void adamwKernel(const OptimizerTensor *tensors,
                            const OptimizerChunk *chunks, const int64_t *step,
                            const float *lr, const float *norm,
                            AdamWConfig config) {
  OptimizerChunk c = chunks[blockIdx.x];
  OptimizerTensor t = tensors[c.tensor];
  double stepD = static_cast<double>(*step);
  float bias1 = static_cast<float>(1.0 - pow(static_cast<double>(config.beta1), stepD));
  float bias2Sqrt = static_cast<float>(sqrt(1.0 - pow(static_cast<double>(config.beta2), stepD)));
  float rate = *lr;
  float scale = 1.0f;
  if (config.maxGradNorm > 0.0f)
    scale = fminf(1.0f, config.maxGradNorm / (*norm + 1e-6f));
  float decay = 1.0f - rate * t.weightDecay;
  float stepSize = rate / bias1;
  for (int64_t i = c.begin + threadIdx.x; i < c.end; i += blockDim.x) {
    float g = t.grad[i] * scale;
    float m = config.beta1 * t.expAvg[i] + (1.0f - config.beta1) * g;
    float v = config.beta2 * t.expAvgSq[i] + (1.0f - config.beta2) * g * g;
    float p = t.param[i] * decay;
    p -= stepSize * m / (sqrtf(v) / bias2Sqrt + config.epsilon);
    t.param[i] = p;
    t.expAvg[i] = m;
    t.expAvgSq[i] = v;
  }
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
