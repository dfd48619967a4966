//===- CheckpointTest.cpp - Unit tests of the checkpoint files ------------===//
//
// moert/Checkpoint.h on the host: a written checkpoint is found and read
// back byte for byte with its step and seed, and resuming refuses what is
// missing, foreign, of another layout or incomplete, naming the file.
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"

#include <gtest/gtest.h>

#include <fstream>

using namespace moert;

namespace {

/// The checkpoint DIR/latest names, opened for `layout`.
Status resumeFrom(const std::filesystem::path &dir,
                  const CheckpointLayout &layout, CheckpointInfo &found) {
  std::filesystem::path path;
  Status status = findLatestCheckpoint(dir, path);
  return status.ok() ? openCheckpoint(path, layout, found) : status;
}

/// Two parameters, fp32, with AdamW moments: 3 · (6 + 4) · 4 = 120 state
/// bytes, 8 of them derived.
struct TinyProgram {
  std::vector<ParameterInfo> parameters = {
      {"w", {2, 3}, 0, 24, 48, 6, 4},
      {"b", {4}, 72, 88, 104, 4, 4},
  };
  TrainProgram program;
  TinyProgram() {
    program.parameters = parameters.data();
    program.numParameters = static_cast<int>(parameters.size());
    program.stateBytes = 128;
    program.derivedStateBytes = 8;
  }
};

std::filesystem::path freshDir(const std::string &name) {
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) /
                              ("moert-checkpoint-" + name);
  std::filesystem::remove_all(dir);
  return dir;
}

std::string readText(const std::filesystem::path &path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Checkpoint, WrittenStateIsFoundAndReadBack) {
  TinyProgram tiny;
  CheckpointLayout layout = checkpointLayout(tiny.program);
  EXPECT_EQ(layout.stateBytes, 120);
  std::vector<char> state(layout.stateBytes);
  for (size_t i = 0; i < state.size(); ++i)
    state[i] = static_cast<char>(i * 7 + 1);
  std::filesystem::path dir = freshDir("roundtrip"), written;
  Status saved = writeCheckpoint(dir, tiny.program, layout, 5, 1234,
                                 state.data(), written);
  ASSERT_TRUE(saved.ok()) << saved.message();
  EXPECT_EQ(written, dir / "step_5.ckpt");
  EXPECT_EQ(readText(dir / "latest"), "step_5.ckpt\n");
  EXPECT_EQ(readText(dir / "index.tsv"), "w\t0\t24\t48\t6\tfp32\n"
                                         "b\t72\t88\t104\t4\tfp32\n");

  CheckpointInfo found;
  Status located = resumeFrom(dir, layout, found);
  ASSERT_TRUE(located.ok()) << located.message();
  EXPECT_EQ(found.path, written);
  EXPECT_EQ(found.step, 5);
  EXPECT_EQ(found.seed, 1234u);
  std::vector<char> back(layout.stateBytes);
  Status read = readCheckpointState(found, layout, back.data());
  ASSERT_TRUE(read.ok()) << read.message();
  EXPECT_EQ(back, state);

  // A later checkpoint becomes the latest.
  ASSERT_TRUE(
      writeCheckpoint(dir, tiny.program, layout, 6, 1234, state.data(), written)
          .ok());
  ASSERT_TRUE(resumeFrom(dir, layout, found).ok());
  EXPECT_EQ(found.step, 6);
}

TEST(Checkpoint, ResumingRefusesWhatIsNotThisProgramsCheckpoint) {
  TinyProgram tiny;
  CheckpointLayout layout = checkpointLayout(tiny.program);
  std::filesystem::path dir = freshDir("refusals"), written;
  CheckpointInfo found;
  EXPECT_EQ(resumeFrom(dir, layout, found).message(),
            "no checkpoint in '" + dir.string() + "' (missing '" +
                (dir / "latest").string() + "')");

  std::vector<char> state(layout.stateBytes, 3);
  ASSERT_TRUE(
      writeCheckpoint(dir, tiny.program, layout, 2, 7, state.data(), written)
          .ok());
  // Another layout: a parameter moved.
  TinyProgram other;
  other.parameters[1].offset = 80;
  EXPECT_EQ(resumeFrom(dir, checkpointLayout(other.program), found).message(),
            "checkpoint '" + written.string() +
                "' holds 120 state bytes of another parameter layout; this "
                "program has 120");
  // Incomplete.
  std::filesystem::resize_file(written, 100);
  EXPECT_EQ(resumeFrom(dir, layout, found).message(),
            "checkpoint '" + written.string() +
                "' has 100 bytes, not the 160 of a complete one");
  // Not a checkpoint.
  std::ofstream(written) << "not a checkpoint";
  EXPECT_EQ(resumeFrom(dir, layout, found).message(),
            "'" + written.string() + "' is not a moec checkpoint");
  // `latest` names a file that is gone.
  std::filesystem::remove(written);
  EXPECT_EQ(resumeFrom(dir, layout, found).message(),
            "'" + (dir / "latest").string() +
                "' names 'step_2.ckpt', which cannot be opened");
}

} // namespace
