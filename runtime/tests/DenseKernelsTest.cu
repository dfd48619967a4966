//===- DenseKernelsTest.cu - GPU test of the dense moert kernels -*- CUDA -*-===//
//
// Runs the kernels of Embedding.cuh, Norm.cuh, Rotary.cuh, Linear.cuh,
// CrossEntropy.cuh and Optimizer.cuh on random inputs (std::mt19937 with
// fixed seeds; fp32 and bf16, the optimizer fp32 only) and compares every
// output with a naive double-precision host oracle written here from the
// ops' semantics (those of the CPU reference executor, which this file does
// not include or call):
//
//   embedding       out[t] = table[ids[t]];  dTable[v] = Σ_{t: ids[t]=v} dOut[t]
//   rms_norm        y = x·r·w, r = 1/sqrt(mean(x²) + ε);
//                   dx = dy·w·r − r³·x·Σ(dy·w·x)/H,  dw = Σ_rows dy·x·r
//   rotary          for i < D/2: y[i] = x[i]c − x[i+D/2]s, y[i+D/2] =
//                   x[i+D/2]c + x[i]s; angle = float(s)·float(θ^(−2i/D))
//                   rounded to fp32 (the op's definition), cos and sin in
//                   fp64; the gradient is the transposed rotation
//   linear          out = x·Wᵀ;  dx = dOut·W,  dW = dOutᵀ·x
//   lm_head_ce      mean over counted targets of logsumexp(h·Wᵀ) − z[target],
//                   position t predicting labels[t+1], the last position and
//                   ignore_index not counted (0 when none); the gradient is
//                   (softmax − onehot)·scale/count through the lm head
//   global_norm     sqrt(Σ g²) over every tensor of the group
//   adamw           g' = g·min(1, max_norm/(norm + 1e-6)) (1 when max_norm
//                   is 0); m = β1·m + (1−β1)g', v = β2·v + (1−β2)g'²;
//                   p = p·(1 − lr·wd) − lr/(1−β1^t) · m/(sqrt(v)/sqrt(1−β2^t)
//                   + ε); with fp32 state also on masters split into copy +
//                   remainder (adamwRemainders), bit for bit the fp32 one's
//
// Outputs are filled with NaN bytes before each call (anything left
// unwritten fails) and the scratch with 0xFF bytes; each launch gets exactly
// the scratch its *ScratchBytes function asks for. For bf16 the oracle runs
// on the inputs as rounded to bf16.
//
// Tolerances (relative L2 error against the oracle; absolute L2 where the
// oracle is all zero): fp32 1e-5; bf16 1e-2; the optimizer (fp32) 1e-6,
// and 1e-5 for the parameter's update (new − old, which loses the digits of
// the parameter itself).
//
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a
//     -I runtime/include -I include runtime/tests/DenseKernelsTest.cu
//     -o DenseKernelsTest -lcublas -lcublasLt
//
// main() returns nonzero when anything fails. `--bench-optimizer` instead
// times globalNorm and adamw over mixtral-8x7b-2l's 3.16 B parameters in
// both recipes, with 16-byte and with 8-byte accesses, and a device copy
// (benchOptimizer; docs/benchmarks.md); `--bench-norms` times the norm and
// rotary kernels at mixtral-8x7b-2l's step shapes (benchNorms).
//
//===----------------------------------------------------------------------===//

#include "moert/kernels/CrossEntropy.cuh"
#include "moert/kernels/Embedding.cuh"
#include "moert/kernels/Linear.cuh"
#include "moert/kernels/Norm.cuh"
#include "moert/kernels/Optimizer.cuh"
#include "moert/kernels/Rotary.cuh"

#include "TestSupport.cuh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

using namespace moert::kernels;
using namespace moert::testing;

namespace {

constexpr double kTolFp32 = 1e-5;
constexpr double kTolBf16 = 1e-2;
constexpr double kTolOptimizer = 1e-6;
constexpr double kTolOptimizerUpdate = 1e-5;
constexpr int64_t kScratchCapacity = 64ll << 20;
constexpr int64_t kIgnoreIndex = -100;

template <class T> double tolerance() {
  return sizeof(T) == 4 ? kTolFp32 : kTolBf16;
}

std::vector<float> normal(std::mt19937 &rng, int64_t n, float stddev,
                          float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

std::vector<float> uniform(std::mt19937 &rng, int64_t n, float bound) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

std::string dims(std::initializer_list<std::pair<const char *, int64_t>> l) {
  std::string s;
  for (auto [name, value] : l)
    s += std::string(" ") + name + " " + std::to_string(value);
  return s;
}

//===----------------------------------------------------------------------===//
// Host oracles (double)
//===----------------------------------------------------------------------===//

void hostEmbedding(const Doubles &table, const std::vector<int64_t> &ids,
                   int64_t hidden, Doubles &out) {
  int64_t tokens = static_cast<int64_t>(ids.size());
  out.assign(tokens * hidden, 0.0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < hidden; ++h)
      out[t * hidden + h] = table[ids[t] * hidden + h];
}

void hostEmbeddingGrad(const Doubles &dOut, const std::vector<int64_t> &ids,
                       int64_t hidden, int64_t vocab, Doubles &dTable) {
  dTable.assign(vocab * hidden, 0.0);
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t h = 0; h < hidden; ++h)
      dTable[ids[t] * hidden + h] += dOut[t * hidden + h];
}

/// 1/sqrt(mean(x²) + ε) of one row.
double inverseRms(const double *x, int64_t hidden, double epsilon) {
  double ss = 0.0;
  for (int64_t h = 0; h < hidden; ++h)
    ss += x[h] * x[h];
  return 1.0 / std::sqrt(ss / static_cast<double>(hidden) + epsilon);
}

void hostRmsNorm(const Doubles &x, const Doubles &w, int64_t rows,
                 int64_t hidden, double epsilon, Doubles &y) {
  y.assign(rows * hidden, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double *xr = &x[r * hidden];
    double inv = inverseRms(xr, hidden, epsilon);
    for (int64_t h = 0; h < hidden; ++h)
      y[r * hidden + h] = xr[h] * inv * w[h];
  }
}

void hostRmsNormGrad(const Doubles &x, const Doubles &w, const Doubles &dy,
                     int64_t rows, int64_t hidden, double epsilon, Doubles &dx,
                     Doubles &dw) {
  dx.assign(rows * hidden, 0.0);
  dw.assign(hidden, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double *xr = &x[r * hidden], *gr = &dy[r * hidden];
    double inv = inverseRms(xr, hidden, epsilon);
    // y_h = x_h·inv·w_h; ∂inv/∂x_k = −inv³·x_k/H.
    double dot = 0.0;
    for (int64_t h = 0; h < hidden; ++h)
      dot += gr[h] * w[h] * xr[h];
    for (int64_t h = 0; h < hidden; ++h) {
      dx[r * hidden + h] = gr[h] * w[h] * inv -
                           inv * inv * inv * xr[h] * dot /
                               static_cast<double>(hidden);
      dw[h] += gr[h] * xr[h] * inv;
    }
  }
}

/// Rotary over [B, S, N, D] at positions 0..S-1; `transposed` applies the
/// inverse rotation (the gradient).
void hostRotary(const Doubles &x, int64_t B, int64_t S, int64_t N, int64_t D,
                float theta, bool transposed, Doubles &y) {
  int64_t half = D / 2;
  y.assign(B * S * N * D, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < half; ++i) {
        // The op's definition: frequency and angle rounded to fp32.
        float frequency =
            1.0f / std::pow(theta, static_cast<float>(2 * i) /
                                       static_cast<float>(D));
        float angle = static_cast<float>(s) * frequency;
        double c = std::cos(static_cast<double>(angle));
        double sn = std::sin(static_cast<double>(angle));
        if (transposed)
          sn = -sn;
        for (int64_t n = 0; n < N; ++n) {
          int64_t base = ((b * S + s) * N + n) * D;
          double x1 = x[base + i], x2 = x[base + i + half];
          y[base + i] = x1 * c - x2 * sn;
          y[base + i + half] = x2 * c + x1 * sn;
        }
      }
}

void hostLinear(const Doubles &x, const Doubles &w, int64_t rows, int64_t K,
                int64_t N, Doubles &out) {
  out.assign(rows * N, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k)
        acc += x[r * K + k] * w[n * K + k];
      out[r * N + n] = acc;
    }
}

