//===- ExpertsTest.cu - GPU test of moert/kernels/Experts.cuh ---*- CUDA -*-===//
//
// Runs moert::kernels::experts and expertsGrad on random inputs (fp32 and
// bf16, concatenated and interleaved gate_up; one bf16 case with fp32
// weight gradients) and compares every output
// with a naive double-precision host implementation written here from the
// op's semantics (docs/Dialects/Moe.md, moe.experts):
//
//   out[t] = Σ_j gates[t,j] · down[e] · (silu(g) ⊙ u),  e = experts[t,j].
//
// Routing picks k distinct experts per token and leaves one expert without
// tokens (its weight gradients must be exactly zero). Outputs are filled
// with NaN bytes before each call, so anything left unwritten fails. Each
// op runs twice to check that the results are bitwise deterministic.
//
// Every case runs with both ExpertsGemmLibrary values (the per-expert GEMMs
// on cublasGemmEx and on cuBLASLt).
//
// Tolerances (relative L2 error against the double reference, computed on
// the inputs as rounded to the storage type): fp32 1e-5, bf16 2e-2.
//
// `--bench [hot F]` instead times experts and expertsGrad at Mixtral 8x7B's
// shape (8192 tokens, top-2 of 8 experts, hidden 4096, ffn 14336, bf16, H1
// saved by the forward as the compiled program does, roughly uniform
// routing; with `hot F` a token's first choice is expert 0 with probability
// F, an imbalanced routing with the same FLOPs; the backward with bf16 and
// with fp32 weight gradients) with each ExpertsGemmLibrary (taking turns,
// 3 rounds, the median of the rounds' medians), and
// a plain 8192x4096x14336 bf16 GEMM in the three layouts of a linear layer,
// each with cublasGemmEx and with cuBLASLt: the median of 10 timed calls
// after 2 warm-up calls, in ms and in TFLOP/s of the GEMMs' FLOPs over the
// whole op's time.
//
// `--bench-gemm-algos [N]` instead times every GEMM shape of
// mixtral-8x7b-2l's bf16 step (8192 tokens; hidden 4096, ffn 14336, 8
// experts top-2, 32 q and 8 kv heads of 128, vocabulary 32000, the lm head
// in CrossEntropy.cuh's row chunks; the experts at 2048 rows each) in the
// layouts the step runs them in (Linear.cuh, Experts.cuh, CrossEntropy.cuh),
// bf16 inputs, each with cublasGemmEx, the cuBLASLt heuristic's first
// algorithm (what gemm() runs) and each of the first N it offers (default
// 32): the median of 10 calls after 3 warm-ups. Per shape it prints the
// three times and the best's gain over today's choice (cublasGemmEx for the
// experts, the heuristic's first otherwise); for the experts' shapes also
// at 1700, 2600 and 3900 rows, with the algorithm that won at 2048 rows
// where it runs there (cublasLtMatmulAlgoCheck). Then per recipe (bf16
// weight gradients, or fp32 ones for fp32 master weights) the step's GEMM
// time, each shape weighted by its count per step, with today's choices
// and with the best (docs/benchmarks.md, "GEMM algorithms chosen by
// timing").
//
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a
//     -I runtime/include runtime/tests/ExpertsTest.cu -o ExpertsTest
//     -lcublas -lcublasLt
//
// `--bench-gemm-rows FROM TO STEP` instead times the experts' six GEMM
// kinds (and the two weight gradients with fp32 C) at every row count from
// FROM to TO by STEP: cublasGemmEx, the heuristic's first, and each of the
// first 16 it offers with its configuration, one line per kind and row
// count (the data behind docs/benchmarks.md, "The experts' weight gradients
// on one configured algorithm": measured, not kept).
//
// main() returns nonzero when anything fails.
//
//===----------------------------------------------------------------------===//

#include "moert/kernels/Experts.cuh"

#include "TestSupport.cuh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace moert::kernels;
using namespace moert::testing;

