//===- RouterTest.cu - GPU test of the moert routing kernels -----*- CUDA -*-===//
//
// Runs every entry point of the router kernels (router, routerGrad,
// loadBalancingLoss(Grad), routerZLoss(Grad), expertCounts) on random
// logits (std::mt19937, fixed seeds) in fp32 and bf16, for several shapes
// and all four routing modes, and compares with a naive double-precision
// host oracle written here from the ops' semantics (docs/Dialects/Moe.md,
// those of the CPU reference executor, which this file does not include):
//
//   top-k (aux_loss, none)  p = softmax(x); experts = the k largest p, ties
//                           to the lower index; gates = p / sum of the chosen
//   sinkhorn                cost = exp(x); d0 = 1, d1 = 1; while the mean
//                           |d1_old - d1| > 1e-4: d0 = (1/T)/(cost·d1 + 1e-8),
//                           d1 = (1/E)/(costᵀ·d0 + 1e-8); experts = top-k of
//                           float(d1·cost·d0); gates = p (σ(x) when k = 1)
//   balanced                capacities T·k/E (+1 for the first T·k mod E);
//                           greedy over (token, expert) pairs by p descending
//                           (ties by token, then expert); tokens left short,
//                           in order, take their best expert with room or a
//                           full expert's slot from the first token that can
//                           move to its best expert with room; each token's
//                           list stably sorted by p; gates renormalised
//   router_grad             dp from the gates (renormalised, or plain p for
//                           sinkhorn, σ' for sinkhorn k = 1), then softmax'
//   load_balancing_loss     over all layers' rows (n): E · Σ_e f_e · P_e with
//                           f_e = top-k choices of e / n, P_e = mean p_e;
//                           grad: scale · E/n · p_e (f_e − Σ p·f)
//   router_z_loss           mean of logsumexp(x)²; grad scale · 2z · p / n
//   expert_counts           counts[l, e] = slots of layer l routed to e
//
// Outputs are filled with 0xFF bytes before each call (NaN for floats, -1
// for indices: anything left unwritten fails), the scratch too, and each
// call gets exactly the scratch routerScratchBytes gives for the arguments
// the CUDA emitter passes (router: layers = 1; losses: k = 1). For bf16 the
// oracle runs on the logits as rounded to bf16.
//
// Tolerances: relative L2 error (absolute where the oracle is all zero) of
// gates, gradients and losses: fp32 1e-5, bf16 1e-2. For routerGrad the
// denominator is at least 1e-3·‖dGates‖: with k = 1 and renormalised gates
// the gradient is exactly zero and the oracle holds only rounding noise. Expert indices: fp32
// must equal the oracle's; bf16 may differ only on near-ties: for top-k and
// sinkhorn, the oracle's probability (score) at each slot's expert must be
// within 1e-6 (relative) of that at the oracle's expert; for balanced, the
// assignment must still fill every expert to exactly its capacity and
// differ from the oracle's on at most 1% of the tokens. Gates are compared
// with the oracle's gates for the experts the kernel chose. Expert counts
// are exact.
//
//   nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a
//     -I runtime/include -I include runtime/tests/RouterTest.cu -o RouterTest
//     -lcublas -lcublasLt
//
// main() returns nonzero when anything fails.
//
//===----------------------------------------------------------------------===//

#include "moert/kernels/ExpertCounts.cuh"
#include "moert/kernels/Router.cuh"
#include "moert/kernels/RouterLosses.cuh"

#include "TestSupport.cuh"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace moert::kernels;
using moert::Routing;
using namespace moert::testing;

