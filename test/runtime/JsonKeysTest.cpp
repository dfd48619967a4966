//===- JsonKeysTest.cpp - Tests of the duplicate-key finder ---------------===//
//
// A key named twice is found at any depth, named with its object's JSON
// pointer (arrays by index, '~' and '/' escaped); the same key in different
// objects, and text that is not JSON, are not reported.
//
//===----------------------------------------------------------------------===//

#include "moert/JsonKeys.h"

#include <gtest/gtest.h>

using namespace moert;

namespace {

TEST(JsonKeys, NoneInDistinctKeys) {
  EXPECT_FALSE(findDuplicateJsonKey(R"({"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]})"));
  EXPECT_FALSE(findDuplicateJsonKey("[]"));
  EXPECT_FALSE(findDuplicateJsonKey("7"));
}

TEST(JsonKeys, TopLevel) {
  std::optional<DuplicateJsonKey> d =
      findDuplicateJsonKey(R"({"micro_batch_size": 2, "seq_length": 64, "micro_batch_size": 4})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->key, "micro_batch_size");
  EXPECT_EQ(d->objectPointer, "");
  EXPECT_EQ(d->describe(), "key 'micro_batch_size' appears twice in the "
                           "top-level object: say it once");
}

TEST(JsonKeys, NestedObjectsAndArrays) {
  // After a closed object, an array of scalars and of objects: the path
  // of the innermost open object, with the array's element index.
  std::optional<DuplicateJsonKey> d = findDuplicateJsonKey(
      R"({"x": {"y": 1}, "list": [1, "two", null, {"k": 1}, {"k": 1, "k": 2}]})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->key, "k");
  EXPECT_EQ(d->objectPointer, "/list/4");
  EXPECT_EQ(d->describe(),
            "key 'k' appears twice in the object at '/list/4': say it once");
  d = findDuplicateJsonKey(R"({"a/b": {"c~d": {"e": [], "e": 1}}})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->objectPointer, "/a~1b/c~0d");
}

TEST(JsonKeys, FirstDuplicateOnly) {
  std::optional<DuplicateJsonKey> d =
      findDuplicateJsonKey(R"({"ops": {"m": 1, "m": 2}, "b": 1, "b": 2})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->key, "m");
  EXPECT_EQ(d->objectPointer, "/ops");
}

TEST(JsonKeys, NotJsonIsNotReported) {
  EXPECT_FALSE(findDuplicateJsonKey(R"({"a": 1, "a": )"));
  EXPECT_FALSE(findDuplicateJsonKey("not json"));
}

// Nesting is counted outside strings only; the first level past the limit
// is named by its byte.
TEST(JsonNesting, DeepestLevelIsCounted) {
  const std::string deep512 = std::string(512, '[') + std::string(512, ']');
  EXPECT_FALSE(checkJsonNesting(deep512));
  const std::string deep513 = "[" + deep512 + "]";
  EXPECT_EQ(checkJsonNesting(deep513),
            "its arrays and objects nest more than 512 levels deep (at byte "
            "512)");
  // Brackets inside strings, escaped quotes included, are not nesting.
  EXPECT_FALSE(checkJsonNesting(R"({"a": "\"[[[[", "b": [1]})" +
                                std::string(1000, ' ')));
  EXPECT_FALSE(checkJsonNesting("{\"k\": \"" + std::string(600, '{') + "\"}"));
}

} // namespace
