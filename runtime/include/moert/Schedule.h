//===- Schedule.h - The learning-rate schedule of a training run -*- C++ -*-===//
//
// One definition for `moec train` (CPU reference) and the compiled
// program's driver, so that both take the same learning rate at every step
// (linear warm-up to the peak over `warmup` steps, then cosine decay to the
// minimum at step `total`) and read the same token blocks. Plain C++, no
// CUDA.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_SCHEDULE_H
#define MOERT_SCHEDULE_H

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <string>

namespace moert {

struct LrSchedule {
  double peak = 1e-3, minimum = 1e-4;
  int64_t warmup = 2, total = 1;

  /// The learning rate of 1-based step `t`.
  double at(int64_t t) const {
    if (t <= warmup)
      return peak * static_cast<double>(t) / std::max<int64_t>(warmup, 1);
    double progress = static_cast<double>(t - warmup) /
                      std::max<int64_t>(total - warmup, 1);
    progress = std::min(progress, 1.0);
    return minimum +
           0.5 * (peak - minimum) * (1.0 + std::cos(M_PI * progress));
  }
};

/// What is wrong with a run's schedule flags (--lr, --min-lr,
/// --warmup-steps, --total-steps; `totalSteps` 0 is the default, the run's
/// length), or an empty string: learning rates finite with 0 <= minimum <=
/// peak, no negative step count, an explicit total not shorter than the
/// warm-up.
inline std::string scheduleFlagsProblem(double lr, double minLr,
                                        int64_t warmupSteps,
                                        int64_t totalSteps) {
  auto number = [](double v) {
    char text[32];
    std::snprintf(text, sizeof(text), "%g", v);
    return std::string(text);
  };
  if (!std::isfinite(lr) || lr < 0)
    return "--lr " + number(lr) + " must be a finite rate of at least 0";
  if (!std::isfinite(minLr) || minLr < 0 || minLr > lr)
    return "--min-lr " + number(minLr) + " must be finite, at least 0 and " +
           "at most --lr " + number(lr);
  if (warmupSteps < 0)
    return "--warmup-steps " + std::to_string(warmupSteps) +
           " must not be negative";
  if (totalSteps < 0)
    return "--total-steps " + std::to_string(totalSteps) +
           " must not be negative (0: the run's length)";
  if (totalSteps > 0 && totalSteps < warmupSteps)
    return "--total-steps " + std::to_string(totalSteps) +
           " is shorter than --warmup-steps " + std::to_string(warmupSteps);
  return {};
}

/// The token block that row `row` of rank `rank`'s micro-batch of `batch`
/// rows reads at 1-based step `t`: block r of the t-th global batch of
/// worldSize · batch blocks, wrapping around the file's `blocks`. The W ranks
/// together read what one process with a micro-batch of W · batch would.
inline int64_t trainingBlock(int64_t t, int64_t rank, int64_t worldSize,
                             int64_t batch, int64_t row, int64_t blocks) {
  return ((t - 1) * worldSize * batch + rank * batch + row) % blocks;
}

} // namespace moert

#endif // MOERT_SCHEDULE_H
