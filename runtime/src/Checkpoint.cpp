//===- Checkpoint.cpp - A training program's checkpoints on disk ----------===//
//
// See moert/Checkpoint.h. The manifest is a tab-separated text, one record
// a line:
//
//   moec-checkpoint  1
//   step             N
//   seed             S
//   skipped_steps    K   (non-finite steps skipped of the N; absent: 0)
//   mesh             R  H  P
//   shard_bytes      B
//   parameter        NAME  ELEMENT_BYTES  OFFSET  EXP_AVG  EXP_AVG_SQ
//                    HELD_SHAPE  GLOBAL_SHAPE  CHUNK_DIM  EXPERT_LOCAL
//   shard            FILE  BYTES  CHECKSUM (16 hex digits)
//   end
//
// with a parameter line per parameter and a shard line per world rank, in
// rank order, each of B bytes; `end` tells a complete manifest from a cut
// one.
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

using namespace moert;

namespace {

constexpr const char *kManifestName = "manifest.tsv";
/// The most ranks a manifest's mesh may have (its product must fit an int64
/// for any use; no run is near it).
constexpr int64_t kMaxRanks = int64_t(1) << 24;
constexpr const char *kFormat = "moec-checkpoint\t1";

std::vector<std::string> splitTabs(const std::string &line) {
  std::vector<std::string> fields;
  std::stringstream in(line);
  std::string field;
  while (std::getline(in, field, '\t'))
    fields.push_back(field);
  return fields;
}

bool parseInt(const std::string &text, int64_t &value) {
  if (text.empty())
    return false;
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  // The whole field: a NUL would end the C string early.
  if (errno || end != text.c_str() + text.size())
    return false;
  value = v;
  return true;
}

bool parseShape(const std::string &text, std::vector<int64_t> &shape) {
  shape.clear();
  if (text == "scalar")
    return true;
  std::stringstream in(text);
  std::string extent;
  // The element count must fit an int64 (offsets are computed from it).
  int64_t count = 1;
  while (std::getline(in, extent, 'x')) {
    int64_t v;
    if (!parseInt(extent, v) || v < 0 || __builtin_mul_overflow(count, v, &count))
      return false;
    shape.push_back(v);
  }
  return !shape.empty();
}

/// Whether the shard at `path` can be opened and has `bytes` bytes.
Status checkShardFile(const std::filesystem::path &path, int64_t bytes) {
  if (!std::ifstream(path, std::ios::binary))
    return Status::failure("checkpoint shard '" + path.string() +
                           "' cannot be opened");
  std::error_code ec;
  uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec || size != static_cast<uintmax_t>(bytes))
    return Status::failure("checkpoint shard '" + path.string() + "' has " +
                           std::to_string(ec ? 0 : size) +
                           " bytes, the manifest says " +
                           std::to_string(bytes));
  return Status::success();
}

/// Reads the whole file at `path`, refusing it unless it has `bytes` bytes
/// with checksum `sum`.
Status readVerified(const std::filesystem::path &path, int64_t bytes,
                    uint64_t sum, char *out) {
  if (Status s = checkShardFile(path, bytes); !s.ok())
    return s;
  std::ifstream in(path, std::ios::binary);
  in.read(out, bytes);
  if (!in)
    return Status::failure("checkpoint shard '" + path.string() +
                           "' cannot be read");
  if (checksum(out, bytes) != sum)
    return Status::failure("checkpoint shard '" + path.string() +
                           "' is corrupted: its checksum differs from the "
                           "manifest's");
  return Status::success();
}

bool sameLayout(const BlockLayout &a, const BlockLayout &b) {
  return a.shape == b.shape && a.globalShape == b.globalShape &&
         a.chunkDim == b.chunkDim && a.expertLocal == b.expertLocal;
}

std::string meshText(const MeshShape &mesh) {
  return std::to_string(mesh.replicas) + "x" + std::to_string(mesh.shard) +
         "x" + std::to_string(mesh.expert);
}

} // namespace

