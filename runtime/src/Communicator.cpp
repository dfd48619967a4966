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

std::string moert::checkAllToAllCounts(int groupSize,
                                       const std::vector<size_t> &sendCounts,
                                       const std::vector<size_t> &sendOffsets,
                                       const std::vector<size_t> &recvCounts,
                                       const std::vector<size_t> &recvOffsets) {
  const size_t peers = static_cast<size_t>(groupSize);
  for (const auto *v : {&sendCounts, &sendOffsets, &recvCounts, &recvOffsets})
    if (v->size() != peers)
      return "counts and offsets need one entry per rank of the group (" +
             std::to_string(peers) + "), got send " +
             std::to_string(sendCounts.size()) + "/" +
             std::to_string(sendOffsets.size()) + ", receive " +
             std::to_string(recvCounts.size()) + "/" +
             std::to_string(recvOffsets.size());
  return {};
}

std::string moert::checkBroadcastRoot(int groupSize, int root) {
  if (root < 0 || root >= groupSize)
    return "root " + std::to_string(root) + " is not a rank of the group";
  return {};
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
