//===- Kernels.cpp - The reference executor's kernels ---------------------===//
//
// Plain loop nests for the `moe` ops (see moec/Reference/Kernels.h). Inputs
// and outputs are fp32; sums are accumulated in fp64 so that the reference is
// at least as accurate as anything it checks.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/Kernels.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

using namespace moec;
using namespace moec::reference;

namespace {

/// Product of the dimensions before the last one.
int64_t leadingCount(const HostTensor &t) {
  return t.numElements() / std::max<int64_t>(t.shape.back(), 1);
}

bool expectRank(const HostTensor &t, size_t rank, const char *what,
                std::string &error) {
  if (t.shape.size() == rank)
    return true;
  error = fmt::format("{} must have rank {} but has shape {}", what, rank,
                      t.shapeString());
  return false;
}

bool expectNonScalar(const HostTensor &t, const char *what,
                     std::string &error) {
  if (!t.shape.empty())
    return true;
  error = fmt::format("{} must have rank at least 1", what);
  return false;
}

bool expectFloat(const HostTensor &t, const char *what, std::string &error) {
  if (t.isFloat())
    return true;
  error = fmt::format("{} must hold floating-point values", what);
  return false;
}

bool expectInt(const HostTensor &t, const char *what, std::string &error) {
  if (!t.isFloat())
    return true;
  error = fmt::format("{} must hold integer values", what);
  return false;
}

/// Row i of the attention probabilities of batch b, query head h: the
/// softmax over the keys of scale·q·k, masked keys 0 (fp64). Returns the
/// row's log-sum-exp of the visible scores (-inf when none is visible).
double attentionProbabilities(const HostTensor &query, const HostTensor &key,
                              int64_t b, int64_t h, int64_t i, bool causal,
                              double scale,
                              std::optional<int64_t> slidingWindow,
                              std::vector<double> &p) {
  int64_t seqQ = query.shape[1], qHeads = query.shape[2], dim = query.shape[3];
  int64_t seqK = key.shape[1], kvHeads = key.shape[2];
  int64_t kvh = h / (qHeads / kvHeads);
  const float *q = &query.f32[((b * seqQ + i) * qHeads + h) * dim];
  p.assign(seqK, 0.0);
  double maxScore = -INFINITY;
  for (int64_t j = 0; j < seqK; ++j) {
    bool visible =
        !causal || (j <= i && (!slidingWindow || i - j < *slidingWindow));
    if (!visible) {
      p[j] = -INFINITY;
      continue;
    }
    const float *k = &key.f32[((b * seqK + j) * kvHeads + kvh) * dim];
    double dot = 0.0;
    for (int64_t d = 0; d < dim; ++d)
      dot += static_cast<double>(q[d]) * k[d];
    p[j] = dot * scale;
    maxScore = std::max(maxScore, p[j]);
  }
  double total = 0.0;
  for (double &x : p)
    total += (x = std::isinf(x) ? 0.0 : std::exp(x - maxScore));
  for (double &x : p)
    x /= total;
  return maxScore + std::log(total);
}

/// An fp32 tensor of `shape` from fp64 accumulators.
HostTensor fromAccumulators(const std::vector<double> &values,
                            std::vector<int64_t> shape) {
  HostTensor t = HostTensor::floats(std::move(shape));
  for (size_t i = 0; i < values.size(); ++i)
    t.f32[i] = static_cast<float>(values[i]);
  return t;
}

} // namespace

bool reference::embedding(const HostTensor &table, const HostTensor &indices,
                          HostTensor &out, std::string &error) {
  if (!expectRank(table, 2, "table", error) ||
      !expectFloat(table, "table", error) ||
      !expectInt(indices, "indices", error))
    return false;
  int64_t vocab = table.shape[0], hidden = table.shape[1];
  std::vector<int64_t> shape = indices.shape;
  shape.push_back(hidden);
  out = HostTensor::floats(shape);
  for (int64_t t = 0; t < indices.numElements(); ++t) {
    int64_t id = indices.i64[t];
    if (id < 0 || id >= vocab) {
      error = fmt::format("index {} at position {} is outside the table's "
                          "{} rows",
                          id, t, vocab);
      return false;
    }
    std::copy_n(&table.f32[id * hidden], hidden, &out.f32[t * hidden]);
  }
  return true;
}

bool reference::rmsNorm(const HostTensor &input, const HostTensor &weight,
                        double epsilon, HostTensor &out, std::string &error) {
  if (!expectNonScalar(input, "input", error) ||
      !expectRank(weight, 1, "weight", error))
    return false;
  int64_t hidden = input.shape.back();
  if (weight.shape[0] != hidden) {
    error = fmt::format("weight has {} elements but the input's last "
                        "dimension is {}",
                        weight.shape[0], hidden);
    return false;
  }
  out = HostTensor::floats(input.shape);
  for (int64_t row = 0; row < leadingCount(input); ++row) {
    const float *x = &input.f32[row * hidden];
    double sumSquares = 0.0;
    for (int64_t h = 0; h < hidden; ++h)
      sumSquares += static_cast<double>(x[h]) * x[h];
    double inverseRms = 1.0 / std::sqrt(sumSquares / hidden + epsilon);
    for (int64_t h = 0; h < hidden; ++h)
      out.f32[row * hidden + h] =
          static_cast<float>(x[h] * inverseRms * weight.f32[h]);
  }
  return true;
}

bool reference::rotary(const HostTensor &input, const HostTensor *positions,
                       double theta, HostTensor &out, std::string &error) {
  if (!expectRank(input, 4, "input", error))
    return false;
  int64_t batch = input.shape[0], seq = input.shape[1], heads = input.shape[2],
          dim = input.shape[3], half = dim / 2;
  if (dim % 2 != 0) {
    error = fmt::format("head_dim {} must be even", dim);
    return false;
  }
  if (positions && positions->shape != std::vector<int64_t>{batch, seq}) {
    error = fmt::format("positions have shape {} but must be [{}, {}]",
                        positions->shapeString(), batch, seq);
    return false;
  }
  // Frequencies and angles in fp32, as Hugging Face computes them, so that
  // the reference rounds the angle the same way; cos and sin in fp64.
  std::vector<float> inverseFrequency(half);
  for (int64_t i = 0; i < half; ++i)
    inverseFrequency[i] =
        1.0f / std::pow(static_cast<float>(theta),
                        static_cast<float>(2 * i) / static_cast<float>(dim));
  out = HostTensor::floats(input.shape);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      float position =
          static_cast<float>(positions ? positions->i64[b * seq + s] : s);
      for (int64_t n = 0; n < heads; ++n) {
        int64_t base = ((b * seq + s) * heads + n) * dim;
        for (int64_t i = 0; i < half; ++i) {
          double angle = static_cast<double>(position * inverseFrequency[i]);
          double c = std::cos(angle), sn = std::sin(angle);
          double x1 = input.f32[base + i], x2 = input.f32[base + i + half];
          out.f32[base + i] = static_cast<float>(x1 * c - x2 * sn);
          out.f32[base + i + half] = static_cast<float>(x2 * c + x1 * sn);
        }
      }
    }
  return true;
}

