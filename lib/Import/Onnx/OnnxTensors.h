//===- OnnxTensors.h - Reading ONNX tensor data -----------------*- C++ -*-===//
//
// Internal to the importer: decoding an onnx.TensorProto's elements (inline
// typed fields, raw_data, or external data beside the model) into a
// HostTensor, with the checks that keep external data inside the model's
// folder.
//
//===----------------------------------------------------------------------===//

#ifndef LIB_IMPORT_ONNX_ONNXTENSORS_H
#define LIB_IMPORT_ONNX_ONNXTENSORS_H

#include "moec/Support/HostTensor.h"

#include <onnx/onnx_pb.h>

#include <optional>
#include <string>

namespace moec {

/// Where an external tensor's bytes live, after validation.
struct ExternalLocation {
  std::string path; ///< Resolved against the model's folder.
  uint64_t offset = 0;
  std::optional<uint64_t> length;
};

/// Validates a tensor's external_data entries; `modelDir` is the folder the
/// locations are relative to. Rejects absolute locations and locations that
/// leave `modelDir`, naming the tensor and the location.
bool resolveExternalLocation(const onnx::TensorProto &tensor,
                             const std::string &modelDir,
                             ExternalLocation &out, std::string &error);

/// True when `tensor` keeps its bytes in an external file.
bool hasExternalData(const onnx::TensorProto &tensor);

/// Decodes `tensor` into fp32 (floating types) or int64 (integer and bool
/// types) elements. External data is read from `modelDir`.
bool decodeTensor(const onnx::TensorProto &tensor, const std::string &modelDir,
                  HostTensor &out, std::string &error);

} // namespace moec

#endif // LIB_IMPORT_ONNX_ONNXTENSORS_H
