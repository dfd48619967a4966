//===- HfCheckpointTest.cpp - Unit tests of Hugging Face checkpoints ------===//
//
// The name mapping both ways (moec's stacked experts <-> transformers'
// per-expert tensors), an export that reads back bit-exactly (one file, and
// sharded with an index), a rank's block read from only its pieces
// (experts of one expert-parallel rank, rows of a shard, padding left
// alone) in fp32 and bf16, every mismatch named by check(), and the
// streamed export (values fetched parameter by parameter) writing the same
// files.
//
//===----------------------------------------------------------------------===//

#include "moert/HfCheckpoint.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <numeric>

using namespace moert;

namespace {

std::filesystem::path tempFolder(const std::string &name) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("moert-hf-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// A 1-layer model's parameters (E = 4, I = 3, H = 2, vocabulary 5), with
/// values 0, 1, 2, ... per parameter plus an offset per parameter.
struct TinyModel {
  std::vector<ModelParameter> parameters = {
      {"model.embed_tokens.weight", {5, 2}},
      {"model.layers.0.mlp.gate.weight", {4, 2}},
      {"model.layers.0.mlp.experts.gate_up_proj", {4, 6, 2}},
      {"model.layers.0.mlp.experts.down_proj", {4, 2, 3}},
      {"model.norm.weight", {2}}};
  std::vector<std::vector<float>> values;

  TinyModel() {
    for (size_t i = 0; i < parameters.size(); ++i) {
      int64_t n = 1;
      for (int64_t s : parameters[i].shape)
        n *= s;
      std::vector<float> v(n);
      std::iota(v.begin(), v.end(), 1000.0f * i);
      values.push_back(v);
    }
  }

  std::vector<ExportedParameter> exported() const {
    std::vector<ExportedParameter> out;
    for (size_t i = 0; i < parameters.size(); ++i)
      out.push_back({parameters[i].name, parameters[i].shape,
                     values[i].data()});
    return out;
  }
};

TEST(HfCheckpoint, NamesMapBothWays) {
  std::vector<HfPiece> gateUp =
      hfPieces("model.layers.3.mlp.experts.gate_up_proj", {4, 6, 2});
  ASSERT_EQ(gateUp.size(), 8u);
  EXPECT_EQ(gateUp[0].tensor, "model.layers.3.block_sparse_moe.experts.0.w1.weight");
  EXPECT_EQ(gateUp[1].tensor, "model.layers.3.block_sparse_moe.experts.0.w3.weight");
  EXPECT_EQ(gateUp[7].tensor, "model.layers.3.block_sparse_moe.experts.3.w3.weight");
  EXPECT_EQ(gateUp[1].tensorShape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(gateUp[1].start, (std::vector<int64_t>{0, 3, 0}));
  EXPECT_EQ(gateUp[6].start, (std::vector<int64_t>{3, 0, 0}));
  EXPECT_EQ(gateUp[6].extent, (std::vector<int64_t>{1, 3, 2}));
  std::vector<HfPiece> down =
      hfPieces("model.layers.12.mlp.experts.down_proj", {4, 2, 3});
  ASSERT_EQ(down.size(), 4u);
  EXPECT_EQ(down[2].tensor, "model.layers.12.block_sparse_moe.experts.2.w2.weight");
  EXPECT_EQ(down[2].tensorShape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(down[2].start, (std::vector<int64_t>{2, 0, 0}));
  std::vector<HfPiece> gate = hfPieces("model.layers.0.mlp.gate.weight", {4, 2});
  ASSERT_EQ(gate.size(), 1u);
  EXPECT_EQ(gate[0].tensor, "model.layers.0.block_sparse_moe.gate.weight");
  for (const char *same : {"model.embed_tokens.weight", "lm_head.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.x.mlp.gate.weight"}) {
    std::vector<HfPiece> one = hfPieces(same, {2, 2});
    ASSERT_EQ(one.size(), 1u);
    EXPECT_EQ(one[0].tensor, same);
    EXPECT_EQ(one[0].extent, (std::vector<int64_t>{2, 2}));
  }
}

void expectExportReadsBack(uint64_t maxFileBytes, size_t files) {
  std::filesystem::path dir = tempFolder("export" + std::to_string(files));
  TinyModel model;
  Status written = exportHfCheckpoint(dir / "out", model.exported(),
                                      R"({"model_type": "mixtral", "rms_norm_eps": 0})",
                                      TensorDtype::F32, maxFileBytes);
  ASSERT_TRUE(written.ok()) << written.message();
  EXPECT_FALSE(std::filesystem::exists(dir / "out.partial"));
  size_t found = 0;
  for (const auto &entry : std::filesystem::directory_iterator(dir / "out"))
    found += entry.path().extension() == ".safetensors";
  EXPECT_EQ(found, files);
  EXPECT_EQ(std::filesystem::exists(dir / "out" / "model.safetensors.index.json"),
            files > 1);
  std::ifstream config(dir / "out" / "config.json");
  std::string text((std::istreambuf_iterator<char>(config)), {});
  EXPECT_NE(text.find("\"rms_norm_eps\": 0.0"), std::string::npos) << text;
  EXPECT_NE(text.find("\"dtype\": \"float32\""), std::string::npos) << text;

  std::unique_ptr<HfCheckpoint> checkpoint;
  Status opened = HfCheckpoint::open(dir / "out", checkpoint);
  ASSERT_TRUE(opened.ok()) << opened.message();
  Status checked = checkpoint->check(model.parameters);
  ASSERT_TRUE(checked.ok()) << checked.message();
  for (size_t i = 0; i < model.parameters.size(); ++i) {
    const std::vector<int64_t> &shape = model.parameters[i].shape;
    std::vector<float> back(model.values[i].size(), -1.0f);
    ASSERT_TRUE(checkpoint
                    ->readBlock(model.parameters[i].name, shape, shape,
                                std::vector<int64_t>(shape.size(), 0), shape,
                                TensorDtype::F32,
                                reinterpret_cast<char *>(back.data()))
                    .ok());
    EXPECT_EQ(back, model.values[i]) << model.parameters[i].name;
  }
  std::filesystem::remove_all(dir);
}

TEST(HfCheckpoint, ExportReadsBackBitExactly) { expectExportReadsBack(1 << 20, 1); }

TEST(HfCheckpoint, ShardedExportReadsBackBitExactly) {
  // At most 100 bytes per file, in order: the embedding (40 bytes), the
  // router (32) and an expert tensor (24); then four expert tensors twice;
  // the last three and the norm (8).
  expectExportReadsBack(100, 4);
}

/// Every file of folder `dir`, by name, with its bytes.
std::map<std::string, std::string> filesOf(const std::filesystem::path &dir) {
  std::map<std::string, std::string> files;
  for (const auto &entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    files[entry.path().filename().string()] =
        std::string((std::istreambuf_iterator<char>(in)), {});
  }
  return files;
}

TEST(HfCheckpoint, StreamedExportFetchesEachParameterOnceInOrder) {
  // Sharded at 100 bytes (2 files), in bf16: the same files as from the
  // values all at once, each parameter fetched once, in order, and fetched
  // only when its first piece is written (at most one parameter's values
  // are asked for at a time: the previous buffer is poisoned).
  std::filesystem::path dir = tempFolder("stream");
  TinyModel model;
  std::vector<ExportedShape> shapes;
  for (const ModelParameter &p : model.parameters)
    shapes.push_back({p.name, p.shape});
  ASSERT_TRUE(exportHfCheckpoint(dir / "whole", model.exported(), "{}",
                                 TensorDtype::BF16, 100)
                  .ok());
  std::vector<size_t> order;
  std::vector<float> current;
  Status written = exportHfCheckpoint(
      dir / "streamed", shapes,
      [&](size_t i, const float *&values) {
        std::fill(current.begin(), current.end(), -7.0f);
        order.push_back(i);
        current = model.values[i];
        values = current.data();
        return Status::success();
      },
      "{}", TensorDtype::BF16, 100);
  ASSERT_TRUE(written.ok()) << written.message();
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2, 3, 4}));
  std::map<std::string, std::string> whole = filesOf(dir / "whole"),
                                     streamed = filesOf(dir / "streamed");
  EXPECT_EQ(whole.size(), 4u); // 2 files, the index, config.json
  EXPECT_EQ(streamed, whole);

  // A fetch that fails ends the export with its message; nothing is left
  // in the target, and the parameters after it are not fetched.
  order.clear();
  Status failed = exportHfCheckpoint(
      dir / "failed", shapes,
      [&](size_t i, const float *&values) {
        order.push_back(i);
        if (i == 2)
          return Status::failure("gathering parameter 2 failed");
        values = model.values[i].data();
        return Status::success();
      },
      "{}", TensorDtype::F32, 100);
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(failed.message(), "gathering parameter 2 failed");
  EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2}));
  EXPECT_FALSE(std::filesystem::exists(dir / "failed"));
  std::filesystem::remove_all(dir);
}

