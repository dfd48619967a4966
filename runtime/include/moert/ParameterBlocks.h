//===- ParameterBlocks.h - A rank's block of a global parameter -*- C++ -*-===//
//
// Where the block of a parameter that a rank holds sits in the global
// parameter (docs/partitioning.md, Layout; ParameterInfo's globalShape,
// chunkDim and expertLocal): an expert parameter's dim 0 holds experts
// [p·E/P, (p+1)·E/P); along the chunked dimension the block is chunk h of
// ceil(n / H), clipped to the global extent, the rest zero padding; every
// other dimension is whole. Replicas (R) hold the same blocks.
//
// Host-only arithmetic on row-major buffers, shared by the driver's
// parameter dump (gather the ranks' blocks into global parameters), the
// checkpoints' resharding (fill a block of one layout from the blocks of
// another) and `moec train --reference`'s simulated ranks (both ways).
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_PARAMETERBLOCKS_H
#define MOERT_PARAMETERBLOCKS_H

#include "moert/MeshShape.h"
#include "moert/Status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moert {

/// How a parameter is split over the mesh: the block a rank holds
/// (`shape`), the global parameter's shape, the chunked dimension (-1:
/// none) and whether dim 0 is the expert dimension split over P.
struct BlockLayout {
  std::vector<int64_t> shape, globalShape;
  int chunkDim = -1;
  bool expertLocal = false;
};

/// A block's place in the global parameter: per dimension, the global index
/// of its first element and how many of its elements, from the first, are
/// in the global parameter (the rest, along the chunked dimension, are
/// padding).
struct BlockPlace {
  std::vector<int64_t> start, valid;
};

/// The place of the block of the rank at shard coordinate `h` and expert
/// coordinate `p` on `mesh`; fails, naming `name`, when `layout` is not a
/// split of its global shape on that mesh (rank or extents that disagree).
Status placeBlock(const std::string &name, const BlockLayout &layout,
                  const MeshShape &mesh, int64_t h, int64_t p,
                  BlockPlace &place);

/// The global parameter as a block: its own place, all of it valid.
BlockPlace wholePlace(const std::vector<int64_t> &globalShape);

/// Copies the elements that the valid parts of two blocks share, from
/// `src` (a row-major buffer of `srcShape` at `srcPlace`) to `dst` (of
/// `dstShape` at `dstPlace`), `elementBytes` each; the rest of `dst` is
/// left as it is. Returns the number of elements copied.
int64_t copyOverlap(const std::vector<int64_t> &srcShape,
                    const BlockPlace &srcPlace, const char *src,
                    const std::vector<int64_t> &dstShape,
                    const BlockPlace &dstPlace, char *dst, int elementBytes);

/// The number of elements of `shape`.
int64_t elementCount(const std::vector<int64_t> &shape);

/// "2x3x4".
std::string shapeText(const std::vector<int64_t> &shape);

} // namespace moert

#endif // MOERT_PARAMETERBLOCKS_H
