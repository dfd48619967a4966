//===- AttentionTest.cu - GPU test of the attention kernels ------*- CUDA -*-===//
//
// Runs moert::kernels::attention and attentionGrad (Attention.cuh, fp32 and
// bf16) and attentionCudnn and attentionGradCudnn (AttentionCudnn.cuh, bf16)
// on random inputs (grouped-query shapes; non-causal, causal, causal with a
// sliding window) and compares every output with a naive double-precision
// host implementation written here from the op's semantics
// (docs/Dialects/Moe.md, moe.attention / moe.attention_grad):
//
//   query head h uses kv head h / (N / KV);
//   visible(i, j) = !causal || (j <= i && (window < 0 || i - j < window));
//   P = softmax over the visible j of scale · q_i · k_j;  out_i = Σ_j P_ij v_j
//
// and the gradients of out with respect to q, k and v (dk, dv summed over
// the query heads that share a kv head). Outputs and scratch are filled with
// NaN bytes before the calls, so anything left unwritten (or read before it
// is written) fails. The GEMM kernels run twice to check that the results
// are bitwise deterministic; cuDNN runs once keeping the forward's output
// and log-sum-exp for the backward (checked against the oracle's too) and
// once with the backward rerunning the forward. Some cases
// lower attentionScoreBudget so the GEMM kernels take small query blocks and
// several chunks of (batch, kv head) pairs.
//
// Tolerances (relative L2 error against the double reference, computed on
// the inputs as rounded to the storage type): fp32 1e-5, bf16 2e-2.
//
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a
//     -I runtime/include -I include -I <cudnn frontend include>
//     runtime/tests/AttentionTest.cu -o AttentionTest
//     -lcublas -lcublasLt -lcudnn
//
//   AttentionTest           the correctness cases; main() returns nonzero
//                           when any check fails
//   AttentionTest --bench   times B=4 S=2048 N=32 KV=8 D=128 bf16 causal,
//                           both kernels (median of 10 after 3 warm-ups,
//                           forward and backward separately); optional
//                           arguments `non-causal`, `window W`, `budget MiB`
//                           (the GEMM kernels' attentionScoreBudget)
//
//===----------------------------------------------------------------------===//

#include "moert/kernels/Attention.cuh"
#include "moert/kernels/AttentionCudnn.cuh"

#include "TestSupport.cuh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace moert::kernels;
using namespace moert::testing;