bool reference::attention(const HostTensor &query, const HostTensor &key,
                          const HostTensor &value, bool causal, double scale,
                          std::optional<int64_t> slidingWindow,
                          HostTensor &out, std::string &error,
                          HostTensor *stats) {
  if (!expectRank(query, 4, "query", error) ||
      !expectRank(key, 4, "key", error) ||
      !expectRank(value, 4, "value", error))
    return false;
  int64_t batch = query.shape[0], seqQ = query.shape[1],
          qHeads = query.shape[2], dim = query.shape[3];
  int64_t seqK = key.shape[1], kvHeads = key.shape[2];
  if (key.shape[0] != batch || key.shape[3] != dim || value.shape != key.shape ||
      kvHeads == 0 || qHeads % kvHeads != 0 || (causal && seqK != seqQ)) {
    error = fmt::format("query {}, key {} and value {} do not form a "
                        "grouped-query attention",
                        query.shapeString(), key.shapeString(),
                        value.shapeString());
    return false;
  }
  int64_t group = qHeads / kvHeads;
  out = HostTensor::floats(query.shape);
  if (stats)
    *stats = HostTensor::floats({batch, qHeads, seqQ});
  std::vector<double> p;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < qHeads; ++h) {
      int64_t kvh = h / group;
      for (int64_t i = 0; i < seqQ; ++i) {
        double lse = attentionProbabilities(query, key, b, h, i, causal,
                                            scale, slidingWindow, p);
        if (stats)
          stats->f32[(b * qHeads + h) * seqQ + i] = static_cast<float>(lse);
        float *o = &out.f32[((b * seqQ + i) * qHeads + h) * dim];
        for (int64_t d = 0; d < dim; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < seqK; ++j)
            acc += p[j] * value.f32[((b * seqK + j) * kvHeads + kvh) * dim + d];
          o[d] = static_cast<float>(acc);
        }
      }
    }
  return true;
}

bool reference::linear(const HostTensor &input, const HostTensor &weight,
                       const HostTensor *bias, HostTensor &out,
                       std::string &error) {
  if (!expectNonScalar(input, "input", error) ||
      !expectRank(weight, 2, "weight", error))
    return false;
  int64_t in = input.shape.back(), outFeatures = weight.shape[0];
  if (weight.shape[1] != in || (bias && bias->shape !=
                                            std::vector<int64_t>{outFeatures})) {
    error = fmt::format("input {} does not match weight {}{}",
                        input.shapeString(), weight.shapeString(),
                        bias ? " and bias " + bias->shapeString() : "");
    return false;
  }
  std::vector<int64_t> shape = input.shape;
  shape.back() = outFeatures;
  out = HostTensor::floats(shape);
  for (int64_t row = 0; row < leadingCount(input); ++row)
    for (int64_t o = 0; o < outFeatures; ++o) {
      double acc = bias ? bias->f32[o] : 0.0;
      for (int64_t i = 0; i < in; ++i)
        acc += static_cast<double>(input.f32[row * in + i]) *
               weight.f32[o * in + i];
      out.f32[row * outFeatures + o] = static_cast<float>(acc);
    }
  return true;
}

bool reference::routeTopK(const HostTensor &logits, int64_t k,
                          bool renormalize, HostTensor &gates,
                          HostTensor &experts, std::string &error) {
  if (!expectNonScalar(logits, "logits", error) ||
      !expectFloat(logits, "logits", error))
    return false;
  int64_t numExperts = logits.shape.back();
  if (k < 1 || k > numExperts) {
    error = fmt::format("k {} must be between 1 and the number of experts {}",
                        k, numExperts);
    return false;
  }
  std::vector<int64_t> shape = logits.shape;
  shape.back() = k;
  gates = HostTensor::floats(shape);
  experts = HostTensor::ints(shape);
  std::vector<double> probabilities(numExperts);
  std::vector<int64_t> order(numExperts);
  for (int64_t t = 0; t < leadingCount(logits); ++t) {
    const float *row = &logits.f32[t * numExperts];
    double maxLogit = *std::max_element(row, row + numExperts);
    double total = 0.0;
    for (int64_t e = 0; e < numExperts; ++e)
      total += probabilities[e] = std::exp(row[e] - maxLogit);
    for (double &p : probabilities)
      p /= total;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return probabilities[a] > probabilities[b];
    });
    double chosen = 0.0;
    for (int64_t j = 0; j < k; ++j)
      chosen += probabilities[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      experts.i64[t * k + j] = order[j];
      gates.f32[t * k + j] = static_cast<float>(
          renormalize ? probabilities[order[j]] / chosen
                      : probabilities[order[j]]);
    }
  }
  return true;
}

bool reference::experts(const HostTensor &input, const HostTensor &gates,
                        const HostTensor &expertIndices,
                        const HostTensor &gateUp, const HostTensor &down,
                        bool interleaved, HostTensor &out,
                        std::string &error, HostTensor *saved) {
  if (!expectNonScalar(input, "input", error) ||
      !expectRank(gateUp, 3, "gate_up", error) ||
      !expectRank(down, 3, "down", error) ||
      !expectInt(expertIndices, "experts", error))
    return false;
  int64_t hidden = input.shape.back(), tokens = leadingCount(input);
  int64_t numExperts = gateUp.shape[0], inter = gateUp.shape[1] / 2;
  int64_t k = gates.shape.empty() ? 0 : gates.shape.back();
  if (gateUp.shape[2] != hidden || gateUp.shape[1] != 2 * inter ||
      down.shape != std::vector<int64_t>{numExperts, hidden, inter} ||
      gates.shape != expertIndices.shape ||
      gates.numElements() != tokens * k) {
    error = fmt::format("input {}, gates {}, experts {}, gate_up {} and down "
                        "{} do not fit together",
                        input.shapeString(), gates.shapeString(),
                        expertIndices.shapeString(), gateUp.shapeString(),
                        down.shapeString());
    return false;
  }
  for (int64_t pair = 0; pair < tokens * k; ++pair) {
    int64_t e = expertIndices.i64[pair];
    if (e < 0 || e >= numExperts) {
      error = fmt::format("token {} chooses expert {} of only {}", pair / k,
                          e, numExperts);
      return false;
    }
  }
  // The saved row of each pair: a stable counting sort by expert.
  std::vector<int64_t> savedRow(tokens * k);
  if (saved) {
    std::vector<int64_t> next(numExperts + 1, 0);
    for (int64_t pair = 0; pair < tokens * k; ++pair)
      ++next[expertIndices.i64[pair] + 1];
    for (int64_t e = 0; e < numExperts; ++e)
      next[e + 1] += next[e];
    for (int64_t pair = 0; pair < tokens * k; ++pair)
      savedRow[pair] = next[expertIndices.i64[pair]]++;
    *saved = HostTensor::floats({tokens * k, 2 * inter});
  }
  out = HostTensor::floats(input.shape);
  std::vector<double> activation(inter);
  std::vector<double> result(hidden);
  for (int64_t t = 0; t < tokens; ++t) {
    const float *x = &input.f32[t * hidden];
    std::fill(result.begin(), result.end(), 0.0);
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = expertIndices.i64[t * k + j];
      const float *w1 = &gateUp.f32[e * 2 * inter * hidden];
      for (int64_t i = 0; i < inter; ++i) {
        int64_t gateRow = interleaved ? 2 * i : i;
        int64_t upRow = interleaved ? 2 * i + 1 : inter + i;
        double g = 0.0, u = 0.0;
        for (int64_t h = 0; h < hidden; ++h) {
          g += static_cast<double>(w1[gateRow * hidden + h]) * x[h];
          u += static_cast<double>(w1[upRow * hidden + h]) * x[h];
        }
        if (saved) {
          float *row = &saved->f32[savedRow[t * k + j] * 2 * inter];
          row[gateRow] = static_cast<float>(g);
          row[upRow] = static_cast<float>(u);
        }
        activation[i] = g / (1.0 + std::exp(-g)) * u;
      }
      const float *w2 = &down.f32[e * hidden * inter];
      double gate = gates.f32[t * k + j];
      for (int64_t h = 0; h < hidden; ++h) {
        double acc = 0.0;
        for (int64_t i = 0; i < inter; ++i)
          acc += static_cast<double>(w2[h * inter + i]) * activation[i];
        result[h] += gate * acc;
      }
    }
    for (int64_t h = 0; h < hidden; ++h)
      out.f32[t * hidden + h] = static_cast<float>(result[h]);
  }
  return true;
}

