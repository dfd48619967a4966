//===- Passes.h - ONNX to moe conversion passes -----------------*- C++ -*-===//
//
// Declarations and registration of the passes that raise an imported ONNX
// graph to `moe` ops (moe-raise-onnx).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_CONVERSION_ONNXTOMOE_PASSES_H
#define MOEC_CONVERSION_ONNXTOMOE_PASSES_H

#include "mlir/Pass/Pass.h"

namespace moec {

#define GEN_PASS_DECL
#include "moec/Conversion/OnnxToMoe/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moec/Conversion/OnnxToMoe/Passes.h.inc"

} // namespace moec

#endif // MOEC_CONVERSION_ONNXTOMOE_PASSES_H
