//===- Safetensors.cpp - Reading and writing safetensors files ------------===//
//
// See moert/Safetensors.h.
//
//===----------------------------------------------------------------------===//

#include "moert/Safetensors.h"
#include "moert/AtomicFile.h"
#include "moert/JsonKeys.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

using namespace moert;

namespace {

/// A header longer than this is refused before it is read (the largest
/// Hugging Face checkpoints have headers of a few hundred KiB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
/// The most elements of one tensor (and of each dimension).
constexpr uint64_t kMaxElements = 1ull << 48;

/// The bytes per element of a safetensors dtype name, 0 for a name that is
/// not one.
int bytesOfDtypeName(const std::string &name) {
  static const std::map<std::string, int> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1},
      {"F8_E5M2", 1}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
      {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1}};
  auto it = sizes.find(name);
  return it == sizes.end() ? 0 : it->second;
}

std::string shapeList(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t d = 0; d < shape.size(); ++d)
    text += (d ? ", " : "") + std::to_string(shape[d]);
  return text + "]";
}

float bf16ToF32(uint16_t half) {
  uint32_t bits = static_cast<uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

uint16_t f32ToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if (std::isnan(value))
    return static_cast<uint16_t>((bits >> 16) | 0x40); // a quiet NaN
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

float f16ToF32(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const int exponent = (half >> 10) & 0x1f;
  const uint32_t mantissa = half & 0x3ff;
  float magnitude;
  if (exponent == 0)
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  else if (exponent == 31)
    magnitude = mantissa ? std::numeric_limits<float>::quiet_NaN()
                         : std::numeric_limits<float>::infinity();
  else
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  uint32_t bits;
  std::memcpy(&bits, &magnitude, 4);
  bits |= sign;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

uint16_t f32ToF16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const float magnitude = std::fabs(value);
  if (std::isnan(value))
    return sign | 0x7e00;
  if (magnitude >= 65520.0f) // rounds past the largest half, 65504
    return sign | 0x7c00;
  if (magnitude < std::ldexp(1.0f, -14)) {
    // Subnormal: multiples of 2^-24, rounded to nearest even.
    float units = std::nearbyint(magnitude * std::ldexp(1.0f, 24));
    return sign | static_cast<uint16_t>(units);
  }
  int exponent;
  float fraction = std::frexp(magnitude, &exponent); // [0.5, 1)
  // 11 significant bits, rounded to nearest even (the default mode).
  float significand = std::nearbyint(std::ldexp(fraction, 11));
  if (significand == 2048.0f) {
    significand = 1024.0f;
    exponent += 1;
  }
  const int biased = exponent - 1 + 15;
  return sign | static_cast<uint16_t>(biased << 10) |
         static_cast<uint16_t>(static_cast<uint32_t>(significand) & 0x3ff);
}

} // namespace

const char *moert::dtypeName(TensorDtype dtype) {
  switch (dtype) {
  case TensorDtype::F32:
    return "F32";
  case TensorDtype::F16:
    return "F16";
  case TensorDtype::BF16:
    return "BF16";
  }
  return "?";
}

int moert::dtypeBytes(TensorDtype dtype) {
  return dtype == TensorDtype::F32 ? 4 : 2;
}

void moert::convertToF32(TensorDtype dtype, const void *src, float *dst,
                         int64_t count) {
  const char *bytes = static_cast<const char *>(src);
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == TensorDtype::F32) {
      std::memcpy(&dst[i], bytes + 4 * i, 4);
      continue;
    }
    uint16_t half;
    std::memcpy(&half, bytes + 2 * i, 2);
    dst[i] = dtype == TensorDtype::BF16 ? bf16ToF32(half) : f16ToF32(half);
  }
}