namespace {

struct Shape {
  int64_t B, S, N, KV, D;
};

struct Mode {
  bool causal;
  int64_t window; // < 0: none
};

struct Expected {
  std::vector<double> out, dq, dk, dv;
  std::vector<double> lse; ///< [B, N, S]: log Σ over visible j of exp(score)
};

/// The double-precision reference, one (batch, query head, position) row at
/// a time.
Expected hostAttention(const Shape &s, const Mode &mode, double scale,
                       const std::vector<double> &q,
                       const std::vector<double> &k,
                       const std::vector<double> &v,
                       const std::vector<double> &dOut) {
  const int64_t B = s.B, S = s.S, N = s.N, KV = s.KV, D = s.D, G = N / KV;
  Expected e;
  e.out.assign(B * S * N * D, 0.0);
  e.dq.assign(B * S * N * D, 0.0);
  e.dk.assign(B * S * KV * D, 0.0);
  e.dv.assign(B * S * KV * D, 0.0);
  e.lse.assign(B * N * S, -INFINITY);
  auto qAt = [&](int64_t b, int64_t i, int64_t h) {
    return ((b * S + i) * N + h) * D;
  };
  auto kAt = [&](int64_t b, int64_t j, int64_t g) {
    return ((b * S + j) * KV + g) * D;
  };
  std::vector<double> p(S), dp(S);
  std::vector<char> seen(S);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < N; ++h) {
      const int64_t g = h / G;
      for (int64_t i = 0; i < S; ++i) {
        const double *qi = &q[qAt(b, i, h)];
        const double *doi = &dOut[qAt(b, i, h)];
        double maxScore = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          bool visible = !mode.causal ||
                         (j <= i && (mode.window < 0 || i - j < mode.window));
          seen[j] = visible;
          if (!visible)
            continue;
          double dot = 0.0;
          const double *kj = &k[kAt(b, j, g)];
          for (int64_t d = 0; d < D; ++d)
            dot += qi[d] * kj[d];
          p[j] = dot * scale;
          maxScore = std::max(maxScore, p[j]);
        }
        double total = 0.0;
        for (int64_t j = 0; j < S; ++j)
          if (seen[j])
            total += (p[j] = std::exp(p[j] - maxScore));
        e.lse[(b * N + h) * S + i] = maxScore + std::log(total);
        double inner = 0.0;
        for (int64_t j = 0; j < S; ++j) {
          if (!seen[j])
            continue;
          p[j] /= total;
          const double *vj = &v[kAt(b, j, g)];
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) {
            e.out[qAt(b, i, h) + d] += p[j] * vj[d];
            e.dv[kAt(b, j, g) + d] += p[j] * doi[d];
            acc += doi[d] * vj[d];
          }
          dp[j] = acc;
          inner += p[j] * acc;
        }
        for (int64_t j = 0; j < S; ++j) {
          if (!seen[j])
            continue;
          double ds = p[j] * (dp[j] - inner) * scale;
          const double *kj = &k[kAt(b, j, g)];
          for (int64_t d = 0; d < D; ++d) {
            e.dq[qAt(b, i, h) + d] += ds * kj[d];
            e.dk[kAt(b, j, g) + d] += ds * qi[d];
          }
        }
      }
    }
  return e;
}

