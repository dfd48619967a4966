//===- Safetensors.h - Reading and writing safetensors files ----*- C++ -*-===//
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of
// JSON (each tensor's dtype, shape and [begin, end) byte offsets into the
// data that follows; an optional "__metadata__" object of strings), then
// the tensors' bytes, row-major, little-endian. Hugging Face checkpoints
// (moert/HfCheckpoint.h) are made of them.
//
// Reading memory-maps the file and trusts nothing in it: the header length,
// the JSON, every dtype, shape and offset range is checked against the
// file's size before a byte of data is touched, and a failure names the
// file and the tensor. Only the pages a reader copies are read from the
// disk. Writing lays the tensors out in the given order, 8-byte aligned
// header, and writes the file atomically (moert/AtomicFile.h).
//
// Host-only; the JSON is parsed by nlohmann::json.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_SAFETENSORS_H
#define MOERT_SAFETENSORS_H

#include "moert/Status.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// The element types moert converts between: safetensors' "F32", "F16" and
/// "BF16".
enum class TensorDtype { F32, F16, BF16 };

/// "F32", "F16", "BF16".
const char *dtypeName(TensorDtype dtype);
/// Bytes per element.
int dtypeBytes(TensorDtype dtype);

/// One tensor of a safetensors file as its header describes it.
struct SafetensorsEntry {
  std::string dtype; ///< as written ("F32", "I64", ...)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0; ///< byte offsets into the data section
};

/// What a safetensors file's header says, checked against the file.
struct SafetensorsHeader {
  uint64_t dataOffset = 0; ///< where the data starts: 8 + the header's length
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

/// Reads and checks the header of the `size` bytes of a whole safetensors
/// file at `bytes` (SafetensorsFile::open's checks; no byte of data is
/// read); a failure names the file as `where`. A header that passes
/// describes tensors of a known dtype, each of exactly its dtype's bytes
/// times its shape's element count (at most 2^48), lying inside the data
/// section, no two sharing a byte.
Status parseSafetensors(const char *bytes, uint64_t size,
                        const std::string &where, SafetensorsHeader &header);

/// A safetensors file, memory-mapped for reading.
class SafetensorsFile {
public:
  ~SafetensorsFile();

  /// Opens and checks `path` (parseSafetensors).
  static Status open(const std::filesystem::path &path,
                     std::unique_ptr<SafetensorsFile> &file);

  const std::filesystem::path &path() const { return filePath; }
  const std::map<std::string, SafetensorsEntry> &entries() const {
    return header.entries;
  }
  const std::map<std::string, std::string> &metadata() const {
    return header.metadata;
  }
  /// The first byte of `entry`'s data (in the mapping).
  const char *data(const SafetensorsEntry &entry) const {
    return dataStart + entry.begin;
  }

private:
  SafetensorsFile() = default;
  std::filesystem::path filePath;
  void *mapping = nullptr;
  size_t mappedBytes = 0;
  const char *dataStart = nullptr;
  SafetensorsHeader header;
};

/// A tensor to write: its name, dtype, shape and row-major bytes
/// (elementCount(shape) · dtypeBytes(dtype) of them).
struct TensorToWrite {
  std::string name;
  TensorDtype dtype = TensorDtype::F32;
  std::vector<int64_t> shape;
  const void *bytes = nullptr;
};

/// Writes `tensors`, in that order, and `metadata` as a safetensors file at
/// `path`, atomically.
Status writeSafetensors(const std::filesystem::path &path,
                        const std::vector<TensorToWrite> &tensors,
                        const std::map<std::string, std::string> &metadata);

/// Converts `count` elements of `dtype` at `src` to fp32 at `dst`
/// (exactly: every F16 and BF16 value is an fp32 value).
void convertToF32(TensorDtype dtype, const void *src, float *dst,
                  int64_t count);

/// Converts `count` fp32 values to `dtype` at `dst`, rounding to nearest
/// even (F16 overflows to infinity).
void convertFromF32(const float *src, TensorDtype dtype, void *dst,
                    int64_t count);

} // namespace moert

#endif // MOERT_SAFETENSORS_H