void hostLinearGrad(const Doubles &x, const Doubles &w, const Doubles &dOut,
                    int64_t rows, int64_t K, int64_t N, Doubles &dx,
                    Doubles &dw) {
  dx.assign(rows * K, 0.0);
  dw.assign(N * K, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double g = dOut[r * N + n];
      for (int64_t k = 0; k < K; ++k) {
        dx[r * K + k] += g * w[n * K + k];
        dw[n * K + k] += g * x[r * K + k];
      }
    }
}

/// Target of row b·S + t, or -1 when the row does not count.
int64_t hostTarget(const std::vector<int64_t> &labels, int64_t row, int64_t S,
                   int64_t V) {
  if (row % S == S - 1)
    return -1;
  int64_t target = labels[row + 1];
  return target == kIgnoreIndex || target < 0 || target >= V ? -1 : target;
}

/// Loss, and the gradients of scale × loss.
void hostCrossEntropy(const Doubles &h, const Doubles &w,
                      const std::vector<int64_t> &labels, int64_t B,
                      int64_t S, int64_t H, int64_t V, double scale,
                      double &loss, Doubles &dh, Doubles &dw) {
  int64_t rows = B * S, count = 0;
  for (int64_t r = 0; r < rows; ++r)
    count += hostTarget(labels, r, S, V) >= 0;
  dh.assign(rows * H, 0.0);
  dw.assign(V * H, 0.0);
  double total = 0.0;
  Doubles z(V);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t target = hostTarget(labels, r, S, V);
    if (target < 0)
      continue;
    const double *hr = &h[r * H];
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      double acc = 0.0;
      for (int64_t k = 0; k < H; ++k)
        acc += hr[k] * w[v * H + k];
      z[v] = acc;
      m = std::max(m, acc);
    }
    double sum = 0.0;
    for (int64_t v = 0; v < V; ++v)
      sum += std::exp(z[v] - m);
    double lse = m + std::log(sum);
    total += lse - z[target];
    for (int64_t v = 0; v < V; ++v) {
      double d = (std::exp(z[v] - lse) - (v == target ? 1.0 : 0.0)) * scale /
                 static_cast<double>(count);
      for (int64_t k = 0; k < H; ++k) {
        dh[r * H + k] += d * w[v * H + k];
        dw[v * H + k] += d * hr[k];
      }
    }
  }
  loss = count ? total / static_cast<double>(count) : 0.0;
}

//===----------------------------------------------------------------------===//
// Tests
//===----------------------------------------------------------------------===//

template <class T>
void testEmbedding(Env &env, int64_t tokens, int64_t hidden, int64_t vocab,
                   uint32_t seed) {
  std::string name = std::string(typeName<T>()) + " embedding" +
                     dims({{"tokens", tokens}, {"hidden", hidden},
                           {"vocab", vocab}});
  std::mt19937 rng(seed);
  // Ids below vocab - 1 (the last row gets no gradient), with repeats: every
  // fourth token reuses token 0's id and token 1 repeats it too.
  std::uniform_int_distribution<int64_t> pick(0, std::max<int64_t>(vocab - 2, 0));
  std::vector<int64_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t)
    ids[t] = t > 0 && (t % 4 == 0 || t == 1) ? ids[0] : pick(rng);
  std::vector<T> table = toStorage<T>(normal(rng, vocab * hidden, 1.0f));
  std::vector<T> dOut = toStorage<T>(normal(rng, tokens * hidden, 1.0f));

  Doubles wantOut, wantGrad;
  hostEmbedding(toDoubles(table), ids, hidden, wantOut);
  hostEmbeddingGrad(toDoubles(dOut), ids, hidden, vocab, wantGrad);

  DeviceBuffer<T> dTableIn(table), dGradOut(dOut), out(tokens * hidden),
      dTable(vocab * hidden);
  DeviceBuffer<int64_t> dIds(ids);
  out.fillNaN();
  dTable.fillNaN();

  Context ctx;
  if (env.context(name + " forward", 0, ctx)) {
    embedding<T>(ctx, dTableIn.get(), dIds.get(), tokens, hidden, vocab,
                 out.get());
    env.sync();
    env.compare(name + " out", toDoubles(out.read()), wantOut,
                tolerance<T>());
  }
  if (env.context(name + " grad", embeddingScratchBytes(tokens, vocab),
                  ctx)) {
    embeddingGrad<T>(ctx, dIds.get(), dGradOut.get(), tokens, hidden, vocab,
                     dTable.get());
    env.sync();
    std::vector<T> got = dTable.read();
    env.compare(name + " dTable", toDoubles(got), wantGrad, tolerance<T>());
    // The documented order: each row summed in fp32 in token order, rounded
    // once: the same bits as this host loop.
    std::vector<float> sums(vocab * hidden, 0.0f);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t h = 0; h < hidden; ++h)
        sums[ids[t] * hidden + h] += toFloat(dOut[t * hidden + h]);
    int64_t differ = 0;
    for (int64_t i = 0; i < vocab * hidden; ++i) {
      T want = fromFloat<T>(sums[i]);
      differ += std::memcmp(&got[i], &want, sizeof(T)) != 0;
    }
    env.report(name + " dTable bits of the fp32 sums in token order (" +
                   std::to_string(differ) + " differ)",
               differ == 0);
  }
}

template <class T>
void testRmsNorm(Env &env, int64_t rows, int64_t hidden, float epsilon,
                 float inputScale, uint32_t seed) {
  char eps[32];
  std::snprintf(eps, sizeof eps, " eps %g", epsilon);
  std::string name = std::string(typeName<T>()) + " rmsNorm" +
                     dims({{"rows", rows}, {"hidden", hidden}}) + eps;
  std::mt19937 rng(seed);
  std::vector<T> x = toStorage<T>(normal(rng, rows * hidden, inputScale));
  std::vector<T> w = toStorage<T>(normal(rng, hidden, 0.1f, 1.0f));
  std::vector<T> dy = toStorage<T>(normal(rng, rows * hidden, 1.0f));

  Doubles wantY, wantDx, wantDw;
  hostRmsNorm(toDoubles(x), toDoubles(w), rows, hidden, epsilon, wantY);
  hostRmsNormGrad(toDoubles(x), toDoubles(w), toDoubles(dy), rows, hidden,
                  epsilon, wantDx, wantDw);

  DeviceBuffer<T> dX(x), dW(w), dDy(dy), y(rows * hidden);
  DeviceBuffer<T> dx0(rows * hidden), dw0(hidden), dx1(rows * hidden),
      dw1(hidden);
  y.fillNaN();
  dx0.fillNaN();
  dw0.fillNaN();
  dx1.fillNaN();
  dw1.fillNaN();

  Context ctx;
  if (env.context(name + " forward", 0, ctx)) {
    rmsNorm<T>(ctx, dX.get(), dW.get(), rows, hidden, epsilon, y.get());
    env.sync();
    env.compare(name + " y", toDoubles(y.read()), wantY, tolerance<T>());
  }
  if (env.context(name + " grad", rmsNormScratchBytes(rows, hidden), ctx)) {
    rmsNormGrad<T>(ctx, dX.get(), dW.get(), dDy.get(), rows, hidden, epsilon,
                   dx0.get(), dw0.get());
    env.sync();
    // Again on a freshly poisoned scratch: dw must be bitwise the same.
    env.context(name + " grad", rmsNormScratchBytes(rows, hidden), ctx);
    rmsNormGrad<T>(ctx, dX.get(), dW.get(), dDy.get(), rows, hidden, epsilon,
                   dx1.get(), dw1.get());
    env.sync();
    std::vector<T> gotDx = dx0.read(), gotDw = dw0.read();
    env.compare(name + " dx", toDoubles(gotDx), wantDx, tolerance<T>());
    env.compare(name + " dw", toDoubles(gotDw), wantDw, tolerance<T>());
    env.report(name + " grad bitwise deterministic over two runs",
               sameBits(gotDx, dx1.read()) && sameBits(gotDw, dw1.read()));
  }
}