namespace {

struct Shape {
  int64_t tokens, H, I, E, k;
};

struct Grads {
  std::vector<double> out, dInput, dGates, dGateUp, dDown;
};

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

/// The forward output and the four gradients, in double, one (token, slot)
/// pair at a time.
Grads hostExperts(const Shape &s, bool interleaved,
                  const std::vector<double> &x,
                  const std::vector<double> &gates,
                  const std::vector<int64_t> &route,
                  const std::vector<double> &gateUp,
                  const std::vector<double> &down,
                  const std::vector<double> &dOut) {
  const int64_t T = s.tokens, H = s.H, I = s.I, E = s.E, K = s.k;
  Grads r;
  r.out.assign(T * H, 0.0);
  r.dInput.assign(T * H, 0.0);
  r.dGates.assign(T * K, 0.0);
  r.dGateUp.assign(E * 2 * I * H, 0.0);
  r.dDown.assign(E * H * I, 0.0);
  std::vector<double> g(I), u(I), act(I), dAct(I), y(H);
  for (int64_t t = 0; t < T; ++t) {
    const double *xt = &x[t * H];
    const double *dy = &dOut[t * H];
    for (int64_t j = 0; j < K; ++j) {
      int64_t e = route[t * K + j];
      double gate = gates[t * K + j];
      const double *w1 = &gateUp[e * 2 * I * H];
      const double *w2 = &down[e * H * I];
      auto gateRow = [&](int64_t i) { return interleaved ? 2 * i : i; };
      auto upRow = [&](int64_t i) { return interleaved ? 2 * i + 1 : I + i; };
      for (int64_t i = 0; i < I; ++i) {
        double gi = 0.0, ui = 0.0;
        for (int64_t h = 0; h < H; ++h) {
          gi += w1[gateRow(i) * H + h] * xt[h];
          ui += w1[upRow(i) * H + h] * xt[h];
        }
        g[i] = gi;
        u[i] = ui;
        act[i] = gi * sigmoid(gi) * ui;
      }
      double dGate = 0.0;
      for (int64_t h = 0; h < H; ++h) {
        double yh = 0.0;
        for (int64_t i = 0; i < I; ++i)
          yh += w2[h * I + i] * act[i];
        y[h] = yh;
        r.out[t * H + h] += gate * yh;
        dGate += dy[h] * yh;
      }
      r.dGates[t * K + j] = dGate;
      std::fill(dAct.begin(), dAct.end(), 0.0);
      for (int64_t h = 0; h < H; ++h) {
        double dyh = gate * dy[h];
        for (int64_t i = 0; i < I; ++i) {
          r.dDown[(e * H + h) * I + i] += dyh * act[i];
          dAct[i] += dyh * w2[h * I + i];
        }
      }
      for (int64_t i = 0; i < I; ++i) {
        double sg = sigmoid(g[i]);
        // act = g·σ(g)·u: ∂/∂g = u·σ·(1 + g·(1 − σ)), ∂/∂u = g·σ.
        double dg = dAct[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
        double du = dAct[i] * g[i] * sg;
        for (int64_t h = 0; h < H; ++h) {
          r.dGateUp[(e * 2 * I + gateRow(i)) * H + h] += dg * xt[h];
          r.dGateUp[(e * 2 * I + upRow(i)) * H + h] += du * xt[h];
          r.dInput[t * H + h] +=
              dg * w1[gateRow(i) * H + h] + du * w1[upRow(i) * H + h];
        }
      }
    }
  }
  return r;
}

const char *libraryName(ExpertsGemmLibrary library) {
  switch (library) {
  case ExpertsGemmLibrary::CublasGemmEx:
    return "cublasGemmEx";
  case ExpertsGemmLibrary::Lt:
    return "cuBLASLt";
  }
  return "?";
}

constexpr ExpertsGemmLibrary kLibraries[] = {ExpertsGemmLibrary::CublasGemmEx,
                                             ExpertsGemmLibrary::Lt};

/// One shape, type and layout; returns the number of failed checks.
template <class T, class TW = T>
int runCase(const Shape &s, bool interleaved, uint32_t seed, Blas *blas,
            cudaStream_t stream) {
  const int64_t tokens = s.tokens, H = s.H, I = s.I, E = s.E, k = s.k;
  const int64_t pairs = tokens * k;
  char label[160];
  std::snprintf(label, sizeof label, "%s %s%s %s tokens %lld H %lld "
                "I %lld E %lld k %lld",
                libraryName(expertsGemmLibrary),
                typeName<T>(), sizeof(TW) == sizeof(T) ? "" : " (fp32 dW)",
                interleaved ? "interleaved" : "concatenated",
                (long long)tokens, (long long)H, (long long)I, (long long)E,
                (long long)k);
  std::printf("== %s\n", label);

  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::uniform_real_distribution<float> gateDist(0.05f, 1.0f);

  std::vector<float> x(tokens * H), gates(pairs), gateUp(E * 2 * I * H),
      down(E * H * I), dOut(tokens * H);
  for (float &v : x)
    v = normal(rng);
  for (float &v : gates)
    v = gateDist(rng);
  float s1 = 1.0f / std::sqrt(static_cast<float>(H));
  float s2 = 1.0f / std::sqrt(static_cast<float>(I));
  for (float &v : gateUp)
    v = uniform(rng) * s1;
  for (float &v : down)
    v = uniform(rng) * s2;
  for (float &v : dOut)
    v = normal(rng);

  // k distinct experts per token, never `empty`.
  const int64_t empty = 1 % E;
  std::vector<int64_t> allowed;
  for (int64_t e = 0; e < E; ++e)
    if (e != empty)
      allowed.push_back(e);
  std::vector<int64_t> route(pairs);
  std::vector<int64_t> counts(E, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      // Partial Fisher-Yates: allowed[j] is drawn from allowed[j..].
      std::uniform_int_distribution<int64_t> pick(
          j, static_cast<int64_t>(allowed.size()) - 1);
      std::swap(allowed[j], allowed[pick(rng)]);
      route[t * k + j] = allowed[j];
      ++counts[allowed[j]];
    }
  }

  // Storage-type inputs and the reference on exactly those values.
  std::vector<T> xT = toStorage<T>(x), gatesT = toStorage<T>(gates),
                 gateUpT = toStorage<T>(gateUp), downT = toStorage<T>(down),
                 dOutT = toStorage<T>(dOut);
  Grads want = hostExperts(s, interleaved, toDoubles(xT), toDoubles(gatesT),
                           route, toDoubles(gateUpT), toDoubles(downT),
                           toDoubles(dOutT));

  T *dx = deviceCopy(xT), *dGatesIn = deviceCopy(gatesT),
    *dW1 = deviceCopy(gateUpT), *dW2 = deviceCopy(downT),
    *dDy = deviceCopy(dOutT);
  int64_t *dRoute = deviceCopy(route);
  T *out[2], *dInput[2], *dGates[2];
  TW *dGateUp[2], *dDown[2];
  for (int r = 0; r < 2; ++r) {
    out[r] = deviceNaN<T>(tokens * H);
    dInput[r] = deviceNaN<T>(tokens * H);
    dGates[r] = deviceNaN<T>(pairs);
    dGateUp[r] = deviceNaN<TW>(E * 2 * I * H);
    dDown[r] = deviceNaN<TW>(E * H * I);
  }

  Context ctx;
  ctx.stream = stream;
  ctx.blas = blas;
  ctx.scratchBytes = expertsScratchBytes(tokens, H, I, E, k, sizeof(T));
  CHECK_CUDA(cudaMalloc(&ctx.scratch, ctx.scratchBytes));
  CHECK_CUDA(cudaMemset(ctx.scratch, 0xFF, ctx.scratchBytes));
  CHECK_CUDA(cudaMallocHost(&ctx.hostCounts, E * sizeof(int64_t)));
  for (int64_t e = 0; e < E; ++e)
    ctx.hostCounts[e] = -1;

  for (int r = 0; r < 2; ++r) {
    experts<T>(ctx, dx, dGatesIn, dRoute, dW1, dW2, tokens, H, I, E, k,
               interleaved, out[r]);
    expertsGrad<T, TW>(ctx, dx, dGatesIn, dRoute, dW1, dW2, dDy, tokens, H, I,
                       E, k, interleaved, dInput[r], dGates[r], dGateUp[r],
                       dDown[r]);
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaGetLastError());

  const double tolerance = sizeof(T) == 4 ? 1e-5 : 2e-2;
  std::string prefix = std::string(label) + " ";
  int failures = 0;
  failures += !compare(prefix + "out",
                       toDoubles(hostCopy(out[0], tokens * H)), want.out,
                       tolerance);
  failures += !compare(prefix + "dInput",
                       toDoubles(hostCopy(dInput[0], tokens * H)), want.dInput,
                       tolerance);
  failures += !compare(prefix + "dGates", toDoubles(hostCopy(dGates[0], pairs)),
                       want.dGates, tolerance);
  std::vector<double> gotGateUp =
      toDoubles(hostCopy(dGateUp[0], E * 2 * I * H));
  std::vector<double> gotDown = toDoubles(hostCopy(dDown[0], E * H * I));
  failures += !compare(prefix + "dGateUp", gotGateUp, want.dGateUp, tolerance);
  failures += !compare(prefix + "dDown", gotDown, want.dDown, tolerance);

  // The routing's group sizes (left in hostCounts by the last call).
  bool countsOk = true;
  for (int64_t e = 0; e < E; ++e)
    countsOk = countsOk && ctx.hostCounts[e] == counts[e];
  failures += !report(prefix + "expert token counts", countsOk);

  // The expert without tokens gets exactly zero weight gradients.
  bool zeroOk = counts[empty] == 0;
  for (int64_t i = 0; i < 2 * I * H; ++i)
    zeroOk = zeroOk && gotGateUp[empty * 2 * I * H + i] == 0.0;
  for (int64_t i = 0; i < H * I; ++i)
    zeroOk = zeroOk && gotDown[empty * H * I + i] == 0.0;
  failures += !report(prefix + "expert " + std::to_string(empty) +
                          " (no tokens) zero gradients",
                      zeroOk);

  bool same = sameBits(out[0], out[1], tokens * H) &&
              sameBits(dInput[0], dInput[1], tokens * H) &&
              sameBits(dGates[0], dGates[1], pairs) &&
              sameBits(dGateUp[0], dGateUp[1], E * 2 * I * H) &&
              sameBits(dDown[0], dDown[1], E * H * I);
  failures += !report(prefix + "bitwise deterministic over two runs", same);

  for (int r = 0; r < 2; ++r) {
    cudaFree(out[r]);
    cudaFree(dInput[r]);
    cudaFree(dGates[r]);
    cudaFree(dGateUp[r]);
    cudaFree(dDown[r]);
  }
  cudaFree(dx);
  cudaFree(dGatesIn);
  cudaFree(dW1);
  cudaFree(dW2);
  cudaFree(dDy);
  cudaFree(dRoute);
  cudaFree(ctx.scratch);
  cudaFreeHost(ctx.hostCounts);
  return failures;
}

/// Uniform values in [-scale, scale) from a hash of the index.
__global__ void fillKernel(bf16 *p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed * 40503u ^
                 static_cast<uint32_t>(i >> 32);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16_rn((h * (1.0f / 4294967296.0f) * 2.0f - 1.0f) *
                               scale);
  }
}

