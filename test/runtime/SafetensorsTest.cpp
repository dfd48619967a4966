//===- SafetensorsTest.cpp - Unit tests of the safetensors reader/writer --===//
//
// A written file reads back (dtypes, shapes, bytes, metadata, an 8-byte
// aligned header); the fp32 <-> bf16/fp16 conversions round to nearest
// even at the ties and the limits; every malformed file is refused naming
// the file and the tensor, never read past its end.
//
//===----------------------------------------------------------------------===//

#include "moert/Safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

using namespace moert;

namespace {

std::filesystem::path tempFolder(const std::string &name) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("moert-safetensors-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// A file of the 8-byte length of `header`, `header` and `data` bytes.
std::filesystem::path rawFile(const std::filesystem::path &dir,
                              const std::string &header, size_t data,
                              int64_t length = -1) {
  std::filesystem::path path = dir / "raw.safetensors";
  std::ofstream out(path, std::ios::binary);
  uint64_t n = length < 0 ? header.size() : static_cast<uint64_t>(length);
  for (int i = 0; i < 8; ++i)
    out.put(static_cast<char>(n >> (8 * i)));
  out << header << std::string(data, '\0');
  return path;
}

std::string openError(const std::filesystem::path &path) {
  std::unique_ptr<SafetensorsFile> file;
  Status status = SafetensorsFile::open(path, file);
  return status.ok() ? "" : status.message();
}

uint16_t bits16(float value, TensorDtype dtype) {
  uint16_t out;
  convertFromF32(&value, dtype, &out, 1);
  return out;
}

float fromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

TEST(Safetensors, WrittenFileReadsBack) {
  std::filesystem::path dir = tempFolder("roundtrip");
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b = {0x3f80, 0xc000, 0x7f80};
  std::vector<uint16_t> c = {0x3c00};
  ASSERT_TRUE(writeSafetensors(dir / "x.safetensors",
                               {{"a", TensorDtype::F32, {2, 3}, a.data()},
                                {"b", TensorDtype::BF16, {3}, b.data()},
                                {"c", TensorDtype::F16, {1, 1}, c.data()}},
                               {{"format", "pt"}})
                  .ok());
  std::unique_ptr<SafetensorsFile> file;
  Status status = SafetensorsFile::open(dir / "x.safetensors", file);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  ASSERT_EQ(file->entries().size(), 3u);
  const SafetensorsEntry &ea = file->entries().at("a");
  EXPECT_EQ(ea.dtype, "F32");
  EXPECT_EQ(ea.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(file->data(ea), a.data(), 24), 0);
  const SafetensorsEntry &eb = file->entries().at("b");
  EXPECT_EQ(eb.dtype, "BF16");
  EXPECT_EQ(std::memcmp(file->data(eb), b.data(), 6), 0);
  EXPECT_EQ(file->entries().at("c").dtype, "F16");
  // The header's length keeps the data 8-byte aligned.
  std::ifstream in(dir / "x.safetensors", std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char *>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, ConversionsRoundToNearestEven) {
  // bf16: a tie goes to the even neighbour, above it rounds up.
  EXPECT_EQ(bits16(fromBits(0x3f808000), TensorDtype::BF16), 0x3f80);
  EXPECT_EQ(bits16(fromBits(0x3f818000), TensorDtype::BF16), 0x3f82);
  EXPECT_EQ(bits16(fromBits(0x3f808001), TensorDtype::BF16), 0x3f81);
  EXPECT_TRUE(std::isnan(
      [] {
        uint16_t nan = bits16(std::numeric_limits<float>::quiet_NaN(),
                              TensorDtype::BF16);
        float back;
        convertToF32(TensorDtype::BF16, &nan, &back, 1);
        return back;
      }()));
  // fp16: exact values, the largest finite, overflow, subnormals, ties.
  EXPECT_EQ(bits16(1.0f, TensorDtype::F16), 0x3c00);
  EXPECT_EQ(bits16(-2.0f, TensorDtype::F16), 0xc000);
  EXPECT_EQ(bits16(65504.0f, TensorDtype::F16), 0x7bff);
  EXPECT_EQ(bits16(65519.0f, TensorDtype::F16), 0x7bff);
  EXPECT_EQ(bits16(65520.0f, TensorDtype::F16), 0x7c00);
  EXPECT_EQ(bits16(std::ldexp(1.0f, -24), TensorDtype::F16), 0x0001);
  EXPECT_EQ(bits16(std::ldexp(1.0f, -25), TensorDtype::F16), 0x0000);
  EXPECT_EQ(bits16(std::ldexp(3.0f, -25), TensorDtype::F16), 0x0002);
  EXPECT_EQ(bits16(1.0f + std::ldexp(1.0f, -11), TensorDtype::F16), 0x3c00);
  EXPECT_EQ(bits16(1.0f + std::ldexp(3.0f, -11), TensorDtype::F16), 0x3c02);
  // Every fp16 and bf16 value widens exactly and narrows back to itself.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    uint16_t half = static_cast<uint16_t>(h);
    for (TensorDtype dtype : {TensorDtype::F16, TensorDtype::BF16}) {
      float wide;
      convertToF32(dtype, &half, &wide, 1);
      if (std::isnan(wide))
        continue;
      ASSERT_EQ(bits16(wide, dtype), half) << dtypeName(dtype) << " " << h;
    }
  }
}

TEST(Safetensors, MalformedFilesAreRefused) {
  std::filesystem::path dir = tempFolder("malformed");
  const std::string f32 =
      R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})";
  EXPECT_EQ(openError(rawFile(dir, f32, 16)), "");
  {
    std::filesystem::path path = dir / "short.safetensors";
    std::ofstream(path) << "abc";
    EXPECT_EQ(openError(path),
              "safetensors file '" + path.string() +
                  "': it has 3 bytes, fewer than the 8 of the header's length");
  }
  std::string where = "safetensors file '" + (dir / "raw.safetensors").string() +
                      "': ";
  EXPECT_EQ(openError(rawFile(dir, f32, 16, 1000)),
            where + "its header length 1000 runs past the file's 89 bytes "
                    "(or past 104857600): truncated or not safetensors");
  EXPECT_EQ(openError(rawFile(dir, f32, 15)),
            where + "tensor 'w' has data_offsets [0, 16] outside the 15 data "
                    "bytes of the file: truncated or a lying header");
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", 16)),
            where + "tensor 'w' has 12 data bytes, but F32 [2, 2] needs 16");
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}})", 2)),
            where + "tensor 'w' has dtype \"Q4\", not a safetensors dtype");
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4)),
            where + "tensor 'w' has shape [-1], not a list of sizes");
  // The element count's product is checked before it is taken: 2^32 x 2^32
  // wrapped to 0 elements, and the tensor passed with no data bytes.
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0)),
            where + "tensor 'w' has shape [4294967296,4294967296]: more than "
                    "2^48 elements");
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [281474976710656, 2], "data_offsets": [0, 0]}})", 0)),
            where + "tensor 'w' has shape [281474976710656,2]: more than "
                    "2^48 elements");
  // A zero extent makes any shape empty.
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [281474976710656, 0], "data_offsets": [0, 0]}})", 0)),
            "");
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [1]}})", 4)),
            where + "tensor 'w' lacks dtype, shape or data_offsets");
  EXPECT_EQ(openError(rawFile(dir, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12)),
            where + "tensors 'a' and 'b' overlap");
  EXPECT_NE(openError(rawFile(dir, "{\"w\": ", 0)).find("its header is not JSON"),
            std::string::npos);
  EXPECT_EQ(openError(rawFile(dir, R"({"__metadata__": {"n": 1e999}})", 0)),
            where + "its header cannot be read: "
                    "[json.exception.out_of_range.406] number overflow "
                    "parsing '1e999'");
  EXPECT_EQ(openError(rawFile(dir, "[1, 2]", 0)),
            where + "its header is not a JSON object");
  // A tensor named twice, with other offsets: which one holds it is not
  // for the reader to guess (nlohmann::json keeps the last).
  EXPECT_EQ(openError(rawFile(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8)),
            where + "its header's key 'w' appears twice in the top-level "
                    "object: say it once");
  std::filesystem::remove_all(dir);
}

} // namespace