TEST(HfCheckpoint, RankReadsItsBlockOnly) {
  std::filesystem::path dir = tempFolder("block");
  TinyModel model;
  ASSERT_TRUE(exportHfCheckpoint(dir / "out", model.exported(), "{}",
                                 TensorDtype::F32, 1 << 20)
                  .ok());
  std::unique_ptr<HfCheckpoint> checkpoint;
  ASSERT_TRUE(HfCheckpoint::open(dir / "out", checkpoint).ok());
  // Experts [2, 4) (P = 2, p = 1), rows [4, 8) of 2I = 6 (H = 2, h = 1,
  // chunks of 4: rows 4 and 5 valid, 6 and 7 padding).
  const std::vector<int64_t> shape = {4, 6, 2}, block = {2, 4, 2};
  std::vector<float> got(16, -7.0f);
  ASSERT_TRUE(checkpoint
                  ->readBlock("model.layers.0.mlp.experts.gate_up_proj", shape,
                              block, {2, 4, 0}, {2, 2, 2}, TensorDtype::F32,
                              reinterpret_cast<char *>(got.data()))
                  .ok());
  const std::vector<float> &global = model.values[2];
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 2; ++c) {
        float want = r < 2 ? global[((e + 2) * 6 + r + 4) * 2 + c] : -7.0f;
        EXPECT_EQ(got[(e * 4 + r) * 2 + c], want) << e << " " << r << " " << c;
      }
  // The same block as bf16: each value rounded as convertFromF32 rounds it,
  // the padding untouched.
  std::vector<uint16_t> half(16, 0x1234);
  ASSERT_TRUE(checkpoint
                  ->readBlock("model.layers.0.mlp.experts.gate_up_proj", shape,
                              block, {2, 4, 0}, {2, 2, 2}, TensorDtype::BF16,
                              reinterpret_cast<char *>(half.data()))
                  .ok());
  for (int i = 0; i < 16; ++i) {
    uint16_t want = 0x1234;
    if (got[i] != -7.0f)
      convertFromF32(&got[i], TensorDtype::BF16, &want, 1);
    EXPECT_EQ(half[i], want) << i;
  }
  std::filesystem::remove_all(dir);
}