/// The median over `runs` timed calls of `fn` (after 2 untimed), in ms.
template <class Fn> double medianMs(cudaStream_t stream, int runs, Fn fn) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 2; ++i)
    fn();
  std::vector<float> ms(runs);
  for (int i = 0; i < runs; ++i) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    fn();
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
}

/// The --bench mode (see the file comment).
int bench(Blas *blas, cudaStream_t stream, double hot) {
  const int64_t tokens = 8192, H = 4096, I = 14336, E = 8, k = 2;
  const int64_t pairs = tokens * k;
  const int runs = 10;

  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> pick(0, E - 1);
  std::bernoulli_distribution toHot(hot);
  std::vector<int64_t> route(pairs);
  std::vector<int64_t> counts(E, 0);
  for (int64_t t = 0; t < tokens; ++t) {
    int64_t a = toHot(rng) ? 0 : pick(rng), b = pick(rng);
    while (b == a)
      b = pick(rng);
    route[t * k] = a;
    route[t * k + 1] = b;
    ++counts[a];
    ++counts[b];
  }
  std::printf("bench: experts tokens %lld k %lld E %lld H %lld I %lld bf16, "
              "tokens per expert %lld..%lld\n",
              (long long)tokens, (long long)k, (long long)E, (long long)H,
              (long long)I,
              (long long)*std::min_element(counts.begin(), counts.end()),
              (long long)*std::max_element(counts.begin(), counts.end()));

  int64_t *dRoute = deviceCopy(route);
  auto buffer = [&](int64_t n, uint32_t seed, float scale) {
    bf16 *p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, n * sizeof(bf16)));
    fillKernel<<<1024, 256, 0, stream>>>(p, n, seed, scale);
    CHECK_CUDA(cudaGetLastError());
    return p;
  };
  bf16 *x = buffer(tokens * H, 1, 1.0f), *dOut = buffer(tokens * H, 2, 1.0f),
       *gates = buffer(pairs, 3, 0.5f),
       *gateUp = buffer(E * 2 * I * H, 4, 1.0f / 64),
       *down = buffer(E * H * I, 5, 1.0f / 120),
       *out = buffer(tokens * H, 6, 0.0f),
       *saved = buffer(pairs * 2 * I, 7, 0.0f),
       *dInput = buffer(tokens * H, 8, 0.0f),
       *dGates = buffer(pairs, 9, 0.0f),
       *dGateUp = buffer(E * 2 * I * H, 10, 0.0f),
       *dDown = buffer(E * H * I, 11, 0.0f);
  float *dGateUp32 = nullptr, *dDown32 = nullptr; // fp32-master recipe
  CHECK_CUDA(cudaMalloc(&dGateUp32, E * 2 * I * H * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&dDown32, E * H * I * sizeof(float)));

  Context ctx;
  ctx.stream = stream;
  ctx.blas = blas;
  ctx.scratchBytes = expertsScratchBytes(tokens, H, I, E, k, sizeof(bf16));
  CHECK_CUDA(cudaMalloc(&ctx.scratch, ctx.scratchBytes));
  CHECK_CUDA(cudaMallocHost(&ctx.hostCounts, E * sizeof(int64_t)));

  const double gemmFlops = 2.0 * pairs * H * I; // one [pairs, H] x [H, I]
  // The libraries take turns for `rounds` rounds (the GPU's clocks drift
  // over a run: one library after the other would favour the first); each
  // line is the median of a library's round medians.
  const int rounds = 3, kinds = 3;
  const size_t libraries = std::size(kLibraries);
  std::vector<double> ms(libraries * kinds * rounds);
  for (int round = 0; round < rounds; ++round)
    for (size_t l = 0; l < libraries; ++l) {
      expertsGemmLibrary = kLibraries[l];
      double *slot = &ms[(l * kinds) * rounds + round];
      slot[0] = medianMs(stream, runs, [&] {
        experts<bf16>(ctx, x, gates, dRoute, gateUp, down, tokens, H, I, E,
                      k, false, out, saved);
      });
      slot[rounds] = medianMs(stream, runs, [&] {
        expertsGrad<bf16, bf16>(ctx, x, gates, dRoute, gateUp, down, dOut,
                                tokens, H, I, E, k, false, dInput, dGates,
                                dGateUp, dDown, saved);
      });
      slot[2 * rounds] = medianMs(stream, runs, [&] {
        expertsGrad<bf16, float>(ctx, x, gates, dRoute, gateUp, down, dOut,
                                 tokens, H, I, E, k, false, dInput, dGates,
                                 dGateUp32, dDown32, saved);
      });
    }
  expertsGemmLibrary = ExpertsGemmLibrary::CublasGemmEx; // the default
  const char *kindNames[kinds] = {"forward ", "backward", "backward"};
  const double flops[kinds] = {3 * gemmFlops, 6 * gemmFlops, 6 * gemmFlops};
  for (int kind = 0; kind < kinds; ++kind)
    for (size_t l = 0; l < libraries; ++l) {
      double *first = &ms[(l * kinds + kind) * rounds];
      std::vector<double> sorted(first, first + rounds);
      std::sort(sorted.begin(), sorted.end());
      double median = sorted[rounds / 2];
      std::printf("bench: experts %s %-13s %8.3f ms %7.1f TFLOP/s%s "
                  "(rounds %.3f..%.3f)\n",
                  kindNames[kind], libraryName(kLibraries[l]), median,
                  flops[kind] / median * 1e-9,
                  kind == 2 ? " fp32 dW" : "", sorted.front(),
                  sorted.back());
    }
  CHECK_CUDA(cudaFree(dGateUp32));
  CHECK_CUDA(cudaFree(dDown32));
  CHECK_CUDA(cudaFree(ctx.scratch));
  CHECK_CUDA(cudaFreeHost(ctx.hostCounts));
  for (bf16 *p : {x, dOut, gates, gateUp, down, out, saved, dInput, dGates,
                  dGateUp, dDown})
    CHECK_CUDA(cudaFree(p));
  CHECK_CUDA(cudaFree(dRoute));

  // A plain GEMM, m 8192 n 4096 k 14336, as a linear layer's forward (NT),
  // input gradient (NN) and weight gradient (TN) would lay it out.
  const int64_t m = 8192, n = 4096, kk = 14336;
  bf16 *A = buffer(m * kk, 12, 1.0f), *B = buffer(n * kk, 13, 1.0f),
       *C = buffer(m * n, 14, 0.0f);
  struct Layout {
    const char *name;
    bool transA, transB;
    int64_t lda, ldb;
  };
  const Layout layouts[] = {{"NT", false, true, kk, kk},
                            {"NN", false, false, kk, n},
                            {"TN", true, false, m, n}};
  for (const Layout &l : layouts)
    for (bool lt : {false, true}) {
      double ms = medianMs(stream, runs, [&] {
        if (lt)
          gemm<bf16, bf16>(ctx, l.transA, l.transB, m, n, kk, 1.0f, A, l.lda,
                           B, l.ldb, 0.0f, C, n);
        else
          gemmCublasEx<bf16, bf16>(ctx, l.transA, l.transB, m, n, kk, 1.0f, A,
                                   l.lda, B, l.ldb, 0.0f, C, n);
      });
      std::printf("bench: gemm %lldx%lldx%lld %s %-12s %8.3f ms %7.1f "
                  "TFLOP/s\n",
                  (long long)m, (long long)n, (long long)kk, l.name,
                  lt ? "cuBLASLt" : "cublasGemmEx", ms,
                  2.0 * m * n * kk / ms * 1e-9);
    }
  for (bf16 *p : {A, B, C})
    CHECK_CUDA(cudaFree(p));
  return 0;
}

