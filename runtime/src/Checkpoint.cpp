//===- Checkpoint.cpp - A training program's checkpoints on disk ----------===//
//
// See moert/Checkpoint.h.
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"

#include <cstring>
#include <fstream>

using namespace moert;

namespace {

/// A checkpoint's binary header (followed by the state bytes).
struct CheckpointHeader {
  char magic[8];        ///< "MOECKPT1"
  int64_t step;         ///< steps completed
  int64_t stateBytes;   ///< bytes that follow
  uint64_t fingerprint; ///< of the parameter layout
  uint64_t seed;
};

constexpr char kMagic[8] = {'M', 'O', 'E', 'C', 'K', 'P', 'T', '1'};

/// The 64-bit FNV-1a hash of the parameters' names, shapes, offsets and
/// element sizes, and the state's size.
uint64_t fingerprint(const TrainProgram &p) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void *data, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      h ^= static_cast<const unsigned char *>(data)[i];
      h *= 1099511628211ull;
    }
  };
  for (int i = 0; i < p.numParameters; ++i) {
    const ParameterInfo &q = p.parameters[i];
    mix(q.name, std::strlen(q.name));
    mix(q.shape.data(), q.shape.size() * sizeof(int64_t));
    mix(&q.offset, sizeof(q.offset));
    mix(&q.elementBytes, sizeof(q.elementBytes));
  }
  mix(&p.stateBytes, sizeof(p.stateBytes));
  return h;
}

} // namespace

CheckpointLayout moert::checkpointLayout(const TrainProgram &program) {
  return {fingerprint(program), program.stateBytes - program.derivedStateBytes};
}

Status moert::writeFileAtomically(
    const std::filesystem::path &path,
    const std::vector<std::pair<const void *, size_t>> &parts) {
  std::filesystem::path temp = path;
  temp += ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    for (auto [data, size] : parts)
      out.write(static_cast<const char *>(data),
                static_cast<std::streamsize>(size));
    out.flush();
    if (!out)
      return Status::failure("cannot write '" + temp.string() + "'");
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec)
    return Status::failure("cannot rename '" + temp.string() + "' to '" +
                           path.string() + "': " + ec.message());
  return Status::success();
}

Status moert::findLatestCheckpoint(const std::filesystem::path &dir,
                                   std::filesystem::path &path) {
  std::filesystem::path pointer = dir / "latest";
  std::ifstream names(pointer);
  std::string name;
  if (!names || !std::getline(names, name) || name.empty())
    return Status::failure("no checkpoint in '" + dir.string() +
                           "' (missing '" + pointer.string() + "')");
  if (!std::ifstream(dir / name, std::ios::binary))
    return Status::failure("'" + pointer.string() + "' names '" + name +
                           "', which cannot be opened");
  path = dir / name;
  return Status::success();
}

Status moert::openCheckpoint(const std::filesystem::path &path,
                             const CheckpointLayout &layout,
                             CheckpointInfo &found) {
  std::ifstream in(path, std::ios::binary);
  CheckpointHeader header{};
  in.read(reinterpret_cast<char *>(&header), sizeof(header));
  if (!in || std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0)
    return Status::failure("'" + path.string() + "' is not a moec checkpoint");
  if (header.fingerprint != layout.fingerprint ||
      header.stateBytes != layout.stateBytes)
    return Status::failure(
        "checkpoint '" + path.string() + "' holds " +
        std::to_string(header.stateBytes) +
        " state bytes of another parameter layout; this program has " +
        std::to_string(layout.stateBytes));
  std::error_code ec;
  uintmax_t size = std::filesystem::file_size(path, ec);
  uintmax_t complete =
      sizeof(header) + static_cast<uintmax_t>(layout.stateBytes);
  if (ec || size != complete)
    return Status::failure("checkpoint '" + path.string() + "' has " +
                           std::to_string(ec ? 0 : size) + " bytes, not the " +
                           std::to_string(complete) + " of a complete one");
  found.path = path;
  found.step = header.step;
  found.seed = header.seed;
  return Status::success();
}

Status moert::readCheckpointState(const CheckpointInfo &checkpoint,
                                  const CheckpointLayout &layout, char *state) {
  std::ifstream in(checkpoint.path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(sizeof(CheckpointHeader)));
  in.read(state, layout.stateBytes);
  if (!in)
    return Status::failure("checkpoint '" + checkpoint.path.string() +
                           "' is truncated");
  return Status::success();
}

Status moert::writeCheckpoint(const std::filesystem::path &dir,
                              const TrainProgram &program,
                              const CheckpointLayout &layout, int64_t step,
                              uint64_t seed, const char *state,
                              std::filesystem::path &written) {
  CheckpointHeader header{};
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.step = step;
  header.stateBytes = layout.stateBytes;
  header.fingerprint = layout.fingerprint;
  header.seed = seed;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return Status::failure("cannot create '" + dir.string() +
                           "': " + ec.message());
  std::string name = "step_" + std::to_string(step) + ".ckpt";
  if (Status status = writeFileAtomically(
          dir / name, {{&header, sizeof(header)},
                       {state, static_cast<size_t>(layout.stateBytes)}});
      !status.ok())
    return status;
  // Then `latest` names it: a crash in between leaves the previous one.
  std::string pointer = name + "\n";
  if (Status status = writeFileAtomically(dir / "latest",
                                          {{pointer.data(), pointer.size()}});
      !status.ok())
    return status;
  std::string index;
  for (int i = 0; i < program.numParameters; ++i) {
    const ParameterInfo &q = program.parameters[i];
    index += std::string(q.name) + "\t" + std::to_string(q.offset) + "\t" +
             std::to_string(q.expAvgOffset) + "\t" +
             std::to_string(q.expAvgSqOffset) + "\t" + std::to_string(q.count) +
             "\t" + (q.elementBytes == 2 ? "bf16" : "fp32") + "\n";
  }
  if (Status status = writeFileAtomically(dir / "index.tsv",
                                          {{index.data(), index.size()}});
      !status.ok())
    return status;
  written = dir / name;
  return Status::success();
}
