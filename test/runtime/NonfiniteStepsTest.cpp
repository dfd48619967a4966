//===- NonfiniteStepsTest.cpp - Unit tests of the non-finite step rule ----===//
//
// moert/NonfiniteSteps.h, shared by moec train and the compiled programs'
// driver: which steps are skipped and which stop the run, the messages, and
// the AdamW step number that counts applied updates only.
//
//===----------------------------------------------------------------------===//

#include "moert/NonfiniteSteps.h"

#include <gtest/gtest.h>

#include <limits>

using namespace moert;

namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
using Outcome = NonfiniteSteps::Outcome;

TEST(NonfiniteSteps, FiniteStepsPassWithoutAMessage) {
  NonfiniteSteps steps(0);
  std::string message = "stale";
  EXPECT_EQ(steps.decide(1, 5.5, 0.7, message), Outcome::Finite);
  EXPECT_EQ(message, "");
  EXPECT_EQ(steps.adamwStep(2), 2);
}

TEST(NonfiniteSteps, WithoutSkippingTheFirstNonfiniteStepStops) {
  NonfiniteSteps steps(0);
  std::string message;
  EXPECT_EQ(steps.decide(7, 5.5, kInf, message), Outcome::Stop);
  EXPECT_EQ(message, "step 7: non-finite grad_norm (loss 5.5, grad_norm inf); "
                     "stopping (--skip-nonfinite-steps N skips up to N such "
                     "steps)");
}

TEST(NonfiniteSteps, SkipsUpToNThenStops) {
  NonfiniteSteps steps(2);
  std::string message;
  EXPECT_EQ(steps.decide(1, 5.5, 0.7, message), Outcome::Finite);
  EXPECT_EQ(steps.decide(2, kNan, kNan, message), Outcome::Skipped);
  EXPECT_EQ(message, "step 2: non-finite loss and grad_norm (loss nan, "
                     "grad_norm nan); skipped (1 of 2)");
  // Step 3's AdamW step number counts the one update applied before it.
  EXPECT_EQ(steps.adamwStep(3), 2);
  EXPECT_EQ(steps.decide(3, 5.4, 0.6, message), Outcome::Finite);
  EXPECT_EQ(steps.decide(4, 5.3, -kInf, message), Outcome::Skipped);
  EXPECT_EQ(message, "step 4: non-finite grad_norm (loss 5.3, grad_norm "
                     "-inf); skipped (2 of 2)");
  EXPECT_EQ(steps.adamwStep(5), 3);
  EXPECT_EQ(steps.decide(5, kNan, kNan, message), Outcome::Stop);
  EXPECT_EQ(message, "step 5: non-finite loss and grad_norm (loss nan, "
                     "grad_norm nan); 2 skipped already, the most "
                     "--skip-nonfinite-steps 2 allows; stopping");
  EXPECT_EQ(steps.skippedSteps(), 2);
}

TEST(NonfiniteSteps, ANonfiniteLossWithAFiniteNormStops) {
  // Its update was applied (only the norm decides on the device): it cannot
  // be skipped after the fact.
  NonfiniteSteps steps(3);
  std::string message;
  EXPECT_EQ(steps.decide(4, kInf, 2.5, message), Outcome::Stop);
  EXPECT_EQ(message, "step 4: non-finite loss (loss inf, grad_norm 2.5); the "
                     "update was applied (only a non-finite gradient norm "
                     "skips it); stopping");
  EXPECT_EQ(steps.skippedSteps(), 0);
}

} // namespace