/// Whether `algo` can run `plan` within Blas::workspaceBytes.
bool algoFits(const Blas &blas, const detail::GemmPlan &plan,
              const cublasLtMatmulAlgo_t &algo) {
  cublasLtMatmulHeuristicResult_t result{};
  return cublasLtMatmulAlgoCheck(blas.lt, plan.desc, plan.a, plan.b, plan.c,
                                 plan.c, &algo, &result) ==
             CUBLAS_STATUS_SUCCESS &&
         result.state == CUBLAS_STATUS_SUCCESS &&
         result.workspaceSize <= static_cast<size_t>(blas.workspaceBytes);
}

/// The median time in ms of `runs` calls of `plan` (C = D) after one more
/// warm-up call.
float gemmTime(const Blas &blas, cudaStream_t stream,
               const detail::GemmPlanKey &key, const detail::GemmPlan &plan,
               const void *A, const void *B, float beta, void *C, int runs) {
  detail::gemmRun(blas, stream, key, plan, 1.0f, A, B, beta, C, C);
  std::vector<cudaEvent_t> events(runs + 1);
  for (cudaEvent_t &event : events)
    CHECK_CUDA(cudaEventCreate(&event));
  CHECK_CUDA(cudaEventRecord(events[0], stream));
  for (int i = 0; i < runs; ++i) {
    detail::gemmRun(blas, stream, key, plan, 1.0f, A, B, beta, C, C);
    CHECK_CUDA(cudaEventRecord(events[i + 1], stream));
  }
  CHECK_CUDA(cudaEventSynchronize(events[runs]));
  std::vector<float> ms(runs);
  for (int i = 0; i < runs; ++i)
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], events[i], events[i + 1]));
  for (cudaEvent_t event : events)
    CHECK_CUDA(cudaEventDestroy(event));
  std::sort(ms.begin(), ms.end());
  return ms[runs / 2];
}

