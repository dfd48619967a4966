//===- OnnxTensors.cpp - Reading ONNX tensor data -------------------------===//
//
// Decodes onnx.TensorProto elements into HostTensors and reads and writes
// TensorProto files. External data must stay inside the model's folder: an
// absolute location, a `..` that climbs out, or a symbolic link that leads
// out is an error, never a read.
//
//===----------------------------------------------------------------------===//

#include "OnnxTensors.h"

#include "moec/Import/Onnx.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringMap.h"

#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <limits>

using namespace moec;

namespace {

float halfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { // Subnormal: normalise.
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bfloat16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// Bytes per element of the element types moec reads, or 0 if unsupported.
size_t elementSize(int32_t type) {
  using T = onnx::TensorProto;
  switch (type) {
  case T::FLOAT: case T::INT32: case T::UINT32: return 4;
  case T::DOUBLE: case T::INT64: case T::UINT64: return 8;
  case T::FLOAT16: case T::BFLOAT16: case T::INT16: case T::UINT16: return 2;
  case T::INT8: case T::UINT8: case T::BOOL: return 1;
  default: return 0;
  }
}

bool isFloatType(int32_t type) {
  using T = onnx::TensorProto;
  return type == T::FLOAT || type == T::DOUBLE || type == T::FLOAT16 ||
         type == T::BFLOAT16;
}

/// Decodes little-endian element bytes.
void decodeBytes(int32_t type, const char *bytes, int64_t count,
                 HostTensor &out) {
  using T = onnx::TensorProto;
  for (int64_t i = 0; i < count; ++i) {
    const char *p = bytes + i * elementSize(type);
    switch (type) {
    case T::FLOAT: { float v; std::memcpy(&v, p, 4); out.f32[i] = v; break; }
    case T::DOUBLE: { double v; std::memcpy(&v, p, 8); out.f32[i] = static_cast<float>(v); break; }
    case T::FLOAT16: { uint16_t v; std::memcpy(&v, p, 2); out.f32[i] = halfToFloat(v); break; }
    case T::BFLOAT16: { uint16_t v; std::memcpy(&v, p, 2); out.f32[i] = bfloat16ToFloat(v); break; }
    case T::INT64: { int64_t v; std::memcpy(&v, p, 8); out.i64[i] = v; break; }
    case T::UINT64: { uint64_t v; std::memcpy(&v, p, 8); out.i64[i] = static_cast<int64_t>(v); break; }
    case T::INT32: { int32_t v; std::memcpy(&v, p, 4); out.i64[i] = v; break; }
    case T::UINT32: { uint32_t v; std::memcpy(&v, p, 4); out.i64[i] = v; break; }
    case T::INT16: { int16_t v; std::memcpy(&v, p, 2); out.i64[i] = v; break; }
    case T::UINT16: { uint16_t v; std::memcpy(&v, p, 2); out.i64[i] = v; break; }
    case T::INT8: out.i64[i] = static_cast<int8_t>(*p); break;
    case T::UINT8: case T::BOOL: out.i64[i] = static_cast<uint8_t>(*p); break;
    }
  }
}

} // namespace

bool moec::hasExternalData(const onnx::TensorProto &tensor) {
  return tensor.data_location() == onnx::TensorProto::EXTERNAL;
}

bool moec::resolveExternalLocation(const onnx::TensorProto &tensor,
                                   const std::string &modelDir,
                                   ExternalLocation &out, std::string &error) {
  std::string location;
  for (const auto &entry : tensor.external_data()) {
    if (entry.key() == "location") {
      location = entry.value();
    } else if (entry.key() == "offset" || entry.key() == "length") {
      char *end = nullptr;
      unsigned long long v = std::strtoull(entry.value().c_str(), &end, 10);
      if (entry.value().empty() || *end != '\0') {
        error = fmt::format("initializer '{}': external data {} '{}' is not "
                            "a number",
                            tensor.name(), entry.key(), entry.value());
        return false;
      }
      if (entry.key() == "offset")
        out.offset = v;
      else
        out.length = v;
    }
  }
  if (location.empty()) {
    error = fmt::format("initializer '{}': external data has no location",
                        tensor.name());
    return false;
  }
  if (llvm::sys::path::is_absolute(location)) {
    error = fmt::format("initializer '{}': external data location '{}' is an "
                        "absolute path; it must be relative to the model's "
                        "folder",
                        tensor.name(), location);
    return false;
  }
  int depth = 0;
  for (auto it = llvm::sys::path::begin(location),
            end = llvm::sys::path::end(location);
       it != end; ++it) {
    if (*it == "..")
      --depth;
    else if (*it != ".")
      ++depth;
    if (depth < 0) {
      error = fmt::format("initializer '{}': external data location '{}' "
                          "leaves the model's folder",
                          tensor.name(), location);
      return false;
    }
  }
  llvm::SmallString<256> full(modelDir);
  llvm::sys::path::append(full, location);
  out.path = std::string(full);

  // A symbolic link may still lead out of the folder: compare real paths
  // when the file exists (a weights-free model's file need not).
  llvm::SmallString<256> realDir, realFile;
  if (!llvm::sys::fs::real_path(modelDir, realDir) &&
      !llvm::sys::fs::real_path(out.path, realFile)) {
    llvm::StringRef file(realFile), dir(realDir);
    if (!file.starts_with(dir) ||
        (file.size() > dir.size() && file[dir.size()] != '/')) {
      error = fmt::format("initializer '{}': external data location '{}' "
                          "resolves to '{}', outside the model's folder",
                          tensor.name(), location, std::string(realFile));
      return false;
    }
  }
  return true;
}

bool moec::decodeTensor(const onnx::TensorProto &tensor,
                        const std::string &modelDir, HostTensor &out,
                        std::string &error) {
  using T = onnx::TensorProto;
  int32_t type = tensor.data_type();
  size_t width = elementSize(type);
  if (width == 0) {
    error = fmt::format("tensor '{}' has unsupported element type {} ({})",
                        tensor.name(),
                        T::DataType_Name(static_cast<T::DataType>(type)), type);
    return false;
  }
  // The shape is checked, and the data found, before anything is allocated:
  // the dimensions come from the file and may be absurd.
  HostTensor shaped;
  shaped.shape.assign(tensor.dims().begin(), tensor.dims().end());
  int64_t count = 1;
  for (int64_t d : shaped.shape) {
    if (d < 0) {
      error = fmt::format("tensor '{}' has negative dimension {}",
                          tensor.name(), d);
      return false;
    }
    if (d != 0 && count > std::numeric_limits<int64_t>::max() /
                              static_cast<int64_t>(width) / d) {
      error = fmt::format("tensor '{}' of shape {} is too large: over 2^63 "
                          "bytes",
                          tensor.name(), shaped.shapeString());
      return false;
    }
    count *= d;
  }
  uint64_t expectedBytes = static_cast<uint64_t>(count) * width;
  auto allocate = [&] {
    out = isFloatType(type) ? HostTensor::floats(shaped.shape)
                            : HostTensor::ints(shaped.shape);
  };

  if (hasExternalData(tensor)) {
    ExternalLocation loc;
    if (!resolveExternalLocation(tensor, modelDir, loc, error))
      return false;
    if (loc.length && *loc.length != expectedBytes) {
      error = fmt::format("initializer '{}': external data length {} does "
                          "not match its shape {} ({} bytes)",
                          tensor.name(), *loc.length, shaped.shapeString(),
                          expectedBytes);
      return false;
    }
    uint64_t fileSize = 0;
    std::ifstream in(loc.path, std::ios::binary);
    if (!in || llvm::sys::fs::file_size(loc.path, fileSize)) {
      error = fmt::format("initializer '{}': cannot open external data file "
                          "'{}'",
                          tensor.name(), loc.path);
      return false;
    }
    if (loc.offset > fileSize || fileSize - loc.offset < expectedBytes) {
      error = fmt::format("initializer '{}': external data file '{}' has {} "
                          "bytes, too few for {} bytes at offset {}",
                          tensor.name(), loc.path, fileSize, expectedBytes,
                          loc.offset);
      return false;
    }
    allocate();
    std::string bytes(expectedBytes, '\0');
    in.seekg(static_cast<std::streamoff>(loc.offset));
    in.read(bytes.data(), static_cast<std::streamsize>(expectedBytes));
    if (static_cast<uint64_t>(in.gcount()) != expectedBytes) {
      error = fmt::format("initializer '{}': external data file '{}' ends "
                          "before offset {} + {} bytes",
                          tensor.name(), loc.path, loc.offset, expectedBytes);
      return false;
    }
    decodeBytes(type, bytes.data(), count, out);
    return true;
  }

  if (tensor.has_raw_data()) {
    if (tensor.raw_data().size() != expectedBytes) {
      error = fmt::format("tensor '{}' has {} bytes of raw data but its shape "
                          "{} needs {}",
                          tensor.name(), tensor.raw_data().size(),
                          shaped.shapeString(), expectedBytes);
      return false;
    }
    allocate();
    decodeBytes(type, tensor.raw_data().data(), count, out);
    return true;
  }

  // Typed fields; int32_data holds all narrower types, halves as raw bits.
  int64_t have;
  switch (type) {
  case T::FLOAT: have = tensor.float_data_size(); break;
  case T::DOUBLE: have = tensor.double_data_size(); break;
  case T::INT64: have = tensor.int64_data_size(); break;
  case T::UINT32: case T::UINT64: have = tensor.uint64_data_size(); break;
  default: have = tensor.int32_data_size(); break;
  }
  if (have != count) {
    error = fmt::format("tensor '{}' has {} elements but its shape {} needs "
                        "{}",
                        tensor.name(), have, shaped.shapeString(), count);
    return false;
  }
  allocate();
  switch (type) {
  case T::FLOAT:
    for (int64_t i = 0; i < count; ++i)
      out.f32[i] = tensor.float_data(i);
    return true;
  case T::DOUBLE:
    for (int64_t i = 0; i < count; ++i)
      out.f32[i] = static_cast<float>(tensor.double_data(i));
    return true;
  case T::INT64:
    for (int64_t i = 0; i < count; ++i)
      out.i64[i] = tensor.int64_data(i);
    return true;
  case T::UINT32: case T::UINT64:
    for (int64_t i = 0; i < count; ++i)
      out.i64[i] = static_cast<int64_t>(tensor.uint64_data(i));
    return true;
  default:
    for (int64_t i = 0; i < count; ++i) {
      int32_t v = tensor.int32_data(i);
      if (type == T::FLOAT16)
        out.f32[i] = halfToFloat(static_cast<uint16_t>(v));
      else if (type == T::BFLOAT16)
        out.f32[i] = bfloat16ToFloat(static_cast<uint16_t>(v));
      else
        out.i64[i] = v;
    }
    return true;
  }
}

bool moec::readTensorProtoFile(llvm::StringRef path, HostTensor &out,
                               std::string &error) {
  auto buffer = llvm::MemoryBuffer::getFile(path);
  if (!buffer) {
    error = fmt::format("cannot read '{}': {}", path.str(),
                        buffer.getError().message());
    return false;
  }
  if ((*buffer)->getBufferSize() == 0) {
    error = fmt::format("'{}' is empty, not a serialized onnx.TensorProto",
                        path.str());
    return false;
  }
  onnx::TensorProto tensor;
  if (!tensor.ParseFromArray((*buffer)->getBufferStart(),
                             static_cast<int>((*buffer)->getBufferSize()))) {
    error = fmt::format("'{}' is not a serialized onnx.TensorProto",
                        path.str());
    return false;
  }
  if (hasExternalData(tensor)) {
    error = fmt::format("'{}': tensor files with external data are not "
                        "supported",
                        path.str());
    return false;
  }
  if (!decodeTensor(tensor, "", out, error)) {
    error = fmt::format("'{}': {}", path.str(), error);
    return false;
  }
  return true;
}

bool moec::writeTensorProtoFile(llvm::StringRef path, llvm::StringRef name,
                                const HostTensor &tensor, std::string &error) {
  onnx::TensorProto proto;
  proto.set_name(name.str());
  for (int64_t d : tensor.shape)
    proto.add_dims(d);
  if (tensor.isFloat()) {
    proto.set_data_type(onnx::TensorProto::FLOAT);
    proto.set_raw_data(tensor.f32.data(), tensor.f32.size() * sizeof(float));
  } else {
    proto.set_data_type(onnx::TensorProto::INT64);
    proto.set_raw_data(tensor.i64.data(), tensor.i64.size() * sizeof(int64_t));
  }
  std::string bytes;
  if (!proto.SerializeToString(&bytes)) {
    error = fmt::format("cannot serialize tensor '{}'", name.str());
    return false;
  }
  // Write beside the target and rename, so a reader never sees half a file.
  std::string tmp = path.str() + ".tmp";
  {
    std::ofstream outFile(tmp, std::ios::binary | std::ios::trunc);
    outFile.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!outFile) {
      error = fmt::format("cannot write '{}'", tmp);
      return false;
    }
  }
  if (std::error_code ec = llvm::sys::fs::rename(tmp, path)) {
    llvm::sys::fs::remove(tmp);
    error = fmt::format("cannot rename '{}' to '{}': {}", tmp, path.str(),
                        ec.message());
    return false;
  }
  return true;
}