bool reference::binary(BinaryKind kind, const HostTensor &lhs,
                       const HostTensor &rhs, HostTensor &out,
                       std::string &error) {
  if (lhs.shape != rhs.shape || !lhs.isFloat() || !rhs.isFloat()) {
    error = fmt::format("operands {} and {} must be floating-point tensors of "
                        "one shape",
                        lhs.shapeString(), rhs.shapeString());
    return false;
  }
  out = HostTensor::floats(lhs.shape);
  for (int64_t i = 0; i < lhs.numElements(); ++i) {
    float a = lhs.f32[i], b = rhs.f32[i];
    switch (kind) {
    case BinaryKind::Add: out.f32[i] = a + b; break;
    case BinaryKind::Sub: out.f32[i] = a - b; break;
    case BinaryKind::Mul: out.f32[i] = a * b; break;
    case BinaryKind::Div: out.f32[i] = a / b; break;
    }
  }
  return true;
}

//===----------------------------------------------------------------------===//
// Routing for training
//===----------------------------------------------------------------------===//

namespace {

/// Softmax of one row, in fp64.
void softmaxRow(const float *row, int64_t n, std::vector<double> &out) {
  out.resize(n);
  double m = *std::max_element(row, row + n), total = 0.0;
  for (int64_t e = 0; e < n; ++e)
    total += out[e] = std::exp(row[e] - m);
  for (double &p : out)
    p /= total;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Indices of the k largest values, ties to the lower index.
std::vector<int64_t> topK(const std::vector<double> &values, int64_t k) {
  std::vector<int64_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return values[a] > values[b];
  });
  order.resize(k);
  return order;
}

} // namespace

bool reference::sinkhorn(const HostTensor &logits, double tolerance,
                         HostTensor &out, std::string &error) {
  if (!expectRank(logits, 2, "logits", error))
    return false;
  int64_t tokens = logits.shape[0], experts = logits.shape[1];
  // Megatron-Core: cost = exp(logits); alternate row and column scalings.
  std::vector<double> cost(tokens * experts);
  for (int64_t i = 0; i < tokens * experts; ++i)
    cost[i] = std::exp(static_cast<double>(logits.f32[i]));
  std::vector<double> d0(tokens, 1.0), d1(experts, 1.0), d1Old = d1;
  const double eps = 1e-8;
  double change = 1e9;
  for (int iteration = 0; change > tolerance; ++iteration) {
    if (iteration > 10000) {
      error = "Sinkhorn normalisation did not converge in 10000 iterations";
      return false;
    }
    for (int64_t t = 0; t < tokens; ++t) {
      double sum = 0.0;
      for (int64_t e = 0; e < experts; ++e)
        sum += d1[e] * cost[t * experts + e];
      d0[t] = (1.0 / tokens) / (sum + eps);
    }
    for (int64_t e = 0; e < experts; ++e) {
      double sum = 0.0;
      for (int64_t t = 0; t < tokens; ++t)
        sum += d0[t] * cost[t * experts + e];
      d1[e] = (1.0 / experts) / (sum + eps);
    }
    change = 0.0;
    for (int64_t e = 0; e < experts; ++e)
      change += std::abs(d1Old[e] - d1[e]);
    change /= experts;
    d1Old = d1;
  }
  out = HostTensor::floats(logits.shape);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t e = 0; e < experts; ++e)
      out.f32[t * experts + e] =
          static_cast<float>(d1[e] * cost[t * experts + e] * d0[t]);
  return true;
}