/// addRmsNorm: the sum of two addends, rounded to T, and its norm.
template <class T>
void testAddRmsNorm(Env &env, int64_t rows, int64_t hidden, uint32_t seed) {
  std::string name = std::string(typeName<T>()) + " addRmsNorm" +
                     dims({{"rows", rows}, {"hidden", hidden}});
  std::mt19937 rng(seed);
  std::vector<T> a = toStorage<T>(normal(rng, rows * hidden, 1.0f));
  std::vector<T> b = toStorage<T>(normal(rng, rows * hidden, 1.0f));
  std::vector<T> w = toStorage<T>(normal(rng, hidden, 0.1f, 1.0f));
  // The oracle normalises the sum as stored (rounded to T).
  std::vector<double> sum(rows * hidden);
  for (int64_t i = 0; i < rows * hidden; ++i)
    sum[i] = toFloat(fromFloat<T>(toFloat(a[i]) + toFloat(b[i])));
  Doubles wantY;
  hostRmsNorm(sum, toDoubles(w), rows, hidden, 1e-5f, wantY);
  DeviceBuffer<T> dA(a), dB(b), dW(w), s(rows * hidden), y(rows * hidden);
  s.fillNaN();
  y.fillNaN();
  Context ctx;
  if (env.context(name, 0, ctx)) {
    addRmsNorm<T>(ctx, dA.get(), dB.get(), dW.get(), rows, hidden, 1e-5f,
                  s.get(), y.get());
    env.sync();
    env.compare(name + " sum", toDoubles(s.read()), sum, tolerance<T>());
    env.compare(name + " y", toDoubles(y.read()), wantY, tolerance<T>());
  }
}

template <class T>
void testRotary(Env &env, int64_t B, int64_t S, int64_t N, int64_t D,
                float theta, uint32_t seed) {
  char th[32];
  std::snprintf(th, sizeof th, " theta %g", theta);
  std::string name = std::string(typeName<T>()) + " rotary" +
                     dims({{"B", B}, {"S", S}, {"N", N}, {"D", D}}) + th;
  int64_t n = B * S * N * D;
  std::mt19937 rng(seed);
  std::vector<T> x = toStorage<T>(normal(rng, n, 1.0f));
  std::vector<T> dy = toStorage<T>(normal(rng, n, 1.0f));

  Doubles wantY, wantDx;
  hostRotary(toDoubles(x), B, S, N, D, theta, false, wantY);
  hostRotary(toDoubles(dy), B, S, N, D, theta, true, wantDx);

  DeviceBuffer<T> dX(x), dDy(dy), y(n), dx(n);
  y.fillNaN();
  dx.fillNaN();
  Context ctx;
  if (env.context(name, 0, ctx)) {
    rotary<T>(ctx, dX.get(), B, S, N, D, theta, y.get());
    env.sync();
    env.compare(name + " y", toDoubles(y.read()), wantY, tolerance<T>());
    rotaryGrad<T>(ctx, dDy.get(), B, S, N, D, theta, dx.get());
    env.sync();
    env.compare(name + " dx", toDoubles(dx.read()), wantDx, tolerance<T>());
  }
}

template <class T>
void testLinear(Env &env, int64_t rows, int64_t K, int64_t N, uint32_t seed) {
  std::string name = std::string(typeName<T>()) + " linear" +
                     dims({{"rows", rows}, {"K", K}, {"N", N}});
  std::mt19937 rng(seed);
  std::vector<T> x = toStorage<T>(normal(rng, rows * K, 1.0f));
  std::vector<T> w =
      toStorage<T>(uniform(rng, N * K, 1.0f / std::sqrt(static_cast<float>(K))));
  std::vector<T> dOut = toStorage<T>(normal(rng, rows * N, 1.0f));

  Doubles wantOut, wantDx, wantDw;
  hostLinear(toDoubles(x), toDoubles(w), rows, K, N, wantOut);
  hostLinearGrad(toDoubles(x), toDoubles(w), toDoubles(dOut), rows, K, N,
                 wantDx, wantDw);

  DeviceBuffer<T> dX(x), dW(w), dDOut(dOut), out(rows * N), dx(rows * K),
      dw(N * K);
  out.fillNaN();
  dx.fillNaN();
  dw.fillNaN();
  Context ctx;
  if (env.context(name, 0, ctx)) {
    linear<T>(ctx, dX.get(), dW.get(), rows, K, N, out.get());
    env.sync();
    env.compare(name + " out", toDoubles(out.read()), wantOut, tolerance<T>());
    linearGrad<T>(ctx, dX.get(), dW.get(), dDOut.get(), rows, K, N, dx.get(),
                  dw.get());
    env.sync();
    env.compare(name + " dx", toDoubles(dx.read()), wantDx, tolerance<T>());
    env.compare(name + " dw", toDoubles(dw.read()), wantDw, tolerance<T>());
  }
}

/// `ignoreEvery`: every that-many-th label is ignore_index (1: all of them).
template <class T>
void testCrossEntropy(Env &env, int64_t B, int64_t S, int64_t H, int64_t V,
                      int64_t ignoreEvery, float scale, uint32_t seed) {
  std::string name = std::string(typeName<T>()) + " lmHeadCrossEntropy" +
                     dims({{"B", B}, {"S", S}, {"H", H}, {"V", V}});
  if (ignoreEvery == 1)
    name += " all ignored";
  int64_t rows = B * S;
  std::mt19937 rng(seed);
  std::vector<T> h = toStorage<T>(normal(rng, rows * H, 1.0f));
  std::vector<T> w = toStorage<T>(
      normal(rng, V * H, 2.0f / std::sqrt(static_cast<float>(H))));
  std::uniform_int_distribution<int64_t> pick(0, V - 1);
  std::vector<int64_t> labels(rows);
  for (int64_t r = 0; r < rows; ++r)
    labels[r] = r % ignoreEvery == ignoreEvery - 1 ? kIgnoreIndex : pick(rng);
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r)
    counted += hostTarget(labels, r, S, V) >= 0;
  name += " (" + std::to_string(counted) + " targets)";

  double wantLoss;
  Doubles wantDh, wantDw;
  hostCrossEntropy(toDoubles(h), toDoubles(w), labels, B, S, H, V, scale,
                   wantLoss, wantDh, wantDw);

  DeviceBuffer<T> dH(h), dW(w), dh(rows * H), dw(V * H);
  DeviceBuffer<int64_t> dLabels(labels);
  DeviceBuffer<float> loss(1);
  dh.fillNaN();
  dw.fillNaN();
  loss.fillNaN();
  Context ctx;
  int64_t bytes = crossEntropyScratchBytes(rows, H, V, sizeof(T));
  if (env.context(name + " forward", bytes, ctx)) {
    lmHeadCrossEntropy<T>(ctx, dH.get(), dW.get(), dLabels.get(), B, S, H, V,
                          kIgnoreIndex, loss.get());
    env.sync();
    env.compare(name + " loss", {static_cast<double>(loss.read()[0])},
                {wantLoss}, tolerance<T>());
  }
  if (env.context(name + " grad", bytes, ctx)) {
    lmHeadCrossEntropyGrad<T>(ctx, dH.get(), dW.get(), dLabels.get(), B, S, H,
                              V, kIgnoreIndex, scale, dh.get(), dw.get());
    env.sync();
    env.compare(name + " dh", toDoubles(dh.read()), wantDh, tolerance<T>());
    env.compare(name + " dw", toDoubles(dw.read()), wantDw, tolerance<T>());
  }
  // The fused form (moe.lm_head_cross_entropy_with_grad): the loss too.
  loss.fillNaN();
  if (env.context(name + " grad with loss", bytes, ctx)) {
    lmHeadCrossEntropyGrad<T>(ctx, dH.get(), dW.get(), dLabels.get(), B, S, H,
                              V, kIgnoreIndex, scale, dh.get(), dw.get(),
                              loss.get());
    env.sync();
    env.compare(name + " fused loss", {static_cast<double>(loss.read()[0])},
                {wantLoss}, tolerance<T>());
    env.compare(name + " fused dh", toDoubles(dh.read()), wantDh,
                tolerance<T>());
  }
}