// An export replaces a previous export, moved aside until the new one is
// in place; a folder holding anything else, a file, the current folder are
// refused and left as they were.
TEST(HfCheckpoint, ExportReplacesOnlyAPreviousExport) {
  std::filesystem::path dir = tempFolder("replace");
  TinyModel model;
  // Twice into one folder, the second time sharded and named with a
  // trailing separator: the shards replace model.safetensors.
  ASSERT_TRUE(exportHfCheckpoint(dir / "out", model.exported(), "{}",
                                 TensorDtype::F32, 1 << 20)
                  .ok());
  ASSERT_TRUE(exportHfCheckpoint((dir / "out").string() + "/",
                                 model.exported(), "{}", TensorDtype::F32, 64)
                  .ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "out" / "model.safetensors"));
  EXPECT_TRUE(
      std::filesystem::exists(dir / "out" / "model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(dir / "out.partial"));
  EXPECT_FALSE(std::filesystem::exists(dir / "out.old"));
  std::unique_ptr<HfCheckpoint> checkpoint;
  EXPECT_TRUE(HfCheckpoint::open(dir / "out", checkpoint).ok());

  // A user's file beside an export: refused, nothing removed.
  std::ofstream(dir / "out" / "tokenizer.json") << "{}";
  Status refused = exportHfCheckpoint(dir / "out", model.exported(), "{}",
                                      TensorDtype::F32, 1 << 20);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.message(),
            "cannot export into '" + (dir / "out").string() +
                "': it holds 'tokenizer.json', which an export does not "
                "write (an export replaces only a previous export); name a "
                "new folder");
  EXPECT_TRUE(std::filesystem::exists(dir / "out" / "tokenizer.json"));
  EXPECT_TRUE(
      std::filesystem::exists(dir / "out" / "model.safetensors.index.json"));

  std::ofstream(dir / "file") << "mine";
  refused = exportHfCheckpoint(dir / "file", model.exported(), "{}",
                               TensorDtype::F32, 1 << 20);
  EXPECT_EQ(refused.message(), "cannot export into '" +
                                   (dir / "file").string() +
                                   "': it exists and is not a folder");
  std::filesystem::path target;
  refused = checkHfExportTarget(".", target);
  EXPECT_EQ(refused.message(), "cannot export into '.': it is the current "
                               "folder or holds it; name a new folder");
  std::filesystem::remove_all(dir);
}