uint64_t moert::checksum(const void *bytes, size_t size, uint64_t hash) {
  const unsigned char *p = static_cast<const unsigned char *>(bytes);
  for (size_t i = 0; i < size; ++i) {
    hash ^= p[i];
    hash *= 1099511628211ull;
  }
  return hash;
}

BlockLayout moert::parameterLayout(const ParameterInfo &parameter) {
  BlockLayout layout;
  layout.shape = parameter.shape;
  layout.globalShape =
      parameter.globalShape.empty() ? parameter.shape : parameter.globalShape;
  layout.chunkDim = parameter.chunkDim;
  layout.expertLocal = parameter.expertLocal;
  return layout;
}

CheckpointManifest moert::checkpointManifest(const TrainProgram &program,
                                             int64_t step, uint64_t seed,
                                             int64_t skipped) {
  CheckpointManifest manifest;
  manifest.step = step;
  manifest.seed = seed;
  manifest.skippedSteps = skipped;
  manifest.mesh = program.mesh;
  manifest.shardBytes = program.stateBytes - program.derivedStateBytes;
  for (int i = 0; i < program.numParameters; ++i) {
    const ParameterInfo &q = program.parameters[i];
    manifest.parameters.push_back({q.name, q.elementBytes, q.offset,
                                   q.expAvgOffset, q.expAvgSqOffset,
                                   parameterLayout(q)});
  }
  return manifest;
}

std::string moert::formatManifest(const CheckpointManifest &m) {
  std::string text = std::string(kFormat) + "\n";
  text += "step\t" + std::to_string(m.step) + "\n";
  text += "seed\t" + std::to_string(m.seed) + "\n";
  text += "skipped_steps\t" + std::to_string(m.skippedSteps) + "\n";
  text += "mesh\t" + std::to_string(m.mesh.replicas) + "\t" +
          std::to_string(m.mesh.shard) + "\t" + std::to_string(m.mesh.expert) +
          "\n";
  text += "shard_bytes\t" + std::to_string(m.shardBytes) + "\n";
  for (const CheckpointParameter &q : m.parameters)
    text += "parameter\t" + q.name + "\t" + std::to_string(q.elementBytes) +
            "\t" + std::to_string(q.offset) + "\t" +
            std::to_string(q.expAvgOffset) + "\t" +
            std::to_string(q.expAvgSqOffset) + "\t" +
            shapeText(q.layout.shape) + "\t" +
            shapeText(q.layout.globalShape) + "\t" +
            std::to_string(q.layout.chunkDim) + "\t" +
            (q.layout.expertLocal ? "1" : "0") + "\n";
  for (const CheckpointShard &s : m.shards) {
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016" PRIx64, s.checksum);
    text += "shard\t" + s.file + "\t" + std::to_string(s.bytes) + "\t" + hex +
            "\n";
  }
  return text + "end\n";
}