namespace {

using Indices = std::vector<int64_t>;

constexpr double kTolFp32 = 1e-5;
constexpr double kTolBf16 = 1e-2;
constexpr double kNearTie = 1e-6;
constexpr double kBalancedMismatchFraction = 0.01;
constexpr int64_t kScratchCapacity = 256ll << 20;

template <class T> double tolerance() {
  return sizeof(T) == 4 ? kTolFp32 : kTolBf16;
}

/// TestSupport's Env with this test's `name: what PASS|FAIL` line.
struct RouterEnv : moert::testing::Env {
  using moert::testing::Env::report;
  bool report(const std::string &name, bool pass, const std::string &what) {
    std::printf("%s: %s %s\n", name.c_str(), what.c_str(),
                pass ? "PASS" : "FAIL");
    return count(pass);
  }
};

//===----------------------------------------------------------------------===//
// The oracle (double precision, from the semantics)
//===----------------------------------------------------------------------===//

Doubles softmax(const double *x, int64_t E) {
  double m = x[0];
  for (int64_t e = 1; e < E; ++e)
    m = std::max(m, x[e]);
  Doubles p(E);
  double sum = 0.0;
  for (int64_t e = 0; e < E; ++e)
    sum += p[e] = std::exp(x[e] - m);
  for (double &v : p)
    v /= sum;
  return p;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Indices 0..n-1 by value descending, equal values by lower index.
std::vector<int64_t> descending(const double *v, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  return order;
}

Doubles probabilities(const Doubles &x, int64_t T, int64_t E) {
  Doubles p(T * E);
  for (int64_t t = 0; t < T; ++t) {
    Doubles row = softmax(&x[t * E], E);
    std::copy(row.begin(), row.end(), p.begin() + t * E);
  }
  return p;
}

/// The top-k experts of every row of `score` [T, E].
Indices topK(const Doubles &score, int64_t T, int64_t E, int64_t k) {
  Indices experts(T * k);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> order = descending(&score[t * E], E);
    for (int64_t j = 0; j < k; ++j)
      experts[t * k + j] = order[j];
  }
  return experts;
}

/// Sinkhorn scores float(d1[e] · cost[t,e] · d0[t]), as doubles.
Doubles sinkhornScores(const Doubles &x, int64_t T, int64_t E) {
  Doubles cost(T * E), d0(T, 1.0), d1(E, 1.0), previous(E, 1.0);
  for (int64_t i = 0; i < T * E; ++i)
    cost[i] = std::exp(x[i]);
  double change = 1e9;
  for (int iteration = 0; change > 1e-4 && iteration <= 10000; ++iteration) {
    for (int64_t t = 0; t < T; ++t) {
      double s = 0.0;
      for (int64_t e = 0; e < E; ++e)
        s += d1[e] * cost[t * E + e];
      d0[t] = (1.0 / T) / (s + 1e-8);
    }
    for (int64_t e = 0; e < E; ++e) {
      double s = 0.0;
      for (int64_t t = 0; t < T; ++t)
        s += d0[t] * cost[t * E + e];
      d1[e] = (1.0 / E) / (s + 1e-8);
    }
    change = 0.0;
    for (int64_t e = 0; e < E; ++e)
      change += std::fabs(previous[e] - d1[e]);
    change /= E;
    previous = d1;
  }
  Doubles scores(T * E);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      scores[t * E + e] =
          static_cast<float>(d1[e] * cost[t * E + e] * d0[t]);
  return scores;
}

std::vector<int64_t> capacities(int64_t T, int64_t E, int64_t k) {
  std::vector<int64_t> cap(E, T * k / E);
  for (int64_t e = 0; e < (T * k) % E; ++e)
    ++cap[e];
  return cap;
}

/// The balanced assignment (each token's experts in assignment order, then
/// stably sorted by p descending). Returns false if it finds none.
bool balancedExperts(const Doubles &p, int64_t T, int64_t E, int64_t k,
                     Indices &out) {
  std::vector<int64_t> cap = capacities(T, E, k);
  std::vector<std::vector<int64_t>> held(T);
  auto holds = [&](int64_t t, int64_t e) {
    return std::count(held[t].begin(), held[t].end(), e) > 0;
  };
  std::vector<int64_t> pairs = descending(p.data(), T * E);
  for (int64_t pair : pairs) {
    int64_t t = pair / E, e = pair % E;
    if (static_cast<int64_t>(held[t].size()) < k && cap[e] > 0) {
      held[t].push_back(e);
      --cap[e];
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    while (static_cast<int64_t>(held[t].size()) < k) {
      bool placed = false;
      for (int64_t e : descending(&p[t * E], E)) {
        if (holds(t, e))
          continue;
        if (cap[e] > 0) {
          --cap[e];
          placed = true;
        }
        for (int64_t u = 0; u < T && !placed; ++u) {
          if (u == t || !holds(u, e))
            continue;
          for (int64_t f : descending(&p[u * E], E)) {
            if (cap[f] <= 0 || holds(u, f))
              continue;
            *std::find(held[u].begin(), held[u].end(), e) = f;
            --cap[f];
            placed = true;
            break;
          }
        }
        if (placed) {
          held[t].push_back(e);
          break;
        }
      }
      if (!placed)
        return false;
    }
  }
  out.assign(T * k, 0);
  for (int64_t t = 0; t < T; ++t) {
    std::stable_sort(held[t].begin(), held[t].end(),
                     [&](int64_t a, int64_t b) {
                       return p[t * E + a] > p[t * E + b];
                     });
    for (int64_t j = 0; j < k; ++j)
      out[t * k + j] = held[t][j];
  }
  return true;
}

/// The gates of `experts` under `mode` (experts assumed in range).
Doubles gatesFor(Routing mode, const Doubles &x, const Doubles &p,
                 const Indices &experts, int64_t T, int64_t E, int64_t k) {
  Doubles gates(T * k);
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0.0;
    for (int64_t j = 0; j < k; ++j)
      sum += p[t * E + experts[t * k + j]];
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = experts[t * k + j];
      if (mode == Routing::Sinkhorn)
        gates[t * k + j] = k == 1 ? sigmoid(x[t * E + e]) : p[t * E + e];
      else
        gates[t * k + j] = p[t * E + e] / sum;
    }
  }
  return gates;
}