/// One product of the step: C[m, n] = op(A) op(B) (+ C), packed operands.
struct Product {
  std::string name;
  bool transA, transB;
  int64_t m, n, k;
  bool floatC, accumulate;
  int64_t lda() const { return transA ? m : k; }
  int64_t ldb() const { return transB ? k : n; }
};

/// The plan key gemm() makes for `p` (bf16 inputs, 256-byte aligned).
detail::GemmPlanKey keyOf(const Product &p) {
  return {CUDA_R_16BF, p.floatC ? CUDA_R_32F : CUDA_R_16BF, p.transA, p.transB,
          p.m, p.n, p.k, p.lda(), p.ldb(), p.n, 1, 0, 0, 0, p.accumulate,
          256, 256, 256};
}

struct Timed {
  float gemmEx = 0, first = 0, best = 0;
  int bestIndex = -1; ///< into the heuristic's list; -1: cublasGemmEx
  cublasLtMatmulAlgo_t bestAlgo{};
  int candidates = 0;
};

std::string algoName(const cublasLtMatmulAlgo_t &algo) {
  const std::pair<const char *, cublasLtMatmulAlgoConfigAttributes_t>
      attributes[] = {{"id", CUBLASLT_ALGO_CONFIG_ID},
                      {"tile", CUBLASLT_ALGO_CONFIG_TILE_ID},
                      {"stages", CUBLASLT_ALGO_CONFIG_STAGES_ID},
                      {"splitK", CUBLASLT_ALGO_CONFIG_SPLITK_NUM},
                      {"swizzle", CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING},
                      {"cluster", CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID},
                      {"inner", CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID},
                      {"custom", CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION},
                      {"reduction", CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME}};
  std::string name;
  for (const auto &[label, attribute] : attributes)
    name += std::string(name.empty() ? "" : " ") + label + " " +
            std::to_string(detail::gemmAlgoAttribute(algo, attribute));
  return name;
}

