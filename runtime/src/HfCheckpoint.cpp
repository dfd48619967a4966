//===- HfCheckpoint.cpp - Hugging Face Mixtral checkpoints in and out -----===//
//
// See moert/HfCheckpoint.h.
//
//===----------------------------------------------------------------------===//

#include "moert/HfCheckpoint.h"
#include "moert/AtomicFile.h"
#include "moert/JsonKeys.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>

using namespace moert;

namespace {

constexpr const char *kIndexName = "model.safetensors.index.json";
constexpr const char *kSingleName = "model.safetensors";

/// Whether exportHfCheckpoint writes a file named `name`: config.json, the
/// index, model.safetensors or a shard model-0000k-of-0000n.safetensors.
bool isExportedFile(const std::string &name) {
  if (name == "config.json" || name == kSingleName || name == kIndexName)
    return true;
  unsigned shard = 0, shards = 0;
  char shardName[64];
  if (std::sscanf(name.c_str(), "model-%5u-of-%5u.safetensors", &shard,
                  &shards) != 2)
    return false;
  std::snprintf(shardName, sizeof(shardName),
                "model-%05u-of-%05u.safetensors", shard, shards);
  return name == shardName;
}

std::string shapeList(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t d = 0; d < shape.size(); ++d)
    text += (d ? ", " : "") + std::to_string(shape[d]);
  return text + "]";
}

int64_t countOf(const std::vector<int64_t> &shape) {
  int64_t count = 1;
  for (int64_t size : shape)
    count *= size;
  return count;
}

/// "model.layers.N." and the rest of `name`, when it has that form.
bool splitLayer(const std::string &name, std::string &layer,
                std::string &rest) {
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0)
    return false;
  size_t end = prefix.size();
  while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end])))
    ++end;
  if (end == prefix.size() || end >= name.size() || name[end] != '.')
    return false;
  layer = name.substr(0, end + 1);
  rest = name.substr(end + 1);
  return true;
}

/// Calls `run(blockOffset, sourceOffset, length)` for every row (run along
/// the last dimension) of the box [lo, hi) of global indices, with the
/// row-major offsets of its first element in a buffer of shape `aShape`
/// starting at global index `aStart`, and in one of `bShape` at `bStart`.
void forEachRow(const std::vector<int64_t> &lo, const std::vector<int64_t> &hi,
                const std::vector<int64_t> &aStart,
                const std::vector<int64_t> &aShape,
                const std::vector<int64_t> &bStart,
                const std::vector<int64_t> &bShape,
                const std::function<void(int64_t, int64_t, int64_t)> &run) {
  const size_t rank = lo.size();
  for (size_t d = 0; d < rank; ++d)
    if (lo[d] >= hi[d])
      return;
  if (rank == 0) {
    run(0, 0, 1);
    return;
  }
  std::vector<int64_t> index = lo;
  const int64_t length = hi[rank - 1] - lo[rank - 1];
  while (true) {
    int64_t a = 0, b = 0;
    for (size_t d = 0; d < rank; ++d) {
      a = a * aShape[d] + (index[d] - aStart[d]);
      b = b * bShape[d] + (index[d] - bStart[d]);
    }
    run(a, b, length);
    // The next row: count up the dimensions before the last.
    int d = static_cast<int>(rank) - 2;
    for (; d >= 0; --d) {
      if (++index[d] < hi[d])
        break;
      index[d] = lo[d];
    }
    if (d < 0)
      return;
  }
}

std::optional<TensorDtype> floatDtype(const std::string &name) {
  if (name == "F32")
    return TensorDtype::F32;
  if (name == "F16")
    return TensorDtype::F16;
  if (name == "BF16")
    return TensorDtype::BF16;
  return std::nullopt;
}

Status readText(const std::filesystem::path &path, std::string &text) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::failure("cannot open '" + path.string() + "'");
  std::ostringstream contents;
  contents << in.rdbuf();
  text = contents.str();
  return Status::success();
}

