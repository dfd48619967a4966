//===- TrainDriverTest.cpp - The driver's refusals before the GPU ---------===//
//
// runTrainProgram checks the world a program runs in before it touches the
// GPU, so its refusals run here: a partitioned program started without a
// launcher, under a launcher of another WORLD_SIZE, or with
// --simulate-ranks of another W; --simulate-ranks on a one-rank program or
// under a launcher; a program without a world communicator under a
// launcher; a one-rank program that keeps its collectives under a launcher
// of two; a checkpoint with a truncated shard or of another model; a
// Hugging Face checkpoint that does not fit, an export without the
// model's config. Each
// exits 1 with its message (death tests: the driver ends the process).
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"
#include "moert/HfCheckpoint.h"
#include "moert/TrainDriver.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sys/wait.h>

using namespace moert;

namespace {

/// A program partitioned for `mesh` with one fp32 parameter; nothing of it
/// runs.
struct FakeProgram {
  std::vector<ParameterInfo> parameters = {{"w", {2, 3}, 0, 24, 48, 6, 4}};
  TrainProgram program;
  explicit FakeProgram(MeshShape mesh) {
    program.model = "fake";
    program.seq = 4;
    program.vocab = 8;
    program.parameters = parameters.data();
    program.numParameters = 1;
    program.stateBytes = 72;
    program.mesh = mesh;
  }
};

/// Runs the driver with `args` after the program's name, under the
/// environment variables `env` (set in the dying child only).
int runWith(const TrainProgram &program, std::vector<std::string> args,
            const std::vector<std::pair<const char *, const char *>> &env) {
  for (const char *name : {"RANK", "WORLD_SIZE", "LOCAL_RANK",
                           "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
                           "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE",
                           "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                           "OMPI_COMM_WORLD_LOCAL_RANK",
                           "OMPI_COMM_WORLD_LOCAL_SIZE"})
    ::unsetenv(name);
  for (auto [name, value] : env)
    ::setenv(name, value, 1);
  args.insert(args.begin(), "train_step");
  std::vector<char *> argv;
  for (std::string &arg : args)
    argv.push_back(arg.data());
  return runTrainProgram(program, static_cast<int>(argv.size()), argv.data());
}

const std::vector<std::pair<const char *, const char *>> kTwoRanks = {
    {"RANK", "0"},
    {"WORLD_SIZE", "2"},
    {"LOCAL_RANK", "0"},
    {"LOCAL_WORLD_SIZE", "2"}};

class TrainDriverDeathTest : public ::testing::Test {
protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(TrainDriverDeathTest, PartitionedProgramNeedsItsWorld) {
  FakeProgram fake(MeshShape{1, 2, 2});
  EXPECT_EXIT(runWith(fake.program, {"--tokens", "t.bin"}, {}),
              ::testing::ExitedWithCode(1),
              "error: the program was partitioned for 4 ranks \\(mesh 1x2x2, "
              "R x H x P\\): start it under a launcher \\(moec launch, "
              "torchrun, srun, mpirun\\) with 4 ranks, or with "
              "--simulate-ranks 4");
  EXPECT_EXIT(runWith(fake.program, {"--tokens", "t.bin"}, kTwoRanks),
              ::testing::ExitedWithCode(1),
              "error: the launcher \\(torchrun\\) started 2 ranks "
              "\\(WORLD_SIZE\\), but the program was partitioned for 4 ranks "
              "\\(mesh 1x2x2, R x H x P\\)");
  FakeProgram two(MeshShape{1, 1, 2});
  EXPECT_EXIT(runWith(two.program, {"--tokens", "t.bin"}, kTwoRanks),
              ::testing::ExitedWithCode(1),
              "error: this program was built without a world communicator "
              "\\(NCCL\\); it can only run with --simulate-ranks 2");
}

// The schedule's flags are checked with the others, before the GPU.
TEST_F(TrainDriverDeathTest, ScheduleFlagsAreChecked) {
  FakeProgram fake(MeshShape{});
  EXPECT_EXIT(runWith(fake.program, {"--tokens", "t.bin", "--lr", "-0.5"}, {}),
              ::testing::ExitedWithCode(1),
              "error: --lr -0.5 must be a finite rate of at least 0");
  EXPECT_EXIT(runWith(fake.program,
                      {"--tokens", "t.bin", "--lr", "1e-4", "--min-lr", "1e-3"},
                      {}),
              ::testing::ExitedWithCode(1),
              "error: --min-lr 0.001 must be finite, at least 0 and at most "
              "--lr 0.0001");
  EXPECT_EXIT(runWith(fake.program,
                      {"--tokens", "t.bin", "--warmup-steps", "10",
                       "--total-steps", "4"},
                      {}),
              ::testing::ExitedWithCode(1),
              "error: --total-steps 4 is shorter than --warmup-steps 10");
}

// Counts and intervals below 0 are refused by the parser, by name.
TEST_F(TrainDriverDeathTest, NegativeCountsAreRefused) {
  FakeProgram fake(MeshShape{});
  auto failed = [](int status) {
    return WIFEXITED(status) && WEXITSTATUS(status) != 0;
  };
  for (const char *flag : {"--save-interval", "--export-hf-every",
                           "--bench-warmup", "--simulate-ranks"})
    EXPECT_EXIT(std::exit(runWith(fake.program, {"--tokens", "t.bin", flag, "-1"},
                                  {})),
                failed, flag);
  EXPECT_EXIT(std::exit(runWith(
                  fake.program,
                  {"--tokens", "t.bin", "--export-hf-max-file-mib", "0"}, {})),
              failed, "--export-hf-max-file-mib");
}

// A one-rank program that keeps its collectives (keep_one_rank_collectives)
// makes a world of one rank: a launcher of two is refused, not run as two
// copies as a one-rank program without collectives is.
TEST_F(TrainDriverDeathTest, OneRankProgramWithCollectivesRunsAsOneRank) {
  FakeProgram one(MeshShape{});
  one.program.createWorld = [](const RankInfo &, const EnvLookup &,
                               std::unique_ptr<Communicator> &) {
    return Status::failure("not called");
  };
  EXPECT_EXIT(runWith(one.program, {"--tokens", "t.bin"}, kTwoRanks),
              ::testing::ExitedWithCode(1),
              "error: the launcher \\(torchrun\\) started 2 ranks "
              "\\(WORLD_SIZE\\), but the program was partitioned for 1 "
              "ranks \\(mesh 1x1x1, R x H x P\\)");
}

TEST_F(TrainDriverDeathTest, SimulatedRanksMustBeTheProgramsWorld) {
  FakeProgram fake(MeshShape{1, 2, 2});
  EXPECT_EXIT(
      runWith(fake.program, {"--tokens", "t.bin", "--simulate-ranks", "8"}, {}),
      ::testing::ExitedWithCode(1),
      "error: --simulate-ranks 8: the program was partitioned for 4 ranks "
      "\\(mesh 1x2x2, R x H x P\\)");
  EXPECT_EXIT(runWith(fake.program,
                      {"--tokens", "t.bin", "--simulate-ranks", "4"},
                      {{"SLURM_PROCID", "1"},
                       {"SLURM_NTASKS", "4"},
                       {"SLURM_LOCALID", "1"},
                       {"SLURM_NTASKS_PER_NODE", "4"}}),
              ::testing::ExitedWithCode(1),
              "error: --simulate-ranks runs every rank in this process, but "
              "the launcher \\(slurm\\) started 4 ranks \\(WORLD_SIZE\\)");
  FakeProgram one(MeshShape{});
  EXPECT_EXIT(
      runWith(one.program, {"--tokens", "t.bin", "--simulate-ranks", "2"}, {}),
      ::testing::ExitedWithCode(1),
      "error: --simulate-ranks 2: the program was compiled for one rank");
}

TEST_F(TrainDriverDeathTest, ACheckpointOfAnotherModelIsRefusedFirst) {
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "moert-driver-resume";
  std::filesystem::remove_all(dir);
  FakeProgram saved(MeshShape{});
  CheckpointManifest manifest = checkpointManifest(saved.program, 2, 5);
  std::vector<char> state(72, 1);
  CheckpointShard shard;
  ASSERT_TRUE(writeCheckpointShard(dir, 2, 0, state.data(), 72, shard).ok());
  manifest.shards.push_back(shard);
  ASSERT_TRUE(commitCheckpoint(dir, manifest).ok());
  // A truncated shard is refused before the GPU is touched too.
  FakeProgram same(MeshShape{});
  std::filesystem::resize_file(dir / "step_2" / "rank_0.shard", 70);
  EXPECT_EXIT(runWith(same.program,
                      {"--tokens", "t.bin", "--checkpoint-dir", dir.string(),
                       "--resume"},
                      {}),
              ::testing::ExitedWithCode(1),
              "error: checkpoint shard '.*step_2/rank_0.shard' has 70 bytes, "
              "the manifest says 72");
  FakeProgram other(MeshShape{1, 1, 2});
  other.parameters[0].name = "v";
  EXPECT_EXIT(runWith(other.program,
                      {"--tokens", "t.bin", "--simulate-ranks", "2",
                       "--checkpoint-dir", dir.string(), "--resume"},
                      {}),
              ::testing::ExitedWithCode(1),
              "error: checkpoint '.*step_2/manifest.tsv' holds parameter 'w' "
              "where this program has 'v'");
}

TEST_F(TrainDriverDeathTest, HuggingFaceCheckpointMustFit) {
  // A checkpoint whose 'w' is stored transposed.
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("moert-driver-hf-" + std::to_string(::getpid()));
  std::vector<float> values(6, 1.0f);
  ASSERT_TRUE(exportHfCheckpoint(dir, {{"w", {3, 2}, values.data()}}, "{}",
                                 TensorDtype::F32, 1 << 20)
                  .ok());
  FakeProgram fake(MeshShape{1, 1, 1});
  EXPECT_EXIT(runWith(fake.program,
                      {"--tokens", "t.bin", "--init-from", dir.string()}, {}),
              ::testing::ExitedWithCode(1),
              "error: --init-from: the checkpoint does not fit the program:\n"
              "'.*model.safetensors': tensor 'w' has shape \\[3, 2\\] where "
              "the model's parameter 'w' \\[2, 3\\] needs \\[2, 3\\]");
  std::filesystem::remove_all(dir);
  // This test binary has no manifest.json beside it: no config to export.
  EXPECT_EXIT(runWith(fake.program, {"--tokens", "t.bin", "--export-hf", "x"},
                      {}),
              ::testing::ExitedWithCode(1),
              "error: --export-hf: the program's manifest.json \\(beside "
              "it\\) has no Hugging Face config; compile it again with this "
              "moec");
  // Nor is an export folder that is a file found out after the training.
  std::ofstream(dir.string() + "-file") << "mine";
  EXPECT_EXIT(runWith(fake.program,
                      {"--tokens", "t.bin", "--export-hf", dir.string() + "-file"},
                      {}),
              ::testing::ExitedWithCode(1),
              "error: --export-hf '.*-file' exists and is not a folder "
              "\\(exports go into DIR/step_N\\)");
  std::filesystem::remove(dir.string() + "-file");
}

} // namespace