/// d logits from d gates, from the Jacobian of the gates.
Doubles routeGradient(Routing mode, const Doubles &x, const Indices &experts,
                      const Doubles &dGates, int64_t T, int64_t E,
                      int64_t k) {
  Doubles d(T * E, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t *c = &experts[t * k];
    const double *dg = &dGates[t * k];
    if (mode == Routing::Sinkhorn && k == 1) {
      double s = sigmoid(x[t * E + c[0]]);
      d[t * E + c[0]] = dg[0] * s * (1.0 - s);
      continue;
    }
    Doubles p = softmax(&x[t * E], E);
    Doubles dp(E, 0.0); // dL/dp
    if (mode == Routing::Sinkhorn) {
      for (int64_t j = 0; j < k; ++j)
        dp[c[j]] += dg[j];
    } else {
      // g_j = p_cj / s, s = Σ_i p_ci: ∂g_j/∂p_ci = [i = j]/s − p_cj/s².
      double s = 0.0;
      for (int64_t j = 0; j < k; ++j)
        s += p[c[j]];
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j)
          dp[c[i]] += dg[j] * ((i == j ? 1.0 / s : 0.0) - p[c[j]] / (s * s));
    }
    // ∂p_e/∂x_f = p_e([e = f] − p_f).
    for (int64_t f = 0; f < E; ++f) {
      double v = 0.0;
      for (int64_t e = 0; e < E; ++e)
        v += dp[e] * p[e] * ((e == f ? 1.0 : 0.0) - p[f]);
      d[t * E + f] = v;
    }
  }
  return d;
}

double loadBalancing(const std::vector<Doubles> &layers, int64_t T, int64_t E,
                     int64_t k, Doubles *fraction) {
  double n = static_cast<double>(layers.size() * T);
  Doubles f(E, 0.0), P(E, 0.0);
  for (const Doubles &x : layers) {
    Doubles p = probabilities(x, T, E);
    Indices chosen = topK(p, T, E, k);
    for (int64_t e : chosen)
      f[e] += 1.0;
    for (int64_t i = 0; i < T * E; ++i)
      P[i % E] += p[i];
  }
  double loss = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    f[e] /= n;
    P[e] /= n;
    loss += f[e] * P[e];
  }
  if (fraction)
    *fraction = f;
  return loss * E;
}

double logSumExp(const double *x, int64_t E) {
  double m = x[0];
  for (int64_t e = 1; e < E; ++e)
    m = std::max(m, x[e]);
  double s = 0.0;
  for (int64_t e = 0; e < E; ++e)
    s += std::exp(x[e] - m);
  return m + std::log(s);
}

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