void moert::convertFromF32(const float *src, TensorDtype dtype, void *dst,
                           int64_t count) {
  char *bytes = static_cast<char *>(dst);
  for (int64_t i = 0; i < count; ++i) {
    if (dtype == TensorDtype::F32) {
      std::memcpy(bytes + 4 * i, &src[i], 4);
      continue;
    }
    uint16_t half =
        dtype == TensorDtype::BF16 ? f32ToBf16(src[i]) : f32ToF16(src[i]);
    std::memcpy(bytes + 2 * i, &half, 2);
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping)
    ::munmap(mapping, mappedBytes);
}

Status moert::parseSafetensors(const char *bytes, uint64_t fileBytes,
                               const std::string &where,
                               SafetensorsHeader &result) {
  auto refuse = [&](const std::string &why) {
    return Status::failure("safetensors file " + where + ": " + why);
  };
  if (fileBytes < 8)
    return refuse("it has " + std::to_string(fileBytes) +
                  " bytes, fewer than the 8 of the header's length");
  uint64_t headerBytes = 0;
  for (int i = 7; i >= 0; --i)
    headerBytes = headerBytes << 8 | static_cast<unsigned char>(bytes[i]);
  if (headerBytes > kMaxHeaderBytes || headerBytes > fileBytes - 8)
    return refuse("its header length " + std::to_string(headerBytes) +
                  " runs past the file's " + std::to_string(fileBytes) +
                  " bytes (or past " + std::to_string(kMaxHeaderBytes) +
                  "): truncated or not safetensors");
  const uint64_t dataBytes = fileBytes - 8 - headerBytes;
  SafetensorsHeader file;
  file.dataOffset = 8 + headerBytes;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + headerBytes);
  } catch (const nlohmann::json::parse_error &e) {
    return refuse(std::string("its header is not JSON: ") + e.what());
  } catch (const nlohmann::json::exception &e) {
    // A number past a double's range is not a parse_error (the fuzzer's
    // find: it ended the process).
    return refuse(std::string("its header cannot be read: ") + e.what());
  }
  if (!header.is_object())
    return refuse("its header is not a JSON object");
  if (std::optional<DuplicateJsonKey> twice = findDuplicateJsonKey(
          std::string_view(bytes + 8, static_cast<size_t>(headerBytes))))
    return refuse("its header's " + twice->describe());
  for (const auto &[name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object())
        return refuse("'__metadata__' is not an object");
      for (const auto &[key, text] : value.items()) {
        if (!text.is_string())
          return refuse("'__metadata__' entry '" + key + "' is not a string");
        file.metadata[key] = text.get<std::string>();
      }
      continue;
    }
    const std::string tensor = "tensor '" + name + "'";
    if (!value.is_object() || !value.contains("dtype") ||
        !value.contains("shape") || !value.contains("data_offsets"))
      return refuse(tensor + " lacks dtype, shape or data_offsets");
    const nlohmann::json &dtype = value["dtype"], &shape = value["shape"],
                         &offsets = value["data_offsets"];
    if (!dtype.is_string() || bytesOfDtypeName(dtype.get<std::string>()) == 0)
      return refuse(tensor + " has dtype " + dtype.dump() +
                    ", not a safetensors dtype");
    SafetensorsEntry entry;
    entry.dtype = dtype.get<std::string>();
    if (!shape.is_array())
      return refuse(tensor + " has shape " + shape.dump() +
                    ", not a list of sizes");
    bool empty = false;
    for (const nlohmann::json &size : shape) {
      if (!size.is_number_unsigned() || size.get<uint64_t>() > kMaxElements)
        return refuse(tensor + " has shape " + shape.dump() +
                      ", not a list of sizes");
      entry.shape.push_back(size.get<int64_t>());
      empty |= entry.shape.back() == 0;
    }
    // The element count, at most kMaxElements: checked before each
    // product, which could wrap past 2^64 and pass (a shape of
    // [2^32, 2^32] with no data bytes did).
    uint64_t count = empty ? 0 : 1;
    for (int64_t size : entry.shape) {
      if (empty)
        break;
      if (count > kMaxElements / static_cast<uint64_t>(size))
        return refuse(tensor + " has shape " + shape.dump() +
                      ": more than 2^48 elements");
      count *= static_cast<uint64_t>(size);
    }
    if (!offsets.is_array() || offsets.size() != 2 ||
        !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      return refuse(tensor + " has data_offsets " + offsets.dump() +
                    ", not [begin, end]");
    entry.begin = offsets[0].get<uint64_t>();
    entry.end = offsets[1].get<uint64_t>();
    const uint64_t expected = count * bytesOfDtypeName(entry.dtype);
    if (entry.begin > entry.end || entry.end > dataBytes)
      return refuse(tensor + " has data_offsets [" +
                    std::to_string(entry.begin) + ", " +
                    std::to_string(entry.end) + "] outside the " +
                    std::to_string(dataBytes) +
                    " data bytes of the file: truncated or a lying header");
    if (entry.end - entry.begin != expected)
      return refuse(tensor + " has " +
                    std::to_string(entry.end - entry.begin) +
                    " data bytes, but " + entry.dtype + " " +
                    shapeList(entry.shape) + " needs " +
                    std::to_string(expected));
    file.entries.emplace(name, std::move(entry));
  }
  // No two tensors share bytes.
  std::vector<std::pair<uint64_t, const std::string *>> starts;
  for (const auto &[name, entry] : file.entries)
    if (entry.end > entry.begin)
      starts.push_back({entry.begin, &name});
  std::sort(starts.begin(), starts.end());
  for (size_t i = 1; i < starts.size(); ++i)
    if (file.entries.at(*starts[i - 1].second).end > starts[i].first)
      return refuse("tensors '" + *starts[i - 1].second + "' and '" +
                    *starts[i].second + "' overlap");
  result = std::move(file);
  return Status::success();
}

