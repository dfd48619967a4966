//===- BootstrapTest.cpp - Unit tests of rank bootstrap -------------------===//
//
// detectRank on the environments torchrun, srun and mpirun set, and on the
// inconsistent ones it must refuse.
//
//===----------------------------------------------------------------------===//

#include "moert/Bootstrap.h"

#include <gtest/gtest.h>

#include <map>

using namespace moert;

namespace {

EnvLookup fakeEnv(std::map<std::string, std::string> vars) {
  return [vars](const char *name, std::string &value) {
    auto it = vars.find(name);
    if (it == vars.end())
      return false;
    value = it->second;
    return true;
  };
}

TEST(Bootstrap, NoLauncherIsASingleRank) {
  RankInfo info;
  Status status = detectRank(fakeEnv({}), info);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(info.launcher, "single");
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.worldSize, 1);
}

TEST(Bootstrap, ReadsTorchrun) {
  RankInfo info;
  Status status = detectRank(fakeEnv({{"RANK", "9"},
                                      {"WORLD_SIZE", "16"},
                                      {"LOCAL_RANK", "1"},
                                      {"LOCAL_WORLD_SIZE", "8"},
                                      {"MASTER_ADDR", "node0"},
                                      {"MASTER_PORT", "29500"}}),
                             info);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(info.launcher, "torchrun");
  EXPECT_EQ(info.rank, 9);
  EXPECT_EQ(info.worldSize, 16);
  EXPECT_EQ(info.localRank, 1);
  EXPECT_EQ(info.localWorldSize, 8);
  EXPECT_EQ(info.masterAddr, "node0");
  EXPECT_EQ(info.masterPort, 29500);
}

TEST(Bootstrap, ReadsSlurmAndOpenMpi) {
  RankInfo info;
  Status status = detectRank(fakeEnv({{"SLURM_PROCID", "3"},
                                      {"SLURM_NTASKS", "4"},
                                      {"SLURM_LOCALID", "1"},
                                      {"SLURM_NTASKS_PER_NODE", "2"}}),
                             info);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(info.launcher, "slurm");
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.localWorldSize, 2);
  status = detectRank(
      fakeEnv({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
      info);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(info.launcher, "openmpi");
  EXPECT_EQ(info.localWorldSize, 2);
}

TEST(Bootstrap, RefusesInconsistentEnvironments) {
  RankInfo info;
  EXPECT_EQ(
      detectRank(fakeEnv({{"RANK", "4"}, {"WORLD_SIZE", "4"}}), info).message(),
      "RANK=4 is not a rank of a world of WORLD_SIZE=4");
  EXPECT_EQ(
      detectRank(fakeEnv({{"RANK", "x"}, {"WORLD_SIZE", "4"}}), info).message(),
      "RANK='x' is not a non-negative integer");
  EXPECT_EQ(detectRank(fakeEnv({{"RANK", "0"}}), info).message(),
            "WORLD_SIZE is not set");
  EXPECT_EQ(detectRank(fakeEnv({{"RANK", "0"},
                                {"WORLD_SIZE", "4"},
                                {"LOCAL_RANK", "2"},
                                {"LOCAL_WORLD_SIZE", "2"}}),
                       info)
                .message(),
            "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2");
}

} // namespace
