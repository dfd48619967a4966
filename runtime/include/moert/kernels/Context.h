//===- Context.h - What a kernel launch needs -------------------*- C++ -*-===//
//
// The host side of the kernel library, compilable without nvcc: the CUDA
// and cuBLAS status checks, the per-op profiler and the Context every
// launch takes. The kernel headers (Common.cuh and the rest) and the
// compiled runtime (the driver, moert/TrainDriver.h) both include it.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_KERNELS_CONTEXT_H
#define MOERT_KERNELS_CONTEXT_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define MOERT_CUDA_CHECK(call)                                                 \
  do {                                                                         \
    cudaError_t status_ = (call);                                              \
    if (status_ != cudaSuccess) {                                              \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__,       \
                   #call, cudaGetErrorString(status_));                        \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

#define MOERT_CUBLAS_CHECK(call)                                               \
  do {                                                                         \
    cublasStatus_t status_ = (call);                                           \
    if (status_ != CUBLAS_STATUS_SUCCESS) {                                    \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__,       \
                   #call, cublasGetStatusString(status_));                     \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

namespace moert {
struct Cudnn;     // moert/Cudnn.h
class MeshGroups; // moert/Mesh.h
} // namespace moert

namespace moert::kernels {

/// Per-op timing of one step: the printed step marks the start of every op
/// (and the end) with an event on the stream; the driver reads the gaps.
struct Profiler {
  std::vector<cudaEvent_t> events;
  std::vector<const char *> names;
  void mark(cudaStream_t stream, const char *name) {
    cudaEvent_t event;
    MOERT_CUDA_CHECK(cudaEventCreate(&event));
    MOERT_CUDA_CHECK(cudaEventRecord(event, stream));
    events.push_back(event);
    names.push_back(name);
  }
};

struct Blas; // Gemm.cuh
struct ActivationOffload; // Offload.h

/// What a kernel launch needs besides its buffers.
struct Context {
  cudaStream_t stream = nullptr;
  /// cuBLASLt/cuBLAS handles on `stream`, their workspace and the cached
  /// GEMM plans (Gemm.cuh: createBlas/destroyBlas).
  Blas *blas = nullptr;
  /// cuDNN handle on `stream` and its SDPA graphs (moert/Cudnn.h:
  /// createCudnn/destroyCudnn); only programs with bf16 attention on cuDNN
  /// make one.
  moert::Cudnn *cudnn = nullptr;
  /// Deterministic mode (train_step --deterministic): the libraries' kernels
  /// that would add in a run-dependent order use a fixed one (cuDNN's
  /// attention backward, the one such kernel of a program).
  bool deterministic = false;
  /// Scratch for kernels that need temporary device memory (permutation
  /// indices, per-row statistics). Sized by the program from the compiler's
  /// plan; each kernel documents what it uses. Never live across launches of
  /// different ops.
  char *scratch = nullptr;
  int64_t scratchBytes = 0;
  /// The collectives' own scratch, which forkCollective gives the
  /// collective stream: collectives run there in program order beside the
  /// compute stream's kernels, so they never share `scratch` with them.
  /// Null: collectives use `scratch` (they run on `stream`).
  char *collectiveScratch = nullptr;
  int64_t collectiveScratchBytes = 0;
  /// The same for the gradient reductions, which forkGradientReduction
  /// gives the gradient stream.
  char *gradientScratch = nullptr;
  int64_t gradientScratchBytes = 0;
  /// Pinned host memory for the few values the host must read during a step
  /// (the experts' token counts, for the grouped GEMM's group sizes).
  int64_t *hostCounts = nullptr;
  /// The rank's communicators, by the grid axes a collective names; null in
  /// a one-rank program.
  const moert::MeshGroups *mesh = nullptr;
  /// The stream a partitioned step runs its overlapped collectives on, beside
  /// `stream` (docs/cuda-backend.md, Partitioned steps); null: they run on
  /// `stream`, in program order.
  cudaStream_t collectiveStream = nullptr;
  /// The stream of its gradient reductions, beside both; null: they run on
  /// `stream`, in program order.
  cudaStream_t gradientStream = nullptr;
  /// Set for the one step the driver profiles.
  Profiler *profiler = nullptr;
  /// Set by the driver for the first step of a run, and for the step after
  /// the masters were joined (TrainProgram::syncMasters): the bf16
  /// parameter copies that AdamW keeps (moe-keep-param-copies) are not
  /// current yet, or split masters are fp32 again, so the step computes
  /// them from the parameters first.
  bool refreshParameterCopies = false;
  /// The pinned host region and the transfer streams of a program that
  /// offloads activations (Offload.h); null in one that does not.
  ActivationOffload *offload = nullptr;
  /// Set by the driver under --check-numerics (eager steps only): one
  /// device counter per check the program prints (TrainProgram::
  /// numericsChecks), zeroed before each step, to which check `i` adds the
  /// inf and NaN elements of its result (Numerics.cuh). Null: no checks run.
  unsigned long long *nonfiniteCounts = nullptr;
};

/// Marks the start of op `name` in the profiled step.
inline void mark(const Context &ctx, const char *name) {
  if (ctx.profiler)
    ctx.profiler->mark(ctx.stream, name);
}

} // namespace moert::kernels

#endif // MOERT_KERNELS_CONTEXT_H
