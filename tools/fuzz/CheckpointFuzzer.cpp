//===- CheckpointFuzzer.cpp - libFuzzer target: checkpoint readers --------===//
//
// Arbitrary bytes as a checkpoint's manifest.tsv (parseManifest): every
// number, shape, offset and file name in it is untrusted, and resuming
// indexes shards with them. A manifest that parses must print
// (formatManifest) as a text that parses to the same manifest.
//
// A manifest that parses, and is small enough (kMaxRanks, kMaxShardBytes,
// kMaxElements: bounds of this harness only), is then resumed from. Its
// shard files are written into this process's folder under the temporary
// one, each of its manifest size, its bytes a function of its file name
// (shardByte) and its checksum set to theirs; the manifest's seed, which a
// resume only copies, picks a new mesh (or the manifest's own) and may
// corrupt one shard. A program holding the same parameters (name, global
// shape, element bytes, expert or not) is laid out on the new mesh by
// docs/partitioning.md's rule; matchCheckpoint, then readCheckpointShard
// for every rank (the same layout) or reshardCheckpoint for every (h, p)
// (another). Checked, independently of the code under test:
//
// - matchCheckpoint accepts (the files are there, of their sizes) and
//   says SameLayout exactly when the meshes, shard sizes, layouts and
//   offsets agree;
// - a read of the same layout succeeds exactly when its shard is not the
//   corrupted one, and then holds the shard's bytes;
// - neither writes past the state it is given (guard bytes follow it);
// - a reshard succeeds exactly when every old layout is a split of its
//   global shape on the old mesh (the rule checked here on its own) and no
//   shard it needs is the corrupted one; then every element of every
//   block the rank holds has the bytes its global element has in the old
//   shard that holds it (found here element by element), inside that
//   shard, and the padding is zero.
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>

using namespace moert;

