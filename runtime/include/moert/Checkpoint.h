//===- Checkpoint.h - A training program's checkpoints on disk --*- C++ -*-===//
//
// A checkpoint after N steps is the folder DIR/step_N: one file per rank,
// rank_R.shard, holding that rank's state region but the derived bytes
// (the bf16 parameter copies, recomputed on resume), and manifest.tsv,
// written last by rank 0: the step, the seed, the non-finite steps skipped
// so far (moert/NonfiniteSteps.h), the mesh, every parameter's
// place in a shard and in the global parameter (held and global shape,
// chunked dimension, expert split; moert/ParameterBlocks.h), and each
// shard's size and 64-bit FNV-1a checksum. DIR/latest names the newest
// complete one. A one-rank program writes the same, with one shard.
//
// Every file is written to a temporary name, flushed to the disk (fsync)
// and renamed, the folder synced after; the manifest goes after every
// shard and `latest` after the manifest, so a crash at any point leaves
// `latest` naming a complete checkpoint (or none): a folder without a
// manifest is never resumed from.
//
// Resuming under the layout that wrote it reads the rank's own shard.
// Under another (a different R, H or P, the world size too), each rank
// fills every block it holds of every parameter and both AdamW moments
// from the blocks of the old layout that overlap it: the old ranks of
// replica 0 whose blocks overlap are read (verified against their
// checksums), padding stays zero. Files that are missing, truncated,
// corrupted or of another model are refused, naming the file.
//
// Host-only and independent of the GPU: the driver copies the state
// between the device and these functions, and gathers the shards'
// checksums to rank 0.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_CHECKPOINT_H
#define MOERT_CHECKPOINT_H

#include "moert/AtomicFile.h"
#include "moert/ParameterBlocks.h"
#include "moert/Status.h"
#include "moert/TrainDriver.h"

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace moert {

/// One parameter as a checkpoint records it: where its values and AdamW
/// moments are in a shard, and its block layout.
struct CheckpointParameter {
  std::string name;
  int elementBytes = 4;
  int64_t offset = 0, expAvgOffset = 0, expAvgSqOffset = 0;
  BlockLayout layout;
};

/// One rank's file, as the manifest lists it.
struct CheckpointShard {
  std::string file;
  int64_t bytes = 0;
  uint64_t checksum = 0;
};

/// What DIR/step_N/manifest.tsv says.
struct CheckpointManifest {
  int64_t step = 0; ///< steps completed
  uint64_t seed = 0;
  /// Of those steps, the non-finite ones skipped (their updates not
  /// applied); 0 in a manifest written before it was recorded.
  int64_t skippedSteps = 0;
  MeshShape mesh;
  int64_t shardBytes = 0; ///< of every shard: the state less derived bytes
  std::vector<CheckpointParameter> parameters;
  std::vector<CheckpointShard> shards; ///< by world rank
};

/// The manifest of `program`'s checkpoint after `step` steps, `skipped` of
/// them skipped as non-finite, without its shards.
CheckpointManifest checkpointManifest(const TrainProgram &program,
                                      int64_t step, uint64_t seed,
                                      int64_t skipped = 0);

/// The block layout of `parameter` (a one-rank program's global shape is
/// its shape).
BlockLayout parameterLayout(const ParameterInfo &parameter);

/// The 64-bit FNV-1a hash of `bytes`, continued from `hash`.
uint64_t checksum(const void *bytes, size_t size,
                  uint64_t hash = 0xcbf29ce484222325ull);

/// The manifest's text, and back; a text that is not a complete manifest is
/// refused naming `file`, and so is one whose shards, parameters or mesh
/// disagree (a shard's size other than shardBytes, a parameter past it, a
/// shard count other than the mesh's).
std::string formatManifest(const CheckpointManifest &manifest);
Status parseManifest(const std::string &text, const std::string &file,
                     CheckpointManifest &manifest);

/// DIR/step_N.
std::filesystem::path checkpointFolder(const std::filesystem::path &dir,
                                       int64_t step);

/// Writes rank `rank`'s shard of the checkpoint after `step` steps (`bytes`
/// of `state`, host memory) atomically; creates the folders. `shard` gets
/// its file name, size and checksum, for the manifest.
Status writeCheckpointShard(const std::filesystem::path &dir, int64_t step,
                            int rank, const char *state, int64_t bytes,
                            CheckpointShard &shard);

/// Writes `manifest` (with every shard) into its step's folder, then
/// DIR/latest naming that folder; rank 0 calls it once every shard is
/// written.
Status commitCheckpoint(const std::filesystem::path &dir,
                        const CheckpointManifest &manifest);

/// The checkpoint DIR/latest names: its folder and its manifest.
Status findLatestCheckpoint(const std::filesystem::path &dir,
                            std::filesystem::path &folder,
                            CheckpointManifest &manifest);

/// How a program resumes from a checkpoint.
enum class ResumeKind {
  SameLayout, ///< each rank reads its own shard
  Reshard,    ///< each rank fills its blocks from the old layout's
};

/// Whether `program` on its mesh can resume from the checkpoint in
/// `folder` that `manifest` describes, and how: the same parameters (names,
/// global shapes, element types) are required, and every shard file with
/// the manifest's size; a different layout reshards.
Status matchCheckpoint(const std::filesystem::path &folder,
                       const CheckpointManifest &manifest,
                       const TrainProgram &program, ResumeKind &kind);

/// Reads world rank `rank`'s shard into `state` (host memory,
/// manifest.shardBytes), checking its size and checksum.
Status readCheckpointShard(const std::filesystem::path &folder,
                           const CheckpointManifest &manifest, int rank,
                           char *state);

/// Fills `state` (host memory of `program`'s saved bytes, zeroed by the
/// caller) with the blocks that the rank at shard coordinate `h` and expert
/// coordinate `p` of `program`'s mesh holds, from the checkpoint's shards
/// of another layout.
Status reshardCheckpoint(const std::filesystem::path &folder,
                         const CheckpointManifest &manifest,
                         const TrainProgram &program, int64_t h, int64_t p,
                         char *state);

} // namespace moert

#endif // MOERT_CHECKPOINT_H