/// AdamW on masters split into copy + remainder (adamwRemainders), checked
/// against the fp32 AdamW that just ran on the same inputs (its results in
/// dParam, dM, dV, dCopy): split the original masters, update, join; the
/// masters and moments must be the same bits, and the copies the masters
/// rounded to nearest, ties away from zero (where round-to-nearest-even,
/// the fp32 path's copy, differs only at a tie). splitMasters followed by
/// joinMasters must give back every original master bit for bit. In place,
/// the remainders in the first half of the masters' fp32 slots (as the
/// printed programs keep them) and the second half overwritten.
template <class TG>
void testAdamWRemainders(
    bool inPlace, Env &env, Context &ctx, std::vector<OptimizerTensor> tensors,
    const std::vector<std::vector<float>> &param,
    const std::vector<std::vector<float>> &m,
    const std::vector<std::vector<float>> &v,
    const std::vector<std::unique_ptr<DeviceBuffer<float>>> &dParam,
    const std::vector<std::unique_ptr<DeviceBuffer<float>>> &dM,
    const std::vector<std::unique_ptr<DeviceBuffer<float>>> &dV,
    const std::vector<std::unique_ptr<DeviceBuffer<bf16>>> &dCopy,
    const int64_t *step, const float *lr, const float *norm, float beta1,
    float beta2, float epsilon, float maxNorm, const std::string &what) {
  const std::string name =
      what + (inPlace ? " (master remainders in place)" : " (master remainders)");
  size_t count = tensors.size();
  std::vector<std::unique_ptr<DeviceBuffer<float>>> p2, m2, v2;
  std::vector<std::unique_ptr<DeviceBuffer<bf16>>> hi;
  std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> lo;
  for (size_t i = 0; i < count; ++i) {
    p2.emplace_back(new DeviceBuffer<float>(param[i]));
    m2.emplace_back(new DeviceBuffer<float>(m[i]));
    v2.emplace_back(new DeviceBuffer<float>(v[i]));
    hi.emplace_back(new DeviceBuffer<bf16>(param[i].size()));
    tensors[i].param = p2[i]->get();
    tensors[i].expAvg = m2[i]->get();
    tensors[i].expAvgSq = v2[i]->get();
    tensors[i].copy = hi[i]->get();
    if (inPlace) {
      tensors[i].remainder = reinterpret_cast<uint16_t *>(p2[i]->get());
      continue;
    }
    lo.emplace_back(new DeviceBuffer<uint16_t>(param[i].size()));
    tensors[i].remainder = lo[i]->get();
  }
  // What split masters must not read: the fp32 slots (NaN), or in place
  // their second halves (all bits set: NaN pairs of halves).
  auto clobber = [&] {
    for (size_t i = 0; i < count; ++i) {
      if (!inPlace) {
        p2[i]->fillNaN();
        continue;
      }
      size_t n = param[i].size();
      MOERT_CUDA_CHECK(cudaMemset(reinterpret_cast<char *>(p2[i]->get()) + 2 * n,
                                  0xff, 2 * n));
    }
  };
  TensorGroup split;
  split.init(tensors, kAdamWChunk<float>);
  if (!env.context(name, 0, ctx))
    return;
  // The round trip alone.
  splitMasters(ctx, split);
  clobber();
  joinMasters(ctx, split);
  env.sync();
  bool roundTrip = true;
  for (size_t i = 0; i < count; ++i)
    roundTrip &= std::memcmp(p2[i]->read().data(), param[i].data(),
                             param[i].size() * sizeof(float)) == 0;
  env.report(name + " split then join gives every master back", roundTrip);
  // The update on the split form, then back to fp32.
  splitMasters(ctx, split);
  clobber(); // AdamW on the split form must not need it
  adamwRemainders<TG>(ctx, split, step, lr, norm, beta1, beta2, epsilon,
                      maxNorm);
  joinMasters(ctx, split);
  env.sync();
  int64_t differP = 0, differM = 0, differV = 0, ties = 0, copyWrong = 0,
          copyNotRne = 0;
  for (size_t i = 0; i < count; ++i) {
    std::vector<float> gotP = p2[i]->read(), wantP = dParam[i]->read();
    std::vector<float> gotM = m2[i]->read(), wantM = dM[i]->read();
    std::vector<float> gotV = v2[i]->read(), wantV = dV[i]->read();
    std::vector<bf16> gotCopy = hi[i]->read(), rneCopy = dCopy[i]->read();
    for (size_t j = 0; j < gotP.size(); ++j) {
      differP += std::memcmp(&gotP[j], &wantP[j], 4) != 0;
      differM += std::memcmp(&gotM[j], &wantM[j], 4) != 0;
      differV += std::memcmp(&gotV[j], &wantV[j], 4) != 0;
      uint32_t bits;
      std::memcpy(&bits, &wantP[j], 4);
      bool tie = (bits & 0xffffu) == 0x8000u;
      ties += tie;
      // Nearest, ties away from zero: the high half, plus one step in
      // magnitude when the low half is at least half a step.
      uint16_t want = static_cast<uint16_t>((bits >> 16) +
                                            ((bits & 0x8000u) ? 1u : 0u));
      uint16_t got, rne;
      std::memcpy(&got, &gotCopy[j], 2);
      std::memcpy(&rne, &rneCopy[j], 2);
      copyWrong += got != want;
      copyNotRne += got != rne && !tie;
    }
  }
  std::printf("%s: %lld masters, %lld exp_avg and %lld exp_avg_sq differ "
              "from fp32 AdamW's, %lld ties, %lld copies not the rounded "
              "master, %lld non-tie copies differ from round-to-nearest-even\n",
              name.c_str(), static_cast<long long>(differP),
              static_cast<long long>(differM), static_cast<long long>(differV),
              static_cast<long long>(ties), static_cast<long long>(copyWrong),
              static_cast<long long>(copyNotRne));
  env.report(name + " masters and moments are fp32 AdamW's, bit for bit",
             differP + differM + differV == 0);
  env.report(name + " copies are the masters rounded (ties away from zero), "
                    "round-to-nearest-even except at ties",
             copyWrong == 0 && copyNotRne == 0);
  cudaFree(split.deviceTensors);
  cudaFree(split.deviceChunks);
}

