//===- HfCheckpoint.h - Hugging Face Mixtral checkpoints in and out -*- C++ -*-//
//
// A Hugging Face checkpoint folder holds config.json and the weights as
// model.safetensors, or as several safetensors files listed by
// model.safetensors.index.json ("weight_map": tensor name -> file). moec's
// parameters carry transformers' module names (model.embed_tokens.weight,
// model.layers.N.self_attn.q_proj.weight, ...), with the experts of a layer
// stacked as transformers keeps them in memory:
//
//   model.layers.N.mlp.gate.weight           [E, H]
//   model.layers.N.mlp.experts.gate_up_proj  [E, 2I, H]  gate rows, then up
//   model.layers.N.mlp.experts.down_proj     [E, H, I]
//
// while checkpoints (what save_pretrained writes, and the published Mixtral
// weights) store one tensor per expert and projection:
//
//   model.layers.N.block_sparse_moe.gate.weight          [E, H]
//   model.layers.N.block_sparse_moe.experts.e.w1.weight  [I, H]  gate
//   model.layers.N.block_sparse_moe.experts.e.w3.weight  [I, H]  up
//   model.layers.N.block_sparse_moe.experts.e.w2.weight  [H, I]  down
//
// hfPieces is that mapping, one function used both ways: a parameter is a
// list of pieces, each one checkpoint tensor placed at a box of the global
// parameter. Every other parameter is one piece of its own name.
//
// Reading checks every tensor's name, shape and dtype against the model
// (missing, extra, wrong shape, a dtype other than F32/F16/BF16) and then
// copies, for a rank's block of a parameter, only the parts of the pieces
// that overlap the block, converting to the state's type: the files are
// memory-mapped, so a rank reads from the disk only the pages of its own
// blocks (its experts' tensors, its rows of the dense ones).
//
// Writing (exportHfCheckpoint) turns global fp32 parameters into the
// checkpoint's tensors in F32 or BF16, in one file or, above a size, in
// numbered files with an index, plus config.json, into a staging folder
// renamed into place when every file is on the disk.
//
// Host-only, no CUDA; JSON through nlohmann::json.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_HFCHECKPOINT_H
#define MOERT_HFCHECKPOINT_H

#include "moert/Safetensors.h"
#include "moert/Status.h"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace moert {

/// One checkpoint tensor of a parameter: its name and shape, and the box of
/// the global parameter it fills (start and extent per dimension; the
/// box's elements in row-major order are the tensor's).
struct HfPiece {
  std::string tensor;
  std::vector<int64_t> tensorShape, start, extent;
};

/// The checkpoint tensors that make up the parameter `name` of global shape
/// `shape` (see the file comment); a parameter without a special form is
/// one piece under its own name.
std::vector<HfPiece> hfPieces(const std::string &name,
                              const std::vector<int64_t> &shape);

/// model.safetensors.index.json's `text` (`file` names it in failures):
/// `listed` gets each file its "weight_map" names, a file of the
/// checkpoint's folder (no '/', not "." or ".."), with the tensors it
/// places there; each tensor is in one file.
Status parseSafetensorsIndex(
    const std::string &text, const std::string &file,
    std::map<std::string, std::set<std::string>> &listed);

/// A model's parameter: its name and global shape.
struct ModelParameter {
  std::string name;
  std::vector<int64_t> shape;
};

/// A Hugging Face checkpoint folder opened for reading (every safetensors
/// file mapped, every header checked).
class HfCheckpoint {
public:
  /// Opens `dir`: model.safetensors.index.json and the files it names, or
  /// model.safetensors.
  static Status open(const std::filesystem::path &dir,
                     std::unique_ptr<HfCheckpoint> &checkpoint);

  const std::filesystem::path &folder() const { return dir; }

  /// Checks every piece of every parameter (present, its shape, a float
  /// dtype) and that no tensor is left over; the failure lists every
  /// problem, a line each, naming the file, the tensor and the parameter.
  Status check(const std::vector<ModelParameter> &parameters) const;

  /// Fills the block of parameter `name` (global `shape`) that starts at
  /// global index `start`, of shape `blockShape` of which the first
  /// `valid` elements per dimension are in the parameter, row-major in
  /// `dst` as `dtype` (F32 or BF16); elements outside the valid part are
  /// left as they are. Reads only the overlapping parts of the pieces.
  Status readBlock(const std::string &name, const std::vector<int64_t> &shape,
                   const std::vector<int64_t> &blockShape,
                   const std::vector<int64_t> &start,
                   const std::vector<int64_t> &valid, TensorDtype dtype,
                   char *dst) const;

private:
  struct Located {
    const SafetensorsFile *file;
    const SafetensorsEntry *entry;
  };
  std::filesystem::path dir;
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, Located> tensors;
};

/// A parameter's global values for an export.
struct ExportedParameter {
  std::string name;
  std::vector<int64_t> shape;
  const float *values = nullptr;
};

/// A parameter of an export whose values are fetched as it is written.
struct ExportedShape {
  std::string name;
  std::vector<int64_t> shape;
};

/// Sets `values` to parameter `i`'s global values (fp32, row-major, as
/// many as its shape), which stay valid until the next call.
using FetchParameter =
    std::function<Status(size_t i, const float *&values)>;

/// Writes `parameters` as the Hugging Face checkpoint folder `folder`:
/// config.json (`configJson`, a JSON object's text, with "dtype" set and
/// the hyper-parameters transformers reads as floats written as floats)
/// and the pieces in
/// `dtype` (F32 or BF16), in model.safetensors when they take at most
/// `maxFileBytes`, else in model-0000k-of-0000n.safetensors files of at
/// most that much each (a larger tensor alone) with
/// model.safetensors.index.json. Everything is written into
/// `folder`.partial and renamed to `folder` when complete; an existing
/// `folder` is replaced only when it is a previous export
/// (checkHfExportTarget), and kept until the new one is in place.
Status exportHfCheckpoint(const std::filesystem::path &folder,
                          const std::vector<ExportedParameter> &parameters,
                          const std::string &configJson, TensorDtype dtype,
                          uint64_t maxFileBytes);

/// The same export, the values fetched as the files are written: `fetch`
/// is called once for each parameter, in order (0, 1, ...), when its first
/// piece is written, so that at most one parameter's values and one file's
/// pieces are held at a time (a program's rank 0 gathers each parameter
/// from the ranks as it is asked for it). A failed fetch ends the export
/// with its status; the parameters after it are not fetched.
Status exportHfCheckpoint(const std::filesystem::path &folder,
                          const std::vector<ExportedShape> &parameters,
                          const FetchParameter &fetch,
                          const std::string &configJson, TensorDtype dtype,
                          uint64_t maxFileBytes);

/// Whether an export may be written to `folder`, and where: `target` is
/// `folder` made absolute, without '.', '..' or a trailing separator.
/// Refused: the root, the current folder or one holding it, an existing
/// non-folder, and a folder holding anything an export does not write
/// (config.json, model.safetensors, its index, its shards) — a user's
/// folder is never replaced. Commands call it before they train.
Status checkHfExportTarget(const std::filesystem::path &folder,
                           std::filesystem::path &target);

} // namespace moert

#endif // MOERT_HFCHECKPOINT_H