/// Random logits rounded to T: the device copy and the oracle's doubles.
template <class T>
void randomLogits(uint32_t seed, int64_t count, double scale,
                  std::vector<T> &device, Doubles &oracle) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  device.resize(count);
  oracle.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    device[i] = fromFloat<T>(static_cast<float>(normal(rng) * scale));
    oracle[i] = static_cast<double>(toFloat(device[i]));
  }
}

std::string shapeName(int64_t T, int64_t E, int64_t k) {
  return "T=" + std::to_string(T) + " E=" + std::to_string(E) +
         " k=" + std::to_string(k);
}

bool inRange(const Indices &experts, int64_t E) {
  for (int64_t e : experts)
    if (e < 0 || e >= E)
      return false;
  return true;
}

/// Experts of balanced routing fill every expert to exactly its capacity,
/// with k distinct experts per token.
bool validBalanced(const Indices &experts, int64_t T, int64_t E, int64_t k) {
  if (!inRange(experts, E))
    return false;
  std::vector<int64_t> cap = capacities(T, E, k), got(E, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = experts[t * k + j];
      ++got[e];
      for (int64_t i = 0; i < j; ++i)
        if (experts[t * k + i] == e)
          return false;
    }
  return got == cap;
}

//===----------------------------------------------------------------------===//
// Tests
//===----------------------------------------------------------------------===//

/// router for one mode against the oracle.
template <class T>
void testRouter(RouterEnv &env, Routing mode, const std::vector<T> &logits,
                const Doubles &x, int64_t Tn, int64_t E, int64_t k) {
  std::string name = std::string(typeName<T>()) + " router " +
                     moert::routingName(mode) + " " + shapeName(Tn, E, k);
  Doubles p = probabilities(x, Tn, E);
  Doubles score; // what the experts are chosen by
  Indices want;
  if (mode == Routing::Sinkhorn) {
    score = sinkhornScores(x, Tn, E);
    want = topK(score, Tn, E, k);
  } else if (mode == Routing::Balanced) {
    score = p;
    if (!balancedExperts(p, Tn, E, k, want)) {
      env.report(name, false, "the oracle found no balanced assignment");
      return;
    }
  } else {
    score = p;
    want = topK(p, Tn, E, k);
  }

  DeviceBuffer<T> input(logits), gates(Tn * k);
  DeviceBuffer<int64_t> experts(Tn * k);
  gates.fillNaN();
  experts.fillNaN();
  Context ctx;
  if (!env.context(name, routerScratchBytes(Tn, E, k, 1), ctx))
    return;
  router<T>(ctx, input.get(), Tn, E, k, mode, gates.get(), experts.get());
  env.sync();
  Indices got = experts.read();

  // Experts.
  int64_t mismatchedTokens = 0;
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t j = 0; j < k; ++j)
      if (got[t * k + j] != want[t * k + j]) {
        ++mismatchedTokens;
        break;
      }
  bool valid = inRange(got, E);
  bool pass;
  std::string what;
  if (!valid) {
    pass = false;
    what = "experts out of range";
  } else if (mismatchedTokens == 0) {
    pass = mode != Routing::Balanced || validBalanced(got, Tn, E, k);
    what = "experts equal the oracle's";
  } else if (sizeof(T) == 4) {
    pass = false;
    what = "experts differ on " + std::to_string(mismatchedTokens) +
           " tokens (exact required)";
  } else if (mode == Routing::Balanced) {
    pass = validBalanced(got, Tn, E, k) &&
           mismatchedTokens <= kBalancedMismatchFraction * Tn;
    what = "experts differ on " + std::to_string(mismatchedTokens) +
           " tokens (valid assignment and <= 1% required)";
  } else {
    // Near-ties only: the score at each slot's expert matches the oracle's.
    double worst = 0.0;
    for (int64_t t = 0; t < Tn; ++t)
      for (int64_t j = 0; j < k; ++j) {
        double a = score[t * E + got[t * k + j]];
        double b = score[t * E + want[t * k + j]];
        worst = std::max(worst, std::fabs(a - b) /
                                    std::max(std::fabs(b), 1e-300));
      }
    pass = worst <= kNearTie;
    char buffer[160];
    std::snprintf(buffer, sizeof buffer,
                  "experts differ on %lld tokens, worst relative score gap "
                  "%.3e (near-tie tolerance %.0e)",
                  static_cast<long long>(mismatchedTokens), worst, kNearTie);
    what = buffer;
  }
  env.report(name + " experts", pass, what);

  // Gates, for the experts the kernel chose.
  if (valid)
    env.compare(name + " gates", toDoubles(gates.read()),
                gatesFor(mode, x, p, got, Tn, E, k), tolerance<T>());
}