/// The multi-tensor norm and AdamW with state of type T and gradients of
/// type TG (fp32 masters; fp32 masters with bf16 gradients, grad_dtype
/// bf16; or a bf16 model: inputs rounded to their types, fp64 oracle on
/// them).
template <class T, class TG = T> void testOptimizer(Env &env, uint32_t seed) {
  // 65541: a chunk and a tail of 5, one 4-element access and one
  // element past the last 8-element one.
  const std::vector<int64_t> sizes = {5, 70000, 131073, 65541};
  const std::vector<float> decays = {0.0f, 0.1f, 0.01f, 0.1f};
  const int64_t step = 3;
  const float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f;
  std::string name = std::string(typeName<T>()) +
                     (std::is_same_v<T, TG>
                          ? std::string()
                          : std::string(" (") + typeName<TG>() + " gradients)") +
                     " optimizer sizes 5, 70000, 131073, 65541 step 3 lr 1e-3";
  const double tol = sizeof(T) == 4 ? kTolOptimizer : kTolBf16;
  auto rounded = [](std::vector<float> v) { // what a T buffer holds
    for (float &x : v)
      x = toFloat(fromFloat<T>(x));
    return v;
  };
  std::printf("== %s\n", name.c_str());

  std::mt19937 rng(seed);
  size_t count = sizes.size();
  std::vector<std::vector<float>> param(count), grad(count), m(count),
      v(count);
  for (size_t i = 0; i < count; ++i) {
    param[i] = rounded(normal(rng, sizes[i], 0.02f));
    grad[i] = normal(rng, sizes[i], 0.01f);
    for (float &x : grad[i]) // what a TG buffer holds
      x = toFloat(fromFloat<TG>(x));
    // Moments as after two earlier steps of gradients of this size.
    m[i] = rounded(normal(rng, sizes[i], 0.19f * 0.01f));
    v[i] = normal(rng, sizes[i], 0.01f);
    for (float &x : v[i])
      x = 0.002f * x * x;
    v[i] = rounded(v[i]);
  }
  std::vector<std::unique_ptr<DeviceBuffer<T>>> dParam, dM, dV;
  std::vector<std::unique_ptr<DeviceBuffer<TG>>> dGrad;
  std::vector<std::unique_ptr<DeviceBuffer<bf16>>> dCopy;
  std::vector<OptimizerTensor> tensors(count);
  for (size_t i = 0; i < count; ++i) {
    dCopy.emplace_back(new DeviceBuffer<bf16>(sizes[i]));
    tensors[i].copy = dCopy[i]->get();
    dParam.emplace_back(new DeviceBuffer<T>(toStorage<T>(param[i])));
    dGrad.emplace_back(new DeviceBuffer<TG>(toStorage<TG>(grad[i])));
    dM.emplace_back(new DeviceBuffer<T>(toStorage<T>(m[i])));
    dV.emplace_back(new DeviceBuffer<T>(toStorage<T>(v[i])));
    tensors[i].param = dParam[i]->get();
    tensors[i].expAvg = dM[i]->get();
    tensors[i].expAvgSq = dV[i]->get();
    tensors[i].grad = dGrad[i]->get();
    tensors[i].count = sizes[i];
    tensors[i].weightDecay = decays[i];
  }
  TensorGroup group;
  group.init(tensors);

  // The global norm, twice (it must be bitwise deterministic).
  double sumSquares = 0.0;
  for (const auto &g : grad)
    for (float x : g)
      sumSquares += static_cast<double>(x) * x;
  double wantNorm = std::sqrt(sumSquares);
  DeviceBuffer<float> norm(1);
  float norms[2];
  Context ctx;
  bool normRan = true;
  for (int run = 0; run < 2 && normRan; ++run) {
    norm.fillNaN();
    normRan = env.context(name + " globalNorm", globalNormScratchBytes(group),
                          ctx);
    if (!normRan)
      break;
    globalNorm<TG>(ctx, group, norm.get());
    env.sync();
    norms[run] = norm.read()[0];
  }
  if (normRan) {
    env.compare(name + " globalNorm", {static_cast<double>(norms[0])},
                {wantNorm}, kTolOptimizer);
    env.report(name + " globalNorm bitwise deterministic over two runs",
               std::memcmp(&norms[0], &norms[1], sizeof(float)) == 0);
  }

  // AdamW chunks the tensors as the printed programs do (kAdamWChunk: 8192
  // elements for fp32 state, so these sizes cross chunks and end in
  // tails), and reads the fp32 norm from device memory; give it the
  // oracle's, so that this checks AdamW alone.
  TensorGroup adamGroup;
  adamGroup.init(tensors, kAdamWChunk<T>);
  const float normF = static_cast<float>(wantNorm);
  DeviceBuffer<int64_t> dStep(std::vector<int64_t>{step});
  DeviceBuffer<float> dLr(std::vector<float>{lr});
  DeviceBuffer<float> dNorm(std::vector<float>{normF});
  struct Clip {
    float maxNorm;
    const char *what;
  };
  const Clip clips[] = {{1.0f, "clipping active, max_norm 1"},
                        {1000.0f, "clipping inactive, max_norm 1000"},
                        {0.0f, "clipping off, max_norm 0"}};
  for (const Clip &clip : clips) {
    double coefficient =
        clip.maxNorm > 0.0f
            ? std::min(1.0, static_cast<double>(clip.maxNorm) /
                                (static_cast<double>(normF) + 1e-6))
            : 1.0;
    char head[160];
    std::snprintf(head, sizeof head, "%s adamw %s (norm %.4f, coefficient %.6f)",
                  name.c_str(), clip.what, normF, coefficient);
    std::printf("-- %s\n", head);
    for (size_t i = 0; i < count; ++i) {
      dParam[i]->write(toStorage<T>(param[i]));
      dM[i]->write(toStorage<T>(m[i]));
      dV[i]->write(toStorage<T>(v[i]));
      dCopy[i]->fillNaN();
    }
    if (!env.context(head, 0, ctx))
      continue;
    adamw<T, TG>(ctx, adamGroup, dStep.get(), dLr.get(), dNorm.get(), beta1, beta2,
          epsilon, clip.maxNorm);
    env.sync();

    const double b1 = beta1, b2 = beta2, eps = epsilon, rate = lr;
    const double bias1 = 1.0 - std::pow(b1, static_cast<double>(step));
    const double bias2 = 1.0 - std::pow(b2, static_cast<double>(step));
    for (size_t i = 0; i < count; ++i) {
      int64_t n = sizes[i];
      double decay = 1.0 - rate * static_cast<double>(decays[i]);
      Doubles wantP(n), wantM(n), wantV(n), wantUpdate(n), gotUpdate(n);
      for (int64_t j = 0; j < n; ++j) {
        double g = static_cast<double>(grad[i][j]) * coefficient;
        double mj = b1 * m[i][j] + (1.0 - b1) * g;
        double vj = b2 * v[i][j] + (1.0 - b2) * g * g;
        double p = static_cast<double>(param[i][j]) * decay -
                   rate / bias1 * mj / (std::sqrt(vj) / std::sqrt(bias2) + eps);
        wantP[j] = p;
        wantM[j] = mj;
        wantV[j] = vj;
        wantUpdate[j] = p - param[i][j];
      }
      Doubles gotP = toDoubles(dParam[i]->read());
      for (int64_t j = 0; j < n; ++j)
        gotUpdate[j] = gotP[j] - param[i][j];
      char tensor[96];
      std::snprintf(tensor, sizeof tensor, " tensor %zu (size %lld, wd %g)",
                    i, static_cast<long long>(n), decays[i]);
      std::string prefix =
          std::string(typeName<T>()) + " adamw " + clip.what + tensor;
      env.compare(prefix + " param", gotP, wantP, tol);
      if (sizeof(T) == 4) // in bf16 most updates are below one rounding step
        env.compare(prefix + " param update", gotUpdate, wantUpdate,
                    kTolOptimizerUpdate);
      // The kept bf16 copy (moe-keep-param-copies) is the stored parameter
      // rounded to bf16, bit for bit, as a cast of it would be.
      std::vector<T> storedP = dParam[i]->read();
      std::vector<bf16> copy = dCopy[i]->read();
      bool copyExact = true;
      for (int64_t j = 0; j < n; ++j) {
        bf16 want = __float2bfloat16_rn(toFloat(storedP[j]));
        copyExact &= std::memcmp(&copy[j], &want, sizeof(bf16)) == 0;
      }
      env.report(prefix + " bf16 copy is the rounded parameter", copyExact);
      env.compare(prefix + " exp_avg", toDoubles(dM[i]->read()), wantM, tol);
      env.compare(prefix + " exp_avg_sq", toDoubles(dV[i]->read()), wantV,
                  tol);
    }
    if constexpr (sizeof(T) == 4)
      for (bool inPlace : {false, true})
        testAdamWRemainders<TG>(inPlace, env, ctx, tensors, param, m, v,
                                dParam, dM, dV, dCopy, dStep.get(), dLr.get(),
                                dNorm.get(), beta1, beta2, epsilon,
                                clip.maxNorm,
                                std::string(typeName<T>()) + " adamw " +
                                    clip.what);
  }
  for (TensorGroup *g : {&group, &adamGroup}) {
    cudaFree(g->deviceTensors);
    cudaFree(g->deviceChunks);
  }
}