bool reference::route(const HostTensor &logits, int64_t k, Routing mode,
                      HostTensor &gates, HostTensor &experts,
                      std::string &error, bool training) {
  if (mode == Routing::AuxLoss || mode == Routing::None ||
      (!training && mode == Routing::Balanced))
    return routeTopK(logits, k, /*renormalize=*/true, gates, experts, error);
  if (!training && mode == Routing::Sinkhorn) {
    // Megatron-Core at evaluation: top-k of the logits, gates the softmax
    // (sigmoid for k = 1) at those experts.
    if (!routeTopK(logits, k, /*renormalize=*/false, gates, experts, error))
      return false;
    if (k == 1)
      for (int64_t t = 0; t < experts.numElements(); ++t)
        gates.f32[t] = static_cast<float>(
            sigmoid(logits.f32[t * logits.shape.back() + experts.i64[t]]));
    return true;
  }
  if (!expectNonScalar(logits, "logits", error) ||
      !expectFloat(logits, "logits", error))
    return false;
  int64_t numExperts = logits.shape.back(), tokens = leadingCount(logits);
  if (k < 1 || k > numExperts) {
    error = fmt::format("k {} must be between 1 and the number of experts {}",
                        k, numExperts);
    return false;
  }
  std::vector<int64_t> shape = logits.shape;
  shape.back() = k;
  gates = HostTensor::floats(shape);
  experts = HostTensor::ints(shape);
  std::vector<double> p;

  if (mode == Routing::Sinkhorn) {
    HostTensor flat = logits, normalised;
    flat.shape = {tokens, numExperts};
    if (!sinkhorn(flat, 1e-4, normalised, error))
      return false;
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<double> scores(normalised.f32.begin() + t * numExperts,
                                 normalised.f32.begin() + (t + 1) * numExperts);
      std::vector<int64_t> chosen = topK(scores, k);
      softmaxRow(&logits.f32[t * numExperts], numExperts, p);
      for (int64_t j = 0; j < k; ++j) {
        int64_t e = chosen[j];
        experts.i64[t * k + j] = e;
        gates.f32[t * k + j] = static_cast<float>(
            k == 1 ? sigmoid(logits.f32[t * numExperts + e]) : p[e]);
      }
    }
    return true;
  }

  // Balanced: capacities T·k/E (the first T·k mod E experts one more),
  // filled greedily by probability. A token still short lacks only full
  // experts (capacities only shrink), and holds an expert f with room. Some
  // token u then holds a full expert e it lacks but not f (else
  // cap_e <= |holders(f)| - 1 <= cap_f - 2): u moves from e to f and the
  // short token takes e, so every expert gets exactly its capacity.
  std::vector<double> probs(tokens * numExperts);
  for (int64_t t = 0; t < tokens; ++t) {
    softmaxRow(&logits.f32[t * numExperts], numExperts, p);
    std::copy(p.begin(), p.end(), probs.begin() + t * numExperts);
  }
  int64_t slots = tokens * k;
  std::vector<int64_t> capacity(numExperts, slots / numExperts);
  for (int64_t e = 0; e < slots % numExperts; ++e)
    ++capacity[e];
  std::vector<int64_t> pairs(tokens * numExperts);
  std::iota(pairs.begin(), pairs.end(), 0);
  std::stable_sort(pairs.begin(), pairs.end(), [&](int64_t a, int64_t b) {
    return probs[a] > probs[b]; // ties keep (token, expert) order
  });
  std::vector<std::vector<int64_t>> assigned(tokens);
  auto has = [&](int64_t t, int64_t e) {
    return std::find(assigned[t].begin(), assigned[t].end(), e) !=
           assigned[t].end();
  };
  for (int64_t pair : pairs) {
    int64_t t = pair / numExperts, e = pair % numExperts;
    if (static_cast<int64_t>(assigned[t].size()) < k && capacity[e] > 0) {
      assigned[t].push_back(e);
      --capacity[e];
    }
  }
  auto byProbability = [&](int64_t t) {
    return topK(std::vector<double>(probs.begin() + t * numExperts,
                                    probs.begin() + (t + 1) * numExperts),
                numExperts);
  };
  for (int64_t t = 0; t < tokens; ++t) {
    while (static_cast<int64_t>(assigned[t].size()) < k) {
      bool placed = false;
      for (int64_t e : byProbability(t)) {
        if (placed || has(t, e))
          continue;
        if (capacity[e] > 0) {
          --capacity[e];
          placed = true;
        }
        for (int64_t u = 0; u < tokens && !placed; ++u) {
          if (u == t || !has(u, e))
            continue;
          for (int64_t f : byProbability(u))
            if (capacity[f] > 0 && !has(u, f)) {
              *std::find(assigned[u].begin(), assigned[u].end(), e) = f;
              --capacity[f];
              placed = true;
              break;
            }
        }
        if (placed)
          assigned[t].push_back(e);
      }
      if (!placed) {
        error = "balanced routing found no assignment";
        return false;
      }
    }
  }
  for (int64_t t = 0; t < tokens; ++t) {
    // Gates: the chosen probabilities renormalised, in descending order.
    std::stable_sort(assigned[t].begin(), assigned[t].end(),
                     [&](int64_t a, int64_t b) {
                       return probs[t * numExperts + a] >
                              probs[t * numExperts + b];
                     });
    double sum = 0.0;
    for (int64_t e : assigned[t])
      sum += probs[t * numExperts + e];
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = assigned[t][j];
      experts.i64[t * k + j] = e;
      gates.f32[t * k + j] = static_cast<float>(probs[t * numExperts + e] / sum);
    }
  }
  return true;
}

bool reference::routeGrad(const HostTensor &logits, const HostTensor &experts,
                          const HostTensor &dGates, Routing mode,
                          HostTensor &dLogits, std::string &error) {
  if (!expectNonScalar(logits, "logits", error) ||
      !expectInt(experts, "experts", error))
    return false;
  int64_t numExperts = logits.shape.back(), tokens = leadingCount(logits);
  int64_t k = experts.shape.empty() ? 0 : experts.shape.back();
  if (dGates.shape != experts.shape || experts.numElements() != tokens * k) {
    error = fmt::format("logits {}, experts {} and gate gradients {} do not "
                        "fit together",
                        logits.shapeString(), experts.shapeString(),
                        dGates.shapeString());
    return false;
  }
  dLogits = HostTensor::floats(logits.shape);
  std::vector<double> p, dp(numExperts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float *row = &logits.f32[t * numExperts];
    softmaxRow(row, numExperts, p);
    std::fill(dp.begin(), dp.end(), 0.0);
    const int64_t *chosen = &experts.i64[t * k];
    const float *dg = &dGates.f32[t * k];
    if (mode == Routing::Sinkhorn && k == 1) {
      double s = sigmoid(row[chosen[0]]);
      dLogits.f32[t * numExperts + chosen[0]] =
          static_cast<float>(dg[0] * s * (1.0 - s));
      continue;
    }
    if (mode == Routing::Sinkhorn) {
      for (int64_t j = 0; j < k; ++j)
        dp[chosen[j]] += dg[j];
    } else { // renormalised gates: g_j = p_cj / s
      double s = 0.0, dot = 0.0;
      for (int64_t j = 0; j < k; ++j)
        s += p[chosen[j]];
      for (int64_t j = 0; j < k; ++j)
        dot += dg[j] * p[chosen[j]] / s;
      for (int64_t j = 0; j < k; ++j)
        dp[chosen[j]] += (dg[j] - dot) / s;
    }
    double inner = 0.0;
    for (int64_t e = 0; e < numExperts; ++e)
      inner += p[e] * dp[e];
    for (int64_t e = 0; e < numExperts; ++e)
      dLogits.f32[t * numExperts + e] = static_cast<float>(p[e] * (dp[e] - inner));
  }
  return true;
}

bool reference::expertCounts(const HostTensor &experts, int64_t numExperts,
                             HostTensor &counts, std::string &error) {
  if (!expectInt(experts, "experts", error))
    return false;
  counts = HostTensor::ints({numExperts});
  for (int64_t e : experts.i64) {
    if (e < 0 || e >= numExperts) {
      error = fmt::format("expert {} is outside [0, {})", e, numExperts);
      return false;
    }
    ++counts.i64[e];
  }
  return true;
}

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

namespace {

/// Visits each (sequence position, target) pair that counts in the loss.
template <typename Fn>
bool forEachTarget(const HostTensor &input, const HostTensor &labels,
                   int64_t ignoreIndex, std::string &error, Fn fn) {
  if (input.shape.size() != 3 || labels.shape.size() != 2 ||
      labels.shape[0] != input.shape[0] || labels.shape[1] != input.shape[1]) {
    error = fmt::format("hidden states {} and labels {} must be [B, S, H] "
                        "and [B, S]",
                        input.shapeString(), labels.shapeString());
    return false;
  }
  int64_t batch = input.shape[0], seq = input.shape[1];
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < seq; ++t) {
      int64_t target = labels.i64[b * seq + t + 1];
      if (target != ignoreIndex)
        fn(b * seq + t, target);
    }
  return true;
}

} // namespace

namespace {

/// Softmax over the vocabulary of one position's logits `h · weightᵀ`, in
/// fp64, into `probabilities`.
void vocabularySoftmax(const float *h, const HostTensor &weight,
                         std::vector<double> &probabilities) {
  int64_t vocab = weight.shape[0], hidden = weight.shape[1];
  probabilities.resize(vocab);
  double m = -INFINITY;
  for (int64_t v = 0; v < vocab; ++v) {
    double acc = 0.0;
    for (int64_t i = 0; i < hidden; ++i)
      acc += static_cast<double>(h[i]) * weight.f32[v * hidden + i];
    probabilities[v] = acc;
    m = std::max(m, acc);
  }
  double sum = 0.0;
  for (double &p : probabilities)
    sum += (p = std::exp(p - m));
  for (double &p : probabilities)
    p /= sum;
}

} // namespace

