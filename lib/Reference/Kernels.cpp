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
                          HostTensor &out, std::string &error) {
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
  std::vector<double> scores(seqK);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < qHeads; ++h) {
      int64_t kvh = h / group;
      for (int64_t i = 0; i < seqQ; ++i) {
        const float *q = &query.f32[((b * seqQ + i) * qHeads + h) * dim];
        double maxScore = -INFINITY;
        for (int64_t j = 0; j < seqK; ++j) {
          bool visible = !causal || (j <= i && (!slidingWindow ||
                                                i - j < *slidingWindow));
          if (!visible) {
            scores[j] = -INFINITY;
            continue;
          }
          const float *k = &key.f32[((b * seqK + j) * kvHeads + kvh) * dim];
          double dot = 0.0;
          for (int64_t d = 0; d < dim; ++d)
            dot += static_cast<double>(q[d]) * k[d];
          scores[j] = dot * scale;
          maxScore = std::max(maxScore, scores[j]);
        }
        double total = 0.0;
        for (int64_t j = 0; j < seqK; ++j) {
          scores[j] = std::isinf(scores[j]) ? 0.0 : std::exp(scores[j] - maxScore);
          total += scores[j];
        }
        float *o = &out.f32[((b * seqQ + i) * qHeads + h) * dim];
        for (int64_t d = 0; d < dim; ++d) {
          double acc = 0.0;
          for (int64_t j = 0; j < seqK; ++j)
            acc += scores[j] *
                   value.f32[((b * seqK + j) * kvHeads + kvh) * dim + d];
          o[d] = static_cast<float>(acc / total);
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
                        std::string &error) {
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
  out = HostTensor::floats(input.shape);
  std::vector<double> activation(inter);
  std::vector<double> result(hidden);
  for (int64_t t = 0; t < tokens; ++t) {
    const float *x = &input.f32[t * hidden];
    std::fill(result.begin(), result.end(), 0.0);
    for (int64_t j = 0; j < k; ++j) {
      int64_t e = expertIndices.i64[t * k + j];
      if (e < 0 || e >= numExperts) {
        error = fmt::format("token {} chooses expert {} of only {}", t, e,
                            numExperts);
        return false;
      }
      const float *w1 = &gateUp.f32[e * 2 * inter * hidden];
      for (int64_t i = 0; i < inter; ++i) {
        int64_t gateRow = interleaved ? 2 * i : i;
        int64_t upRow = interleaved ? 2 * i + 1 : inter + i;
        double g = 0.0, u = 0.0;
        for (int64_t h = 0; h < hidden; ++h) {
          g += static_cast<double>(w1[gateRow * hidden + h]) * x[h];
          u += static_cast<double>(w1[upRow * hidden + h]) * x[h];
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