template <class T> void testType(Env &env, uint32_t &seed) {
  std::printf("== %s embedding\n", typeName<T>());
  testEmbedding<T>(env, 13, 40, 17, seed++);
  testEmbedding<T>(env, 300, 64, 50, seed++);
  testEmbedding<T>(env, 512, 33, 5, seed++); // many repeats per row
  testEmbedding<T>(env, 7, 72, 1000, seed++);
  testEmbedding<T>(env, 2500, 36, 60, seed++); // 3 tiles, 16-byte accesses

  std::printf("== %s rmsNorm\n", typeName<T>());
  testRmsNorm<T>(env, 13, 40, 1e-5f, 1.0f, seed++);
  testRmsNorm<T>(env, 100, 256, 1e-5f, 1.0f, seed++); // 4 partial blocks
  testRmsNorm<T>(env, 70, 1000, 1e-6f, 3.0f, seed++); // hidden > threads
  testRmsNorm<T>(env, 33, 513, 1e-5f, 0.5f, seed++);  // 32 + 1 rows
  testRmsNorm<T>(env, 1, 7, 1e-5f, 1.0f, seed++);
  // Mixtral's width: 2 (bf16) or 4 (fp32) packs a thread; 8192: 4 packs
  // (bf16) or the element-wise kernels (fp32); an odd row count leaves the
  // gradient's last two-row step with one row.
  testRmsNorm<T>(env, 67, 4096, 1e-5f, 1.0f, seed++);
  testRmsNorm<T>(env, 35, 8192, 1e-5f, 1.0f, seed++);
  testAddRmsNorm<T>(env, 13, 40, seed++);
  testAddRmsNorm<T>(env, 70, 1000, seed++);
  testAddRmsNorm<T>(env, 9, 4096, seed++);
  testAddRmsNorm<T>(env, 5, 8192, seed++);

  std::printf("== %s rotary\n", typeName<T>());
  testRotary<T>(env, 2, 5, 3, 8, 1e6f, seed++);
  testRotary<T>(env, 1, 37, 2, 128, 1e6f, seed++);
  testRotary<T>(env, 3, 16, 4, 128, 1e6f, seed++);
  testRotary<T>(env, 2, 11, 3, 64, 1e4f, seed++);
  testRotary<T>(env, 2, 9, 8, 6, 1e4f, seed++);    // D / 2 not a pack
  testRotary<T>(env, 1, 300, 32, 128, 1e6f, seed++); // positions to 299

  std::printf("== %s linear\n", typeName<T>());
  testLinear<T>(env, 13, 40, 24, seed++);
  testLinear<T>(env, 7, 33, 5, seed++);
  testLinear<T>(env, 64, 128, 96, seed++);
  testLinear<T>(env, 300, 64, 200, seed++);

  std::printf("== %s lmHeadCrossEntropy\n", typeName<T>());
  testCrossEntropy<T>(env, 2, 9, 16, 50, 4, 1.0f, seed++);
  testCrossEntropy<T>(env, 2, 9, 16, 50, 3, 0.5f, seed++);
  testCrossEntropy<T>(env, 3, 700, 8, 37, 10, 0.75f, seed++); // one chunk
  // A logits budget of 1024 rows of V = 37 cuts 2100 rows into 3 chunks.
  int64_t budget = detail::crossEntropyLogitsBudget;
  detail::crossEntropyLogitsBudget = 1024 * 37 * 4;
  testCrossEntropy<T>(env, 3, 700, 8, 37, 10, 0.75f, seed++); // 3 chunks
  // 1030 rows: over the budget by 6 rows, within it plus the 8 rows of
  // logits the bf16 dW accumulator would take: one chunk in bf16, 2 in fp32.
  env.report(std::string(typeName<T>()) + " crossEntropyChunk of 1030 rows",
             detail::crossEntropyChunk(1030, 8, 37, sizeof(T)) ==
                 (sizeof(T) == 2 ? 1030 : 1024));
  testCrossEntropy<T>(env, 2, 515, 8, 37, 10, 0.75f, seed++);
  detail::crossEntropyLogitsBudget = budget;
  // Rows longer than the registers hold (logitsGradLongKernel).
  testCrossEntropy<T>(env, 1, 9, 8, detail::kLogitsRowInRegisters + 300, 4,
                      1.0f, seed++);
  testCrossEntropy<T>(env, 1, 5, 40, 13, 1, 1.0f, seed++);    // count 0
}

/// Median milliseconds of `runs` calls of `launch` on `stream` after two
/// warm-up calls, each call between two events.
template <class F> float medianMs(cudaStream_t stream, int runs, F launch) {
  cudaEvent_t begin, end;
  CHECK_CUDA(cudaEventCreate(&begin));
  CHECK_CUDA(cudaEventCreate(&end));
  std::vector<float> ms;
  for (int r = -2; r < runs; ++r) {
    CHECK_CUDA(cudaEventRecord(begin, stream));
    launch();
    CHECK_CUDA(cudaEventRecord(end, stream));
    CHECK_CUDA(cudaEventSynchronize(end));
    float t = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&t, begin, end));
    if (r >= 0)
      ms.push_back(t);
  }
  CHECK_CUDA(cudaEventDestroy(begin));
  CHECK_CUDA(cudaEventDestroy(end));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

/// The parameter sizes of mixtral-8x7b-2l (3,164,688,384 in all): the
/// embedding, the final norm and the lm head, then per layer two norms, q,
/// k, v, o, the router and the experts' gate/up and down projections.
std::vector<int64_t> mixtral2lSizes() {
  const int64_t h = 4096, v = 32000, kv = 1024, e = 8, inter = 14336;
  std::vector<int64_t> sizes = {v * h, h, v * h};
  for (int layer = 0; layer < 2; ++layer)
    for (int64_t n : {h, h, h * h, kv * h, kv * h, h * h, e * h,
                      e * 2 * inter * h, e * h * inter})
      sizes.push_back(n);
  return sizes;
}