bool reference::targetCount(const HostTensor &labels, int64_t ignoreIndex,
                            HostTensor &count, std::string &error) {
  if (!expectRank(labels, 2, "labels", error))
    return false;
  int64_t batch = labels.shape[0], seq = labels.shape[1], n = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < seq; ++t)
      n += labels.i64[b * seq + t + 1] != ignoreIndex;
  count = HostTensor::floats({});
  count.f32[0] = static_cast<float>(n);
  return true;
}

bool reference::lmHeadCrossEntropy(const HostTensor &input,
                                   const HostTensor &weight,
                                   const HostTensor &labels,
                                   int64_t ignoreIndex,
                                   std::optional<double> targetCount,
                                   HostTensor &loss, std::string &error) {
  if (!expectRank(weight, 2, "weight", error))
    return false;
  int64_t hidden = input.shape.empty() ? 0 : input.shape.back();
  int64_t vocab = weight.shape[0];
  double total = 0.0;
  int64_t count = 0;
  // The first label outside the vocabulary: its value and its row (batch
  // b, position t + 1 of the sequence).
  std::optional<std::pair<int64_t, int64_t>> badTarget;
  std::vector<double> p;
  if (!forEachTarget(input, labels, ignoreIndex, error,
                     [&](int64_t row, int64_t target) {
                       if (target < 0 || target >= vocab) {
                         if (!badTarget)
                           badTarget = {row, target};
                         return;
                       }
                       vocabularySoftmax(&input.f32[row * hidden], weight, p);
                       total -= std::log(p[target]);
                       ++count;
                     }))
    return false;
  if (badTarget) {
    const int64_t seq = input.shape[1];
    error = fmt::format("label {} at [{}, {}] is outside the vocabulary "
                        "[0, {}) (and not {}, the ignored label)",
                        badTarget->second, badTarget->first / seq,
                        badTarget->first % seq + 1, vocab, ignoreIndex);
    return false;
  }
  loss = HostTensor::floats({});
  double denominator = targetCount.value_or(static_cast<double>(count));
  loss.f32[0] = static_cast<float>(denominator > 0 ? total / denominator : 0.0);
  return true;
}

bool reference::lmHeadCrossEntropyGrad(
    const HostTensor &input, const HostTensor &weight, const HostTensor &labels,
    int64_t ignoreIndex, std::optional<double> targetCount, double scale,
    HostTensor &dInput, HostTensor &dWeight, std::string &error) {
  if (!expectRank(weight, 2, "weight", error))
    return false;
  int64_t hidden = input.shape.empty() ? 0 : input.shape.back();
  int64_t vocab = weight.shape[0];
  int64_t count = 0;
  if (!forEachTarget(input, labels, ignoreIndex, error,
                     [&](int64_t, int64_t) { ++count; }))
    return false;
  dInput = HostTensor::floats(input.shape);
  dWeight = HostTensor::floats(weight.shape);
  double denominator = targetCount.value_or(static_cast<double>(count));
  if (count == 0 || denominator <= 0)
    return true;
  std::vector<double> dW(weight.numElements(), 0.0), p;
  forEachTarget(input, labels, ignoreIndex, error,
                [&](int64_t row, int64_t target) {
                  const float *h = &input.f32[row * hidden];
                  vocabularySoftmax(h, weight, p);
                  for (int64_t v = 0; v < vocab; ++v) {
                    double d = (p[v] - (v == target ? 1.0 : 0.0)) * scale /
                               denominator;
                    for (int64_t i = 0; i < hidden; ++i) {
                      dInput.f32[row * hidden + i] += static_cast<float>(
                          d * weight.f32[v * hidden + i]);
                      dW[v * hidden + i] += d * h[i];
                    }
                  }
                });
  dWeight = fromAccumulators(dW, weight.shape);
  return true;
}

namespace {

/// Rows of all layers' logits, as (tensor, row) pairs, checking they share
/// the number of experts.
bool collectRows(const std::vector<const HostTensor *> &logits,
                 std::vector<std::pair<size_t, int64_t>> &rows,
                 int64_t &numExperts, std::string &error) {
  numExperts = 0;
  for (size_t l = 0; l < logits.size(); ++l) {
    const HostTensor &t = *logits[l];
    if (t.shape.empty() || !t.isFloat() ||
        (numExperts && t.shape.back() != numExperts)) {
      error = fmt::format("router logits {} of layer {} do not match the "
                          "other layers'",
                          t.shapeString(), l);
      return false;
    }
    numExperts = t.shape.back();
    for (int64_t r = 0; r < leadingCount(t); ++r)
      rows.push_back({l, r});
  }
  if (rows.empty()) {
    error = "no router logits";
    return false;
  }
  return true;
}

/// `scale` times the gradient of the load-balancing loss
/// E · Σ_e fraction[e] · P[e] (P the mean softmax over `n` rows, `fraction`
/// held fixed, as Hugging Face's formula does not differentiate it) with
/// respect to each of `rows`' logits: d loss / d p_t[e] = scale · E ·
/// fraction[e] / n, then through the row's softmax.
void loadBalancingLogitGrads(
    const std::vector<const HostTensor *> &logits,
    const std::vector<std::pair<size_t, int64_t>> &rows, int64_t numExperts,
    const std::vector<double> &fraction, double n, double scale,
    std::vector<HostTensor> &dLogits) {
  dLogits.clear();
  for (const HostTensor *t : logits)
    dLogits.push_back(HostTensor::floats(t->shape));
  std::vector<double> p;
  for (auto [l, r] : rows) {
    softmaxRow(&logits[l]->f32[r * numExperts], numExperts, p);
    double inner = 0.0;
    for (int64_t e = 0; e < numExperts; ++e)
      inner += p[e] * fraction[e];
    for (int64_t e = 0; e < numExperts; ++e)
      dLogits[l].f32[r * numExperts + e] = static_cast<float>(
          scale * numExperts / n * p[e] * (fraction[e] - inner));
  }
}

} // namespace

bool reference::loadBalancingLoss(const std::vector<const HostTensor *> &logits,
                                  int64_t k, HostTensor &loss,
                                  std::string &error) {
  std::vector<std::pair<size_t, int64_t>> rows;
  int64_t numExperts;
  if (!collectRows(logits, rows, numExperts, error))
    return false;
  double n = static_cast<double>(rows.size());
  std::vector<double> fraction(numExperts, 0.0), probability(numExperts, 0.0);
  std::vector<double> p;
  for (auto [l, r] : rows) {
    softmaxRow(&logits[l]->f32[r * numExperts], numExperts, p);
    for (int64_t e : topK(p, k))
      fraction[e] += 1.0 / n;
    for (int64_t e = 0; e < numExperts; ++e)
      probability[e] += p[e] / n;
  }
  double total = 0.0;
  for (int64_t e = 0; e < numExperts; ++e)
    total += fraction[e] * probability[e];
  loss = HostTensor::floats({});
  loss.f32[0] = static_cast<float>(total * numExperts);
  return true;
}

