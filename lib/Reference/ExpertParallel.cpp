//===- ExpertParallel.cpp - Routed collectives on simulated ranks ---------===//
//
// See moec/Reference/ExpertParallel.h. Row order everywhere is the one
// moe.dispatch defines: on the receiving rank by local expert, then source
// group rank, then slot index `t·k + j` at the source; what a source sends
// to one destination is ordered by (local expert, slot index), so the
// receiver only interleaves the per-source blocks.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/ExpertParallel.h"

#include "moert/CounterRng.h"

#include "fmt/format.h"

#include <algorithm>
#include <numeric>

using namespace moec;
using namespace moec::reference;

namespace {

int64_t leadingCount(const HostTensor &t) {
  return t.shape.empty() ? 1 : t.numElements() / t.shape.back();
}

/// The slots a source sends to each destination, each list ordered by
/// (local expert, slot index), and the count per (destination, local
/// expert).
struct SendPlan {
  std::vector<std::vector<int64_t>> slots;      ///< per destination
  std::vector<std::vector<int64_t>> perExpert;  ///< [destination][local]
};

bool planSends(const HostTensor &experts, int64_t groupSize,
               int64_t numLocalExperts, SendPlan &plan, std::string &error) {
  int64_t numExperts = groupSize * numLocalExperts;
  plan.slots.assign(groupSize, {});
  plan.perExpert.assign(groupSize, std::vector<int64_t>(numLocalExperts, 0));
  std::vector<std::vector<std::vector<int64_t>>> byExpert(
      groupSize, std::vector<std::vector<int64_t>>(numLocalExperts));
  for (int64_t slot = 0; slot < experts.numElements(); ++slot) {
    int64_t e = experts.i64[slot];
    if (e < 0 || e >= numExperts) {
      error = fmt::format("slot {} chooses expert {} of only {}", slot, e,
                          numExperts);
      return false;
    }
    byExpert[e / numLocalExperts][e % numLocalExperts].push_back(slot);
  }
  for (int64_t d = 0; d < groupSize; ++d)
    for (int64_t l = 0; l < numLocalExperts; ++l) {
      plan.perExpert[d][l] = static_cast<int64_t>(byExpert[d][l].size());
      plan.slots[d].insert(plan.slots[d].end(), byExpert[d][l].begin(),
                           byExpert[d][l].end());
    }
  return true;
}

/// Rows `slots` of a [tokens·k] slot view of `perToken` ([tokens, width]
/// rows, slot s reads row s / k), concatenated.
HostTensor gatherSlotRows(const HostTensor &perToken, int64_t width,
                          int64_t k, const std::vector<int64_t> &slots) {
  HostTensor out = HostTensor::floats({static_cast<int64_t>(slots.size()) *
                                       width});
  for (size_t i = 0; i < slots.size(); ++i)
    std::copy_n(perToken.f32.begin() + (slots[i] / k) * width, width,
                out.f32.begin() + i * width);
  return out;
}

/// Interleaves per-source blocks (each ordered by local expert) into the
/// dispatch order (local expert, source, slot); `width` elements per row.
HostTensor interleaveBySource(const std::vector<HostTensor> &blocks,
                              const HostTensor &counts, int64_t width) {
  int64_t groupSize = counts.shape[0], numLocal = counts.shape[1];
  int64_t total = std::accumulate(counts.i64.begin(), counts.i64.end(),
                                  int64_t{0});
  HostTensor out = HostTensor::floats({total, width});
  std::vector<int64_t> read(groupSize, 0);
  int64_t row = 0;
  for (int64_t l = 0; l < numLocal; ++l)
    for (int64_t s = 0; s < groupSize; ++s) {
      int64_t n = counts.i64[s * numLocal + l];
      std::copy_n(blocks[s].f32.begin() + read[s] * width, n * width,
                  out.f32.begin() + row * width);
      read[s] += n;
      row += n;
    }
  return out;
}

/// Each received row's local expert, in dispatch order.
HostTensor rowExpertsFromCounts(const HostTensor &counts) {
  int64_t groupSize = counts.shape[0], numLocal = counts.shape[1];
  std::vector<int64_t> local;
  for (int64_t l = 0; l < numLocal; ++l)
    for (int64_t s = 0; s < groupSize; ++s)
      local.insert(local.end(), counts.i64[s * numLocal + l], l);
  HostTensor out = HostTensor::ints({static_cast<int64_t>(local.size()), 1});
  out.i64 = std::move(local);
  return out;
}

/// Every member's token count, which must be the same for all.
bool sameTokenCount(const ExpertGroup &group, int64_t tokens,
                    const char *what, std::string &error) {
  HostTensor mine = HostTensor::ints({1});
  mine.i64[0] = tokens;
  HostTensor all;
  if (!group.communicator->allGather(group.rank, group.ranks, mine, all,
                                     error))
    return false;
  for (int64_t s = 0; s < group.size(); ++s)
    if (all.i64[s] != tokens) {
      error = fmt::format("{} needs the same number of tokens on every rank "
                          "of the group, but group rank {} has {} and group "
                          "rank {} has {}",
                          what, s, all.i64[s], group.groupRank, tokens);
      return false;
    }
  return true;
}

bool dispatchAllToAll(const ExpertGroup &group, const HostTensor &input,
                      const HostTensor &experts, const HostTensor *gates,
                      int64_t numLocal, HostTensor &rows,
                      HostTensor &counts, HostTensor *rowGates,
                      std::string &error) {
  int64_t p = group.size(), hidden = input.shape.back();
  int64_t k = experts.shape.back();
  SendPlan plan;
  if (!planSends(experts, p, numLocal, plan, error))
    return false;
  // 1. The counts per (source, local expert).
  std::vector<HostTensor> sends(p), receives;
  for (int64_t d = 0; d < p; ++d) {
    sends[d] = HostTensor::ints({numLocal});
    sends[d].i64 = plan.perExpert[d];
  }
  if (!group.communicator->allToAll(group.rank, group.ranks, sends, receives,
                                    error))
    return false;
  counts = HostTensor::ints({p, numLocal});
  for (int64_t s = 0; s < p; ++s)
    std::copy_n(receives[s].i64.begin(), numLocal,
                counts.i64.begin() + s * numLocal);
  // 2. The rows (and gates), one variable all-to-all each.
  for (int64_t d = 0; d < p; ++d)
    sends[d] = gatherSlotRows(input, hidden, k, plan.slots[d]);
  if (!group.communicator->allToAll(group.rank, group.ranks, sends, receives,
                                    error))
    return false;
  rows = interleaveBySource(receives, counts, hidden);
  if (gates) {
    for (int64_t d = 0; d < p; ++d)
      sends[d] = gatherSlotRows(*gates, 1, 1, plan.slots[d]);
    if (!group.communicator->allToAll(group.rank, group.ranks, sends,
                                      receives, error))
      return false;
    *rowGates = interleaveBySource(receives, counts, 1);
  }
  return true;
}

bool dispatchAllGather(const ExpertGroup &group, const HostTensor &input,
                       const HostTensor &experts, const HostTensor *gates,
                       int64_t numLocal, HostTensor &rows,
                       HostTensor &counts, HostTensor *rowGates,
                       std::string &error) {
  int64_t p = group.size(), hidden = input.shape.back();
  int64_t tokens = leadingCount(input), k = experts.shape.back();
  if (!sameTokenCount(group, tokens, "the all_gather dispatcher", error))
    return false;
  HostTensor allInput, allExperts, allGates;
  if (!group.communicator->allGather(group.rank, group.ranks, input, allInput,
                                     error) ||
      !group.communicator->allGather(group.rank, group.ranks, experts,
                                     allExperts, error) ||
      (gates && !group.communicator->allGather(group.rank, group.ranks,
                                               *gates, allGates, error)))
    return false;
  int64_t numExperts = p * numLocal;
  for (int64_t e : allExperts.i64)
    if (e < 0 || e >= numExperts) {
      error = fmt::format("a slot of the group chooses expert {} of only {}",
                          e, numExperts);
      return false;
    }
  // Keep this rank's experts' slots in (local expert, source, slot) order.
  counts = HostTensor::ints({p, numLocal});
  std::vector<int64_t> kept;
  for (int64_t l = 0; l < numLocal; ++l)
    for (int64_t s = 0; s < p; ++s)
      for (int64_t slot = 0; slot < tokens * k; ++slot)
        if (allExperts.i64[s * tokens * k + slot] ==
            group.groupRank * numLocal + l) {
          kept.push_back(s * tokens * k + slot);
          ++counts.i64[s * numLocal + l];
        }
  int64_t n = static_cast<int64_t>(kept.size());
  HostTensor flatRows = gatherSlotRows(allInput, hidden, k, kept);
  rows = HostTensor::floats({n, hidden});
  rows.f32 = std::move(flatRows.f32);
  if (gates) {
    HostTensor flatGates = gatherSlotRows(allGates, 1, 1, kept);
    *rowGates = HostTensor::floats({n, 1});
    rowGates->f32 = std::move(flatGates.f32);
  }
  return true;
}

/// Sums each token's k slot rows (in choice order, in fp64) into [..., d].
HostTensor sumSlots(const std::vector<double> &slotRows,
                    const HostTensor &experts, int64_t width) {
  int64_t k = experts.shape.back();
  std::vector<int64_t> shape(experts.shape.begin(), experts.shape.end() - 1);
  shape.push_back(width);
  HostTensor out = HostTensor::floats(shape);
  int64_t tokens = leadingCount(experts);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < width; ++c) {
      double sum = 0.0;
      for (int64_t j = 0; j < k; ++j)
        sum += slotRows[(t * k + j) * width + c];
      out.f32[t * width + c] = static_cast<float>(sum);
    }
  return out;
}