/// --bench-optimizer: globalNorm and adamw over mixtral-8x7b-2l's
/// parameters in one recipe (TS bf16: a bf16 model, bf16 state and
/// gradients; TS fp32: fp32 masters, the bf16 copy written, with fp32 or
/// bf16 gradients TG), each kernel with 16-byte accesses of its type (what
/// the launchers use), 8-byte ones (the width bf16 had before issue 16) and
/// 32-byte ones (two 16-byte accesses per array); AdamW in the chunks the
/// programs use (kAdamWChunk), the norm in kChunk's; then both with 16-byte
/// accesses in chunks of 8192 to 65536 elements (width "NNNc"); with fp32
/// state also AdamW on masters kept as copy + remainder ("remdr"). Prints
/// milliseconds (median of 10) and the TB/s of the bytes each must move;
/// checks nothing.
template <class TS, class TG> void benchOptimizer(cudaStream_t stream) {
  std::vector<int64_t> sizes = mixtral2lSizes();
  int64_t total = 0;
  for (int64_t n : sizes)
    total += n;
  const bool masters = sizeof(TS) == 4;
  // Each tensor starts at a 256-byte offset of one allocation per buffer.
  std::vector<int64_t> offsets;
  int64_t padded = 0;
  for (int64_t n : sizes) {
    offsets.push_back(padded);
    padded += (n + 127) / 128 * 128;
  }
  TS *param, *m, *v;
  TG *grad;
  bf16 *copy = nullptr;
  for (TS **b : {&param, &m, &v}) {
    CHECK_CUDA(cudaMalloc(b, padded * sizeof(TS)));
    // 0x3c bytes: about 0.0115 in either type, finite and positive.
    CHECK_CUDA(cudaMemset(*b, 0x3c, padded * sizeof(TS)));
  }
  CHECK_CUDA(cudaMalloc(&grad, padded * sizeof(TG)));
  CHECK_CUDA(cudaMemset(grad, 0x3c, padded * sizeof(TG)));
  if (masters)
    CHECK_CUDA(cudaMalloc(&copy, padded * sizeof(bf16)));
  std::vector<OptimizerTensor> tensors(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    tensors[i].param = param + offsets[i];
    tensors[i].expAvg = m + offsets[i];
    tensors[i].expAvgSq = v + offsets[i];
    tensors[i].grad = grad + offsets[i];
    tensors[i].count = sizes[i];
    tensors[i].weightDecay = 0.1f;
    tensors[i].copy = masters ? copy + offsets[i] : nullptr;
  }
  TensorGroup group, adamGroup; // the norm's chunks and AdamW's
  group.init(tensors);
  adamGroup.init(tensors, kAdamWChunk<TS>);
  double *partial;
  float *norm, *lr;
  int64_t *step;
  CHECK_CUDA(cudaMalloc(&partial, group.numChunks * sizeof(double)));
  CHECK_CUDA(cudaMalloc(&norm, sizeof(float)));
  CHECK_CUDA(cudaMalloc(&lr, sizeof(float)));
  CHECK_CUDA(cudaMalloc(&step, sizeof(int64_t)));
  const float lrValue = 1e-4f;
  const int64_t stepValue = 10;
  CHECK_CUDA(cudaMemcpy(lr, &lrValue, sizeof(float), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(step, &stepValue, sizeof(int64_t),
                        cudaMemcpyHostToDevice));
  const detail::AdamWConfig config{0.9f, 0.95f, 1e-8f, 1.0f, false};
  const int blocks = static_cast<int>(group.numChunks);
  auto sumSquares = [&](auto kernel) {
    return medianMs(stream, 10, [&] {
      kernel<<<blocks, 512, 0, stream>>>(group.deviceTensors,
                                         group.deviceChunks, partial);
      detail::normFromPartialsKernel<<<1, 32, 0, stream>>>(
          partial, group.numChunks, norm);
    });
  };
  auto update = [&](auto kernel) {
    return medianMs(stream, 10, [&] {
      kernel<<<static_cast<int>(adamGroup.numChunks), 512, 0, stream>>>(
          adamGroup.deviceTensors, adamGroup.deviceChunks, step, lr, norm,
          config);
    });
  };
  const double normBytes = static_cast<double>(total) * sizeof(TG);
  // Read p, m, v, g; write p, m, v (and the bf16 copy).
  const double adamBytes =
      static_cast<double>(total) *
      (6 * sizeof(TS) + sizeof(TG) + (masters ? 2 : 0));
  const char *recipe = !masters                ? "bf16"
                       : sizeof(TG) == 4 ? "fp32-master"
                                         : "fp32m-bf16g";
  auto line = [&](const char *what, const char *width, double bytes,
                  float ms) {
    std::printf("bench %-11s %-10s %-5s %8.3f ms %6.2f GB %5.2f TB/s\n",
                recipe, what, width, ms, bytes / 1e9,
                bytes / (ms * 1e-3) / 1e12);
  };
  constexpr int kGWide = 16 / sizeof(TG), kGNarrow = 8 / sizeof(TG);
  line("globalNorm", "16 B", normBytes,
       sumSquares(detail::sumSquaresKernel<TG, kGWide>));
  line("globalNorm", "8 B", normBytes,
       sumSquares(detail::sumSquaresKernel<TG, kGNarrow>));
  // Widths in elements of the state.
  constexpr int kWide = 16 / sizeof(TS), kNarrow = 8 / sizeof(TS);
  line("adamw", "16 B", adamBytes, update(detail::adamwKernel<TS, TG, kWide>));
  line("adamw", "8 B", adamBytes,
       update(detail::adamwKernel<TS, TG, kNarrow>));
  line("adamw", "32 B", adamBytes,
       update(detail::adamwKernel<TS, TG, 2 * kWide>));
  // fp32 state: AdamW on masters kept as copy + remainder (26 bytes per
  // element with bf16 gradients, 28 with fp32 ones: the fp32 master's 8
  // bytes read and written and the copy's 2 written become 4 + 4).
  if (masters) {
    uint16_t *remainder;
    CHECK_CUDA(cudaMalloc(&remainder, padded * sizeof(uint16_t)));
    CHECK_CUDA(cudaMemset(remainder, 0x3c, padded * sizeof(uint16_t)));
    std::vector<OptimizerTensor> split = tensors;
    for (size_t i = 0; i < split.size(); ++i)
      split[i].remainder = remainder + offsets[i];
    TensorGroup splitGroup;
    splitGroup.init(split, kAdamWChunk<TS>);
    CHECK_CUDA(cudaMemset(copy, 0x3c, padded * sizeof(bf16)));
    float ms = medianMs(stream, 10, [&] {
      detail::adamwRemaindersKernel<TG>
          <<<static_cast<int>(splitGroup.numChunks), 512, 0, stream>>>(
              splitGroup.deviceTensors, splitGroup.deviceChunks, step, lr,
              norm, config);
    });
    line("adamw", "remdr", static_cast<double>(total) * (16 + sizeof(TG) + 8),
         ms);
    for (void *b : {static_cast<void *>(remainder),
                    static_cast<void *>(splitGroup.deviceTensors),
                    static_cast<void *>(splitGroup.deviceChunks)})
      CHECK_CUDA(cudaFree(b));
  }
  // Both kernels, 16-byte accesses, in chunks of other sizes (what
  // kAdamWChunk was chosen by).
  for (int64_t chunk : {int64_t(1) << 13, int64_t(1) << 14, int64_t(1) << 15,
                        int64_t(1) << 16}) {
    TensorGroup other;
    other.init(tensors, chunk);
    double *otherPartial;
    CHECK_CUDA(cudaMalloc(&otherPartial, other.numChunks * sizeof(double)));
    const int n = static_cast<int>(other.numChunks);
    float normMs = medianMs(stream, 10, [&] {
      detail::sumSquaresKernel<TG><<<n, 512, 0, stream>>>(
          other.deviceTensors, other.deviceChunks, otherPartial);
      detail::normFromPartialsKernel<<<1, 32, 0, stream>>>(
          otherPartial, other.numChunks, norm);
    });
    float adamMs = medianMs(stream, 10, [&] {
      detail::adamwKernel<TS, TG><<<n, 512, 0, stream>>>(
          other.deviceTensors, other.deviceChunks, step, lr, norm, config);
    });
    char width[16];
    std::snprintf(width, sizeof width, "%lldc", static_cast<long long>(chunk));
    line("globalNorm", width, normBytes, normMs);
    line("adamw", width, adamBytes, adamMs);
    for (void *b : {static_cast<void *>(otherPartial),
                    static_cast<void *>(other.deviceTensors),
                    static_cast<void *>(other.deviceChunks)})
      CHECK_CUDA(cudaFree(b));
  }
  for (void *b : {static_cast<void *>(param), static_cast<void *>(m),
                  static_cast<void *>(v), static_cast<void *>(grad),
                  static_cast<void *>(copy), static_cast<void *>(partial),
                  static_cast<void *>(norm), static_cast<void *>(lr),
                  static_cast<void *>(step),
                  static_cast<void *>(group.deviceTensors),
                  static_cast<void *>(group.deviceChunks),
                  static_cast<void *>(adamGroup.deviceTensors),
                  static_cast<void *>(adamGroup.deviceChunks)})
    CHECK_CUDA(cudaFree(b));
}

/// --bench-norms: the normalisation and rotary kernels at
/// mixtral-8x7b-2l's step shapes (8192 tokens of width 4096, bf16; q
/// [4, 2048, 32, 128], k [4, 2048, 8, 128]). Prints milliseconds (median of
/// 20) and the TB/s of the bytes each must move; checks nothing.
void benchNorms(cudaStream_t stream) {
  const int64_t rows = 8192, hidden = 4096, n = rows * hidden;
  const int64_t B = 4, S = 2048, D = 128;
  bf16 *a, *b, *w, *sum, *y, *dy, *dx;
  float *scratch;
  for (bf16 **p : {&a, &b, &sum, &y, &dy, &dx}) {
    CHECK_CUDA(cudaMalloc(p, n * sizeof(bf16)));
    CHECK_CUDA(cudaMemset(*p, 0x3c, n * sizeof(bf16)));
  }
  CHECK_CUDA(cudaMalloc(&w, hidden * sizeof(bf16)));
  CHECK_CUDA(cudaMemset(w, 0x3c, hidden * sizeof(bf16)));
  const int64_t scratchBytes = rmsNormScratchBytes(rows, hidden);
  CHECK_CUDA(cudaMalloc(&scratch, scratchBytes));
  Context ctx;
  ctx.stream = stream;
  ctx.scratch = reinterpret_cast<char *>(scratch);
  ctx.scratchBytes = scratchBytes;
  const double bytes = static_cast<double>(n) * sizeof(bf16);
  auto line = [&](const char *what, double moved, float ms) {
    std::printf("bench %-32s %8.3f ms %6.3f GB %5.2f TB/s\n", what, ms,
                moved / 1e9, moved / (ms * 1e-3) / 1e12);
  };
  line("rmsNorm 8192x4096", 2 * bytes, medianMs(stream, 20, [&] {
         rmsNorm<bf16>(ctx, a, w, rows, hidden, 1e-5f, y);
       }));
  line("addRmsNorm 8192x4096", 4 * bytes, medianMs(stream, 20, [&] {
         addRmsNorm<bf16>(ctx, a, b, w, rows, hidden, 1e-5f, sum, y);
       }));
  line("rmsNormGrad 8192x4096", 3 * bytes, medianMs(stream, 20, [&] {
         rmsNormGrad<bf16, float>(ctx, a, w, dy, rows, hidden, 1e-5f, dx,
                                  scratch);
       }));
  for (int64_t N : {int64_t{32}, int64_t{8}}) {
    double moved = 2.0 * B * S * N * D * sizeof(bf16);
    std::string q = "rotary [4, 2048, " + std::to_string(N) + ", 128]";
    line(q.c_str(), moved, medianMs(stream, 20, [&] {
           rotary<bf16>(ctx, a, B, S, N, D, 1e6f, y);
         }));
    q = "rotaryGrad [4, 2048, " + std::to_string(N) + ", 128]";
    line(q.c_str(), moved, medianMs(stream, 20, [&] {
           rotaryGrad<bf16>(ctx, dy, B, S, N, D, 1e6f, dx);
         }));
  }
  for (void *p : {static_cast<void *>(a), static_cast<void *>(b),
                  static_cast<void *>(w), static_cast<void *>(sum),
                  static_cast<void *>(y), static_cast<void *>(dy),
                  static_cast<void *>(dx), static_cast<void *>(scratch)})
    CHECK_CUDA(cudaFree(p));
}

/// The bandwidth of a device-to-device copy of 8 GiB (read + write).
void benchCopy(cudaStream_t stream) {
  const size_t bytes = size_t(8) << 30;
  char *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  float ms = medianMs(stream, 10, [&] {
    CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
  });
  std::printf("bench copy        8 GiB            %8.3f ms %6.2f GB %5.2f TB/s\n",
              ms, 2.0 * bytes / 1e9, 2.0 * bytes / (ms * 1e-3) / 1e12);
  CHECK_CUDA(cudaFree(a));
  CHECK_CUDA(cudaFree(b));
}

} // namespace