TEST(HfCheckpoint, MismatchesAreNamed) {
  std::filesystem::path dir = tempFolder("mismatch");
  TinyModel model;
  ASSERT_TRUE(exportHfCheckpoint(dir / "out", model.exported(), "{}",
                                 TensorDtype::BF16, 1 << 20)
                  .ok());
  std::unique_ptr<HfCheckpoint> checkpoint;
  ASSERT_TRUE(HfCheckpoint::open(dir / "out", checkpoint).ok());
  std::vector<ModelParameter> other = model.parameters;
  other[0].shape = {2, 5};                       // a transposed embedding
  other[4].name = "model.final_norm.weight";     // a renamed norm
  Status status = checkpoint->check(other);
  ASSERT_FALSE(status.ok());
  const std::string file = (dir / "out" / "model.safetensors").string();
  EXPECT_EQ(status.message(),
            "'" + file + "': tensor 'model.embed_tokens.weight' has shape "
            "[5, 2] where the model's parameter 'model.embed_tokens.weight' "
            "[2, 5] needs [2, 5]\n'" +
                (dir / "out").string() +
                "': no tensor 'model.final_norm.weight' (the model's "
                "parameter 'model.final_norm.weight' [2] needs it as [2])\n'" +
                file + "': tensor 'model.norm.weight' is not a parameter of "
                       "the model");
  EXPECT_EQ(checkpoint->check(model.parameters).message(), "");
  Status missing = HfCheckpoint::open(dir / "nothing", checkpoint);
  EXPECT_EQ(missing.message(),
            "hugging face checkpoint '" + (dir / "nothing").string() +
                "' has neither model.safetensors nor "
                "model.safetensors.index.json");
  std::filesystem::remove_all(dir);
}

TEST(HfCheckpoint, IndexNamesOnlyFilesOfTheFolder) {
  std::map<std::string, std::set<std::string>> listed;
  ASSERT_TRUE(parseSafetensorsIndex(
                  R"({"metadata": {}, "weight_map": {"a": "m-1.safetensors",
                      "b": "m-2.safetensors", "c": "m-1.safetensors"}})",
                  "index.json", listed)
                  .ok());
  EXPECT_EQ(listed, (std::map<std::string, std::set<std::string>>{
                        {"m-1.safetensors", {"a", "c"}},
                        {"m-2.safetensors", {"b"}}}));
  auto error = [&](const std::string &text) {
    Status status = parseSafetensorsIndex(text, "index.json", listed);
    return status.ok() ? "" : status.message();
  };
  EXPECT_EQ(error(R"({"weight_map": {"a": "../m.safetensors"}})"),
            "'index.json': tensor 'a' maps to \"../m.safetensors\", not a "
            "file of the checkpoint's folder");
  // A NUL would cut the name the system opens to another file's.
  EXPECT_EQ(error(R"({"weight_map": {"a": "m.safetensors\u0000x"}})"),
            "'index.json': tensor 'a' maps to \"m.safetensors\\u0000x\", not "
            "a file of the checkpoint's folder");
  EXPECT_EQ(error(R"({"weight_map": {"a": 3}})"),
            "'index.json': tensor 'a' maps to 3, not a file name");
  EXPECT_EQ(error(R"({"weight_map": []})"),
            "'index.json' has no \"weight_map\" object");
  // A tensor listed twice: which file holds it is not for the reader to
  // guess (nlohmann::json keeps the last).
  EXPECT_EQ(error(R"({"weight_map": {"a": "m-1.safetensors", )"
                  R"("a": "m-2.safetensors"}})"),
            "'index.json': key 'a' appears twice in the object at "
            "'/weight_map': say it once");
  // A number past a double's range threw an exception that was not
  // caught (the safetensors fuzz target's find).
  EXPECT_EQ(error(R"({"metadata": {"total_size": 1e999}, "weight_map": {}})"),
            "'index.json' cannot be read: [json.exception.out_of_range.406] "
            "number overflow parsing '1e999'");
}

} // namespace