template <class T>
void testRouterGrad(RouterEnv &env, Routing mode, const std::vector<T> &logits,
                    const Doubles &x, int64_t Tn, int64_t E, int64_t k,
                    uint32_t seed) {
  std::string name = std::string(typeName<T>()) + " routerGrad " +
                     moert::routingName(mode) + " " + shapeName(Tn, E, k);
  // Experts: the oracle's routing (any valid choice would do).
  Doubles p = probabilities(x, Tn, E);
  Indices chosen;
  if (mode == Routing::Sinkhorn)
    chosen = topK(sinkhornScores(x, Tn, E), Tn, E, k);
  else if (mode == Routing::Balanced) {
    if (!balancedExperts(p, Tn, E, k, chosen)) {
      env.report(name, false, "the oracle found no balanced assignment");
      return;
    }
  } else
    chosen = topK(p, Tn, E, k);
  std::vector<T> dGates;
  Doubles dg;
  randomLogits<T>(seed, Tn * k, 1.0, dGates, dg);

  DeviceBuffer<T> input(logits), dG(dGates), out(Tn * E);
  DeviceBuffer<int64_t> experts(chosen);
  out.fillNaN();
  Context ctx;
  if (!env.context(name, routerScratchBytes(Tn, E, k, 1), ctx))
    return;
  routerGrad<T>(ctx, input.get(), experts.get(), dG.get(), Tn, E, k, mode,
                out.get());
  env.sync();
  // With k = 1 and renormalised gates the gradient is exactly 0 (the gate
  // is 1): errors are then measured against 1e-3·‖dGates‖.
  double dgNorm = 0.0;
  for (double v : dg)
    dgNorm += v * v;
  env.compare(name, toDoubles(out.read()),
              routeGradient(mode, x, chosen, dg, Tn, E, k), tolerance<T>(),
              1e-3 * std::sqrt(dgNorm));
}