int main(int argc, char **argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "DenseKernelsTest: no CUDA device\n");
    return 2;
  }
  if (argc > 1 && std::strcmp(argv[1], "--bench-optimizer") == 0) {
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreate(&stream));
    benchCopy(stream);
    benchOptimizer<bf16, bf16>(stream);
    benchOptimizer<float, float>(stream);
    benchOptimizer<float, bf16>(stream);
    CHECK_CUDA(cudaStreamDestroy(stream));
    return 0;
  }
  if (argc > 1 && std::strcmp(argv[1], "--bench-norms") == 0) {
    cudaStream_t stream;
    CHECK_CUDA(cudaStreamCreate(&stream));
    benchNorms(stream);
    CHECK_CUDA(cudaStreamDestroy(stream));
    return 0;
  }
  Env env;
  CHECK_CUDA(cudaStreamCreate(&env.stream));
  env.blas = createBlas(env.stream);
  env.scratchCapacity = kScratchCapacity;
  CHECK_CUDA(cudaMalloc(&env.scratch, env.scratchCapacity));
  CHECK_CUDA(cudaMallocHost(&env.hostCounts, 4096 * sizeof(int64_t)));

  uint32_t seed = 20240601;
  testType<float>(env, seed);
  testType<bf16>(env, seed);
  testOptimizer<float>(env, seed++);
  testOptimizer<bf16>(env, seed++);
  testOptimizer<float, bf16>(env, seed++);

  CHECK_CUDA(cudaFreeHost(env.hostCounts));
  CHECK_CUDA(cudaFree(env.scratch));
  destroyBlas(env.blas);
  CHECK_CUDA(cudaStreamDestroy(env.stream));
  std::printf("%d checks, %d failed: %s\n", env.checks, env.failures,
              env.failures ? "FAIL" : "PASS");
  return env.failures ? 1 : 0;
}