namespace {

/// The harness's bounds, so that one execution stays fast: the ranks of
/// the checkpoint's mesh (the new one has at most 2 x 4 x 4), the bytes of
/// all its shard files, the elements of all its global parameters.
constexpr int64_t kMaxRanks = 16;
constexpr int64_t kMaxShardBytes = int64_t(1) << 20;
constexpr int64_t kMaxElements = int64_t(1) << 16;
/// The program's derived bytes (not saved), past the saved ones.
constexpr int64_t kDerivedBytes = 8;
/// Bytes of kGuard past the state given to a reader: one written shows in
/// the normal build too (AddressSanitizer sees a write past them).
constexpr int64_t kGuardBytes = 64;
constexpr char kGuard = 0x5a;

[[noreturn]] void fail(const std::string &why) {
  std::fprintf(stderr, "checkpoint fuzz property: %s\n", why.c_str());
  std::abort();
}

std::string meshText(const MeshShape &mesh) {
  return std::to_string(mesh.replicas) + "x" + std::to_string(mesh.shard) +
         "x" + std::to_string(mesh.expert);
}

/// This process's folder of shard files, removed at exit.
struct ShardFolder {
  std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("moec-fuzz-checkpoint-" + std::to_string(getpid()));
  ~ShardFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// Byte `i` of the shard file named `file`: another sequence for every
/// name, so that a byte read from the wrong shard or place shows.
char shardByte(const std::string &file, int64_t i) {
  uint64_t x = (checksum(file.data(), file.size()) + static_cast<uint64_t>(i)) *
               0x9e3779b97f4a7c15ull;
  x ^= x >> 29;
  return static_cast<char>(x >> 56);
}

/// The `size` bytes of the shard file named `file`.
std::string shardContents(const std::string &file, int64_t size) {
  std::string bytes(size, 0);
  for (int64_t i = 0; i < size; ++i)
    bytes[i] = shardByte(file, i);
  return bytes;
}

/// A zeroed state of `bytes` for a reader, followed by the guard.
std::vector<char> guardedState(int64_t bytes) {
  std::vector<char> state(bytes + kGuardBytes, kGuard);
  std::fill_n(state.begin(), bytes, 0);
  return state;
}

/// Fails unless the guard past `bytes` of `state` is whole.
void checkGuard(const std::vector<char> &state, int64_t bytes,
                const std::string &reader) {
  for (int64_t i = bytes; i < static_cast<int64_t>(state.size()); ++i)
    if (state[i] != kGuard)
      fail(reader + " wrote byte " + std::to_string(i) + " of a state of " +
           std::to_string(bytes));
}

/// The block layout of a parameter of `global` shape on `mesh` by
/// docs/partitioning.md's rule (lib/Plan's layoutParameter): an expert
/// parameter's dim 0 split over P, the first dimension after it that H
/// divides (else the first) chunked in ceil(n / H), none when there is no
/// such dimension.
BlockLayout ruleLayout(const std::vector<int64_t> &global, bool expert,
                       const MeshShape &mesh) {
  BlockLayout layout;
  layout.globalShape = global;
  layout.shape = global;
  layout.expertLocal = expert;
  size_t first = 0;
  if (expert) {
    layout.shape[0] /= mesh.expert;
    first = 1;
  }
  if (mesh.shard == 1 || first >= global.size())
    return layout;
  layout.chunkDim = static_cast<int>(first);
  for (size_t d = first; d < global.size(); ++d)
    if (global[d] % mesh.shard == 0) {
      layout.chunkDim = static_cast<int>(d);
      break;
    }
  int64_t &held = layout.shape[layout.chunkDim];
  held = (held + mesh.shard - 1) / mesh.shard;
  return layout;
}

/// Whether `layout` is a split of its global shape on `mesh` (the layout
/// rule of moert/ParameterBlocks.h, any chunked dimension), without
/// overflow for any extents.
bool layoutPlaces(const BlockLayout &layout, const MeshShape &mesh) {
  const size_t rank = layout.shape.size();
  if (layout.globalShape.size() != rank || layout.chunkDim < -1 ||
      layout.chunkDim >= static_cast<int>(rank))
    return false;
  if (layout.expertLocal && (rank == 0 || layout.chunkDim == 0))
    return false;
  for (size_t d = 0; d < rank; ++d) {
    const int64_t held = layout.shape[d], global = layout.globalShape[d];
    if (d == 0 && layout.expertLocal) {
      if (global % mesh.expert != 0 || held != global / mesh.expert)
        return false;
    } else if (static_cast<int>(d) == layout.chunkDim) {
      if (held != global / mesh.shard + (global % mesh.shard != 0))
        return false;
    } else if (held != global) {
      return false;
    }
  }
  return true;
}

/// The new program: the manifest's parameters laid out on `mesh`, their
/// names the manifest's.
struct NewProgram {
  std::vector<ParameterInfo> parameters;
  TrainProgram program;
};

/// Lays out `manifest`'s parameters on `mesh` by the rule, one after
/// another in the state, or at the manifest's offsets when both layouts
/// agree everywhere (so that the program resumes with the same layout).
void buildProgram(const CheckpointManifest &manifest, const MeshShape &mesh,
                  NewProgram &out) {
  std::vector<BlockLayout> layouts;
  bool sameLayouts = manifest.mesh.replicas == mesh.replicas &&
                     manifest.mesh.shard == mesh.shard &&
                     manifest.mesh.expert == mesh.expert;
  for (const CheckpointParameter &c : manifest.parameters) {
    const std::vector<int64_t> &global = c.layout.globalShape;
    // An expert parameter needs a dim 0 (a scalar one the old layout
    // cannot place either: resharding must refuse it).
    layouts.push_back(
        ruleLayout(global, c.layout.expertLocal && !global.empty(), mesh));
    const BlockLayout &l = layouts.back();
    sameLayouts = sameLayouts && l.shape == c.layout.shape &&
                  l.chunkDim == c.layout.chunkDim &&
                  l.expertLocal == c.layout.expertLocal;
  }
  int64_t offset = 0;
  for (size_t i = 0; i < layouts.size(); ++i) {
    const CheckpointParameter &c = manifest.parameters[i];
    const BlockLayout &l = layouts[i];
    ParameterInfo q{c.name.c_str(), l.shape, 0, 0, 0, elementCount(l.shape),
                    c.elementBytes, l.globalShape, l.chunkDim, l.expertLocal};
    const int64_t bytes = q.count * c.elementBytes;
    if (sameLayouts) {
      q.offset = c.offset;
      q.expAvgOffset = c.expAvgOffset;
      q.expAvgSqOffset = c.expAvgSqOffset;
    } else {
      q.offset = offset;
      q.expAvgOffset = offset + bytes;
      q.expAvgSqOffset = offset + 2 * bytes;
      offset += 3 * bytes;
    }
    out.parameters.push_back(q);
  }
  TrainProgram &p = out.program;
  p.parameters = out.parameters.data();
  p.numParameters = static_cast<int>(out.parameters.size());
  p.mesh = mesh;
  p.derivedStateBytes = kDerivedBytes;
  p.stateBytes = (sameLayouts ? manifest.shardBytes : offset) + kDerivedBytes;
}

/// What comparing a rank's state with the old shards found.
struct Comparison {
  bool needsCorrupted = false; ///< an element is in the corrupted shard
  std::string mismatch;        ///< the first element that differs
};

/// Compares `state`, as resharding left it for rank (h, p), element by
/// element with the old shards' bytes (every old layout places).
Comparison compareWithOldShards(const CheckpointManifest &manifest,
                                const NewProgram &fresh, int64_t h, int64_t p,
                                const std::string &corrupted,
                                const std::vector<char> &state) {
  Comparison result;
  const MeshShape &old = manifest.mesh;
  for (size_t i = 0; i < fresh.parameters.size(); ++i) {
    const ParameterInfo &q = fresh.parameters[i];
    const CheckpointParameter &c = manifest.parameters[i];
    const size_t rank = q.shape.size();
    const int eb = q.elementBytes;
    // The new block's place, by the rule.
    std::vector<int64_t> start(rank, 0), valid = q.shape;
    for (size_t d = 0; d < rank; ++d) {
      if (d == 0 && q.expertLocal)
        start[d] = p * q.shape[d];
      if (static_cast<int>(d) == q.chunkDim) {
        start[d] = h * q.shape[d];
        valid[d] =
            std::clamp<int64_t>(q.globalShape[d] - start[d], 0, q.shape[d]);
      }
    }
    const int64_t from[3] = {c.offset, c.expAvgOffset, c.expAvgSqOffset};
    const int64_t to[3] = {q.offset, q.expAvgOffset, q.expAvgSqOffset};
    std::vector<int64_t> local(rank, 0);
    for (int64_t n = 0; n < q.count; ++n) {
      // The element's global index, its old shard and place there.
      bool inside = true;
      int64_t oldShard = 0, oldIndex = 0, oldChunk = 0, oldExpert = 0;
      for (size_t d = 0; d < rank; ++d) {
        inside = inside && local[d] < valid[d];
        const int64_t g = start[d] + local[d], held = c.layout.shape[d];
        int64_t at = g;
        if ((d == 0 && c.layout.expertLocal) ||
            static_cast<int>(d) == c.layout.chunkDim) {
          at = inside ? g % held : 0;
          (d == 0 && c.layout.expertLocal ? oldExpert : oldChunk) =
              inside ? g / held : 0;
        }
        oldIndex = oldIndex * held + at;
      }
      oldShard = oldChunk * old.expert + oldExpert; // replica 0
      const std::string &file = manifest.shards[oldShard].file;
      if (inside && file == corrupted)
        result.needsCorrupted = true;
      for (int k = 0; k < 3 && result.mismatch.empty(); ++k) {
        const char *got = state.data() + to[k] + n * eb;
        const int64_t byte = from[k] + oldIndex * eb;
        for (int b = 0; b < eb && result.mismatch.empty(); ++b) {
          char want = 0;
          if (inside && byte + b >= manifest.shards[oldShard].bytes)
            result.mismatch = "read past the " +
                              std::to_string(manifest.shards[oldShard].bytes) +
                              " bytes of shard '" + file + "'";
          else if (inside)
            want = shardByte(file, byte + b);
          if (result.mismatch.empty() && got[b] != want)
            result.mismatch = "parameter '" + c.name + "' tensor " +
                              std::to_string(k) + " element " +
                              std::to_string(n) + " byte " + std::to_string(b) +
                              " is " + std::to_string(got[b]) +
                              ", the old shard '" + file + "' holds " +
                              (inside ? std::to_string(want) + " at byte " +
                                            std::to_string(byte + b)
                                      : "none (padding: 0)");
        }
      }
      for (size_t d = rank; d > 0; --d) {
        if (++local[d - 1] < q.shape[d - 1])
          break;
        local[d - 1] = 0;
      }
    }
  }
  return result;
}

/// Resumes from `manifest` (its shard files written here) on a new mesh and
/// checks what the readers say and fill.
void resumeFrom(CheckpointManifest manifest) {
  // The harness's bounds.
  if (manifest.mesh.size() > kMaxRanks)
    return;
  int64_t shardBytes = 0, elements = 0;
  for (const CheckpointShard &s : manifest.shards) {
    if (s.bytes < 0 || s.bytes > kMaxShardBytes - shardBytes)
      return;
    shardBytes += s.bytes;
  }
  for (const CheckpointParameter &c : manifest.parameters) {
    elements += elementCount(c.layout.globalShape);
    if (elements > kMaxElements)
      return;
  }

  // The seed picks the new mesh: the manifest's own (1 in 8), else
  // H = 1..4, P = 1..4 (1 where P does not divide an expert parameter's
  // experts), R = 1..2; and one shard to corrupt (1 in 2).
  const uint64_t pick = manifest.seed;
  MeshShape mesh = manifest.mesh;
  if (pick % 8 != 0)
    mesh = MeshShape{int64_t(1 + pick / 128 % 2), int64_t(1 + pick / 8 % 4),
                     int64_t(1 + pick / 32 % 4)};
  for (const CheckpointParameter &c : manifest.parameters)
    if (c.layout.expertLocal && !c.layout.globalShape.empty() &&
        c.layout.globalShape[0] % mesh.expert != 0)
      mesh.expert = 1;
  const int64_t corrupt = pick / 256 % 32 >= 16 ? int64_t(pick / 256 % 16) : -1;

  // The shard files, of the manifest's sizes, with their checksums.
  static ShardFolder folder;
  std::error_code ec;
  std::filesystem::remove_all(folder.path, ec);
  std::filesystem::create_directories(folder.path, ec);
  if (ec)
    fail("cannot create '" + folder.path.string() + "': " + ec.message());
  bool written = true;
  std::map<std::string, int64_t> sizes;
  auto write = [&](const std::string &file, const std::string &bytes) {
    std::ofstream out(folder.path / file, std::ios::binary);
    written = written && out.write(bytes.data(), bytes.size()) && out.flush();
  };
  std::string corrupted;
  for (size_t r = 0; r < manifest.shards.size(); ++r) {
    CheckpointShard &s = manifest.shards[r];
    // Two shards of one name are one file: of one size, or not written.
    written =
        written && sizes.emplace(s.file, s.bytes).first->second == s.bytes;
    std::string bytes = shardContents(s.file, s.bytes);
    s.checksum = checksum(bytes.data(), bytes.size());
    write(s.file, bytes);
  }
  if (corrupt >= 0 && corrupt < manifest.mesh.size() &&
      manifest.shards[corrupt].bytes > 0) {
    const CheckpointShard &s = manifest.shards[corrupt];
    std::string bytes = shardContents(s.file, s.bytes);
    bytes[s.bytes / 2] ^= 1;
    write(s.file, bytes);
    corrupted = s.file;
  }
  // A parameter name with a NUL is not the C string the program names.
  bool sameNames = true;
  for (const CheckpointParameter &c : manifest.parameters)
    sameNames = sameNames && c.name.find('\0') == std::string::npos;

  NewProgram fresh;
  buildProgram(manifest, mesh, fresh);
  const TrainProgram &program = fresh.program;
  const int64_t saved = program.stateBytes - program.derivedStateBytes;
  ResumeKind kind;
  Status matched = matchCheckpoint(folder.path, manifest, program, kind);
  if (matched.ok() != (written && sameNames))
    fail(matched.ok() ? "matched a checkpoint whose files are not all "
                        "written as its manifest says or whose parameter "
                        "names hold a NUL"
                      : "a checkpoint of this program's parameters was "
                        "refused: " +
                            matched.message());
  if (!matched.ok())
    return;
  bool same = manifest.mesh.replicas == mesh.replicas &&
              manifest.mesh.shard == mesh.shard &&
              manifest.mesh.expert == mesh.expert &&
              manifest.shardBytes == saved;
  for (size_t i = 0; i < fresh.parameters.size(); ++i) {
    const ParameterInfo &q = fresh.parameters[i];
    const CheckpointParameter &c = manifest.parameters[i];
    same = same && c.layout.shape == q.shape &&
           c.layout.chunkDim == q.chunkDim &&
           c.layout.expertLocal == q.expertLocal && c.offset == q.offset &&
           c.expAvgOffset == q.expAvgOffset &&
           c.expAvgSqOffset == q.expAvgSqOffset;
  }
  if ((kind == ResumeKind::SameLayout) != same)
    fail(std::string("resuming on the mesh ") + meshText(mesh) + " from " +
         meshText(manifest.mesh) + " was matched as " +
         (same ? "a reshard" : "the same layout"));

  if (kind == ResumeKind::SameLayout) {
    for (int64_t r = 0; r < mesh.size(); ++r) {
      std::vector<char> state = guardedState(saved);
      const CheckpointShard &s = manifest.shards[r];
      Status read = readCheckpointShard(folder.path, manifest,
                                        static_cast<int>(r), state.data());
      checkGuard(state, saved, "reading rank " + std::to_string(r));
      if (read.ok() == (s.file == corrupted))
        fail("rank " + std::to_string(r) + "'s shard '" + s.file + "'" +
             (read.ok() ? " was read though corrupted"
                        : " was refused: " + read.message()));
      for (int64_t i = 0; read.ok() && i < saved; ++i)
        if (state[i] != (i < s.bytes ? shardByte(s.file, i) : 0))
          fail("rank " + std::to_string(r) + " byte " + std::to_string(i) +
               " differs from shard '" + s.file + "'");
    }
    return;
  }

  bool oldPlaces = true;
  for (const CheckpointParameter &c : manifest.parameters)
    oldPlaces = oldPlaces && layoutPlaces(c.layout, manifest.mesh);
  for (int64_t h = 0; h < mesh.shard; ++h)
    for (int64_t p = 0; p < mesh.expert; ++p) {
      std::vector<char> state = guardedState(saved);
      Status read =
          reshardCheckpoint(folder.path, manifest, program, h, p, state.data());
      const std::string where = "resharding " + meshText(manifest.mesh) +
                                " to rank (h " + std::to_string(h) + ", p " +
                                std::to_string(p) + ") of " + meshText(mesh);
      checkGuard(state, saved, where);
      if (!oldPlaces) {
        if (read.ok())
          fail(where + " succeeded, though an old layout is no split of its "
                       "parameter");
        continue;
      }
      Comparison found =
          compareWithOldShards(manifest, fresh, h, p, corrupted, state);
      if (!read.ok() && !found.needsCorrupted)
        fail(where + " failed: " + read.message());
      if (read.ok() && found.needsCorrupted)
        fail(where + " read the corrupted shard '" + corrupted + "'");
      if (read.ok() && !found.mismatch.empty())
        fail(where + ": " + found.mismatch);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string text(reinterpret_cast<const char *>(data), size);
  CheckpointManifest manifest;
  if (!parseManifest(text, "manifest.tsv", manifest).ok())
    return 0;
  const std::string printed = formatManifest(manifest);
  CheckpointManifest again;
  Status reread = parseManifest(printed, "printed.tsv", again);
  if (!reread.ok() || formatManifest(again) != printed) {
    std::fprintf(stderr, "a manifest that parsed prints as one that %s:\n%s\n",
                 reread.ok() ? "parses differently" : "does not parse",
                 reread.ok() ? printed.c_str() : reread.message().c_str());
    std::abort();
  }
  resumeFrom(std::move(manifest));
  return 0;
}