Status moert::parseManifest(const std::string &text, const std::string &file,
                            CheckpointManifest &m) {
  m = CheckpointManifest();
  std::stringstream in(text);
  std::string line;
  int64_t lineNumber = 0;
  bool ended = false, sawMesh = false, sawStep = false, sawBytes = false;
  auto bad = [&](const std::string &why) {
    return Status::failure("checkpoint manifest '" + file + "', line " +
                           std::to_string(lineNumber) + ": " + why);
  };
  while (std::getline(in, line)) {
    ++lineNumber;
    if (ended)
      return bad("text after 'end'");
    if (lineNumber == 1) {
      if (line != kFormat)
        return bad("not a moec checkpoint manifest (version 1)");
      continue;
    }
    std::vector<std::string> f = splitTabs(line);
    const std::string key = f.empty() ? "" : f[0];
    int64_t a = 0, b = 0, c = 0;
    if (key == "end" && f.size() == 1) {
      ended = true;
    } else if (key == "step" && f.size() == 2 && parseInt(f[1], a)) {
      m.step = a;
      sawStep = true;
    } else if (key == "seed" && f.size() == 2) {
      char *end = nullptr;
      errno = 0;
      m.seed = std::strtoull(f[1].c_str(), &end, 10);
      if (errno || end != f[1].c_str() + f[1].size() || f[1].empty())
        return bad("bad seed '" + f[1] + "'");
    } else if (key == "skipped_steps" && f.size() == 2 &&
               parseInt(f[1], a) && a >= 0) {
      m.skippedSteps = a;
    } else if (key == "mesh" && f.size() == 4 && parseInt(f[1], a) &&
               parseInt(f[2], b) && parseInt(f[3], c) && a > 0 && b > 0 &&
               c > 0 && a <= kMaxRanks / b && a * b <= kMaxRanks / c) {
      m.mesh = MeshShape{a, b, c};
      sawMesh = true;
    } else if (key == "shard_bytes" && f.size() == 2 && parseInt(f[1], a) &&
               a >= 0) {
      m.shardBytes = a;
      sawBytes = true;
    } else if (key == "parameter" && f.size() == 10) {
      CheckpointParameter q;
      int64_t bytes, chunk;
      q.name = f[1];
      if (!parseInt(f[2], bytes) || (bytes != 2 && bytes != 4) ||
          !parseInt(f[3], q.offset) || !parseInt(f[4], q.expAvgOffset) ||
          !parseInt(f[5], q.expAvgSqOffset) ||
          !parseShape(f[6], q.layout.shape) ||
          !parseShape(f[7], q.layout.globalShape) ||
          !parseInt(f[8], chunk) || chunk < -1 ||
          chunk >= static_cast<int64_t>(q.layout.shape.size()) ||
          (f[9] != "0" && f[9] != "1"))
        return bad("bad parameter record");
      q.elementBytes = static_cast<int>(bytes);
      q.layout.chunkDim = static_cast<int>(chunk);
      q.layout.expertLocal = f[9] == "1";
      m.parameters.push_back(std::move(q));
    } else if (key == "shard" && f.size() == 4 && parseInt(f[2], a) &&
               f[3].size() == 16) {
      CheckpointShard s;
      s.file = f[1];
      s.bytes = a;
      char *end = nullptr;
      s.checksum = std::strtoull(f[3].c_str(), &end, 16);
      // A name with a NUL would open the file its first part names.
      if (end != f[3].c_str() + f[3].size() || s.file.empty() ||
          s.file.find_first_of(std::string("/\0", 2)) != std::string::npos)
        return bad("bad shard record");
      m.shards.push_back(std::move(s));
    } else {
      return bad("unknown or malformed record '" + key + "'");
    }
  }
  if (!ended)
    return bad("no 'end': the manifest is incomplete");
  if (!sawStep || !sawMesh || !sawBytes)
    return bad("step, mesh or shard_bytes missing");
  if (m.skippedSteps > m.step)
    return bad(std::to_string(m.skippedSteps) +
               " skipped steps of only " + std::to_string(m.step));
  if (static_cast<int64_t>(m.shards.size()) != m.mesh.size())
    return bad(std::to_string(m.shards.size()) + " shards for a mesh of " +
               std::to_string(m.mesh.size()) + " ranks");
  for (const CheckpointParameter &q : m.parameters) {
    int64_t bytes = 0, end = 0;
    bool overflows =
        __builtin_mul_overflow(elementCount(q.layout.shape), q.elementBytes,
                               &bytes) ||
        __builtin_add_overflow(
            std::max({q.offset, q.expAvgOffset, q.expAvgSqOffset}), bytes,
            &end);
    if (std::min({q.offset, q.expAvgOffset, q.expAvgSqOffset}) < 0 ||
        overflows || end > m.shardBytes)
      return bad("parameter '" + q.name + "' lies outside the shard's " +
                 std::to_string(m.shardBytes) + " bytes");
  }
  // A shard is read whole into a state of shard_bytes, and its parameters
  // are found in it at offsets checked against shard_bytes (above).
  for (const CheckpointShard &s : m.shards)
    if (s.bytes != m.shardBytes)
      return bad("shard '" + s.file + "' has " + std::to_string(s.bytes) +
                 " bytes, not shard_bytes " + std::to_string(m.shardBytes));
  return Status::success();
}

