//===- ParameterBlocks.cpp - A rank's block of a global parameter ---------===//
//
// See moert/ParameterBlocks.h. The overlap of two blocks is a box in
// global coordinates; it is copied one innermost run at a time.
//
//===----------------------------------------------------------------------===//

#include "moert/ParameterBlocks.h"

#include <algorithm>
#include <cstring>

using namespace moert;

int64_t moert::elementCount(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t extent : shape)
    n *= extent;
  return n;
}

std::string moert::shapeText(const std::vector<int64_t> &shape) {
  std::string text;
  for (size_t d = 0; d < shape.size(); ++d)
    text += (d ? "x" : "") + std::to_string(shape[d]);
  return text.empty() ? "scalar" : text;
}

Status moert::placeBlock(const std::string &name, const BlockLayout &layout,
                         const MeshShape &mesh, int64_t h, int64_t p,
                         BlockPlace &place) {
  const size_t rank = layout.shape.size();
  auto refuse = [&](const std::string &why) {
    return Status::failure("parameter '" + name + "': held " +
                           shapeText(layout.shape) + " of global " +
                           shapeText(layout.globalShape) + " on the mesh " +
                           std::to_string(mesh.replicas) + "x" +
                           std::to_string(mesh.shard) + "x" +
                           std::to_string(mesh.expert) + ": " + why);
  };
  if (layout.globalShape.size() != rank)
    return refuse("the ranks differ");
  if (layout.chunkDim >= static_cast<int>(rank) || layout.chunkDim < -1)
    return refuse("chunk dimension " + std::to_string(layout.chunkDim) +
                  " is not a dimension");
  if (layout.expertLocal && (rank == 0 || layout.chunkDim == 0))
    return refuse("an expert parameter needs dim 0 for its experts, not "
                  "chunked");
  place.start.assign(rank, 0);
  place.valid.assign(rank, 0);
  for (size_t d = 0; d < rank; ++d) {
    const int64_t held = layout.shape[d], global = layout.globalShape[d];
    // Divisions, not products: a held extent (from a checkpoint's
    // manifest) may be any int64.
    if (d == 0 && layout.expertLocal) {
      if (global % mesh.expert != 0 || held != global / mesh.expert)
        return refuse(std::to_string(held) + " experts on each of P = " +
                      std::to_string(mesh.expert) + " ranks are not the " +
                      std::to_string(global));
      place.start[d] = p * held;
      place.valid[d] = held;
    } else if (static_cast<int>(d) == layout.chunkDim) {
      // torch.chunk's chunks: ceil(global / H) each.
      if (held != global / mesh.shard + (global % mesh.shard != 0))
        return refuse("dim " + std::to_string(d) + " holds " +
                      std::to_string(held) + ", not ceil(" +
                      std::to_string(global) + " / H = " +
                      std::to_string(mesh.shard) + ")");
      place.start[d] = h * held;
      place.valid[d] = std::clamp<int64_t>(global - h * held, 0, held);
    } else {
      if (held != global)
        return refuse("dim " + std::to_string(d) +
                      " is neither split nor whole");
      place.valid[d] = held;
    }
  }
  return Status::success();
}

BlockPlace moert::wholePlace(const std::vector<int64_t> &globalShape) {
  return {std::vector<int64_t>(globalShape.size(), 0), globalShape};
}

int64_t moert::copyOverlap(const std::vector<int64_t> &srcShape,
                           const BlockPlace &srcPlace, const char *src,
                           const std::vector<int64_t> &dstShape,
                           const BlockPlace &dstPlace, char *dst,
                           int elementBytes) {
  const size_t rank = srcShape.size();
  // The overlap [lo, hi) in global coordinates.
  std::vector<int64_t> lo(rank), hi(rank);
  for (size_t d = 0; d < rank; ++d) {
    lo[d] = std::max(srcPlace.start[d], dstPlace.start[d]);
    hi[d] = std::min(srcPlace.start[d] + srcPlace.valid[d],
                     dstPlace.start[d] + dstPlace.valid[d]);
    if (hi[d] <= lo[d])
      return 0;
  }
  if (rank == 0) {
    std::memcpy(dst, src, elementBytes);
    return 1;
  }
  // Row-major strides, in elements.
  std::vector<int64_t> srcStride(rank, 1), dstStride(rank, 1);
  for (size_t d = rank - 1; d > 0; --d) {
    srcStride[d - 1] = srcStride[d] * srcShape[d];
    dstStride[d - 1] = dstStride[d] * dstShape[d];
  }
  const int64_t run = hi[rank - 1] - lo[rank - 1];
  int64_t copied = 0;
  std::vector<int64_t> at(lo.begin(), lo.end() - 1); // the outer index
  while (true) {
    int64_t srcOffset = 0, dstOffset = 0;
    for (size_t d = 0; d < rank; ++d) {
      int64_t g = d + 1 < rank ? at[d] : lo[d];
      srcOffset += (g - srcPlace.start[d]) * srcStride[d];
      dstOffset += (g - dstPlace.start[d]) * dstStride[d];
    }
    std::memcpy(dst + dstOffset * elementBytes, src + srcOffset * elementBytes,
                run * elementBytes);
    copied += run;
    // The next outer index, last dimension fastest.
    size_t d = at.size();
    while (d > 0) {
      if (++at[d - 1] < hi[d - 1])
        break;
      at[d - 1] = lo[d - 1];
      --d;
    }
    if (d == 0)
      return copied;
  }
}