bool reference::loadBalancingLossGrad(
    const std::vector<const HostTensor *> &logits, int64_t k, double scale,
    std::vector<HostTensor> &dLogits, std::string &error) {
  std::vector<std::pair<size_t, int64_t>> rows;
  int64_t numExperts;
  if (!collectRows(logits, rows, numExperts, error))
    return false;
  double n = static_cast<double>(rows.size());
  std::vector<double> fraction(numExperts, 0.0), p;
  for (auto [l, r] : rows) {
    softmaxRow(&logits[l]->f32[r * numExperts], numExperts, p);
    for (int64_t e : topK(p, k))
      fraction[e] += 1.0 / n;
  }
  loadBalancingLogitGrads(logits, rows, numExperts, fraction, n, scale,
                          dLogits);
  return true;
}

bool reference::routerZLoss(const std::vector<const HostTensor *> &logits,
                            HostTensor &loss, std::string &error) {
  std::vector<std::pair<size_t, int64_t>> rows;
  int64_t numExperts;
  if (!collectRows(logits, rows, numExperts, error))
    return false;
  double total = 0.0;
  for (auto [l, r] : rows) {
    const float *row = &logits[l]->f32[r * numExperts];
    double m = *std::max_element(row, row + numExperts), sum = 0.0;
    for (int64_t e = 0; e < numExperts; ++e)
      sum += std::exp(row[e] - m);
    double z = m + std::log(sum);
    total += z * z;
  }
  loss = HostTensor::floats({});
  loss.f32[0] = static_cast<float>(total / rows.size());
  return true;
}

bool reference::routerZLossGrad(const std::vector<const HostTensor *> &logits,
                                double scale, std::vector<HostTensor> &dLogits,
                                std::string &error) {
  std::vector<std::pair<size_t, int64_t>> rows;
  int64_t numExperts;
  if (!collectRows(logits, rows, numExperts, error))
    return false;
  dLogits.clear();
  for (const HostTensor *t : logits)
    dLogits.push_back(HostTensor::floats(t->shape));
  std::vector<double> p;
  for (auto [l, r] : rows) {
    const float *row = &logits[l]->f32[r * numExperts];
    double m = *std::max_element(row, row + numExperts), sum = 0.0;
    for (int64_t e = 0; e < numExperts; ++e)
      sum += std::exp(row[e] - m);
    double z = m + std::log(sum);
    softmaxRow(row, numExperts, p);
    for (int64_t e = 0; e < numExperts; ++e)
      dLogits[l].f32[r * numExperts + e] =
          static_cast<float>(scale * 2.0 * z * p[e] / rows.size());
  }
  return true;
}

//===----------------------------------------------------------------------===//
// Gradients of the model ops
//===----------------------------------------------------------------------===//

bool reference::embeddingGrad(const HostTensor &indices,
                              const HostTensor &dOut, int64_t vocab,
                              HostTensor &dTable, std::string &error) {
  if (!expectInt(indices, "indices", error) ||
      !expectNonScalar(dOut, "gradient", error))
    return false;
  int64_t hidden = dOut.shape.back();
  if (dOut.numElements() != indices.numElements() * hidden) {
    error = fmt::format("gradient {} does not match indices {}",
                        dOut.shapeString(), indices.shapeString());
    return false;
  }
  std::vector<double> acc(vocab * hidden, 0.0);
  for (int64_t t = 0; t < indices.numElements(); ++t) {
    int64_t id = indices.i64[t];
    if (id < 0 || id >= vocab) {
      error = fmt::format("index {} at position {} is outside the table's {} "
                          "rows",
                          id, t, vocab);
      return false;
    }
    for (int64_t h = 0; h < hidden; ++h)
      acc[id * hidden + h] += dOut.f32[t * hidden + h];
  }
  dTable = fromAccumulators(acc, {vocab, hidden});
  return true;
}

bool reference::rmsNormGrad(const HostTensor &input, const HostTensor &weight,
                            double epsilon, const HostTensor &dOut,
                            HostTensor &dInput, HostTensor &dWeight,
                            std::string &error) {
  if (!expectNonScalar(input, "input", error) ||
      !expectRank(weight, 1, "weight", error))
    return false;
  int64_t hidden = input.shape.back();
  if (weight.shape[0] != hidden || dOut.shape != input.shape) {
    error = fmt::format("input {}, weight {} and gradient {} do not fit",
                        input.shapeString(), weight.shapeString(),
                        dOut.shapeString());
    return false;
  }
  dInput = HostTensor::floats(input.shape);
  std::vector<double> dW(hidden, 0.0);
  for (int64_t row = 0; row < leadingCount(input); ++row) {
    const float *x = &input.f32[row * hidden];
    const float *dy = &dOut.f32[row * hidden];
    double sumSquares = 0.0, dot = 0.0;
    for (int64_t h = 0; h < hidden; ++h)
      sumSquares += static_cast<double>(x[h]) * x[h];
    double r = 1.0 / std::sqrt(sumSquares / hidden + epsilon);
    for (int64_t h = 0; h < hidden; ++h) {
      double g = static_cast<double>(dy[h]) * weight.f32[h];
      dot += g * x[h];
      dW[h] += static_cast<double>(dy[h]) * x[h] * r;
    }
    for (int64_t h = 0; h < hidden; ++h)
      dInput.f32[row * hidden + h] = static_cast<float>(
          static_cast<double>(dy[h]) * weight.f32[h] * r -
          r * r * r * x[h] * dot / hidden);
  }
  dWeight = fromAccumulators(dW, {hidden});
  return true;
}

bool reference::rotaryGrad(const HostTensor &dOut, const HostTensor *positions,
                           double theta, HostTensor &dInput,
                           std::string &error) {
  // R(a)ᵀ = R(-a): rotating by the negated angles is the same kernel with
  // the sine's sign flipped, which swapping the halves' roles gives.
  if (!expectRank(dOut, 4, "gradient", error))
    return false;
  HostTensor flipped = dOut;
  int64_t dim = dOut.shape[3], half = dim / 2;
  // rotary(x)[i] = x1 c - x2 s, [i+h] = x2 c + x1 s. With x2 negated on the
  // way in and the second half negated on the way out, the result is
  // x1 c + x2 s and -x1 s + x2 c: the transposed rotation.
  for (int64_t base = 0; base < dOut.numElements(); base += dim)
    for (int64_t i = half; i < dim; ++i)
      flipped.f32[base + i] = -flipped.f32[base + i];
  if (!rotary(flipped, positions, theta, dInput, error))
    return false;
  for (int64_t base = 0; base < dInput.numElements(); base += dim)
    for (int64_t i = half; i < dim; ++i)
      dInput.f32[base + i] = -dInput.f32[base + i];
  return true;
}

