//===- RankBlocks.h - Simulated ranks' blocks of the parameters -*- C++ -*-===//
//
// A partitioned training step on simulated ranks (executeOnRanks; `moec
// train --reference` with a parallel layout) keeps, for every rank, the
// block of each parameter (and of its gradient and AdamW moments) that the
// partitioned @init_params creates on that rank: its moe.param_init
// ops say where each block sits in the global parameter (global_shape,
// split_axes over the (R, H, P) mesh). RankBlocks gathers the ranks' blocks
// into global tensors (--dump, --export-hf) and scatters global tensors into
// every rank's block (delayed_param false, init_from) with the placement
// arithmetic the compiled programs use (moert/ParameterBlocks.h).
//
// A gather is also a check: every replica of a block must hold the same
// values, bit for bit (the partitioned step applies the same update to
// them), and the padding past the global extent must stay 0; a rank that
// differs is named with the element and both values.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_REFERENCE_RANKBLOCKS_H
#define MOEC_REFERENCE_RANKBLOCKS_H

#include "moec/Plan/Mesh.h"
#include "moec/Support/HostTensor.h"
#include "moert/ParameterBlocks.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/Support/Error.h"

#include <string>
#include <vector>

namespace moec::reference {

class RankBlocks {
public:
  /// The layouts of the parameters `names` (in that order) from the
  /// moe.param_init ops of the partitioned `init` (@init_params) on `mesh`.
  /// Fails, naming the parameter, where one is not created by a
  /// moe.param_init or its block is not a split the programs place
  /// (offsets, a replica split, the expert axis on another dimension than 0,
  /// a second split dimension, extents that disagree with the mesh).
  static llvm::Expected<RankBlocks> get(mlir::func::FuncOp init,
                                        llvm::ArrayRef<std::string> names,
                                        const plan::Mesh &mesh);

  /// The global shape of parameter `i`.
  const std::vector<int64_t> &globalShape(unsigned i) const {
    return layouts[i].globalShape;
  }

  /// The global tensor of parameter `i` (or of its gradient or a moment,
  /// which share its blocks) from `blocks`, one per world rank; `what`
  /// ("parameter", "gradient", ...) names it in errors.
  llvm::Expected<HostTensor> gather(unsigned i,
                                    llvm::ArrayRef<const HostTensor *> blocks,
                                    llvm::StringRef what) const;

  /// World rank `rank`'s block of parameter `i` cut from `global`, the
  /// padding 0. `global` must have the global shape.
  HostTensor scatter(unsigned i, const HostTensor &global,
                     int64_t rank) const;

private:
  RankBlocks(std::vector<std::string> names,
             std::vector<moert::BlockLayout> layouts, const plan::Mesh &mesh);

  /// Where world rank `rank`'s block of parameter `i` sits.
  moert::BlockPlace placeOf(unsigned i, int64_t rank) const;

  std::vector<std::string> names;
  std::vector<moert::BlockLayout> layouts;
  plan::Mesh mesh;
  moert::MeshShape shape;
};

} // namespace moec::reference

#endif // MOEC_REFERENCE_RANKBLOCKS_H
