//===- Checkpoint.h - A training program's checkpoints on disk --*- C++ -*-===//
//
// A checkpoint is DIR/step_N.ckpt: a header (magic "MOECKPT1", steps
// completed, state bytes, the fingerprint of the parameter layout, the
// initialisation seed), then the state region's bytes but the derived ones
// (the bf16 parameter copies, recomputed on resume). DIR/latest is a
// one-line file naming the newest, and DIR/index.tsv says where each
// parameter and its AdamW moments are in the state. Every file is written
// through a temporary file and a rename, and `latest` after the checkpoint
// it names, so a crash leaves the previous checkpoint in place.
//
// Host-only and independent of the GPU: the driver copies the state
// between the device and these functions.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CHECKPOINT_H
#define MOERT_CHECKPOINT_H

#include "moert/Status.h"
#include "moert/TrainDriver.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace moert {

/// What a checkpoint must match for a program to resume from it.
struct CheckpointLayout {
  uint64_t fingerprint = 0; ///< of the parameters' names, shapes, offsets
  int64_t stateBytes = 0;   ///< the state region less its derived bytes
};

/// The layout of `program`'s checkpoints.
CheckpointLayout checkpointLayout(const TrainProgram &program);

/// A checkpoint found on disk.
struct CheckpointInfo {
  std::filesystem::path path;
  int64_t step = 0; ///< steps completed
  uint64_t seed = 0;
};

/// The checkpoint file DIR/latest names, if it can be opened.
Status findLatestCheckpoint(const std::filesystem::path &dir,
                            std::filesystem::path &path);

/// The checkpoint at `path`, checked against `layout`: its header, its
/// fingerprint and its size.
Status openCheckpoint(const std::filesystem::path &path,
                      const CheckpointLayout &layout, CheckpointInfo &found);

/// Reads the `layout.stateBytes` saved state bytes of `checkpoint` into
/// `state` (host memory).
Status readCheckpointState(const CheckpointInfo &checkpoint,
                           const CheckpointLayout &layout, char *state);

/// Writes DIR/step_`step`.ckpt from `state` (host memory, the layout's
/// bytes), then DIR/latest naming it, then DIR/index.tsv; creates DIR.
Status writeCheckpoint(const std::filesystem::path &dir,
                       const TrainProgram &program,
                       const CheckpointLayout &layout, int64_t step,
                       uint64_t seed, const char *state,
                       std::filesystem::path &written);

/// Writes the concatenated `parts` to `path` through a temporary file and a
/// rename, so a crash never leaves a half-written file under that name.
Status
writeFileAtomically(const std::filesystem::path &path,
                    const std::vector<std::pair<const void *, size_t>> &parts);

} // namespace moert

#endif // MOERT_CHECKPOINT_H
