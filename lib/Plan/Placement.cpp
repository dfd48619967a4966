//===- Placement.cpp - Where every parameter's shards live ----------------===//
//
// See moec/Plan/Placement.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Plan/Placement.h"

#include <numeric>

using namespace moec::plan;

static int64_t product(llvm::ArrayRef<int64_t> shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t(1),
                         std::multiplies<int64_t>());
}

int64_t ParameterLayout::numLocalElements() const {
  return product(localShape);
}

int64_t ParameterLayout::numHeldElements() const { return product(heldShape); }

int64_t Shard::numElements() const { return product(shape); }

ParameterLayout moec::plan::layoutParameter(const Parameter &param,
                                            const Mesh &mesh) {
  ParameterLayout layout;
  layout.localShape = param.shape;
  int64_t firstShardable = 0;
  if (param.kind == ParameterKind::Expert && !param.shape.empty()) {
    layout.expertDim = 0;
    layout.localShape[0] /= mesh.expertParallelDegree();
    firstShardable = 1;
  }
  const int64_t h = mesh.shardDegree();
  const int64_t rank = static_cast<int64_t>(layout.localShape.size());
  layout.heldShape = layout.localShape;
  if (h == 1 || firstShardable >= rank)
    return layout;
  layout.shardDim = firstShardable;
  for (int64_t d = firstShardable; d < rank; ++d) {
    if (layout.localShape[d] % h == 0) {
      layout.shardDim = d;
      break;
    }
  }
  layout.heldShape[layout.shardDim] =
      (layout.localShape[layout.shardDim] + h - 1) / h;
  return layout;
}

Shard moec::plan::shardOf(const Parameter &param,
                          const ParameterLayout &layout, const Mesh &mesh,
                          int64_t rank) {
  MeshCoord c = mesh.coord(rank);
  Shard shard;
  shard.offsets.assign(param.shape.size(), 0);
  shard.shape = layout.localShape;
  if (layout.expertDim >= 0)
    shard.offsets[layout.expertDim] = c.p * layout.localShape[layout.expertDim];
  if (layout.shardDim >= 0) {
    const int64_t n = layout.localShape[layout.shardDim];
    const int64_t chunk = (n + mesh.shardDegree() - 1) / mesh.shardDegree();
    const int64_t begin = std::min(n, c.h * chunk);
    const int64_t end = std::min(n, begin + chunk);
    shard.offsets[layout.shardDim] += begin;
    shard.shape[layout.shardDim] = end - begin;
  }
  return shard;
}

ExpertRange moec::plan::expertsOf(const Mesh &mesh, int64_t numExperts,
                                  int64_t rank) {
  int64_t count = numExperts / mesh.expertParallelDegree();
  return {mesh.coord(rank).p * count, count};
}

ModelPlacement::ModelPlacement(const ModelDescription &model, const Mesh &mesh)
    : modelDesc(&model), meshRef(&mesh) {
  for (const Parameter &param : model.parameters)
    paramLayouts.push_back(layoutParameter(param, mesh));
}

Shard ModelPlacement::shard(size_t param, int64_t rank) const {
  return shardOf(modelDesc->parameters[param], paramLayouts[param], *meshRef,
                 rank);
}

int64_t ModelPlacement::shardElements(int64_t rank) const {
  int64_t n = 0;
  for (size_t i = 0; i < paramLayouts.size(); ++i)
    n += shard(i, rank).numElements();
  return n;
}

int64_t ModelPlacement::shardElements(int64_t rank, ParameterKind kind) const {
  int64_t n = 0;
  for (size_t i = 0; i < paramLayouts.size(); ++i)
    if (modelDesc->parameters[i].kind == kind)
      n += shard(i, rank).numElements();
  return n;
}

int64_t ModelPlacement::unitLocalElements(int64_t unit) const {
  int64_t n = 0;
  for (size_t i = 0; i < paramLayouts.size(); ++i)
    if (modelDesc->parameters[i].unit == unit)
      n += paramLayouts[i].numLocalElements();
  return n;
}

int64_t ModelPlacement::heldElements() const {
  int64_t n = 0;
  for (const ParameterLayout &layout : paramLayouts)
    n += layout.numHeldElements();
  return n;
}

int64_t ModelPlacement::heldElements(ParameterKind kind) const {
  int64_t n = 0;
  for (size_t i = 0; i < paramLayouts.size(); ++i)
    if (modelDesc->parameters[i].kind == kind)
      n += paramLayouts[i].numHeldElements();
  return n;
}