std::filesystem::path moert::checkpointFolder(const std::filesystem::path &dir,
                                              int64_t step) {
  return dir / ("step_" + std::to_string(step));
}

Status moert::writeCheckpointShard(const std::filesystem::path &dir,
                                   int64_t step, int rank, const char *state,
                                   int64_t bytes, CheckpointShard &shard) {
  std::filesystem::path folder = checkpointFolder(dir, step);
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  if (ec)
    return Status::failure("cannot create '" + folder.string() +
                           "': " + ec.message());
  shard.file = "rank_" + std::to_string(rank) + ".shard";
  shard.bytes = bytes;
  shard.checksum = checksum(state, static_cast<size_t>(bytes));
  return writeFileAtomically(folder / shard.file,
                             {{state, static_cast<size_t>(bytes)}});
}

Status moert::commitCheckpoint(const std::filesystem::path &dir,
                               const CheckpointManifest &manifest) {
  std::filesystem::path folder = checkpointFolder(dir, manifest.step);
  std::string text = formatManifest(manifest);
  if (Status s = writeFileAtomically(folder / kManifestName,
                                     {{text.data(), text.size()}});
      !s.ok())
    return s;
  // Then `latest` names it: a crash in between leaves the previous one.
  std::string pointer = folder.filename().string() + "\n";
  return writeFileAtomically(dir / "latest",
                             {{pointer.data(), pointer.size()}});
}

Status moert::findLatestCheckpoint(const std::filesystem::path &dir,
                                   std::filesystem::path &folder,
                                   CheckpointManifest &manifest) {
  std::filesystem::path pointer = dir / "latest";
  std::ifstream names(pointer);
  std::string name;
  if (!names || !std::getline(names, name) || name.empty())
    return Status::failure("no checkpoint in '" + dir.string() +
                           "' (missing '" + pointer.string() + "')");
  folder = dir / name;
  std::filesystem::path file = folder / kManifestName;
  std::ifstream in(file, std::ios::binary);
  if (!in)
    return Status::failure("'" + pointer.string() + "' names '" + name +
                           "', which has no '" + std::string(kManifestName) + "'");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  return parseManifest(text, file.string(), manifest);
}

Status moert::matchCheckpoint(const std::filesystem::path &folder,
                              const CheckpointManifest &manifest,
                              const TrainProgram &program, ResumeKind &kind) {
  const std::string file = (folder / kManifestName).string();
  auto refuse = [&](const std::string &why) {
    return Status::failure("checkpoint '" + file + "' " + why);
  };
  if (static_cast<int>(manifest.parameters.size()) != program.numParameters)
    return refuse("has " + std::to_string(manifest.parameters.size()) +
                  " parameters, this program " +
                  std::to_string(program.numParameters));
  bool same = manifest.mesh.replicas == program.mesh.replicas &&
              manifest.mesh.shard == program.mesh.shard &&
              manifest.mesh.expert == program.mesh.expert &&
              manifest.shardBytes ==
                  program.stateBytes - program.derivedStateBytes;
  for (int i = 0; i < program.numParameters; ++i) {
    const ParameterInfo &q = program.parameters[i];
    const CheckpointParameter &c = manifest.parameters[i];
    BlockLayout layout = parameterLayout(q);
    if (c.name != q.name)
      return refuse("holds parameter '" + c.name + "' where this program has '" +
                    q.name + "'");
    if (c.layout.globalShape != layout.globalShape ||
        c.elementBytes != q.elementBytes)
      return refuse("holds parameter '" + std::string(q.name) + "' as " +
                    shapeText(c.layout.globalShape) + " of " +
                    std::to_string(c.elementBytes) + "-byte elements; this "
                    "program has " + shapeText(layout.globalShape) + " of " +
                    std::to_string(q.elementBytes));
    same = same && sameLayout(c.layout, layout) && c.offset == q.offset &&
           c.expAvgOffset == q.expAvgOffset &&
           c.expAvgSqOffset == q.expAvgSqOffset;
  }
  // Every shard is there, whole (their checksums are checked as they are
  // read), before anything is allocated.
  for (const CheckpointShard &shard : manifest.shards)
    if (Status s = checkShardFile(folder / shard.file, shard.bytes); !s.ok())
      return s;
  kind = same ? ResumeKind::SameLayout : ResumeKind::Reshard;
  return Status::success();
}

