//===- Kernels.h - The reference executor's kernels -------------*- C++ -*-===//
//
// One plain loop nest per `moe` op, on HostTensors, fp32 in and out with fp64
// accumulation. They take shapes from their operands and report a mismatch
// by returning false with a message; the executor turns that into a
// diagnostic at the op. Written for clarity: each follows the op's
// definition in docs/Dialects/Moe.md line by line.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_REFERENCE_KERNELS_H
#define MOEC_REFERENCE_KERNELS_H

#include "moec/Support/HostTensor.h"
#include "moert/Routing.h"
#include "llvm/ADT/ArrayRef.h"

#include <optional>
#include <string>

namespace moec::reference {

/// `out[..., h] = table[indices[...], h]`.
bool embedding(const HostTensor &table, const HostTensor &indices,
               HostTensor &out, std::string &error);

/// `in` transposed as linalg.transpose does: dimension d of the result is
/// dimension `perm[d]` of `in` (a permutation of its dimensions).
HostTensor transpose(const HostTensor &in, llvm::ArrayRef<int64_t> perm);

/// RMSNorm over the last dimension, scaled by `weight`.
bool rmsNorm(const HostTensor &input, const HostTensor &weight, double epsilon,
             HostTensor &out, std::string &error);

/// Rotary embedding, "rotate half" convention, on `[B, S, N, D]`.
/// `positions` (`[B, S]`) defaults to `0 .. S-1`.
bool rotary(const HostTensor &input, const HostTensor *positions, double theta,
            HostTensor &out, std::string &error);

/// Grouped-query attention on `[B, S, N, D]` tensors; with `stats`, also
/// each query row's log-sum-exp of its visible scores, `[B, N, S]`.
bool attention(const HostTensor &query, const HostTensor &key,
               const HostTensor &value, bool causal, double scale,
               std::optional<int64_t> slidingWindow, HostTensor &out,
               std::string &error, HostTensor *stats = nullptr);

/// `out = input · weightᵀ (+ bias)` over the last dimension.
bool linear(const HostTensor &input, const HostTensor &weight,
            const HostTensor *bias, HostTensor &out, std::string &error);

/// Top-k of the softmax of `logits` over the last dimension; with
/// `renormalize`, the k gates are divided by their sum. Ties go to the lower
/// expert index.
bool routeTopK(const HostTensor &logits, int64_t k, bool renormalize,
               HostTensor &gates, HostTensor &experts, std::string &error);

/// The SwiGLU experts, weighted by the gates; `interleaved` selects
/// onnxruntime's gate/up row layout instead of Hugging Face's.
/// With `saved`, also moe.experts' second result: every (token, choice)
/// pair's gate and up projections, rows in stable expert order.
bool experts(const HostTensor &input, const HostTensor &gates,
             const HostTensor &expertIndices, const HostTensor &gateUp,
             const HostTensor &down, bool interleaved, HostTensor &out,
             std::string &error, HostTensor *saved = nullptr);

//===----------------------------------------------------------------------===//
// Routing for training
//===----------------------------------------------------------------------===//

/// The load-balancing modes of moe.router (shared with the GPU kernels).
using moert::Routing;

/// Chooses `k` experts per token of `logits` ([..., E]) and their gates as
/// `mode` defines (docs/Dialects/Moe.md): aux_loss/none as routeTopK with
/// renormalisation; sinkhorn picks by the Sinkhorn-normalised exp(logits)
/// and gates with the softmax (sigmoid when k == 1), not renormalised;
/// balanced gives every expert exactly its capacity of T·k/E slots (the
/// first T·k mod E experts one more), greedily by probability, exchanging
/// a full expert's slot when a token would fall short.
/// With `training` false, sinkhorn and balanced route by plain top-k
/// (sinkhorn gates unnormalised, balanced renormalised), as at evaluation.
bool route(const HostTensor &logits, int64_t k, Routing mode,
           HostTensor &gates, HostTensor &experts, std::string &error,
           bool training = true);

/// Megatron-Core's Sinkhorn normalisation of exp(`logits`) ([T, E]),
/// iterated until the mean change of the column scaling is below `tolerance`.
bool sinkhorn(const HostTensor &logits, double tolerance, HostTensor &out,
              std::string &error);

/// d logits from d gates, for the gates `route` computed with `experts`.
bool routeGrad(const HostTensor &logits, const HostTensor &experts,
               const HostTensor &dGates, Routing mode, HostTensor &dLogits,
               std::string &error);

/// Per-expert slot counts [E] of expert choices [..., k].
bool expertCounts(const HostTensor &experts, int64_t numExperts,
                  HostTensor &counts, std::string &error);

//===----------------------------------------------------------------------===//
// Losses
//===----------------------------------------------------------------------===//

/// The number of labels[b, t + 1] (t + 1 < seq) not equal to `ignoreIndex`,
/// as an fp32 scalar: moe.target_count.
bool targetCount(const HostTensor &labels, int64_t ignoreIndex,
                 HostTensor &count, std::string &error);

/// Next-token cross-entropy of the logits `input · weightᵀ` ([B, S, V]):
/// position t of each sequence predicts `labels[t + 1]`; labels equal to
/// `ignoreIndex` (and the last position) are skipped; the mean is over the
/// remaining targets (0 when there are none), or the sum divided by
/// `targetCount` when given (moe.lm_head_cross_entropy's `target_count`).
/// Returns a scalar.
bool lmHeadCrossEntropy(const HostTensor &input, const HostTensor &weight,
                        const HostTensor &labels, int64_t ignoreIndex,
                        std::optional<double> targetCount, HostTensor &loss,
                        std::string &error);

/// Gradients of `scale` times that loss with respect to input and weight.
bool lmHeadCrossEntropyGrad(const HostTensor &input, const HostTensor &weight,
                            const HostTensor &labels, int64_t ignoreIndex,
                            std::optional<double> targetCount, double scale,
                            HostTensor &dInput, HostTensor &dWeight,
                            std::string &error);

/// Hugging Face's Mixtral load-balancing loss over all layers' router
/// logits (each [..., E], concatenated over tokens):
/// E · Σ_j Σ_e mean_t(onehot(topk_j(t)) = e) · mean_t(softmax(t)_e).
bool loadBalancingLoss(const std::vector<const HostTensor *> &logits,
                       int64_t k, HostTensor &loss, std::string &error);

/// `scale` times its gradient with respect to each layer's logits (the
/// top-k selection is not differentiated).
bool loadBalancingLossGrad(const std::vector<const HostTensor *> &logits,
                           int64_t k, double scale,
                           std::vector<HostTensor> &dLogits,
                           std::string &error);

/// Router z-loss: mean over all tokens of all layers of logsumexp(logits)².
bool routerZLoss(const std::vector<const HostTensor *> &logits,
                 HostTensor &loss, std::string &error);
bool routerZLossGrad(const std::vector<const HostTensor *> &logits,
                     double scale, std::vector<HostTensor> &dLogits,
                     std::string &error);

//===----------------------------------------------------------------------===//
// Gradients of the model ops
//===----------------------------------------------------------------------===//

/// d table [vocab, hidden] of an embedding lookup: a scatter-add of `dOut`.
bool embeddingGrad(const HostTensor &indices, const HostTensor &dOut,
                   int64_t vocab, HostTensor &dTable, std::string &error);

bool rmsNormGrad(const HostTensor &input, const HostTensor &weight,
                 double epsilon, const HostTensor &dOut, HostTensor &dInput,
                 HostTensor &dWeight, std::string &error);

/// The rotation is orthogonal: its gradient rotates by the negated angle.
bool rotaryGrad(const HostTensor &dOut, const HostTensor *positions,
                double theta, HostTensor &dInput, std::string &error);

bool attentionGrad(const HostTensor &query, const HostTensor &key,
                   const HostTensor &value, bool causal, double scale,
                   std::optional<int64_t> slidingWindow,
                   const HostTensor &dOut, HostTensor &dQuery,
                   HostTensor &dKey, HostTensor &dValue, std::string &error);

/// dInput = dOut · weight, dWeight = Σ dOutᵀ · input (over leading dims).
bool linearGrad(const HostTensor &input, const HostTensor &weight,
                const HostTensor &dOut, HostTensor &dInput,
                HostTensor &dWeight, std::string &error);

bool expertsGrad(const HostTensor &input, const HostTensor &gates,
                 const HostTensor &expertIndices, const HostTensor &gateUp,
                 const HostTensor &down, bool interleaved,
                 const HostTensor &dOut, HostTensor &dInput,
                 HostTensor &dGates, HostTensor &dGateUp, HostTensor &dDown,
                 std::string &error);

//===----------------------------------------------------------------------===//
// Optimizer
//===----------------------------------------------------------------------===//

/// sqrt(Σ over all tensors of Σ x²), as a scalar.
bool globalNorm(const std::vector<const HostTensor *> &tensors,
                HostTensor &norm, std::string &error);

/// One AdamW step as torch.optim.AdamW takes it, on gradients scaled by
/// `gradScale` (the clipping coefficient): decoupled weight decay
/// p -= lr·wd·p, then m = β1·m + (1-β1)·g, v = β2·v + (1-β2)·g²,
/// p -= lr · (m / (1-β1^t)) / (sqrt(v / (1-β2^t)) + ε).
struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, epsilon = 1e-8, weightDecay = 0.0;
};
bool adamw(const HostTensor &param, const HostTensor &grad,
           const HostTensor &expAvg, const HostTensor &expAvgSq, int64_t step,
           double lr, double gradScale, const AdamWConfig &config,
           HostTensor &newParam, HostTensor &newExpAvg,
           HostTensor &newExpAvgSq, std::string &error);

