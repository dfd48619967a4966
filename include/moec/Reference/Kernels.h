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

#include <optional>
#include <string>

namespace moec::reference {

/// `out[..., h] = table[indices[...], h]`.
bool embedding(const HostTensor &table, const HostTensor &indices,
               HostTensor &out, std::string &error);

/// RMSNorm over the last dimension, scaled by `weight`.
bool rmsNorm(const HostTensor &input, const HostTensor &weight, double epsilon,
             HostTensor &out, std::string &error);

/// Rotary embedding, "rotate half" convention, on `[B, S, N, D]`.
/// `positions` (`[B, S]`) defaults to `0 .. S-1`.
bool rotary(const HostTensor &input, const HostTensor *positions, double theta,
            HostTensor &out, std::string &error);

/// Grouped-query attention on `[B, S, N, D]` tensors.
bool attention(const HostTensor &query, const HostTensor &key,
               const HostTensor &value, bool causal, double scale,
               std::optional<int64_t> slidingWindow, HostTensor &out,
               std::string &error);

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
bool experts(const HostTensor &input, const HostTensor &gates,
             const HostTensor &expertIndices, const HostTensor &gateUp,
             const HostTensor &down, bool interleaved, HostTensor &out,
             std::string &error);

/// Element-wise binary arithmetic on equal shapes.
enum class BinaryKind { Add, Sub, Mul, Div };
bool binary(BinaryKind kind, const HostTensor &lhs, const HostTensor &rhs,
            HostTensor &out, std::string &error);

} // namespace moec::reference

#endif // MOEC_REFERENCE_KERNELS_H