template <class T>
void testLosses(RouterEnv &env, int64_t layers, int64_t Tn, int64_t E, int64_t k,
                uint32_t seed) {
  std::string suffix = " " + shapeName(Tn, E, k) +
                       " layers=" + std::to_string(layers);
  std::string type = typeName<T>();
  std::vector<std::vector<T>> host(layers);
  std::vector<Doubles> x(layers);
  std::vector<std::unique_ptr<DeviceBuffer<T>>> device, grads;
  std::vector<const T *> pointers;
  std::vector<T *> gradPointers;
  for (int64_t l = 0; l < layers; ++l) {
    randomLogits<T>(seed + static_cast<uint32_t>(l), Tn * E, 1.5, host[l],
                    x[l]);
    device.push_back(std::make_unique<DeviceBuffer<T>>(host[l]));
    grads.push_back(std::make_unique<DeviceBuffer<T>>(Tn * E));
    pointers.push_back(device.back()->get());
    gradPointers.push_back(grads.back()->get());
  }
  const double n = static_cast<double>(layers * Tn);
  const int64_t lossScratch = routerScratchBytes(Tn, E, 1, layers);
  DeviceBuffer<float> loss(1);
  Context ctx;

  // Load-balancing loss.
  {
    Doubles fraction;
    double want = loadBalancing(x, Tn, E, k, &fraction);
    loss.fillNaN();
    if (env.context(type + " loadBalancingLoss" + suffix, lossScratch, ctx)) {
      loadBalancingLoss<T>(ctx, pointers.data(), layers, Tn, E, k, loss.get());
      env.sync();
      env.compare(type + " loadBalancingLoss" + suffix,
                  {static_cast<double>(loss.read()[0])}, {want},
                  tolerance<T>());
    }
    const double scale = 0.02;
    Doubles got, expect;
    for (auto &g : grads)
      g->fillNaN();
    if (env.context(type + " loadBalancingLossGrad" + suffix, lossScratch,
                    ctx)) {
      loadBalancingLossGrad<T>(ctx, pointers.data(), layers, Tn, E, k, scale,
                               gradPointers.data());
      env.sync();
      for (int64_t l = 0; l < layers; ++l) {
        Doubles g = toDoubles(grads[l]->read());
        got.insert(got.end(), g.begin(), g.end());
        Doubles p = probabilities(x[l], Tn, E);
        for (int64_t t = 0; t < Tn; ++t) {
          double inner = 0.0;
          for (int64_t e = 0; e < E; ++e)
            inner += p[t * E + e] * fraction[e];
          for (int64_t e = 0; e < E; ++e)
            expect.push_back(scale * E / n * p[t * E + e] *
                             (fraction[e] - inner));
        }
      }
      env.compare(type + " loadBalancingLossGrad" + suffix, got, expect,
                  tolerance<T>());
    }
  }

  // Router z-loss.
  {
    double want = 0.0;
    for (int64_t l = 0; l < layers; ++l)
      for (int64_t t = 0; t < Tn; ++t) {
        double z = logSumExp(&x[l][t * E], E);
        want += z * z;
      }
    want /= n;
    loss.fillNaN();
    if (env.context(type + " routerZLoss" + suffix, lossScratch, ctx)) {
      routerZLoss<T>(ctx, pointers.data(), layers, Tn, E, loss.get());
      env.sync();
      env.compare(type + " routerZLoss" + suffix,
                  {static_cast<double>(loss.read()[0])}, {want},
                  tolerance<T>());
    }
    const double scale = 1e-3;
    Doubles got, expect;
    for (auto &g : grads)
      g->fillNaN();
    if (env.context(type + " routerZLossGrad" + suffix, lossScratch, ctx)) {
      routerZLossGrad<T>(ctx, pointers.data(), layers, Tn, E, scale,
                         gradPointers.data());
      env.sync();
      for (int64_t l = 0; l < layers; ++l) {
        Doubles g = toDoubles(grads[l]->read());
        got.insert(got.end(), g.begin(), g.end());
        for (int64_t t = 0; t < Tn; ++t) {
          double z = logSumExp(&x[l][t * E], E);
          Doubles p = softmax(&x[l][t * E], E);
          for (int64_t e = 0; e < E; ++e)
            expect.push_back(scale * 2.0 * z * p[e] / n);
        }
      }
      env.compare(type + " routerZLossGrad" + suffix, got, expect,
                  tolerance<T>());
    }
  }

  // Expert counts of each layer's top-k routing.
  {
    std::vector<std::unique_ptr<DeviceBuffer<int64_t>>> chosen;
    std::vector<const int64_t *> chosenPointers;
    Indices want(layers * E, 0);
    for (int64_t l = 0; l < layers; ++l) {
      Indices c = topK(probabilities(x[l], Tn, E), Tn, E, k);
      for (int64_t e : c)
        ++want[l * E + e];
      chosen.push_back(std::make_unique<DeviceBuffer<int64_t>>(c));
      chosenPointers.push_back(chosen.back()->get());
    }
    DeviceBuffer<int64_t> counts(layers * E);
    counts.fillNaN();
    std::string name = "expertCounts" + suffix;
    if (env.context(name, 0, ctx)) {
      expertCounts(ctx, chosenPointers.data(), layers, Tn, k, E, counts.get());
      env.sync();
      Indices got = counts.read();
      int64_t wrong = 0;
      for (size_t i = 0; i < got.size(); ++i)
        wrong += got[i] != want[i];
      env.report(name, wrong == 0,
                 std::to_string(wrong) + " of " + std::to_string(got.size()) +
                     " counts differ (exact required)");
    }
  }
}