/// config.json's text: `configJson` with "dtype" set to `dtype`'s torch
/// name and the hyper-parameters transformers declares as floats written
/// as floats (its config classes refuse 0 for 0.0); empty when `configJson`
/// is not a JSON object.
std::string hfConfigText(const std::string &configJson, TensorDtype dtype) {
  nlohmann::ordered_json config =
      nlohmann::ordered_json::parse(configJson, nullptr, false);
  if (!config.is_object())
    return {};
  auto asFloat = [](nlohmann::ordered_json &value) {
    if (value.is_number())
      value = value.get<double>();
  };
  for (const char *key : {"rms_norm_eps", "rope_theta", "router_aux_loss_coef",
                          "attention_dropout", "router_jitter_noise",
                          "initializer_range"})
    if (config.contains(key))
      asFloat(config[key]);
  if (config.contains("rope_parameters") &&
      config["rope_parameters"].is_object() &&
      config["rope_parameters"].contains("rope_theta"))
    asFloat(config["rope_parameters"]["rope_theta"]);
  config["dtype"] = dtype == TensorDtype::F32    ? "float32"
                    : dtype == TensorDtype::BF16 ? "bfloat16"
                                                 : "float16";
  return config.dump(2) + "\n";
}

} // namespace

std::vector<HfPiece> moert::hfPieces(const std::string &name,
                                     const std::vector<int64_t> &shape) {
  std::string layer, rest;
  if (splitLayer(name, layer, rest) && shape.size() == 3) {
    const int64_t experts = shape[0];
    const std::string expert = layer + "block_sparse_moe.experts.";
    std::vector<HfPiece> pieces;
    if (rest == "mlp.experts.gate_up_proj" && shape[1] % 2 == 0) {
      const int64_t inter = shape[1] / 2, hidden = shape[2];
      for (int64_t e = 0; e < experts; ++e)
        for (int64_t half = 0; half < 2; ++half)
          pieces.push_back({expert + std::to_string(e) +
                                (half ? ".w3.weight" : ".w1.weight"),
                            {inter, hidden},
                            {e, half * inter, 0},
                            {1, inter, hidden}});
      return pieces;
    }
    if (rest == "mlp.experts.down_proj") {
      for (int64_t e = 0; e < experts; ++e)
        pieces.push_back({expert + std::to_string(e) + ".w2.weight",
                          {shape[1], shape[2]},
                          {e, 0, 0},
                          {1, shape[1], shape[2]}});
      return pieces;
    }
  }
  std::vector<int64_t> zeros(shape.size(), 0);
  if (splitLayer(name, layer, rest) && rest == "mlp.gate.weight")
    return {{layer + "block_sparse_moe.gate.weight", shape, zeros, shape}};
  return {{name, shape, zeros, shape}};
}