/// One shape, mode and type; returns the number of failed checks.
/// `budget` > 0 overrides attentionScoreBudget for this case.
template <class T>
int runCase(const Shape &s, const Mode &mode, int64_t budget, uint32_t seed,
            Blas *blas, moert::Cudnn *cudnn, cudaStream_t stream) {
  const int64_t B = s.B, S = s.S, N = s.N, KV = s.KV, D = s.D;
  const int64_t nq = B * S * N * D, nk = B * S * KV * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t savedBudget = attentionScoreBudget;
  if (budget > 0)
    attentionScoreBudget = budget;

  char label[200];
  std::snprintf(label, sizeof label,
                "%s%s B %lld S %lld N %lld KV %lld D %lld %s window %lld%s",
                typeName<T>(), cudnn ? " cuDNN" : "", (long long)B,
                (long long)S, (long long)N, (long long)KV, (long long)D,
                mode.causal ? "causal" : "non-causal", (long long)mode.window,
                budget > 0 ? " (small score budget)" : "");
  std::printf("== %s\n", label);

  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(nq), k(nk), v(nk), dOut(nq);
  for (float &x : q)
    x = normal(rng);
  for (float &x : k)
    x = normal(rng);
  for (float &x : v)
    x = normal(rng);
  for (float &x : dOut)
    x = normal(rng);

  std::vector<T> qT = toStorage<T>(q), kT = toStorage<T>(k),
                 vT = toStorage<T>(v), dOutT = toStorage<T>(dOut);
  Expected want = hostAttention(s, mode, static_cast<double>(scale),
                                toDoubles(qT), toDoubles(kT), toDoubles(vT),
                                toDoubles(dOutT));

  T *dQin = deviceCopy(qT), *dKin = deviceCopy(kT), *dVin = deviceCopy(vT),
    *dDy = deviceCopy(dOutT);
  T *out[2], *dq[2], *dk[2], *dv[2];
  for (int r = 0; r < 2; ++r) {
    out[r] = deviceNaN<T>(nq);
    dq[r] = deviceNaN<T>(nq);
    dk[r] = deviceNaN<T>(nk);
    dv[r] = deviceNaN<T>(nk);
  }

  Context ctx;
  ctx.stream = stream;
  ctx.blas = blas;
  ctx.cudnn = cudnn;
  if constexpr (std::is_same_v<T, bf16>)
    ctx.scratchBytes =
        cudnn ? attentionCudnnScratchBytes(ctx, B, S, N, KV, D, scale,
                                           mode.causal, mode.window)
              : attentionScratchBytes(B, S, N, KV, D, sizeof(T));
  else
    ctx.scratchBytes = attentionScratchBytes(B, S, N, KV, D, sizeof(T));
  ctx.scratchBytes = std::max<int64_t>(ctx.scratchBytes, 256);
  CHECK_CUDA(cudaMalloc(&ctx.scratch, ctx.scratchBytes));
  CHECK_CUDA(cudaMemset(ctx.scratch, 0xFF, ctx.scratchBytes));

  // cuDNN: run 0 keeps the forward's output and log-sum-exp for the
  // backward (moe-save-attention-stats), run 1 makes the backward rerun
  // the forward; both are checked against the oracle.
  float *stats = cudnn ? deviceNaN<float>(B * N * S) : nullptr;
  for (int r = 0; r < 2; ++r) {
    if constexpr (std::is_same_v<T, bf16>) {
      if (cudnn) {
        bool saved = r == 0;
        attentionCudnn(ctx, dQin, dKin, dVin, B, S, N, KV, D, scale,
                       mode.causal, mode.window, out[r],
                       saved ? stats : nullptr);
        attentionGradCudnn(ctx, dQin, dKin, dVin, dDy, B, S, N, KV, D, scale,
                           mode.causal, mode.window, dq[r], dk[r], dv[r],
                           saved ? out[r] : nullptr, saved ? stats : nullptr);
        continue;
      }
    }
    attention<T>(ctx, dQin, dKin, dVin, B, S, N, KV, D, scale, mode.causal,
                 mode.window, out[r]);
    attentionGrad<T>(ctx, dQin, dKin, dVin, dDy, B, S, N, KV, D, scale,
                     mode.causal, mode.window, dq[r], dk[r], dv[r]);
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaGetLastError());

  const double tolerance = sizeof(T) == 4 ? 1e-5 : 2e-2;
  std::string prefix = std::string(label) + " ";
  int failures = 0;
  failures += !compare(prefix + "out", toDoubles(hostCopy(out[0], nq)),
                       want.out, tolerance);
  failures += !compare(prefix + "dq", toDoubles(hostCopy(dq[0], nq)), want.dq,
                       tolerance);
  failures += !compare(prefix + "dk", toDoubles(hostCopy(dk[0], nk)), want.dk,
                       tolerance);
  failures += !compare(prefix + "dv", toDoubles(hostCopy(dv[0], nk)), want.dv,
                       tolerance);
  bool same = sameBits(out[0], out[1], nq) && sameBits(dq[0], dq[1], nq) &&
              sameBits(dk[0], dk[1], nk) && sameBits(dv[0], dv[1], nk);
  if (cudnn) {
    std::printf("%sbitwise equal with and without the saved forward: %s "
                "(not required)\n",
                prefix.c_str(), same ? "yes" : "no");
    // The rerun path too; the stats where cuDNN ran (a declined shape runs
    // on the GEMM kernels, which keep none).
    failures += !compare(prefix + "dq (backward reruns the forward)",
                         toDoubles(hostCopy(dq[1], nq)), want.dq, tolerance);
    failures += !compare(prefix + "dk (backward reruns the forward)",
                         toDoubles(hostCopy(dk[1], nk)), want.dk, tolerance);
    failures += !compare(prefix + "dv (backward reruns the forward)",
                         toDoubles(hostCopy(dv[1], nk)), want.dv, tolerance);
    if (attentionOnCudnn(ctx, detail::sdpaShape(B, S, N, KV, D, scale,
                                                mode.causal, mode.window)))
      failures += !compare(prefix + "stats (log-sum-exp)",
                           toDoubles(hostCopy(stats, B * N * S)), want.lse,
                           tolerance);
    cudaFree(stats);
  } else {
    std::printf("%sbitwise deterministic over two runs: %s\n", prefix.c_str(),
                same ? "PASS" : "FAIL");
    failures += !same;
  }

  for (int r = 0; r < 2; ++r) {
    cudaFree(out[r]);
    cudaFree(dq[r]);
    cudaFree(dk[r]);
    cudaFree(dv[r]);
  }
  cudaFree(dQin);
  cudaFree(dKin);
  cudaFree(dVin);
  cudaFree(dDy);
  cudaFree(ctx.scratch);
  attentionScoreBudget = savedBudget;
  return failures;
}