struct Shape {
  int64_t tokens, E, k;
};

template <class T> void runAll(RouterEnv &env) {
  const Shape shapes[] = {
      {128, 4, 1},  {128, 4, 2},  {128, 8, 2},   {1000, 8, 1},
      {1000, 8, 2}, {1000, 4, 2}, {333, 40, 3},  {96, 64, 5},
      {50, 3, 3},   {8192, 8, 2}, {40000, 8, 2},
  };
  const Routing modes[] = {Routing::AuxLoss, Routing::Sinkhorn,
                           Routing::Balanced, Routing::None};
  uint32_t seed = sizeof(T) == 4 ? 1000 : 2000;
  for (const Shape &s : shapes) {
    std::vector<T> logits;
    Doubles x;
    randomLogits<T>(seed++, s.tokens * s.E, 1.5, logits, x);
    for (Routing mode : modes) {
      testRouter<T>(env, mode, logits, x, s.tokens, s.E, s.k);
      testRouterGrad<T>(env, mode, logits, x, s.tokens, s.E, s.k, seed++);
    }
  }
  testLosses<T>(env, 3, 128, 4, 1, seed += 10);
  testLosses<T>(env, 3, 1000, 8, 2, seed += 10);
  testLosses<T>(env, 2, 1000, 40, 3, seed += 10);
  testLosses<T>(env, 4, 8192, 8, 2, seed += 10);
  testLosses<T>(env, 70, 37, 8, 2, seed += 10); // more than one launch
}

/// Times each mode at the benchmark's shape (informative only).
void timeRouters(RouterEnv &env) {
  const int64_t Tn = 8192, E = 8, k = 2;
  std::vector<bf16> logits;
  Doubles x;
  randomLogits<bf16>(7, Tn * E, 1.5, logits, x);
  DeviceBuffer<bf16> in(logits), gates(Tn * k), dLogits(Tn * E);
  DeviceBuffer<int64_t> experts(Tn * k);
  Context ctx;
  if (!env.context("timing", routerScratchBytes(Tn, E, k, 1), ctx))
    return;
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  const Routing modes[] = {Routing::AuxLoss, Routing::Sinkhorn,
                           Routing::Balanced, Routing::None};
  for (Routing mode : modes) {
    router<bf16>(ctx, in.get(), Tn, E, k, mode, gates.get(), experts.get());
    CHECK_CUDA(cudaEventRecord(start, env.stream));
    const int reps = 20;
    for (int i = 0; i < reps; ++i)
      router<bf16>(ctx, in.get(), Tn, E, k, mode, gates.get(), experts.get());
    CHECK_CUDA(cudaEventRecord(stop, env.stream));
    env.sync();
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    std::printf("timing: bf16 router %s %s: %.1f us per call\n",
                moert::routingName(mode), shapeName(Tn, E, k).c_str(),
                1000.0 * ms / reps);
  }
  CHECK_CUDA(cudaEventRecord(start, env.stream));
  for (int i = 0; i < 20; ++i)
    routerGrad<bf16>(ctx, in.get(), experts.get(), gates.get(), Tn, E, k,
                     Routing::AuxLoss, dLogits.get());
  CHECK_CUDA(cudaEventRecord(stop, env.stream));
  env.sync();
  float ms = 0.0f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  std::printf("timing: bf16 routerGrad aux_loss %s: %.1f us per call\n",
              shapeName(Tn, E, k).c_str(), 1000.0 * ms / 20);
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
}

} // namespace

int main() {
  RouterEnv env;
  CHECK_CUDA(cudaStreamCreateWithFlags(&env.stream, cudaStreamNonBlocking));
  env.scratchCapacity = kScratchCapacity;
  CHECK_CUDA(cudaMalloc(&env.scratch, env.scratchCapacity));
  runAll<float>(env);
  runAll<bf16>(env);
  timeRouters(env);
  CHECK_CUDA(cudaFree(env.scratch));
  CHECK_CUDA(cudaStreamDestroy(env.stream));
  std::printf("%d of %d checks failed\n", env.failures, env.checks);
  return env.failures == 0 ? 0 : 1;
}