Status SafetensorsFile::open(const std::filesystem::path &path,
                             std::unique_ptr<SafetensorsFile> &result) {
  const std::string where = "'" + path.string() + "'";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status::failure("cannot open " + where + ": " +
                           std::strerror(errno));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    int error = errno;
    ::close(fd);
    return Status::failure("cannot stat " + where + ": " +
                           std::strerror(error));
  }
  const uint64_t fileBytes = static_cast<uint64_t>(info.st_size);
  if (fileBytes < 8) {
    ::close(fd);
    SafetensorsHeader unused;
    return parseSafetensors("", fileBytes, where, unused);
  }
  void *mapping = ::mmap(nullptr, fileBytes, PROT_READ, MAP_PRIVATE, fd, 0);
  int mapError = errno;
  ::close(fd);
  if (mapping == MAP_FAILED)
    return Status::failure("cannot map " + where + ": " +
                           std::strerror(mapError));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile);
  file->filePath = path;
  file->mapping = mapping;
  file->mappedBytes = fileBytes;
  const char *bytes = static_cast<const char *>(mapping);
  if (Status s = parseSafetensors(bytes, fileBytes, where, file->header);
      !s.ok())
    return s;
  file->dataStart = bytes + file->header.dataOffset;
  result = std::move(file);
  return Status::success();
}

Status moert::writeSafetensors(
    const std::filesystem::path &path,
    const std::vector<TensorToWrite> &tensors,
    const std::map<std::string, std::string> &metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty())
    header["__metadata__"] = metadata;
  std::vector<std::pair<const void *, size_t>> parts;
  uint64_t offset = 0;
  for (const TensorToWrite &t : tensors) {
    uint64_t count = 1;
    for (int64_t size : t.shape)
      count *= static_cast<uint64_t>(size);
    const uint64_t bytes = count * dtypeBytes(t.dtype);
    header[t.name] = {{"dtype", dtypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    parts.push_back({t.bytes, bytes});
    offset += bytes;
  }
  std::string text = header.dump();
  // The data starts 8-byte aligned, padded with spaces as the format allows.
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char length[8];
  for (int i = 0; i < 8; ++i)
    length[i] = static_cast<unsigned char>(text.size() >> (8 * i));
  parts.insert(parts.begin(), {{length, 8}, {text.data(), text.size()}});
  return writeFileAtomically(path, parts);
}
