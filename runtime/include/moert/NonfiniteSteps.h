//===- NonfiniteSteps.h - What a run does after a non-finite step -*- C++ -*-===//
//
// One decision for `moec train` (CPU reference) and the compiled program's
// driver, taken on the host after every step from two scalars it reads
// anyway: the loss and the global gradient norm (the step's `grad_norm`,
// which covers every gradient and is global in a partitioned step, so every
// rank decides the same).
//
// A step whose gradient norm is not finite left the parameters and AdamW
// moments as they were (moe.adamw's `skip_nonfinite`, decided on the
// device). With `--skip-nonfinite-steps N` the run counts such a step as
// skipped and goes on, up to N of them; the next step's AdamW step number
// is then the count of updates applied, so that bias correction counts
// only those. Any other non-finite step stops the run: one more than N, or
// a non-finite loss with a finite norm (its update was applied). The count
// of skipped steps is saved in checkpoints (moert/Checkpoint.h), so that a
// resumed run goes on with the same AdamW step numbers and what is left of
// the same N. Plain C++, no CUDA.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_NONFINITESTEPS_H
#define MOERT_NONFINITESTEPS_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

namespace moert {

class NonfiniteSteps {
public:
  enum class Outcome { Finite, Skipped, Stop };

  /// A run that skips at most `allowed` non-finite steps, `skippedBefore`
  /// of them already (a resumed run: its checkpoint's count).
  explicit NonfiniteSteps(int64_t allowed, int64_t skippedBefore = 0)
      : allowed(allowed), skipped(skippedBefore) {}

  /// Decides 1-based step `t` from its loss and gradient norm; `message`
  /// says what was found (empty when both are finite).
  Outcome decide(int64_t t, double loss, double gradNorm,
                 std::string &message) {
    message.clear();
    const bool lossFinite = std::isfinite(loss),
               normFinite = std::isfinite(gradNorm);
    if (lossFinite && normFinite)
      return Outcome::Finite;
    std::string what = !lossFinite && !normFinite ? "loss and grad_norm"
                       : lossFinite               ? "grad_norm"
                                                  : "loss";
    message = "step " + std::to_string(t) + ": non-finite " + what +
              " (loss " + number(loss) + ", grad_norm " + number(gradNorm) +
              ")";
    if (normFinite) {
      message += "; the update was applied (only a non-finite gradient "
                 "norm skips it); stopping";
      return Outcome::Stop;
    }
    if (skipped >= allowed) {
      message += allowed == 0
                     ? "; stopping (--skip-nonfinite-steps N skips up to N "
                       "such steps)"
                     : "; " + std::to_string(skipped) +
                           " skipped already, the most "
                           "--skip-nonfinite-steps " +
                           std::to_string(allowed) + " allows; stopping";
      return Outcome::Stop;
    }
    ++skipped;
    message += "; skipped (" + std::to_string(skipped) + " of " +
               std::to_string(allowed) + ")";
    return Outcome::Skipped;
  }

  /// The AdamW step number of 1-based step `t`: the updates applied before
  /// it, plus one.
  int64_t adamwStep(int64_t t) const { return t - skipped; }

  int64_t skippedSteps() const { return skipped; }

private:
  static std::string number(double x) {
    if (std::isnan(x)) // whatever its sign bit
      return "nan";
    char text[32];
    std::snprintf(text, sizeof(text), "%.6g", x);
    return text;
  }

  int64_t allowed;
  int64_t skipped;
};

} // namespace moert

#endif // MOERT_NONFINITESTEPS_H