//===----------------------------------------------------------------------===//
// OnnxWeights
//===----------------------------------------------------------------------===//

struct OnnxWeights::Impl {
  onnx::ModelProto model;
  std::string modelDir;
  llvm::StringMap<const onnx::TensorProto *> byName;
};

OnnxWeights::OnnxWeights() : impl(std::make_unique<Impl>()) {}
OnnxWeights::~OnnxWeights() = default;

std::unique_ptr<OnnxWeights> OnnxWeights::open(llvm::StringRef path,
                                               std::string &error) {
  auto buffer = llvm::MemoryBuffer::getFile(path, /*IsText=*/false,
                                            /*RequiresNullTerminator=*/false);
  if (!buffer) {
    error = fmt::format("cannot read '{}': {}", path.str(),
                        buffer.getError().message());
    return nullptr;
  }
  std::unique_ptr<OnnxWeights> weights(new OnnxWeights());
  if ((*buffer)->getBufferSize() > static_cast<size_t>(INT32_MAX) ||
      !weights->impl->model.ParseFromArray(
          (*buffer)->getBufferStart(),
          static_cast<int>((*buffer)->getBufferSize()))) {
    error = fmt::format("'{}' is not an ONNX model", path.str());
    return nullptr;
  }
  llvm::SmallString<256> dir(path);
  llvm::sys::path::remove_filename(dir);
  weights->impl->modelDir = dir.empty() ? "." : std::string(dir);
  for (const auto &init : weights->impl->model.graph().initializer())
    weights->impl->byName[init.name()] = &init;
  return weights;
}

bool OnnxWeights::load(llvm::StringRef name, HostTensor &out,
                       std::string &error) const {
  auto it = impl->byName.find(name);
  if (it == impl->byName.end()) {
    error = fmt::format("the model has no initializer '{}'", name.str());
    return false;
  }
  return decodeTensor(*it->second, impl->modelDir, out, error);
}
