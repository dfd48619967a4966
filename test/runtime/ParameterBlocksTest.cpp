//===- ParameterBlocksTest.cpp - Unit tests of a rank's parameter blocks --===//
//
// moert/ParameterBlocks.h: the place of a rank's block in the global
// parameter (expert split, torch.chunk's chunks along the chunked
// dimension, padding past the end, blocks that are all padding), layouts
// that do not split their global shape refused with the numbers, and
// copyOverlap cutting blocks from a global buffer and gathering them back
// without the padding.
//
//===----------------------------------------------------------------------===//

#include "moert/ParameterBlocks.h"

#include <gtest/gtest.h>

using namespace moert;

namespace {

TEST(ParameterBlocks, PlacesFollowTheLayoutRule) {
  BlockPlace place;
  // A 10x6 embedding on H = 4: chunks of 3 rows, the last 1 row and 2
  // padding.
  BlockLayout embed{{3, 6}, {10, 6}, 0, false};
  ASSERT_TRUE(placeBlock("embed", embed, MeshShape{1, 4, 1}, 3, 0, place).ok());
  EXPECT_EQ(place.start, (std::vector<int64_t>{9, 0}));
  EXPECT_EQ(place.valid, (std::vector<int64_t>{1, 6}));
  // 4 experts of 6x3 on H = 4, P = 2: rank (h, p) = (3, 1) holds experts
  // 2..3 and rows 6..7 of 6: padding only.
  BlockLayout experts{{2, 2, 3}, {4, 6, 3}, 1, true};
  ASSERT_TRUE(
      placeBlock("experts.w1", experts, MeshShape{1, 4, 2}, 3, 1, place).ok());
  EXPECT_EQ(place.start, (std::vector<int64_t>{2, 6, 0}));
  EXPECT_EQ(place.valid, (std::vector<int64_t>{2, 0, 3}));
  // A one-rank program's parameter is its own global parameter.
  BlockLayout whole{{4, 5}, {4, 5}, -1, false};
  ASSERT_TRUE(placeBlock("w", whole, MeshShape{}, 0, 0, place).ok());
  EXPECT_EQ(place.start, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(place.valid, (std::vector<int64_t>{4, 5}));
}

TEST(ParameterBlocks, LayoutsThatDoNotSplitTheGlobalShapeAreRefused) {
  BlockPlace place;
  BlockLayout experts{{3, 2, 3}, {4, 6, 3}, 1, true};
  EXPECT_EQ(placeBlock("experts.w1", experts, MeshShape{1, 4, 2}, 0, 0, place)
                .message(),
            "parameter 'experts.w1': held 3x2x3 of global 4x6x3 on the mesh "
            "1x4x2: 3 experts on each of P = 2 ranks are not the 4");
  BlockLayout chunks{{2, 6}, {10, 6}, 0, false};
  EXPECT_EQ(placeBlock("embed", chunks, MeshShape{1, 4, 1}, 0, 0, place)
                .message(),
            "parameter 'embed': held 2x6 of global 10x6 on the mesh 1x4x1: "
            "dim 0 holds 2, not ceil(10 / H = 4)");
  BlockLayout unsplit{{10, 3}, {10, 6}, 0, false};
  EXPECT_EQ(placeBlock("embed", unsplit, MeshShape{1, 1, 1}, 0, 0, place)
                .message(),
            "parameter 'embed': held 10x3 of global 10x6 on the mesh 1x1x1: "
            "dim 1 is neither split nor whole");
  BlockLayout chunkedExperts{{2, 6, 3}, {4, 6, 3}, 0, true};
  EXPECT_EQ(placeBlock("e", chunkedExperts, MeshShape{1, 1, 2}, 0, 0, place)
                .message(),
            "parameter 'e': held 2x6x3 of global 4x6x3 on the mesh 1x1x2: an "
            "expert parameter needs dim 0 for its experts, not chunked");
  // A checkpoint's held extent times P overflowed int64 (UBSan, the
  // checkpoint fuzzer's target: test/fuzz/checkpoint/); 2^62 + 2 experts
  // on each of 4 ranks wrapped to the 8 of the global shape and placed.
  BlockLayout wraps{{4611686018427387906, 0}, {8, 0}, -1, true};
  EXPECT_EQ(placeBlock("e", wraps, MeshShape{1, 1, 4}, 0, 0, place).message(),
            "parameter 'e': held 4611686018427387906x0 of global 8x0 on the "
            "mesh 1x1x4: 4611686018427387906 experts on each of P = 4 ranks "
            "are not the 8");
  // And ceil(n / H) was taken as (n + H - 1) / H, past int64 for an n
  // near its limit: ceil((2^63 - 1) / 2) = 2^62 was refused.
  BlockLayout big{{4611686018427387904, 0}, {9223372036854775807, 0}, 0, false};
  ASSERT_TRUE(placeBlock("w", big, MeshShape{1, 2, 1}, 1, 0, place).ok());
  EXPECT_EQ(place.valid, (std::vector<int64_t>{4611686018427387903, 0}));
}

TEST(ParameterBlocks, CopyOverlapCutsBlocksAndGathersThemBack) {
  // A 5x3 global of 1..15; H = 2 blocks of 3 rows, the second with one
  // padding row, gathered back.
  std::vector<int64_t> global = {5, 3}, held = {3, 3};
  std::vector<float> whole(15), back(15, -1.0f);
  for (int i = 0; i < 15; ++i)
    whole[i] = static_cast<float>(i + 1);
  for (int64_t h = 0; h < 2; ++h) {
    BlockPlace place;
    ASSERT_TRUE(placeBlock("x", BlockLayout{held, global, 0, false},
                           MeshShape{1, 2, 1}, h, 0, place)
                    .ok());
    std::vector<float> block(9, 0.0f);
    EXPECT_EQ(copyOverlap(global, wholePlace(global),
                          reinterpret_cast<char *>(whole.data()), held, place,
                          reinterpret_cast<char *>(block.data()), 4),
              h == 0 ? 9 : 6);
    if (h == 1) {
      EXPECT_EQ(block, (std::vector<float>{10, 11, 12, 13, 14, 15, 0, 0, 0}));
    }
    copyOverlap(held, place, reinterpret_cast<char *>(block.data()), global,
                wholePlace(global), reinterpret_cast<char *>(back.data()), 4);
  }
  EXPECT_EQ(back, whole);
  // Blocks that do not overlap copy nothing.
  BlockPlace a{{0, 0}, {3, 3}}, b{{3, 0}, {2, 3}};
  std::vector<float> block(9, 0.0f);
  EXPECT_EQ(copyOverlap(held, a, reinterpret_cast<char *>(whole.data()), held,
                        b, reinterpret_cast<char *>(block.data()), 4),
            0);
  EXPECT_EQ(block, std::vector<float>(9, 0.0f));
}

TEST(ParameterBlocks, ShapeText) {
  EXPECT_EQ(shapeText({2, 3, 4}), "2x3x4");
  EXPECT_EQ(shapeText({}), "scalar");
  EXPECT_EQ(elementCount({2, 3, 4}), 24);
}

} // namespace
