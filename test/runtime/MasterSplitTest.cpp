//===- MasterSplitTest.cpp - Unit tests of the split fp32 masters ---------===//
//
// moert/MasterSplit.h over every bf16 high half with the low halves that
// decide the rounding (0, 1, below, at and above the half step, the top)
// and a few others: the join gives back every master bit for bit, NaNs stay
// NaN, and the copy is round-to-nearest-even except at exact ties, where it
// rounds away from zero. (Run over all 2^32 patterns once, in the commit
// that added it: the same.)
//
//===----------------------------------------------------------------------===//

#include "moert/MasterSplit.h"

#include <gtest/gtest.h>

#include <cstring>

using namespace moert;

namespace {

bool isNaNBits(uint32_t bits) { return (bits & 0x7fffffffu) > 0x7f800000u; }

/// fp32 bits rounded to the nearest bf16, ties to even (a cast), not NaN.
uint16_t roundNearestEven(uint32_t bits) {
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

TEST(MasterSplit, JoinInvertsSplitAndTheCopyIsRounded) {
  const uint16_t lows[] = {0x0000, 0x0001, 0x1234, 0x7ffe, 0x7fff, 0x8000,
                           0x8001, 0x9abc, 0xfffe, 0xffff};
  int64_t checked = 0, ties = 0;
  for (uint32_t high = 0; high <= 0xffffu; ++high)
    for (uint16_t low : lows) {
      uint32_t bits = (high << 16) | low;
      float p;
      std::memcpy(&p, &bits, 4);
      uint16_t hi, lo;
      splitMaster(p, hi, lo);
      float q = joinMaster(hi, lo);
      uint32_t back;
      std::memcpy(&back, &q, 4);
      ++checked;
      if (isNaNBits(bits)) {
        ASSERT_TRUE(isNaNBits(back)) << std::hex << bits;
        ASSERT_TRUE(isNaNBits(static_cast<uint32_t>(hi) << 16)) << std::hex
                                                                << bits;
        continue;
      }
      ASSERT_EQ(back, bits) << "the join of " << std::hex << bits;
      if (low == 0x8000u) {
        ++ties;
        ASSERT_EQ(hi, static_cast<uint16_t>(high + 1))
            << "a tie rounds away from zero: " << std::hex << bits;
      } else {
        ASSERT_EQ(hi, roundNearestEven(bits)) << std::hex << bits;
      }
    }
  EXPECT_EQ(checked, 65536 * 10);
  EXPECT_EQ(ties, 65536 - 2 * 128); // high halves with a finite exponent
}

TEST(MasterSplit, EdgesOfTheRange) {
  auto split = [](uint32_t bits) {
    float p;
    std::memcpy(&p, &bits, 4);
    uint16_t hi, lo;
    splitMaster(p, hi, lo);
    return hi;
  };
  EXPECT_EQ(split(0x7f7fffffu), 0x7f80u); // the largest float rounds to Inf
  EXPECT_EQ(split(0xff7fffffu), 0xff80u); // and its negative to -Inf
  EXPECT_EQ(split(0x7f800000u), 0x7f80u); // Inf stays Inf
  EXPECT_EQ(split(0x80000000u), 0x8000u); // -0 stays -0
  EXPECT_EQ(split(0x00008000u), 0x0001u); // a tie among subnormals
  EXPECT_EQ(split(0x7f800001u), 0x7fc0u); // a NaN with a low payload
}

} // namespace
