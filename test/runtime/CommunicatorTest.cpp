//===- CommunicatorTest.cpp - Unit tests of the Communicator without a GPU ===//
//
// What of moert/Communicator.h and the NCCL implementation can be checked
// without a GPU: element types, the refusal of a rank that is not in its
// group, and the world's rendezvous and watchdog settings failing before
// NCCL is called. The collectives themselves run in
// runtime/tests/CommunicatorTest.cu (tools/gpu-tests.sh).
//
//===----------------------------------------------------------------------===//

#include "moert/NcclCommunicator.h"

#include <gtest/gtest.h>

using namespace moert;

namespace {

TEST(Communicator, ElementTypesHaveTheirSizesAndNames) {
  EXPECT_EQ(elementBytes(DataType::F32), 4u);
  EXPECT_EQ(elementBytes(DataType::BF16), 2u);
  EXPECT_EQ(elementBytes(DataType::I32), 4u);
  EXPECT_EQ(elementBytes(DataType::I64), 8u);
  EXPECT_STREQ(dataTypeName(DataType::BF16), "bf16");
  EXPECT_STREQ(dataTypeName(DataType::I64), "i64");
}

/// The message of a refused rank, without its FILE:LINE.
std::string refusal(int rank, int size) {
  NcclUniqueId id{};
  std::unique_ptr<Communicator> comm;
  Status status = createNcclCommunicator(id, rank, size, "expert", comm);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(comm, nullptr);
  const std::string &message = status.message();
  EXPECT_NE(message.find("NcclCommunicator.cpp:"), std::string::npos)
      << message;
  return message.substr(message.find(": ") + 2);
}

TEST(Communicator, NcclRefusesARankOutsideItsGroup) {
  EXPECT_EQ(refusal(2, 2),
            "rank 2 of 2 in group 'expert': the rank is not in the group");
  EXPECT_EQ(refusal(-1, 4),
            "rank -1 of 4 in group 'expert': the rank is not in the group");
  EXPECT_EQ(refusal(0, 0),
            "rank 0 of 0 in group 'expert': the rank is not in the group");
}

TEST(Communicator, WorldFailsAtTheRendezvousBeforeNccl) {
  RankInfo info;
  info.rank = 1;
  info.worldSize = 2;
  info.masterAddr = "127.0.0.1";
  info.masterPort = 29500;
  std::unique_ptr<Communicator> world;
  Status status = createWorldCommunicator(
      info, [](const char *, std::string &) { return false; }, world);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(world, nullptr);
  EXPECT_EQ(status.message(), "rendezvous: no job token (MOERT_JOB_TOKEN is "
                              "not set or empty)");
}

TEST(Communicator, WorldRefusesABadCollectiveTimeout) {
  RankInfo info;
  info.rank = 1;
  info.worldSize = 2;
  std::unique_ptr<Communicator> world;
  Status status = createWorldCommunicator(
      info,
      [](const char *name, std::string &value) {
        if (std::string(name) != "MOERT_COLLECTIVE_TIMEOUT")
          return false;
        value = "ten";
        return true;
      },
      world);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "rank 1: MOERT_COLLECTIVE_TIMEOUT='ten' is not "
                              "a non-negative number of seconds");
}

TEST(Status, CarriesItsMessage) {
  EXPECT_TRUE(Status::success().ok());
  Status failed = Status::failure("rank 1 of 2: all_gather: timed out");
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(failed.message(), "rank 1 of 2: all_gather: timed out");
}

} // namespace
