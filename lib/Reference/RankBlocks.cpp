//===- RankBlocks.cpp - The simulated ranks' blocks of the parameters -----===//
//
// See RankBlocks.h. A gather places the blocks of replica 0 (and, for a
// parameter not split over the experts, of expert coordinate 0), which
// cover the parameter once, as the programs' dump does; then every rank's
// block is cut from the result again and compared with what the rank holds.
//
//===----------------------------------------------------------------------===//

#include "moec/Reference/RankBlocks.h"

#include "dialects/Moe/IR/MoeOps.h"

#include "llvm/ADT/StringMap.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>

using namespace mlir;
using moec::HostTensor;
using moec::reference::RankBlocks;

namespace {

llvm::Error error(const std::string &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

/// "[2, 5]": the row-major index `flat` in `shape`.
std::string indexText(const std::vector<int64_t> &shape, int64_t flat) {
  std::vector<int64_t> index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return fmt::format("[{}]", fmt::join(index, ", "));
}

/// The block layout moe.param_init `init` creates, or why the programs
/// would not place it.
llvm::Expected<moert::BlockLayout> layoutOf(moe::ParamInitOp init) {
  std::string name = init.getName().str();
  ArrayRef<int64_t> shape = init.getType().getShape();
  moert::BlockLayout layout;
  layout.shape.assign(shape.begin(), shape.end());
  ArrayRef<int64_t> global = init.getGlobalShape() ? *init.getGlobalShape()
                                                   : shape;
  layout.globalShape.assign(global.begin(), global.end());
  if (std::optional<ArrayRef<int64_t>> offsets = init.getOffsets())
    if (llvm::any_of(*offsets, [](int64_t o) { return o != 0; }))
      return error(fmt::format("parameter '{}': moe.param_init places its "
                               "block at offsets [{}], which the ranks' "
                               "layout does not (docs/partitioning.md, Layout)",
                               name, fmt::join(*offsets, ", ")));
  std::optional<ArrayRef<int64_t>> axes = init.getSplitAxes();
  if (!axes)
    return layout;
  for (auto [d, axis] : llvm::enumerate(*axes)) {
    if (axis == -1)
      continue;
    if (axis == moert::kShardAxis && layout.chunkDim < 0) {
      layout.chunkDim = static_cast<int>(d);
      continue;
    }
    if (axis == moert::kExpertAxis && d == 0) {
      layout.expertLocal = true;
      continue;
    }
    return error(fmt::format(
        "parameter '{}': split_axes [{}] split dimension {} along grid axis "
        "{}, which the ranks' layout does not (the shard axis 1 splits one "
        "dimension, the expert axis 2 dimension 0)",
        name, fmt::join(*axes, ", "), d, axis));
  }
  return layout;
}

/// The (R, H, P) extents of `mesh`, as moert places blocks on them.
moert::MeshShape meshShapeOf(const moec::plan::Mesh &mesh) {
  return {mesh.replicas(), mesh.shardDegree(), mesh.expertParallelDegree()};
}

} // namespace

RankBlocks::RankBlocks(std::vector<std::string> names,
                       std::vector<moert::BlockLayout> layouts,
                       const plan::Mesh &mesh)
    : names(std::move(names)), layouts(std::move(layouts)), mesh(mesh),
      shape(meshShapeOf(mesh)) {}

llvm::Expected<RankBlocks> RankBlocks::get(func::FuncOp init,
                                           llvm::ArrayRef<std::string> names,
                                           const plan::Mesh &mesh) {
  llvm::StringMap<moe::ParamInitOp> creators;
  init.walk([&](moe::ParamInitOp op) { creators[op.getName()] = op; });
  const moert::MeshShape shape = meshShapeOf(mesh);
  std::vector<moert::BlockLayout> layouts;
  for (const std::string &name : names) {
    auto it = creators.find(name);
    if (it == creators.end())
      return error(fmt::format("parameter '{}' is not created by a "
                               "moe.param_init of @{}, so its ranks' blocks "
                               "cannot be placed",
                               name, init.getSymName().str()));
    llvm::Expected<moert::BlockLayout> layout = layoutOf(it->second);
    if (!layout)
      return layout.takeError();
    for (int64_t h = 0; h < shape.shard; ++h)
      for (int64_t p = 0; p < shape.expert; ++p) {
        moert::BlockPlace place;
        if (moert::Status s =
                moert::placeBlock(name, *layout, shape, h, p, place);
            !s.ok())
          return error(s.message());
      }
    layouts.push_back(std::move(*layout));
  }
  return RankBlocks(std::vector<std::string>(names.begin(), names.end()),
                    std::move(layouts), mesh);
}

moert::BlockPlace RankBlocks::placeOf(unsigned i, int64_t rank) const {
  plan::MeshCoord c = mesh.coord(rank);
  moert::BlockPlace place;
  // Every (h, p) was placed once by get().
  (void)moert::placeBlock(names[i], layouts[i], shape, c.h, c.p, place);
  return place;
}

HostTensor RankBlocks::scatter(unsigned i, const HostTensor &global,
                               int64_t rank) const {
  const moert::BlockLayout &layout = layouts[i];
  HostTensor block = HostTensor::floats(layout.shape);
  moert::copyOverlap(layout.globalShape, moert::wholePlace(layout.globalShape),
                     reinterpret_cast<const char *>(global.f32.data()),
                     layout.shape, placeOf(i, rank),
                     reinterpret_cast<char *>(block.f32.data()),
                     sizeof(float));
  return block;
}

llvm::Expected<HostTensor>
RankBlocks::gather(unsigned i, llvm::ArrayRef<const HostTensor *> blocks,
                   llvm::StringRef what) const {
  const moert::BlockLayout &layout = layouts[i];
  const std::string &name = names[i];
  if (static_cast<int64_t>(blocks.size()) != shape.size())
    return error(fmt::format("{} '{}': {} blocks for {} ranks", what.str(),
                             name, blocks.size(), shape.size()));
  for (auto [rank, block] : llvm::enumerate(blocks))
    if (!block->isFloat() || block->shape != layout.shape)
      return error(fmt::format(
          "{} '{}' of rank {} has shape {}, not its block's [{}]", what.str(),
          name, rank, block->shapeString(), fmt::join(layout.shape, ", ")));
  HostTensor global = HostTensor::floats(layout.globalShape);
  const moert::BlockPlace whole = moert::wholePlace(layout.globalShape);
  const int64_t experts = layout.expertLocal ? shape.expert : 1;
  for (int64_t h = 0; h < shape.shard; ++h)
    for (int64_t p = 0; p < experts; ++p) {
      const int64_t rank = mesh.rank({/*q=*/0, h, p});
      moert::copyOverlap(layout.shape, placeOf(i, rank),
                         reinterpret_cast<const char *>(blocks[rank]->f32.data()),
                         layout.globalShape, whole,
                         reinterpret_cast<char *>(global.f32.data()),
                         sizeof(float));
    }
  // Every rank's block, cut again from the global tensor: replicas agree
  // and padding is 0, or the partitioned step is wrong.
  for (int64_t rank = 0; rank < shape.size(); ++rank) {
    HostTensor expected = scatter(i, global, rank);
    const std::vector<float> &held = blocks[rank]->f32;
    for (int64_t e = 0, n = expected.numElements(); e < n; ++e) {
      if (std::memcmp(&held[e], &expected.f32[e], sizeof(float)) == 0)
        continue;
      plan::MeshCoord c = mesh.coord(rank);
      return error(fmt::format(
          "{} '{}': rank {} (replica {}, shard {}, expert {}) holds {} at "
          "element {} of its block where {} belongs (the value of the ranks "
          "holding the same block; 0 in the padding): a partitioned step "
          "must keep replicas equal and padding 0",
          what.str(), name, rank, c.q, c.h, c.p, held[e],
          indexText(layout.shape, e), expected.f32[e]));
    }
  }
  return global;
}
