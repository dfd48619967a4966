//===- SafetensorsFuzzer.cpp - libFuzzer target: safetensors readers ------===//
//
// Arbitrary bytes as a safetensors file (parseSafetensors, what
// SafetensorsFile::open checks before a byte of data is used), or, when
// they start with '{', as a model.safetensors.index.json
// (parseSafetensorsIndex).
//
// A header that parses must describe what the reader promises, checked
// here independently of it: each tensor of a known dtype, its byte range
// inside the data section and exactly dtype bytes times the product of its
// shape (taken in 128 bits, so a wrapped product shows), no two non-empty
// tensors sharing a byte; every data byte is then read (AddressSanitizer
// sees a range past the input). An index that parses must place each
// tensor in one file named without '/' or NUL, not "." or "..".
//
//===----------------------------------------------------------------------===//

#include "moert/HfCheckpoint.h"
#include "moert/Safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

using namespace moert;

/// Where the data bytes' sum goes, so that reading them is not optimized out.
volatile unsigned bytesSum;

namespace {

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "safetensors fuzz property: %s\n", why.c_str());
  std::abort();
}

int dtypeSize(const std::string &dtype) {
  for (const char *one : {"F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"})
    if (dtype == one)
      return 1;
  for (const char *two : {"F16", "BF16", "I16", "U16"})
    if (dtype == two)
      return 2;
  for (const char *four : {"F32", "I32", "U32"})
    if (dtype == four)
      return 4;
  for (const char *eight : {"F64", "I64", "U64"})
    if (dtype == eight)
      return 8;
  return 0;
}

void checkIndex(const std::string &text) {
  std::map<std::string, std::set<std::string>> listed;
  if (!parseSafetensorsIndex(text, "index.json", listed).ok())
    return;
  std::set<std::string> seen;
  for (const auto &[file, tensors] : listed) {
    if (file.empty() || file == "." || file == ".." ||
        file.find('/') != std::string::npos ||
        file.find('\0') != std::string::npos)
      fail("the index names the file '" + file + "'");
    for (const std::string &tensor : tensors)
      if (!seen.insert(tensor).second)
        fail("the index places tensor '" + tensor + "' in two files");
  }
}

void checkFile(const uint8_t *data, size_t size) {
  SafetensorsHeader header;
  if (!parseSafetensors(reinterpret_cast<const char *>(data), size,
                        "'fuzz.safetensors'", header)
           .ok())
    return;
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i)
    length = length << 8 | data[i];
  if (header.dataOffset != 8 + length || header.dataOffset > size)
    fail("data offset " + std::to_string(header.dataOffset));
  const uint64_t dataBytes = size - header.dataOffset;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto &[name, entry] : header.entries) {
    const int bytes = dtypeSize(entry.dtype);
    if (bytes == 0)
      fail("tensor '" + name + "' has dtype '" + entry.dtype + "'");
    unsigned __int128 count = 1;
    for (int64_t extent : entry.shape) {
      if (extent < 0)
        fail("tensor '" + name + "' has a negative extent");
      count *= static_cast<uint64_t>(extent);
      if (count > (static_cast<unsigned __int128>(1) << 64))
        count = static_cast<unsigned __int128>(1) << 64; // stays too big
    }
    if (entry.begin > entry.end || entry.end > dataBytes)
      fail("tensor '" + name + "' lies outside the data");
    if (count * bytes != entry.end - entry.begin)
      fail("tensor '" + name + "' has " +
           std::to_string(entry.end - entry.begin) +
           " bytes, not its dtype's times its shape's");
    if (entry.end > entry.begin)
      ranges.push_back({entry.begin, entry.end});
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i - 1].second > ranges[i].first)
      fail("two tensors overlap");
  // Read every tensor's bytes from the input as SafetensorsFile::data would.
  unsigned sum = 0;
  for (const auto &[begin, end] : ranges)
    for (uint64_t b = begin; b < end; ++b)
      sum += data[header.dataOffset + b];
  bytesSum = sum;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 0 && data[0] == '{')
    checkIndex(std::string(reinterpret_cast<const char *>(data), size));
  else
    checkFile(data, size);
  return 0;
}
