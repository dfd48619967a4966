//===- ScheduleTest.cpp - Unit tests of the training schedule -------------===//
//
// moert/Schedule.h's token order, shared by moec train's simulated ranks and
// the compiled program's driver: W ranks of micro-batch B read, step by
// step and rank by rank, exactly the blocks one process with a micro-batch
// of W·B reads, each once per global batch, wrapping around the file.
//
//===----------------------------------------------------------------------===//

#include "moert/Schedule.h"

#include <gtest/gtest.h>

#include <vector>

using namespace moert;

namespace {

TEST(Schedule, RanksReadTheGlobalBatchInOrder) {
  const int64_t blocks = 13; // not a multiple of any global batch
  for (int64_t w : {1, 2, 4, 8})
    for (int64_t b : {1, 2, 3})
      for (int64_t t = 1; t <= 5; ++t) {
        std::vector<int64_t> ranks, whole;
        for (int64_t r = 0; r < w; ++r)
          for (int64_t row = 0; row < b; ++row)
            ranks.push_back(trainingBlock(t, r, w, b, row, blocks));
        for (int64_t row = 0; row < w * b; ++row)
          whole.push_back(trainingBlock(t, 0, 1, w * b, row, blocks));
        EXPECT_EQ(ranks, whole) << "W " << w << ", B " << b << ", step " << t;
      }
  // Step 2 of 2 ranks of 2 rows: blocks 4..7; rank 1 reads 6 and 7, and
  // the file of 13 blocks wraps at step 4 (blocks 12, 0, 1, 2).
  EXPECT_EQ(trainingBlock(2, 1, 2, 2, 0, 13), 6);
  EXPECT_EQ(trainingBlock(2, 1, 2, 2, 1, 13), 7);
  EXPECT_EQ(trainingBlock(4, 0, 2, 2, 0, 13), 12);
  EXPECT_EQ(trainingBlock(4, 0, 2, 2, 1, 13), 0);
}

TEST(Schedule, WarmupThenCosine) {
  LrSchedule schedule{1e-3, 1e-4, 2, 10};
  EXPECT_DOUBLE_EQ(schedule.at(1), 5e-4);
  EXPECT_DOUBLE_EQ(schedule.at(2), 1e-3);
  EXPECT_DOUBLE_EQ(schedule.at(6), 1e-4 + 0.5 * 9e-4); // halfway: cos = 0
  EXPECT_DOUBLE_EQ(schedule.at(10), 1e-4);
  EXPECT_DOUBLE_EQ(schedule.at(20), 1e-4); // past the end: the minimum
}

} // namespace
