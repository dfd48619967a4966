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
#include <cstdint>

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
