//===- Communicator.cpp - Collectives between the ranks of a group --------===//
//
// See moert/Communicator.h.
//
//===----------------------------------------------------------------------===//

#include "moert/Communicator.h"

using namespace moert;

Communicator::~Communicator() = default;

size_t moert::elementBytes(DataType type) {
  switch (type) {
  case DataType::F32:
  case DataType::I32:
    return 4;
  case DataType::BF16:
    return 2;
  case DataType::I64:
    return 8;
  }
  return 0;
}

const char *moert::dataTypeName(DataType type) {
  switch (type) {
  case DataType::F32:
    return "f32";
  case DataType::BF16:
    return "bf16";
  case DataType::I32:
    return "i32";
  case DataType::I64:
    return "i64";
  }
  return "?";
}