bool reference::attentionGrad(const HostTensor &query, const HostTensor &key,
                              const HostTensor &value, bool causal,
                              double scale,
                              std::optional<int64_t> slidingWindow,
                              const HostTensor &dOut, HostTensor &dQuery,
                              HostTensor &dKey, HostTensor &dValue,
                              std::string &error) {
  HostTensor out;
  if (!attention(query, key, value, causal, scale, slidingWindow, out, error))
    return false;
  if (dOut.shape != query.shape) {
    error = fmt::format("gradient {} must have the query's shape {}",
                        dOut.shapeString(), query.shapeString());
    return false;
  }
  int64_t batch = query.shape[0], seqQ = query.shape[1],
          qHeads = query.shape[2], dim = query.shape[3];
  int64_t seqK = key.shape[1], kvHeads = key.shape[2],
          group = qHeads / kvHeads;
  std::vector<double> dq(query.numElements(), 0.0), dk(key.numElements(), 0.0),
      dv(value.numElements(), 0.0), p(seqK), dp(seqK);
  auto at = [](int64_t b, int64_t s, int64_t h, int64_t seq, int64_t heads,
               int64_t d) { return ((b * seq + s) * heads + h) * d; };
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < qHeads; ++h) {
      int64_t kvh = h / group;
      for (int64_t i = 0; i < seqQ; ++i) {
        const float *q = &query.f32[at(b, i, h, seqQ, qHeads, dim)];
        const float *dO = &dOut.f32[at(b, i, h, seqQ, qHeads, dim)];
        attentionProbabilities(query, key, b, h, i, causal, scale,
                               slidingWindow, p);
        double inner = 0.0;
        for (int64_t j = 0; j < seqK; ++j) {
          const float *v = &value.f32[at(b, j, kvh, seqK, kvHeads, dim)];
          double acc = 0.0;
          for (int64_t d = 0; d < dim; ++d)
            acc += static_cast<double>(dO[d]) * v[d];
          dp[j] = acc;
          inner += p[j] * acc;
          for (int64_t d = 0; d < dim; ++d)
            dv[at(b, j, kvh, seqK, kvHeads, dim) + d] += p[j] * dO[d];
        }
        for (int64_t j = 0; j < seqK; ++j) {
          double ds = p[j] * (dp[j] - inner) * scale;
          if (ds == 0.0)
            continue;
          const float *k = &key.f32[at(b, j, kvh, seqK, kvHeads, dim)];
          for (int64_t d = 0; d < dim; ++d) {
            dq[at(b, i, h, seqQ, qHeads, dim) + d] += ds * k[d];
            dk[at(b, j, kvh, seqK, kvHeads, dim) + d] += ds * q[d];
          }
        }
      }
    }
  dQuery = fromAccumulators(dq, query.shape);
  dKey = fromAccumulators(dk, key.shape);
  dValue = fromAccumulators(dv, value.shape);
  return true;
}

bool reference::linearGrad(const HostTensor &input, const HostTensor &weight,
                           const HostTensor &dOut, HostTensor &dInput,
                           HostTensor &dWeight, std::string &error) {
  if (!expectNonScalar(input, "input", error) ||
      !expectRank(weight, 2, "weight", error))
    return false;
  int64_t in = input.shape.back(), out = weight.shape[0];
  int64_t rows = leadingCount(input);
  if (weight.shape[1] != in || dOut.numElements() != rows * out) {
    error = fmt::format("input {}, weight {} and gradient {} do not fit",
                        input.shapeString(), weight.shapeString(),
                        dOut.shapeString());
    return false;
  }
  dInput = HostTensor::floats(input.shape);
  std::vector<double> dW(out * in, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i) {
      double acc = 0.0;
      for (int64_t o = 0; o < out; ++o) {
        double g = dOut.f32[r * out + o];
        acc += g * weight.f32[o * in + i];
        dW[o * in + i] += g * input.f32[r * in + i];
      }
      dInput.f32[r * in + i] = static_cast<float>(acc);
    }
  dWeight = fromAccumulators(dW, weight.shape);
  return true;
}

bool reference::expertsGrad(const HostTensor &input, const HostTensor &gates,
                            const HostTensor &expertIndices,
                            const HostTensor &gateUp, const HostTensor &down,
                            bool interleaved, const HostTensor &dOut,
                            HostTensor &dInput, HostTensor &dGates,
                            HostTensor &dGateUp, HostTensor &dDown,
                            std::string &error) {
  HostTensor forward;
  if (!experts(input, gates, expertIndices, gateUp, down, interleaved, forward,
               error))
    return false;
  if (dOut.shape != input.shape) {
    error = fmt::format("gradient {} must have the input's shape {}",
                        dOut.shapeString(), input.shapeString());
    return false;
  }
  int64_t hidden = input.shape.back(), tokens = leadingCount(input);
  int64_t inter = gateUp.shape[1] / 2, k = gates.shape.back();
  std::vector<double> dx(input.numElements(), 0.0),
      dW1(gateUp.numElements(), 0.0), dW2(down.numElements(), 0.0);
  dGates = HostTensor::floats(gates.shape);
  std::vector<double> g(inter), u(inter), a(inter), da(inter), y(hidden);
  for (int64_t t = 0; t < tokens; ++t) {
    const float *x = &input.f32[t * hidden];
    const float *dy = &dOut.f32[t * hidden];
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = expertIndices.i64[t * k + j];
      const float *w1 = &gateUp.f32[e * 2 * inter * hidden];
      const float *w2 = &down.f32[e * hidden * inter];
      for (int64_t i = 0; i < inter; ++i) {
        int64_t gateRow = interleaved ? 2 * i : i;
        int64_t upRow = interleaved ? 2 * i + 1 : inter + i;
        g[i] = u[i] = 0.0;
        for (int64_t h = 0; h < hidden; ++h) {
          g[i] += static_cast<double>(w1[gateRow * hidden + h]) * x[h];
          u[i] += static_cast<double>(w1[upRow * hidden + h]) * x[h];
        }
        a[i] = g[i] * sigmoid(g[i]) * u[i];
      }
      // y_e = down[e] · a; out += gate · y_e.
      double gate = gates.f32[t * k + j], dGate = 0.0;
      std::fill(da.begin(), da.end(), 0.0);
      for (int64_t h = 0; h < hidden; ++h) {
        double ye = 0.0;
        for (int64_t i = 0; i < inter; ++i)
          ye += static_cast<double>(w2[h * inter + i]) * a[i];
        dGate += dy[h] * ye;
        double dye = gate * dy[h];
        for (int64_t i = 0; i < inter; ++i) {
          dW2[(e * hidden + h) * inter + i] += dye * a[i];
          da[i] += dye * w2[h * inter + i];
        }
      }
      dGates.f32[t * k + j] = static_cast<float>(dGate);
      for (int64_t i = 0; i < inter; ++i) {
        double s = sigmoid(g[i]);
        double dg = da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        double du = da[i] * g[i] * s;
        int64_t gateRow = interleaved ? 2 * i : i;
        int64_t upRow = interleaved ? 2 * i + 1 : inter + i;
        for (int64_t h = 0; h < hidden; ++h) {
          dW1[(e * 2 * inter + gateRow) * hidden + h] += dg * x[h];
          dW1[(e * 2 * inter + upRow) * hidden + h] += du * x[h];
          dx[t * hidden + h] += dg * w1[gateRow * hidden + h] +
                                du * w1[upRow * hidden + h];
        }
      }
    }
  }
  dInput = fromAccumulators(dx, input.shape);
  dGateUp = fromAccumulators(dW1, gateUp.shape);
  dDown = fromAccumulators(dW2, down.shape);
  return true;
}