bool checkRows(const HostTensor &rows, const HostTensor &counts,
               std::string &error) {
  int64_t total = std::accumulate(counts.i64.begin(), counts.i64.end(),
                                  int64_t{0});
  if (rows.shape.size() != 2 || rows.shape[0] != total) {
    error = fmt::format("rows {} do not match the {} rows the counts say "
                        "were received",
                        rows.shapeString(), total);
    return false;
  }
  return true;
}

bool combineAllToAll(const ExpertGroup &group, const HostTensor &rows,
                     const HostTensor &experts, const HostTensor &counts,
                     HostTensor &out, std::string &error) {
  int64_t p = group.size(), numLocal = counts.shape[1];
  int64_t width = rows.shape[1];
  // Rows back to their sources, each block in (local expert, slot) order.
  std::vector<int64_t> blockStart(p * numLocal);
  int64_t row = 0;
  for (int64_t l = 0; l < numLocal; ++l)
    for (int64_t s = 0; s < p; ++s) {
      blockStart[s * numLocal + l] = row;
      row += counts.i64[s * numLocal + l];
    }
  std::vector<HostTensor> sends(p), receives;
  for (int64_t s = 0; s < p; ++s) {
    int64_t n = 0;
    for (int64_t l = 0; l < numLocal; ++l)
      n += counts.i64[s * numLocal + l];
    sends[s] = HostTensor::floats({n * width});
    int64_t at = 0;
    for (int64_t l = 0; l < numLocal; ++l) {
      int64_t m = counts.i64[s * numLocal + l];
      std::copy_n(rows.f32.begin() + blockStart[s * numLocal + l] * width,
                  m * width, sends[s].f32.begin() + at * width);
      at += m;
    }
  }
  if (!group.communicator->allToAll(group.rank, group.ranks, sends, receives,
                                    error))
    return false;
  SendPlan plan;
  if (!planSends(experts, p, numLocal, plan, error))
    return false;
  std::vector<double> slotRows(experts.numElements() * width, 0.0);
  for (int64_t d = 0; d < p; ++d) {
    const std::vector<int64_t> &slots = plan.slots[d];
    if (receives[d].numElements() !=
        static_cast<int64_t>(slots.size()) * width) {
      error = fmt::format("group rank {} returned {} values for {} slots of "
                          "width {}",
                          d, receives[d].numElements(), slots.size(), width);
      return false;
    }
    for (size_t i = 0; i < slots.size(); ++i)
      for (int64_t c = 0; c < width; ++c)
        slotRows[slots[i] * width + c] = receives[d].f32[i * width + c];
  }
  out = sumSlots(slotRows, experts, width);
  return true;
}