Status moert::parseSafetensorsIndex(
    const std::string &text, const std::string &file,
    std::map<std::string, std::set<std::string>> &listed) {
  listed.clear();
  const std::string where = "'" + file + "'";
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error &e) {
    return Status::failure(where + " is not JSON: " + e.what());
  } catch (const nlohmann::json::exception &e) {
    // A number past a double's range is not a parse_error (the fuzzer's
    // find: it ended the process).
    return Status::failure(where + " cannot be read: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object())
    return Status::failure(where + " has no \"weight_map\" object");
  if (std::optional<DuplicateJsonKey> twice = findDuplicateJsonKey(text))
    return Status::failure(where + ": " + twice->describe());
  for (const auto &[tensor, value] : index["weight_map"].items()) {
    if (!value.is_string())
      return Status::failure(where + ": tensor '" + tensor + "' maps to " +
                             value.dump() + ", not a file name");
    const std::string name = value.get<std::string>();
    // A NUL would end the name the system opens: another file.
    if (name.empty() || name.find_first_of(std::string("/\0", 2)) !=
                            std::string::npos ||
        name == "." || name == "..")
      return Status::failure(where + ": tensor '" + tensor + "' maps to " +
                             value.dump() +
                             ", not a file of the checkpoint's folder");
    listed[name].insert(tensor);
  }
  return Status::success();
}

Status HfCheckpoint::open(const std::filesystem::path &dir,
                          std::unique_ptr<HfCheckpoint> &result) {
  auto checkpoint = std::unique_ptr<HfCheckpoint>(new HfCheckpoint);
  checkpoint->dir = dir;
  const std::filesystem::path indexPath = dir / kIndexName;
  // file name -> the tensors the index places in it
  std::map<std::string, std::set<std::string>> listed;
  std::error_code ec;
  if (std::filesystem::exists(indexPath, ec)) {
    std::string text;
    if (Status s = readText(indexPath, text); !s.ok())
      return s;
    if (Status s = parseSafetensorsIndex(text, indexPath.string(), listed);
        !s.ok())
      return s;
  } else if (std::filesystem::exists(dir / kSingleName, ec)) {
    listed[kSingleName];
  } else {
    return Status::failure("hugging face checkpoint '" + dir.string() +
                           "' has neither " + kSingleName + " nor " +
                           kIndexName);
  }
  for (const auto &[name, names] : listed) {
    std::unique_ptr<SafetensorsFile> file;
    if (Status s = SafetensorsFile::open(dir / name, file); !s.ok())
      return s;
    const bool single = name == kSingleName && names.empty();
    for (const std::string &tensor : names)
      if (!file->entries().count(tensor))
        return Status::failure("'" + indexPath.string() + "' places tensor '" +
                               tensor + "' in '" + name +
                               "', which does not hold it");
    for (const auto &[tensor, entry] : file->entries()) {
      if (!single && !names.count(tensor))
        return Status::failure("'" + file->path().string() + "' holds tensor '" +
                               tensor + "', which '" + indexPath.string() +
                               "' places elsewhere or not at all");
      checkpoint->tensors[tensor] = {file.get(), &entry};
    }
    checkpoint->files.push_back(std::move(file));
  }
  result = std::move(checkpoint);
  return Status::success();
}

Status HfCheckpoint::check(const std::vector<ModelParameter> &parameters) const {
  std::vector<std::string> problems;
  std::set<std::string> used;
  for (const ModelParameter &p : parameters) {
    for (const HfPiece &piece : hfPieces(p.name, p.shape)) {
      used.insert(piece.tensor);
      const std::string of = "the model's parameter '" + p.name + "' " +
                             shapeList(p.shape);
      auto it = tensors.find(piece.tensor);
      if (it == tensors.end()) {
        problems.push_back("'" + dir.string() + "': no tensor '" +
                           piece.tensor + "' (" + of + " needs it as " +
                           shapeList(piece.tensorShape) + ")");
        continue;
      }
      const std::string at = "'" + it->second.file->path().string() +
                             "': tensor '" + piece.tensor + "'";
      const SafetensorsEntry &entry = *it->second.entry;
      if (entry.shape != piece.tensorShape)
        problems.push_back(at + " has shape " + shapeList(entry.shape) +
                           " where " + of + " needs " +
                           shapeList(piece.tensorShape));
      if (!floatDtype(entry.dtype))
        problems.push_back(at + " has dtype " + entry.dtype + " where " + of +
                           " needs F32, F16 or BF16");
    }
  }
  for (const auto &[name, located] : tensors)
    if (!used.count(name))
      problems.push_back("'" + located.file->path().string() + "': tensor '" +
                         name + "' is not a parameter of the model");
  if (problems.empty())
    return Status::success();
  std::string text;
  for (size_t i = 0; i < problems.size(); ++i)
    text += (i ? "\n" : "") + problems[i];
  return Status::failure(text);
}

Status HfCheckpoint::readBlock(const std::string &name,
                               const std::vector<int64_t> &shape,
                               const std::vector<int64_t> &blockShape,
                               const std::vector<int64_t> &start,
                               const std::vector<int64_t> &valid,
                               TensorDtype dtype, char *dst) const {
  const size_t rank = shape.size();
  if (blockShape.size() != rank || start.size() != rank ||
      valid.size() != rank)
    return Status::failure("parameter '" + name + "': a block of rank " +
                           std::to_string(blockShape.size()) +
                           " of a parameter of rank " + std::to_string(rank));
  const int outBytes = dtypeBytes(dtype);
  std::vector<float> row;
  for (const HfPiece &piece : hfPieces(name, shape)) {
    auto it = tensors.find(piece.tensor);
    if (it == tensors.end() || it->second.entry->shape != piece.tensorShape)
      return Status::failure("parameter '" + name + "': tensor '" +
                             piece.tensor +
                             "' is missing or of another shape (check the "
                             "checkpoint first)");
    std::optional<TensorDtype> from = floatDtype(it->second.entry->dtype);
    if (!from)
      return Status::failure("tensor '" + piece.tensor + "' has dtype " +
                             it->second.entry->dtype);
    const int inBytes = dtypeBytes(*from);
    const char *src = it->second.file->data(*it->second.entry);
    std::vector<int64_t> lo(rank), hi(rank);
    for (size_t d = 0; d < rank; ++d) {
      lo[d] = std::max(piece.start[d], start[d]);
      hi[d] = std::min(piece.start[d] + piece.extent[d], start[d] + valid[d]);
    }
    forEachRow(lo, hi, start, blockShape, piece.start, piece.extent,
               [&](int64_t out, int64_t in, int64_t length) {
                 char *to = dst + out * outBytes;
                 const char *at = src + in * inBytes;
                 if (*from == dtype) {
                   std::memcpy(to, at, length * outBytes);
                   return;
                 }
                 row.resize(length);
                 convertToF32(*from, at, row.data(), length);
                 convertFromF32(row.data(), dtype, to, length);
               });
  }
  return Status::success();
}

Status moert::exportHfCheckpoint(
    const std::filesystem::path &folder,
    const std::vector<ExportedParameter> &parameters,
    const std::string &configJson, TensorDtype dtype, uint64_t maxFileBytes) {
  std::vector<ExportedShape> shapes;
  for (const ExportedParameter &p : parameters)
    shapes.push_back({p.name, p.shape});
  return exportHfCheckpoint(
      folder, shapes,
      [&](size_t i, const float *&values) {
        values = parameters[i].values;
        return Status::success();
      },
      configJson, dtype, maxFileBytes);
}

Status moert::exportHfCheckpoint(const std::filesystem::path &folder,
                                 const std::vector<ExportedShape> &parameters,
                                 const FetchParameter &fetch,
                                 const std::string &configJson,
                                 TensorDtype dtype, uint64_t maxFileBytes) {
  // Every piece, in the parameters' order, and its bytes in `dtype`: the
  // files are laid out from the shapes alone.
  struct Piece {
    size_t parameter;
    HfPiece piece;
    uint64_t bytes;
  };
  std::vector<Piece> pieces;
  uint64_t totalBytes = 0, totalElements = 0;
  for (size_t i = 0; i < parameters.size(); ++i)
    for (HfPiece &piece : hfPieces(parameters[i].name, parameters[i].shape)) {
      const int64_t count = countOf(piece.tensorShape);
      const uint64_t bytes = static_cast<uint64_t>(count) * dtypeBytes(dtype);
      totalBytes += bytes;
      totalElements += count;
      pieces.push_back({i, std::move(piece), bytes});
    }
  // Files of at most maxFileBytes (a larger tensor alone), in order: runs
  // of pieces.
  std::vector<std::pair<size_t, size_t>> groups = {{0, 0}};
  uint64_t groupBytes = 0;
  for (size_t k = 0; k < pieces.size(); ++k) {
    if (groups.back().second > groups.back().first &&
        groupBytes + pieces[k].bytes > maxFileBytes) {
      groups.push_back({k, k});
      groupBytes = 0;
    }
    groups.back().second = k + 1;
    groupBytes += pieces[k].bytes;
  }

  std::filesystem::path target;
  if (Status s = checkHfExportTarget(folder, target); !s.ok())
    return s;
  std::filesystem::path staging = target;
  staging += ".partial";
  std::error_code ec;
  std::filesystem::remove_all(staging, ec);
  std::filesystem::create_directories(staging, ec);
  if (ec)
    return Status::failure("cannot create '" + staging.string() +
                           "': " + ec.message());
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  nlohmann::ordered_json weightMap = nlohmann::ordered_json::object();
  // One file's pieces at a time, converted from their parameter's values,
  // each parameter fetched once, in order, when its first piece is reached.
  size_t fetched = parameters.size();
  const float *values = nullptr;
  std::vector<float> row;
  for (size_t g = 0; g < groups.size(); ++g) {
    std::string name = kSingleName;
    if (groups.size() > 1) {
      char text[64];
      std::snprintf(text, sizeof(text), "model-%05zu-of-%05zu.safetensors",
                    g + 1, groups.size());
      name = text;
    }
    std::vector<std::vector<char>> bytes;
    std::vector<TensorToWrite> specs;
    for (size_t k = groups[g].first; k < groups[g].second; ++k) {
      const Piece &piece = pieces[k];
      const ExportedShape &p = parameters[piece.parameter];
      if (fetched != piece.parameter) {
        fetched = piece.parameter;
        if (Status s = fetch(fetched, values); !s.ok())
          return s;
      }
      const int64_t count = countOf(piece.piece.tensorShape);
      row.assign(count, 0.0f);
      std::vector<int64_t> hi(p.shape.size());
      for (size_t d = 0; d < hi.size(); ++d)
        hi[d] = piece.piece.start[d] + piece.piece.extent[d];
      forEachRow(piece.piece.start, hi, piece.piece.start, piece.piece.extent,
                 std::vector<int64_t>(p.shape.size(), 0), p.shape,
                 [&](int64_t out, int64_t in, int64_t length) {
                   std::memcpy(&row[out], values + in, length * 4);
                 });
      bytes.emplace_back(piece.bytes);
      convertFromF32(row.data(), dtype, bytes.back().data(), count);
      TensorToWrite spec;
      spec.name = piece.piece.tensor;
      spec.dtype = dtype;
      spec.shape = piece.piece.tensorShape;
      specs.push_back(std::move(spec));
      weightMap[piece.piece.tensor] = name;
    }
    for (size_t t = 0; t < specs.size(); ++t)
      specs[t].bytes = bytes[t].data();
    if (Status s = writeSafetensors(staging / name, specs, metadata); !s.ok())
      return s;
  }
  if (groups.size() > 1) {
    nlohmann::ordered_json index = {
        {"metadata",
         {{"total_parameters", totalElements}, {"total_size", totalBytes}}},
        {"weight_map", weightMap}};
    std::string text = index.dump(2) + "\n";
    if (Status s = writeFileAtomically(staging / kIndexName,
                                       {{text.data(), text.size()}});
        !s.ok())
      return s;
  }
  const std::string config = hfConfigText(configJson, dtype);
  if (config.empty())
    return Status::failure("the model's config is not a JSON object: " +
                           configJson);
  if (Status s = writeFileAtomically(staging / "config.json",
                                     {{config.data(), config.size()}});
      !s.ok())
    return s;
  // A previous export is moved aside, not deleted, until the new one is in
  // its place.
  std::filesystem::path previous = target;
  previous += ".old";
  const bool replacing = std::filesystem::exists(target, ec);
  if (replacing) {
    std::filesystem::remove_all(previous, ec);
    std::filesystem::rename(target, previous, ec);
    if (ec)
      return Status::failure("cannot move the previous export '" +
                             target.string() + "' aside: " + ec.message());
  }
  std::filesystem::rename(staging, target, ec);
  if (ec) {
    std::error_code restore;
    if (replacing)
      std::filesystem::rename(previous, target, restore);
    return Status::failure("cannot rename '" + staging.string() + "' to '" +
                           target.string() + "': " + ec.message());
  }
  if (replacing)
    std::filesystem::remove_all(previous, ec);
  return syncFolder(target.parent_path());
}

Status moert::checkHfExportTarget(const std::filesystem::path &folder,
                                  std::filesystem::path &target) {
  std::error_code ec;
  const std::string given = folder.string();
  if (given.empty())
    return Status::failure("the export folder's name is empty");
  // Absolute and without '.', '..' or a trailing separator, so that the
  // staging folder beside it ('<folder>.partial') is a sibling, not a child.
  target = std::filesystem::absolute(folder, ec).lexically_normal();
  if (ec)
    return Status::failure("cannot resolve the export folder '" + given +
                           "': " + ec.message());
  if (!target.has_filename())
    target = target.parent_path();
  if (target == target.root_path())
    return Status::failure("cannot export into '" + given +
                           "': it is the file system's root");
  const std::filesystem::path here =
      std::filesystem::current_path(ec).lexically_normal();
  if (!ec) {
    if (std::mismatch(target.begin(), target.end(), here.begin(), here.end())
            .first == target.end())
      return Status::failure("cannot export into '" + given +
                             "': it is the current folder or holds it; "
                             "name a new folder");
  }
  const std::filesystem::file_status status =
      std::filesystem::symlink_status(target, ec);
  if (status.type() == std::filesystem::file_type::not_found)
    return Status::success();
  if (status.type() != std::filesystem::file_type::directory)
    return Status::failure("cannot export into '" + given +
                           "': it exists and is not a folder");
  // Only a previous export is replaced: a folder holding anything an export
  // does not write (a tokenizer, notes, subfolders) is the user's.
  for (const std::filesystem::directory_entry &entry :
       std::filesystem::directory_iterator(target, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || !isExportedFile(name))
      return Status::failure(
          "cannot export into '" + given + "': it holds '" + name +
          "', which an export does not write (an export replaces only a "
          "previous export); name a new folder");
  }
  if (ec)
    return Status::failure("cannot list '" + given + "': " + ec.message());
  return Status::success();
}