/// Element-wise binary arithmetic on equal shapes.
enum class BinaryKind { Add, Sub, Mul, Div };
bool binary(BinaryKind kind, const HostTensor &lhs, const HostTensor &rhs,
            HostTensor &out, std::string &error);

//===----------------------------------------------------------------------===//
// Load balancing under data parallelism
//===----------------------------------------------------------------------===//

/// moe.load_balancing_stats: [2, E], row 0 the number of rows whose top-k
/// includes each expert, row 1 each expert's summed softmax probability,
/// over every layer's logits.
bool loadBalancingStats(const std::vector<const HostTensor *> &logits,
                        int64_t k, HostTensor &stats, std::string &error);

/// moe.load_balancing_loss_from_stats: E · Σ_e f_e · P_e with
/// N = Σ_e stats[0, e] / k, f = stats[0] / N and P = stats[1] / N.
bool loadBalancingLossFromStats(const HostTensor &stats, int64_t k,
                                HostTensor &loss, std::string &error);

/// moe.load_balancing_stats_grad: `scale` times the gradient of that loss
/// with respect to the rows of `logits` (f held fixed).
bool loadBalancingStatsGrad(const std::vector<const HostTensor *> &logits,
                            const HostTensor &stats, int64_t k, double scale,
                            std::vector<HostTensor> &dLogits,
                            std::string &error);


} // namespace moec::reference

#endif // MOEC_REFERENCE_KERNELS_H