bool combineAllGather(const ExpertGroup &group, const HostTensor &rows,
                      const HostTensor &experts, const HostTensor &counts,
                      HostTensor &out, std::string &error) {
  int64_t p = group.size(), numLocal = counts.shape[1];
  int64_t width = rows.shape[1];
  int64_t tokens = leadingCount(experts), k = experts.shape.back();
  if (!sameTokenCount(group, tokens, "the all_gather dispatcher", error))
    return false;
  // The group's expert choices say which slot each received row is.
  HostTensor allExperts;
  if (!group.communicator->allGather(group.rank, group.ranks, experts,
                                     allExperts, error))
    return false;
  std::vector<double> partial(p * tokens * width, 0.0);
  int64_t row = 0;
  for (int64_t l = 0; l < numLocal; ++l)
    for (int64_t s = 0; s < p; ++s)
      for (int64_t slot = 0; slot < tokens * k; ++slot)
        if (allExperts.i64[s * tokens * k + slot] ==
            group.groupRank * numLocal + l) {
          int64_t t = s * tokens + slot / k;
          for (int64_t c = 0; c < width; ++c)
            partial[t * width + c] += rows.f32[row * width + c];
          ++row;
        }
  if (row != rows.shape[0]) {
    error = fmt::format("rows {} do not match the {} slots of this rank's "
                        "experts in the group",
                        rows.shapeString(), row);
    return false;
  }
  HostTensor send = HostTensor::floats({p * tokens * width});
  for (size_t i = 0; i < partial.size(); ++i)
    send.f32[i] = static_cast<float>(partial[i]);
  HostTensor mine;
  if (!group.communicator->reduceScatterSum(group.rank, group.ranks, send,
                                            mine, error))
    return false;
  std::vector<int64_t> shape(experts.shape.begin(), experts.shape.end() - 1);
  shape.push_back(width);
  out = HostTensor::floats(shape);
  out.f32 = std::move(mine.f32);
  return true;
}

} // namespace