//===----------------------------------------------------------------------===//
// Optimizer
//===----------------------------------------------------------------------===//

bool reference::globalNorm(const std::vector<const HostTensor *> &tensors,
                           HostTensor &norm, std::string &error) {
  double total = 0.0;
  for (const HostTensor *t : tensors) {
    if (!expectFloat(*t, "gradient", error))
      return false;
    for (float x : t->f32)
      total += static_cast<double>(x) * x;
  }
  norm = HostTensor::floats({});
  norm.f32[0] = static_cast<float>(std::sqrt(total));
  return true;
}

bool reference::adamw(const HostTensor &param, const HostTensor &grad,
                      const HostTensor &expAvg, const HostTensor &expAvgSq,
                      int64_t step, double lr, double gradScale,
                      const AdamWConfig &config, HostTensor &newParam,
                      HostTensor &newExpAvg, HostTensor &newExpAvgSq,
                      std::string &error) {
  if (grad.shape != param.shape || expAvg.shape != param.shape ||
      expAvgSq.shape != param.shape) {
    error = fmt::format("parameter {}, gradient {} and moments {} and {} "
                        "must have one shape",
                        param.shapeString(), grad.shapeString(),
                        expAvg.shapeString(), expAvgSq.shapeString());
    return false;
  }
  if (step < 1) {
    error = fmt::format("step {} must be 1 or more", step);
    return false;
  }
  newParam = HostTensor::floats(param.shape);
  newExpAvg = HostTensor::floats(param.shape);
  newExpAvgSq = HostTensor::floats(param.shape);
  double bias1 = 1.0 - std::pow(config.beta1, static_cast<double>(step));
  double bias2 = 1.0 - std::pow(config.beta2, static_cast<double>(step));
  for (int64_t i = 0; i < param.numElements(); ++i) {
    double g = static_cast<double>(grad.f32[i]) * gradScale;
    double p = param.f32[i] * (1.0 - lr * config.weightDecay);
    double m = config.beta1 * expAvg.f32[i] + (1.0 - config.beta1) * g;
    double v = config.beta2 * expAvgSq.f32[i] + (1.0 - config.beta2) * g * g;
    p -= lr / bias1 * m / (std::sqrt(v) / std::sqrt(bias2) + config.epsilon);
    newParam.f32[i] = static_cast<float>(p);
    newExpAvg.f32[i] = static_cast<float>(m);
    newExpAvgSq.f32[i] = static_cast<float>(v);
  }
  return true;
}

//===----------------------------------------------------------------------===//
// Load balancing under data parallelism
//===----------------------------------------------------------------------===//

bool reference::loadBalancingStats(
    const std::vector<const HostTensor *> &logits, int64_t k,
    HostTensor &stats, std::string &error) {
  std::vector<std::pair<size_t, int64_t>> rows;
  int64_t numExperts;
  if (!collectRows(logits, rows, numExperts, error))
    return false;
  std::vector<double> chosen(numExperts, 0.0), probability(numExperts, 0.0);
  std::vector<double> p;
  for (auto [l, r] : rows) {
    softmaxRow(&logits[l]->f32[r * numExperts], numExperts, p);
    for (int64_t e : topK(p, k))
      chosen[e] += 1.0;
    for (int64_t e = 0; e < numExperts; ++e)
      probability[e] += p[e];
  }
  stats = HostTensor::floats({2, numExperts});
  for (int64_t e = 0; e < numExperts; ++e) {
    stats.f32[e] = static_cast<float>(chosen[e]);
    stats.f32[numExperts + e] = static_cast<float>(probability[e]);
  }
  return true;
}

namespace {

/// The fractions f and the row count N of load-balancing statistics.
bool statsFractions(const HostTensor &stats, int64_t k,
                    std::vector<double> &fraction, double &rows,
                    std::string &error) {
  if (stats.shape.size() != 2 || stats.shape[0] != 2 || !stats.isFloat()) {
    error = fmt::format("statistics {} must be [2, num_experts]",
                        stats.shapeString());
    return false;
  }
  int64_t numExperts = stats.shape[1];
  double slots = 0.0;
  for (int64_t e = 0; e < numExperts; ++e)
    slots += stats.f32[e];
  rows = slots / static_cast<double>(k);
  if (!(rows > 0.0)) {
    error = "statistics count no rows";
    return false;
  }
  fraction.assign(numExperts, 0.0);
  for (int64_t e = 0; e < numExperts; ++e)
    fraction[e] = stats.f32[e] / rows;
  return true;
}

} // namespace

bool reference::loadBalancingLossFromStats(const HostTensor &stats, int64_t k,
                                           HostTensor &loss,
                                           std::string &error) {
  std::vector<double> fraction;
  double rows;
  if (!statsFractions(stats, k, fraction, rows, error))
    return false;
  int64_t numExperts = stats.shape[1];
  double total = 0.0;
  for (int64_t e = 0; e < numExperts; ++e)
    total += fraction[e] * (stats.f32[numExperts + e] / rows);
  loss = HostTensor::floats({});
  loss.f32[0] = static_cast<float>(total * numExperts);
  return true;
}

bool reference::loadBalancingStatsGrad(
    const std::vector<const HostTensor *> &logits, const HostTensor &stats,
    int64_t k, double scale, std::vector<HostTensor> &dLogits,
    std::string &error) {
  std::vector<std::pair<size_t, int64_t>> rows;
  int64_t numExperts;
  if (!collectRows(logits, rows, numExperts, error))
    return false;
  std::vector<double> fraction;
  double n;
  if (!statsFractions(stats, k, fraction, n, error))
    return false;
  if (stats.shape[1] != numExperts) {
    error = fmt::format("statistics {} do not match {} experts",
                        stats.shapeString(), numExperts);
    return false;
  }
  loadBalancingLogitGrads(logits, rows, numExperts, fraction, n, scale,
                          dLogits);
  return true;
}

HostTensor moec::reference::transpose(const HostTensor &in,
                                      llvm::ArrayRef<int64_t> perm) {
  HostTensor out = in;
  for (size_t d = 0; d < perm.size(); ++d)
    out.shape[d] = in.shape[perm[d]];
  std::vector<int64_t> inStrides(in.shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(in.shape.size()) - 2; d >= 0; --d)
    inStrides[d] = inStrides[d + 1] * in.shape[d + 1];
  std::vector<int64_t> index(out.shape.size(), 0);
  for (int64_t i = 0; i < out.numElements(); ++i) {
    int64_t src = 0;
    for (size_t d = 0; d < perm.size(); ++d)
      src += index[d] * inStrides[perm[d]];
    if (in.isFloat())
      out.f32[i] = in.f32[src];
    else
      out.i64[i] = in.i64[src];
    for (int64_t d = static_cast<int64_t>(index.size()) - 1; d >= 0; --d) {
      if (++index[d] < out.shape[d])
        break;
      index[d] = 0;
    }
  }
  return out;
}