/// Fills n bf16 values with a uniform [-1, 1) hash of their index.
__global__ void fillKernel(bf16 *p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t x = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    p[i] = __float2bfloat16_rn((x >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}

int bench(Blas *blas, moert::Cudnn *cudnn, cudaStream_t stream, bool causal,
          int64_t window) {
  const int64_t B = 4, S = 2048, N = 32, KV = 8, D = 128;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t nq = B * S * N * D, nk = B * S * KV * D;
  bf16 *q, *k, *v, *dOut, *out, *dq, *dk, *dv;
  for (bf16 **p : {&q, &dOut, &out, &dq})
    CHECK_CUDA(cudaMalloc(p, nq * sizeof(bf16)));
  for (bf16 **p : {&k, &v, &dk, &dv})
    CHECK_CUDA(cudaMalloc(p, nk * sizeof(bf16)));
  uint32_t seed = 1;
  for (bf16 *p : {q, dOut})
    fillKernel<<<1024, 256, 0, stream>>>(p, nq, seed++);
  for (bf16 *p : {k, v})
    fillKernel<<<1024, 256, 0, stream>>>(p, nk, seed++);
  CHECK_CUDA(cudaGetLastError());

  Context ctx;
  ctx.stream = stream;
  ctx.blas = blas;
  ctx.cudnn = cudnn;
  const int64_t gemmScratch =
      attentionScratchBytes(B, S, N, KV, D, sizeof(bf16));
  const int64_t cudnnScratch = attentionCudnnScratchBytes(
      ctx, B, S, N, KV, D, scale, causal, window);
  ctx.scratchBytes = std::max(gemmScratch, cudnnScratch);
  CHECK_CUDA(cudaMalloc(&ctx.scratch, ctx.scratchBytes));

  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  auto time = [&](auto &&fn) {
    std::vector<float> ms;
    for (int it = 0; it < 13; ++it) {
      CHECK_CUDA(cudaEventRecord(start, stream));
      fn();
      CHECK_CUDA(cudaEventRecord(stop, stream));
      CHECK_CUDA(cudaEventSynchronize(stop));
      float t = 0.0f;
      CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
      if (it >= 3)
        ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return 0.5f * (ms[4] + ms[5]);
  };
  float fwd = time([&] {
    attention<bf16>(ctx, q, k, v, B, S, N, KV, D, scale, causal, window, out);
  });
  float bwd = time([&] {
    attentionGrad<bf16>(ctx, q, k, v, dOut, B, S, N, KV, D, scale, causal,
                        window, dq, dk, dv);
  });
  float cudnnFwd = time([&] {
    attentionCudnn(ctx, q, k, v, B, S, N, KV, D, scale, causal, window, out);
  });
  float cudnnBwd = time([&] {
    attentionGradCudnn(ctx, q, k, v, dOut, B, S, N, KV, D, scale, causal,
                       window, dq, dk, dv);
  });
  float *stats = nullptr;
  CHECK_CUDA(cudaMalloc(&stats, B * N * S * sizeof(float)));
  float savedFwd = time([&] {
    attentionCudnn(ctx, q, k, v, B, S, N, KV, D, scale, causal, window, out,
                   stats);
  });
  float savedBwd = time([&] {
    attentionGradCudnn(ctx, q, k, v, dOut, B, S, N, KV, D, scale, causal,
                       window, dq, dk, dv, out, stats);
  });
  cudaFree(stats);
  CHECK_CUDA(cudaGetLastError());

  // Useful FLOPs: 2 matmuls forward, 5 backward (the recomputed scores
  // included), each 2·D per visible (query, key) pair per (batch, head).
  double visible = 0.0; // visible (query, key) pairs per (batch, head)
  for (int64_t i = 0; i < S; ++i)
    visible += !causal ? S : window >= 0 ? std::min<int64_t>(i + 1, window)
                                         : i + 1;
  double fwdFlops = 2.0 * 2.0 * B * N * visible * D;
  double bwdFlops = 2.5 * fwdFlops;
  std::printf("attention bench: bf16 B %lld S %lld N %lld KV %lld D %lld "
              "%s window %lld\n",
              (long long)B, (long long)S, (long long)N, (long long)KV,
              (long long)D, causal ? "causal" : "non-causal",
              (long long)window);
  auto report = [&](const char *name, float f, float b, int64_t scratch) {
    std::printf("%s: forward %.3f ms (%.1f TFLOP/s), backward %.3f ms "
                "(%.1f TFLOP/s), both %.3f ms, scratch %.1f MiB\n",
                name, f, fwdFlops / (f * 1e-3) / 1e12, b,
                bwdFlops / (b * 1e-3) / 1e12, f + b, scratch / 1048576.0);
  };
  report("gemm kernels (score budget)", fwd, bwd, gemmScratch);
  report("cuDNN SDPA (backward reruns the forward)", cudnnFwd, cudnnBwd,
         cudnnScratch);
  report("cuDNN SDPA (forward keeps O and log-sum-exp)", savedFwd, savedBwd,
         cudnnScratch);

  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  for (bf16 *p : {q, k, v, dOut, out, dq, dk, dv})
    cudaFree(p);
  cudaFree(ctx.scratch);
  return 0;
}

/// cuDNN's deterministic backward (createCudnn(stream, true), train_step
/// --deterministic): at a shape on cuDNN, dq, dk and dv of the saved-forward
/// backward, run `runs` times, must be the same bits every run, and within
/// bf16 tolerance of the default algorithm's. Whether the default repeats
/// its bits is printed (it need not). Returns the number of failed checks.
int checkDeterministic(const Shape &s, const Mode &mode, Blas *blas,
                       moert::Cudnn *deterministic, moert::Cudnn *fallible,
                       cudaStream_t stream, int runs) {
  const int64_t B = s.B, S = s.S, N = s.N, KV = s.KV, D = s.D;
  const int64_t nq = B * S * N * D, nk = B * S * KV * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  char label[160];
  std::snprintf(label, sizeof label,
                "bf16 cuDNN deterministic B %lld S %lld N %lld KV %lld D %lld "
                "%s window %lld",
                (long long)B, (long long)S, (long long)N, (long long)KV,
                (long long)D, mode.causal ? "causal" : "non-causal",
                (long long)mode.window);
  std::printf("== %s\n", label);
  bf16 *q, *k, *v, *dOut, *out;
  for (bf16 **p : {&q, &dOut, &out})
    CHECK_CUDA(cudaMalloc(p, nq * sizeof(bf16)));
  for (bf16 **p : {&k, &v})
    CHECK_CUDA(cudaMalloc(p, nk * sizeof(bf16)));
  uint32_t seed = 11;
  for (bf16 *p : {q, dOut})
    fillKernel<<<1024, 256, 0, stream>>>(p, nq, seed++);
  for (bf16 *p : {k, v})
    fillKernel<<<1024, 256, 0, stream>>>(p, nk, seed++);
  CHECK_CUDA(cudaGetLastError());
  float *stats = deviceNaN<float>(B * N * S);

  // Each handle's gradients from `runs` backward passes: [handle][run].
  std::vector<std::vector<std::vector<bf16>>> grads(2);
  moert::Cudnn *handles[2] = {deterministic, fallible};
  bool onCudnn = true;
  for (int h = 0; h < 2; ++h) {
    Context ctx;
    ctx.stream = stream;
    ctx.blas = blas;
    ctx.cudnn = handles[h];
    ctx.scratchBytes = std::max<int64_t>(
        attentionCudnnScratchBytes(ctx, B, S, N, KV, D, scale, mode.causal,
                                   mode.window),
        256);
    CHECK_CUDA(cudaMalloc(&ctx.scratch, ctx.scratchBytes));
    onCudnn = onCudnn && attentionOnCudnn(ctx, detail::sdpaShape(
                                                   B, S, N, KV, D, scale,
                                                   mode.causal, mode.window));
    attentionCudnn(ctx, q, k, v, B, S, N, KV, D, scale, mode.causal,
                   mode.window, out, stats);
    for (int r = 0; r < runs; ++r) {
      bf16 *dq = deviceNaN<bf16>(nq), *dk = deviceNaN<bf16>(nk),
           *dv = deviceNaN<bf16>(nk);
      attentionGradCudnn(ctx, q, k, v, dOut, B, S, N, KV, D, scale,
                         mode.causal, mode.window, dq, dk, dv, out, stats);
      CHECK_CUDA(cudaStreamSynchronize(stream));
      std::vector<bf16> all = hostCopy(dq, nq), dkHost = hostCopy(dk, nk),
                        dvHost = hostCopy(dv, nk);
      all.insert(all.end(), dkHost.begin(), dkHost.end());
      all.insert(all.end(), dvHost.begin(), dvHost.end());
      grads[h].push_back(std::move(all));
      cudaFree(dq);
      cudaFree(dk);
      cudaFree(dv);
    }
    cudaFree(ctx.scratch);
  }
  CHECK_CUDA(cudaGetLastError());
  auto repeats = [&](int h) {
    for (int r = 1; r < runs; ++r)
      if (!sameBits(grads[h][0], grads[h][r]))
        return false;
    return true;
  };
  std::string prefix = std::string(label) + " ";
  int failures = 0;
  if (!onCudnn)
    std::printf("%scuDNN declines the shape: the GEMM kernels run it\n",
                prefix.c_str());
  bool same = repeats(0);
  std::printf("%sdq, dk, dv the same bits in %d runs: %s\n", prefix.c_str(),
              runs, same ? "PASS" : "FAIL");
  failures += !same;
  std::printf("%sthe default algorithm the same bits in %d runs: %s (not "
              "required)\n",
              prefix.c_str(), runs, repeats(1) ? "yes" : "no");
  failures += !compare(prefix + "dq, dk, dv against the default algorithm's",
                       toDoubles(grads[0][0]), toDoubles(grads[1][0]), 2e-2);
  for (bf16 *p : {q, k, v, dOut, out})
    cudaFree(p);
  cudaFree(stats);
  return failures;
}

} // namespace

int main(int argc, char **argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "AttentionTest: no CUDA device\n");
    return 2;
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  Blas *blas = createBlas(stream);
  moert::Cudnn *cudnn = moert::createCudnn(stream);

  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    // Optional: --bench [non-causal | window W] [budget MiB]
    // [deterministic] (cuDNN's deterministic backward)
    bool causal = true;
    int64_t window = -1;
    for (int i = 2; i < argc; ++i) {
      if (std::strcmp(argv[i], "non-causal") == 0)
        causal = false;
      else if (std::strcmp(argv[i], "deterministic") == 0) {
        moert::destroyCudnn(cudnn);
        cudnn = moert::createCudnn(stream, true);
        std::printf("attention bench: cuDNN's deterministic backward\n");
      }
      else if (std::strcmp(argv[i], "window") == 0 && i + 1 < argc)
        window = std::atoll(argv[++i]);
      else if (std::strcmp(argv[i], "budget") == 0 && i + 1 < argc)
        attentionScoreBudget = std::atoll(argv[++i]) << 20;
    }
    int rc = bench(blas, cudnn, stream, causal, window);
    moert::destroyCudnn(cudnn);
    destroyBlas(blas);
    CHECK_CUDA(cudaStreamDestroy(stream));
    return rc;
  }

  struct Case {
    Shape shape;
    Mode mode;
    int64_t budget;
  };
  const Case cases[] = {
      {{2, 13, 4, 2, 8}, {true, -1}, 0},
      {{2, 13, 4, 2, 8}, {true, 5}, 0},
      {{2, 13, 4, 2, 8}, {false, -1}, 0},
      {{2, 13, 4, 2, 8}, {false, 3}, 0}, // window ignored without causal
      {{1, 64, 4, 1, 16}, {true, -1}, 0},
      {{1, 64, 4, 1, 16}, {true, 16}, 0},
      {{1, 64, 4, 1, 16}, {false, -1}, 0},
      {{2, 200, 8, 2, 128}, {true, -1}, 0},
      {{2, 200, 8, 2, 128}, {true, 50}, 0},
      {{2, 200, 8, 2, 128}, {false, -1}, 0},
      // Several query blocks (R = 256), a key range starting past 0.
      {{1, 600, 4, 2, 64}, {true, -1}, 0},
      {{1, 600, 4, 2, 64}, {true, 100}, 0},
      {{1, 600, 4, 2, 64}, {true, 1}, 0},
      {{1, 600, 4, 2, 64}, {false, -1}, 0},
      // Small budgets: 64-row blocks, one pair per chunk.
      {{1, 600, 4, 2, 64}, {true, 100}, 200000},
      {{2, 200, 8, 2, 128}, {true, -1}, 200000},
      {{2, 130, 6, 3, 24}, {false, -1}, 100000},
      // One position; a window wider than the sequence.
      {{3, 1, 4, 4, 8}, {true, -1}, 0},
      {{1, 37, 6, 2, 40}, {true, 1000}, 0},
  };
  int failures = 0, count = 0;
  uint32_t seed = 4321;
  for (const Case &c : cases) {
    failures += runCase<float>(c.shape, c.mode, c.budget, seed, blas, nullptr,
                               stream);
    failures += runCase<bf16>(c.shape, c.mode, c.budget, seed, blas, nullptr,
                              stream);
    count += 2;
    if (c.budget == 0) { // the budget is the GEMM kernels' knob
      failures += runCase<bf16>(c.shape, c.mode, 0, seed, blas, cudnn, stream);
      ++count;
    }
    ++seed;
  }

  // cuDNN's deterministic backward: small shapes and the benchmark's.
  moert::Cudnn *deterministic = moert::createCudnn(stream, true);
  const Shape deterministicShapes[] = {
      {2, 200, 8, 2, 128}, {1, 600, 4, 2, 64}, {4, 2048, 32, 8, 128}};
  for (const Shape &shape : deterministicShapes) {
    failures += checkDeterministic(shape, {true, -1}, blas, deterministic,
                                   cudnn, stream, 4);
    ++count;
  }
  moert::destroyCudnn(deterministic);

  moert::destroyCudnn(cudnn);
  destroyBlas(blas);
  CHECK_CUDA(cudaStreamDestroy(stream));
  std::printf("%d cases, %d failed checks: %s\n", count, failures,
              failures ? "FAIL" : "PASS");
  return failures ? 1 : 0;
}