/// Times `p` (bf16 inputs) every way; with `extra`, also that algorithm
/// (the winner at another row count) into *extraMs (-1 when it does not
/// run this shape).
Timed timeProduct(
    Blas &blas, cudaStream_t stream, const Product &p, int count,
    const cublasLtMatmulAlgo_t *extra = nullptr, float *extraMs = nullptr,
    const std::function<void(const cublasLtMatmulAlgo_t &, float)> &each =
        nullptr) {
  const int runs = 10;
  bf16 *A = nullptr, *B = nullptr;
  void *C = nullptr;
  CHECK_CUDA(cudaMalloc(&A, p.m * p.k * sizeof(bf16)));
  CHECK_CUDA(cudaMalloc(&B, p.k * p.n * sizeof(bf16)));
  const int64_t bytesC = p.m * p.n * (p.floatC ? 4 : 2);
  CHECK_CUDA(cudaMalloc(&C, bytesC));
  fillKernel<<<1024, 256, 0, stream>>>(A, p.m * p.k, 1, 1.0f);
  fillKernel<<<1024, 256, 0, stream>>>(B, p.k * p.n, 2, 1.0f);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaMemsetAsync(C, 0, bytesC, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const float beta = p.accumulate ? 1.0f : 0.0f;
  detail::GemmPlanKey key = keyOf(p);
  auto time = [&](const detail::GemmPlan &plan) {
    for (int i = 0; i < 2; ++i)
      detail::gemmRun(blas, stream, key, plan, 1.0f, A, B, beta, C, C);
    return gemmTime(blas, stream, key, plan, A, B, beta, C, runs);
  };
  Timed t;
  detail::GemmPlan gemmEx;
  gemmEx.useGemmEx = true;
  t.gemmEx = time(gemmEx);
  detail::GemmPlan plan = detail::gemmDescriptors(key);
  std::vector<cublasLtMatmulAlgo_t> first =
      detail::gemmHeuristic(blas, plan, key, 1);
  std::vector<cublasLtMatmulAlgo_t> all =
      detail::gemmHeuristic(blas, plan, key, count);
  t.candidates = static_cast<int>(all.size());
  if (first.empty()) {
    t.first = t.gemmEx;
  } else {
    plan.algo = first[0];
    t.first = time(plan);
  }
  t.best = t.gemmEx;
  for (size_t i = 0; i < all.size(); ++i) {
    plan.algo = all[i];
    float ms = time(plan);
    if (each)
      each(all[i], ms);
    if (ms < t.best) {
      t.best = ms;
      t.bestIndex = static_cast<int>(i);
      t.bestAlgo = all[i];
    }
  }
  if (extra) {
    if (algoFits(blas, plan, *extra)) {
      plan.algo = *extra;
      *extraMs = time(plan);
    } else {
      *extraMs = -1.0f;
    }
  }
  detail::gemmDestroyDescriptors(plan);
  CHECK_CUDA(cudaFree(A));
  CHECK_CUDA(cudaFree(B));
  CHECK_CUDA(cudaFree(C));
  return t;
}

double tflops(const Product &p, float ms) {
  return 2.0 * p.m * p.n * p.k / (ms * 1e-3) / 1e12;
}

/// The --bench-gemm-algos mode (see the file comment).
int benchGemmAlgos(Blas &blas, cudaStream_t stream, int count) {
  const int64_t T = 8192, H = 4096, I = 14336, V = 32000, E = 8, L = 2,
                kv = 1024, rows = 2048;
  const int64_t chunk = detail::crossEntropyChunk(T, H, V, 2);
  struct Entry {
    Product p;
    int64_t perStep;
    bool experts;
    bool weightGrad; ///< C is fp32 in the fp32-master recipe
  };
  // The experts' products (Experts.cuh) at `n` rows, in the step's order.
  auto expertProducts = [&](int64_t n) {
    return std::vector<Product>{
        {"experts fwd gate_up NT", false, true, n, 2 * I, H, false, false},
        {"experts fwd down NT", false, true, n, H, I, false, false},
        {"experts bwd dA' NN", false, false, n, I, H, false, false},
        {"experts bwd dDown TN", true, false, H, I, n, false, false},
        {"experts bwd dGateUp TN", true, false, 2 * I, H, n, false, false},
        {"experts bwd dX NN", false, false, n, H, 2 * I, false, false}};
  };
  std::vector<Entry> entries;
  for (const Product &p : expertProducts(rows))
    entries.push_back({p, L * E, true, p.transA});
  const std::pair<int64_t, int64_t> linears[] = {
      {H, 2 * L}, {kv, 2 * L}, {E, L}}; // q and o; k and v; the router
  for (auto [N, perStep] : linears) {
    std::string n = N == H ? "q/o" : N == kv ? "k/v" : "router";
    entries.push_back(
        {{"linear fwd " + n + " NT", false, true, T, N, H, false, false},
         perStep, false, false});
    entries.push_back(
        {{"linear dX " + n + " NN", false, false, T, H, N, false, false},
         perStep, false, false});
    entries.push_back(
        {{"linear dW " + n + " TN", true, false, N, H, T, false, false},
         perStep, false, true});
  }
  for (int64_t first = 0; first < T; first += chunk) {
    int64_t n = std::min(chunk, T - first);
    entries.push_back(
        {{"lm head logits NT", false, true, n, V, H, true, false}, 1, false,
         false});
    entries.push_back(
        {{"lm head dh NN", false, false, n, H, V, false, false}, 1, false,
         false});
    entries.push_back({{"lm head dW TN", true, false, V, H, n, chunk < T,
                        first != 0},
                       1, false, false});
  }
  std::printf("bench: mixtral-8x7b-2l GEMMs, bf16 inputs, cuBLASLt %zu, "
              "heuristic's first %d, median of 10 after 3 warm-ups\n",
              cublasLtGetVersion(), count);
  double today[2] = {0, 0}, best[2] = {0, 0}, allLt[2] = {0, 0},
         allEx[2] = {0, 0};
  std::vector<cublasLtMatmulAlgo_t> expertWinners;
  std::vector<Timed> expertTimes;
  for (const Entry &e : entries) {
    for (int recipe = 0; recipe < 2; ++recipe) {
      // recipe 0: bf16 weight gradients; 1: fp32 (fp32 master weights).
      if (recipe == 1 && !e.weightGrad)
        continue;
      Product p = e.p;
      p.floatC = p.floatC || recipe == 1;
      Timed t = timeProduct(blas, stream, p, count);
      float now = e.experts ? t.gemmEx : t.first;
      float other = e.experts ? t.first : t.gemmEx;
      std::printf(
          "bench: %-24s %s m %6lld n %6lld k %6lld C %s%s x%-3lld gemmEx "
          "%7.3f ms  lt-first %7.3f ms  best %7.3f ms (%5.1f TFLOP/s, %s of "
          "%d%s%s)  gain vs today's %+5.1f%%  vs %s %+5.1f%%\n",
          p.name.c_str(), recipe ? "fp32m" : "bf16 ", (long long)p.m,
          (long long)p.n, (long long)p.k, p.floatC ? "fp32" : "bf16",
          p.accumulate ? " +C" : "   ", (long long)e.perStep, t.gemmEx,
          t.first, t.best, tflops(p, t.best),
          t.bestIndex < 0 ? "gemmEx"
                          : ("#" + std::to_string(t.bestIndex)).c_str(),
          t.candidates, t.bestIndex < 0 ? "" : ": ",
          t.bestIndex < 0 ? "" : algoName(t.bestAlgo).c_str(),
          100.0 * (now / t.best - 1.0), e.experts ? "lt-first" : "gemmEx",
          100.0 * (other / t.best - 1.0));
      // A shape without a weight gradient counts in both recipes.
      for (int r = 0; r < 2; ++r) {
        if (e.weightGrad && r != recipe)
          continue;
        today[r] += e.perStep * now;
        best[r] += e.perStep * t.best;
        allLt[r] += e.perStep * t.first;
        allEx[r] += e.perStep * t.gemmEx;
      }
      if (e.experts && recipe == 0) {
        expertWinners.push_back(t.bestAlgo);
        expertTimes.push_back(t);
      }
    }
  }
  // The experts at other row counts: does the winner at 2048 rows win?
  for (int64_t n : {1700, 2600, 3900}) {
    std::vector<Product> products = expertProducts(n);
    for (size_t i = 0; i < products.size(); ++i) {
      const Product &p = products[i];
      float extraMs = -1.0f;
      bool hadWinner = expertTimes[i].bestIndex >= 0;
      Timed t = timeProduct(blas, stream, p, count,
                            hadWinner ? &expertWinners[i] : nullptr,
                            &extraMs);
      char extra[64];
      if (!hadWinner)
        std::snprintf(extra, sizeof(extra), "gemmEx (%.3f ms)", t.gemmEx);
      else if (extraMs < 0)
        std::snprintf(extra, sizeof(extra), "does not run here");
      else
        std::snprintf(extra, sizeof(extra), "%.3f ms (%+.1f%% vs best)",
                      extraMs, 100.0 * (extraMs / t.best - 1.0));
      std::printf("bench: rows %4lld %-24s gemmEx %7.3f  lt-first %7.3f  "
                  "best %7.3f ms (%s)  winner at 2048: %s  best vs gemmEx "
                  "%+5.1f%%\n",
                  (long long)n, p.name.c_str(), t.gemmEx, t.first, t.best,
                  t.bestIndex < 0 ? "gemmEx"
                                  : ("#" + std::to_string(t.bestIndex)).c_str(),
                  extra, 100.0 * (t.gemmEx / t.best - 1.0));
    }
  }
  for (int r = 0; r < 2; ++r)
    std::printf("bench: summary %s step GEMMs: today %.2f ms, best %.2f ms "
                "(%.2f ms, %.1f%% less), all lt-first %.2f ms, all gemmEx "
                "%.2f ms\n",
                r ? "fp32-master" : "bf16", today[r], best[r],
                today[r] - best[r], 100.0 * (1.0 - best[r] / today[r]),
                allLt[r], allEx[r]);
  return 0;
}

/// The --bench-gemm-rows mode (see the file comment).
int benchGemmRows(Blas &blas, cudaStream_t stream, int64_t from, int64_t to,
                  int64_t step) {
  const int64_t H = 4096, I = 14336;
  std::printf("bench: experts GEMMs by rows, bf16 inputs, cuBLASLt %zu, "
              "heuristic's first 16, median of 10 after 3 warm-ups\n",
              cublasLtGetVersion());
  for (int64_t n = from; n <= to; n += step) {
    const Product products[] = {
        {"fwd-gate_up-NT", false, true, n, 2 * I, H, false, false},
        {"fwd-down-NT", false, true, n, H, I, false, false},
        {"bwd-dA-NN", false, false, n, I, H, false, false},
        {"bwd-dDown-TN", true, false, H, I, n, false, false},
        {"bwd-dGateUp-TN", true, false, 2 * I, H, n, false, false},
        {"bwd-dX-NN", false, false, n, H, 2 * I, false, false},
        {"bwd-dDown-TN-f32", true, false, H, I, n, true, false},
        {"bwd-dGateUp-TN-f32", true, false, 2 * I, H, n, true, false}};
    for (const Product &p : products) {
      std::string line;
      Timed t = timeProduct(
          blas, stream, p, 16, nullptr, nullptr,
          [&](const cublasLtMatmulAlgo_t &algo, float ms) {
            char buf[32];
            std::snprintf(buf, sizeof(buf), " %.4f", ms);
            line += " | " + algoName(algo) + " :" + buf;
          });
      std::printf("rows %lld %s gemmEx %.4f first %.4f%s\n", (long long)n,
                  p.name.c_str(), t.gemmEx, t.first, line.c_str());
    }
    std::fflush(stdout);
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "ExpertsTest: no CUDA device\n");
    return 2;
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  Blas *blas = createBlas(stream);
  if (argc > 1 && std::strcmp(argv[1], "--bench-gemm-algos") == 0) {
    int rc = benchGemmAlgos(*blas, stream, argc > 2 ? std::atoi(argv[2]) : 32);
    destroyBlas(blas);
    CHECK_CUDA(cudaStreamDestroy(stream));
    return rc;
  }
  if (argc > 4 && std::strcmp(argv[1], "--bench-gemm-rows") == 0) {
    int rc = benchGemmRows(*blas, stream, std::atoll(argv[2]),
                           std::atoll(argv[3]), std::atoll(argv[4]));
    destroyBlas(blas);
    CHECK_CUDA(cudaStreamDestroy(stream));
    return rc;
  }
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) {
    double hot = argc > 3 && std::strcmp(argv[2], "hot") == 0
                     ? std::atof(argv[3])
                     : 0.0;
    int rc = bench(blas, stream, hot);
    destroyBlas(blas);
    CHECK_CUDA(cudaStreamDestroy(stream));
    return rc;
  }

  const Shape shapes[] = {
      {64, 32, 48, 4, 2},    // small
      {300, 128, 96, 8, 2},  // Mixtral-like routing
      {300, 128, 96, 8, 1},  // top-1
      {37, 30, 21, 5, 3},    // odd sizes: the unvectorised kernels
      {2500, 64, 32, 16, 4}, // 10000 pairs: several routing blocks
  };
  int failures = 0, cases = 0;
  for (ExpertsGemmLibrary library : kLibraries) {
    expertsGemmLibrary = library;
    uint32_t seed = 1234;
    for (const Shape &s : shapes)
      for (bool interleaved : {false, true}) {
        failures += runCase<float>(s, interleaved, seed, blas, stream);
        failures += runCase<bf16>(s, interleaved, seed, blas, stream);
        ++seed;
        cases += 2;
      }
    // bf16 compute with fp32 weight gradients (fp32 master weights).
    failures += runCase<bf16, float>(shapes[1], false, seed, blas, stream);
    ++cases;
  }
  destroyBlas(blas);
  CHECK_CUDA(cudaStreamDestroy(stream));
  std::printf("%d cases, %d failed checks: %s\n", cases, failures,
              failures ? "FAIL" : "PASS");
  return failures ? 1 : 0;
}