Status moert::readCheckpointShard(const std::filesystem::path &folder,
                                  const CheckpointManifest &manifest, int rank,
                                  char *state) {
  const CheckpointShard &shard = manifest.shards.at(rank);
  return readVerified(folder / shard.file, shard.bytes, shard.checksum, state);
}

Status moert::reshardCheckpoint(const std::filesystem::path &folder,
                                const CheckpointManifest &manifest,
                                const TrainProgram &program, int64_t h,
                                int64_t p, char *state) {
  const MeshShape &old = manifest.mesh;
  // The old shards read so far, by world rank.
  std::map<int64_t, std::vector<char>> shards;
  for (int i = 0; i < program.numParameters; ++i) {
    const ParameterInfo &q = program.parameters[i];
    const CheckpointParameter &c = manifest.parameters[i];
    BlockLayout layout = parameterLayout(q);
    BlockPlace place;
    if (Status s = placeBlock(q.name, layout, program.mesh, h, p, place);
        !s.ok())
      return s;
    int64_t filled = 0;
    // Replica 0 holds every block once, and so does expert coordinate 0 of
    // a parameter that is not split over the experts.
    const int64_t oldExperts = c.layout.expertLocal ? old.expert : 1;
    for (int64_t oh = 0; oh < old.shard; ++oh)
      for (int64_t op = 0; op < oldExperts; ++op) {
        BlockPlace oldPlace;
        if (Status s = placeBlock(c.name, c.layout, old, oh, op, oldPlace);
            !s.ok())
          return Status::failure("checkpoint '" + folder.string() +
                                 "': " + s.message());
        const int64_t rank = oh * old.expert + op; // replica 0
        auto overlaps = [&] {
          for (size_t d = 0; d < place.start.size(); ++d)
            if (std::max(place.start[d], oldPlace.start[d]) >=
                std::min(place.start[d] + place.valid[d],
                         oldPlace.start[d] + oldPlace.valid[d]))
              return false;
          return true;
        };
        if (!overlaps())
          continue;
        auto found = shards.find(rank);
        if (found == shards.end()) {
          std::vector<char> bytes(manifest.shards[rank].bytes);
          if (Status s = readCheckpointShard(folder, manifest,
                                             static_cast<int>(rank),
                                             bytes.data());
              !s.ok())
            return s;
          found = shards.emplace(rank, std::move(bytes)).first;
        }
        const char *src = found->second.data();
        const std::pair<int64_t, int64_t> tensors[] = {
            {c.offset, q.offset},
            {c.expAvgOffset, q.expAvgOffset},
            {c.expAvgSqOffset, q.expAvgSqOffset}};
        for (int k = 0; k < 3; ++k) {
          auto [from, to] = tensors[k];
          int64_t copied =
              copyOverlap(c.layout.shape, oldPlace, src + from, layout.shape,
                          place, state + to, q.elementBytes);
          if (k == 0) // the values' (a moment may share their offset)
            filled += copied;
        }
      }
    if (filled != elementCount(place.valid))
      return Status::failure(
          "checkpoint '" + folder.string() + "': the blocks of parameter '" +
          q.name + "' on the mesh " + meshText(old) + " cover " +
          std::to_string(filled) + " of the " +
          std::to_string(elementCount(place.valid)) +
          " elements its block on " + meshText(program.mesh) + " needs");
  }
  return Status::success();
}