bool reference::dispatch(const ExpertGroup &group, DispatchKind kind,
                         const HostTensor &input, const HostTensor &experts,
                         const HostTensor *gates, int64_t numLocalExperts,
                         HostTensor &rows, HostTensor &rowExperts,
                         HostTensor &counts, HostTensor *rowGates,
                         std::string &error) {
  if (input.shape.empty() || !input.isFloat() || experts.isFloat() ||
      experts.shape.empty() ||
      leadingCount(input) != leadingCount(experts) ||
      (gates && gates->shape != experts.shape)) {
    error = fmt::format("input {}, experts {} and gates {} do not fit "
                        "together",
                        input.shapeString(), experts.shapeString(),
                        gates ? gates->shapeString() : "(none)");
    return false;
  }
  bool ok = kind == DispatchKind::AllToAll
                ? dispatchAllToAll(group, input, experts, gates,
                                   numLocalExperts, rows, counts, rowGates,
                                   error)
                : dispatchAllGather(group, input, experts, gates,
                                    numLocalExperts, rows, counts, rowGates,
                                    error);
  if (!ok)
    return false;
  rowExperts = rowExpertsFromCounts(counts);
  return true;
}

bool reference::combine(const ExpertGroup &group, DispatchKind kind,
                        const HostTensor &rows, const HostTensor &experts,
                        const HostTensor &counts, HostTensor &out,
                        std::string &error) {
  if (counts.shape.size() != 2 || counts.shape[0] != group.size() ||
      experts.shape.empty() || experts.isFloat()) {
    error = fmt::format("counts {} and experts {} do not fit a group of {}",
                        counts.shapeString(), experts.shapeString(),
                        group.size());
    return false;
  }
  if (!checkRows(rows, counts, error))
    return false;
  return kind == DispatchKind::AllToAll
             ? combineAllToAll(group, rows, experts, counts, out, error)
             : combineAllGather(group, rows, experts, counts, out, error);
}

std::vector<int64_t> reference::tokenPermutation(uint64_t seed, int64_t step,
                                                 int64_t n) {
  std::vector<int64_t> permutation(n);
  std::iota(permutation.begin(), permutation.end(), int64_t{0});
  uint64_t stream =
      moert::splitmix64(moert::splitmix64(seed) ^ static_cast<uint64_t>(step));
  for (int64_t i = n - 1; i > 0; --i) {
    uint64_t j = moert::splitmix64(stream ^ static_cast<uint64_t>(i)) %
                 static_cast<uint64_t>(i + 1);
    std::swap(permutation[i], permutation[j]);
  }
  return permutation;
}

bool reference::tokenShuffle(const ExpertGroup &group, const HostTensor &input,
                             uint64_t seed, int64_t step, bool inverse,
                             HostTensor &out, std::string &error) {
  if (input.shape.empty() || !input.isFloat()) {
    error = fmt::format("input {} must be a float tensor of tokens",
                        input.shapeString());
    return false;
  }
  int64_t tokens = leadingCount(input), width = input.shape.back();
  if (!sameTokenCount(group, tokens, "moe.token_shuffle", error))
    return false;
  HostTensor all;
  if (!group.communicator->allGather(group.rank, group.ranks, input, all,
                                     error))
    return false;
  int64_t n = tokens * group.size();
  std::vector<int64_t> permutation = tokenPermutation(seed, step, n);
  // Output row m of the group is input row source[m].
  std::vector<int64_t> source(n);
  for (int64_t m = 0; m < n; ++m) {
    if (inverse)
      source[permutation[m]] = m;
    else
      source[m] = permutation[m];
  }
  out = HostTensor::floats(input.shape);
  for (int64_t i = 0; i < tokens; ++i)
    std::copy_n(all.f32.begin() + source[group.groupRank * tokens + i] * width,
                width, out.f32.begin() + i * width);
  return true;
}
