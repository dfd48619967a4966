//===- CheckpointTest.cpp - Unit tests of the checkpoint files ------------===//
//
// moert/Checkpoint.h on the host: a one-rank program's checkpoint is found
// and read back byte for byte with its step and seed; the manifest's text
// round-trips; resuming refuses what is missing, truncated, corrupted,
// uncommitted or of another model, naming the file; temporary files are
// never what `latest` names; a writer killed mid-save or one whose writes
// fail (a file-size limit; a small tmpfs filled up, where user namespaces
// allow mounting one) leaves the previous checkpoint the latest, whole. Resharding: a fake model (a dense parameter
// with padding, an expert parameter, a bf16 one) checkpointed under one
// (R, H, P) and resumed under others, (H, P) = (2, 2) → (4, 1) → (1, 4),
// to other world sizes and with replicas, gets exactly the blocks cut from
// the global parameters, padding zero, and back to the first layout the
// first checkpoint's bytes.
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"
#include "moert/NonfiniteSteps.h"

#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <fstream>
#include <limits>

#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace moert;

namespace {

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

/// Writes and commits the one-rank checkpoint of `tiny` after `step`.
Status saveTiny(const std::filesystem::path &dir, const TinyProgram &tiny,
                int64_t step, uint64_t seed, const std::vector<char> &state,
                int64_t skipped = 0) {
  CheckpointManifest manifest =
      checkpointManifest(tiny.program, step, seed, skipped);
  CheckpointShard shard;
  if (Status s = writeCheckpointShard(dir, step, 0, state.data(),
                                      static_cast<int64_t>(state.size()), shard);
      !s.ok())
    return s;
  manifest.shards.push_back(shard);
  return commitCheckpoint(dir, manifest);
}

/// The latest checkpoint of DIR, matched against `program` and read as
/// rank 0.
Status resumeTiny(const std::filesystem::path &dir, const TinyProgram &tiny,
                  CheckpointManifest &manifest, std::vector<char> &state) {
  std::filesystem::path folder;
  if (Status s = findLatestCheckpoint(dir, folder, manifest); !s.ok())
    return s;
  ResumeKind kind;
  if (Status s = matchCheckpoint(folder, manifest, tiny.program, kind); !s.ok())
    return s;
  EXPECT_EQ(kind, ResumeKind::SameLayout);
  state.assign(manifest.shardBytes, 0);
  return readCheckpointShard(folder, manifest, 0, state.data());
}

TEST(Checkpoint, WrittenStateIsFoundAndReadBack) {
  TinyProgram tiny;
  std::vector<char> state(120);
  for (size_t i = 0; i < state.size(); ++i)
    state[i] = static_cast<char>(i * 7 + 1);
  std::filesystem::path dir = freshDir("roundtrip");
  Status saved = saveTiny(dir, tiny, 5, 1234, state);
  ASSERT_TRUE(saved.ok()) << saved.message();
  EXPECT_EQ(readText(dir / "latest"), "step_5\n");
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx",
                static_cast<unsigned long long>(checksum(state.data(), 120)));
  EXPECT_EQ(readText(dir / "step_5" / "manifest.tsv"),
            "moec-checkpoint\t1\nstep\t5\nseed\t1234\nskipped_steps\t0\n"
            "mesh\t1\t1\t1\n"
            "shard_bytes\t120\n"
            "parameter\tw\t4\t0\t24\t48\t2x3\t2x3\t-1\t0\n"
            "parameter\tb\t4\t72\t88\t104\t4\t4\t-1\t0\n"
            "shard\trank_0.shard\t120\t" +
                std::string(hex) + "\nend\n");
  // No temporary file is left behind.
  for (auto &entry : std::filesystem::recursive_directory_iterator(dir))
    EXPECT_NE(entry.path().extension(), ".tmp") << entry.path();

  CheckpointManifest manifest;
  std::vector<char> back;
  Status resumed = resumeTiny(dir, tiny, manifest, back);
  ASSERT_TRUE(resumed.ok()) << resumed.message();
  EXPECT_EQ(manifest.step, 5);
  EXPECT_EQ(manifest.seed, 1234u);
  EXPECT_EQ(back, state);

  // A later checkpoint becomes the latest.
  ASSERT_TRUE(saveTiny(dir, tiny, 6, 1234, state).ok());
  ASSERT_TRUE(resumeTiny(dir, tiny, manifest, back).ok());
  EXPECT_EQ(manifest.step, 6);
}

// --skip-nonfinite-steps 1: step 2 of a run is skipped, the run saves after
// step 3 and is resumed; the resumed run feeds AdamW the step numbers of
// the applied updates and stops at its next non-finite step (a budget
// started again would skip it). The driver builds its NonfiniteSteps from
// the manifest the same way (runtime/src/TrainDriver.cpp).
TEST(Checkpoint, SkippedStepsGoOnAfterAResume) {
  TinyProgram tiny;
  std::vector<char> state(120, 3);
  std::filesystem::path dir = freshDir("skipped");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::string message;
  NonfiniteSteps run(1);
  EXPECT_EQ(run.decide(1, 5.5, 0.7, message), NonfiniteSteps::Outcome::Finite);
  EXPECT_EQ(run.decide(2, nan, nan, message), NonfiniteSteps::Outcome::Skipped);
  EXPECT_EQ(run.adamwStep(3), 2);
  EXPECT_EQ(run.decide(3, 5.4, 0.6, message), NonfiniteSteps::Outcome::Finite);
  ASSERT_TRUE(saveTiny(dir, tiny, 3, 1234, state, run.skippedSteps()).ok());
  EXPECT_NE(readText(dir / "step_3" / "manifest.tsv")
                .find("\nskipped_steps\t1\n"),
            std::string::npos);

  CheckpointManifest manifest;
  std::vector<char> back;
  Status resumed = resumeTiny(dir, tiny, manifest, back);
  ASSERT_TRUE(resumed.ok()) << resumed.message();
  EXPECT_EQ(manifest.skippedSteps, 1);
  NonfiniteSteps after(1, manifest.skippedSteps);
  EXPECT_EQ(after.adamwStep(4), 3); // two updates applied, not three
  EXPECT_EQ(after.decide(4, 5.3, 0.5, message),
            NonfiniteSteps::Outcome::Finite);
  EXPECT_EQ(after.decide(5, nan, nan, message), NonfiniteSteps::Outcome::Stop);
  EXPECT_EQ(message, "step 5: non-finite loss and grad_norm (loss nan, "
                     "grad_norm nan); 1 skipped already, the most "
                     "--skip-nonfinite-steps 1 allows; stopping");

  // A manifest written before the count was recorded reads as 0 skipped.
  std::string text = readText(dir / "step_3" / "manifest.tsv");
  text.erase(text.find("skipped_steps"), std::string("skipped_steps\t1\n").size());
  ASSERT_TRUE(parseManifest(text, "M", manifest).ok());
  EXPECT_EQ(manifest.skippedSteps, 0);
  EXPECT_EQ(manifest.step, 3);
  // More skipped steps than steps, or fewer than none, is not a manifest.
  std::string more = formatManifest(manifest);
  more.replace(more.find("skipped_steps\t0"), 15, "skipped_steps\t4");
  EXPECT_EQ(parseManifest(more, "M", manifest).message(),
            "checkpoint manifest 'M', line 10: 4 skipped steps of only 3");
  more.replace(more.find("skipped_steps\t4"), 15, "skipped_steps\t-1");
  EXPECT_EQ(parseManifest(more, "M", manifest).message(),
            "checkpoint manifest 'M', line 4: unknown or malformed record "
            "'skipped_steps'");
  std::filesystem::remove_all(dir);
}

TEST(Checkpoint, ChecksumIsFnv1a) {
  // FNV-1a 64 of "" and "a" (the published values).
  EXPECT_EQ(checksum("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(checksum("a", 1), 0xaf63dc4c8601ec8cull);
  // Continued hashing equals hashing the concatenation.
  EXPECT_EQ(checksum("bc", 2, checksum("a", 1)), checksum("abc", 3));
}

TEST(Checkpoint, ManifestRoundTripsAndRefusesCutOrMalformedText) {
  CheckpointManifest m;
  m.step = 3;
  m.seed = 18446744073709551615ull;
  m.mesh = MeshShape{2, 1, 2};
  m.shardBytes = 96;
  m.parameters.push_back({"experts.w", 2, 0, 16, 32, {{1, 2, 4}, {2, 2, 4}, 1,
                                                      true}});
  for (int r = 0; r < 4; ++r)
    m.shards.push_back({"rank_" + std::to_string(r) + ".shard", 96,
                        0x0123456789abcdefull + r});
  std::string text = formatManifest(m);
  CheckpointManifest back;
  Status parsed = parseManifest(text, "M", back);
  ASSERT_TRUE(parsed.ok()) << parsed.message();
  EXPECT_EQ(formatManifest(back), text);
  EXPECT_EQ(back.parameters[0].layout.chunkDim, 1);
  EXPECT_TRUE(back.parameters[0].layout.expertLocal);
  EXPECT_EQ(back.shards[3].checksum, 0x0123456789abcdefull + 3);

  std::string cut = text.substr(0, text.size() - 4); // no "end"
  EXPECT_EQ(parseManifest(cut, "M", back).message(),
            "checkpoint manifest 'M', line 11: no 'end': the manifest is "
            "incomplete");
  EXPECT_EQ(parseManifest("moec-checkpoint\t2\n", "M", back).message(),
            "checkpoint manifest 'M', line 1: not a moec checkpoint manifest "
            "(version 1)");
  std::string fewer = text;
  fewer.erase(fewer.find("shard\trank_3"), fewer.find("end") -
                                               fewer.find("shard\trank_3"));
  EXPECT_EQ(parseManifest(fewer, "M", back).message(),
            "checkpoint manifest 'M', line 11: 3 shards for a mesh of 4 ranks");
  std::string outside = text;
  outside.replace(outside.find("96\n"), 3, "40\n");
  EXPECT_EQ(parseManifest(outside, "M", back).message(),
            "checkpoint manifest 'M', line 12: parameter 'experts.w' lies "
            "outside the shard's 40 bytes");
  EXPECT_EQ(parseManifest(text + "step\t4\n", "M", back).message(),
            "checkpoint manifest 'M', line 13: text after 'end'");
}

// Sizes whose products overflow int64 (found by reading what the
// checkpoint fuzzer's UBSan build would trip on: tools/fuzz/).
TEST(Checkpoint, ManifestRefusesSizesThatOverflow) {
  const std::string head = "moec-checkpoint\t1\nstep\t3\nseed\t1\n";
  const std::string tail = "shard\tr\t96\t00000000deadbeef\nend\n";
  CheckpointManifest back;
  EXPECT_EQ(parseManifest(head + "mesh\t4294967296\t4294967296\t2\n"
                                 "shard_bytes\t96\nend\n",
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 4: unknown or malformed record "
            "'mesh'");
  const std::string one = head + "mesh\t1\t1\t1\nshard_bytes\t96\n";
  EXPECT_EQ(parseManifest(one + "parameter\tw\t4\t0\t0\t0\t"
                                "4294967296x4294967296\t4x4\t0\t0\n" + tail,
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 6: bad parameter record");
  EXPECT_EQ(parseManifest(one + "parameter\tw\t4\t9223372036854775800\t0\t0"
                                "\t4x4\t4x4\t0\t0\n" + tail,
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 8: parameter 'w' lies outside the "
            "shard's 96 bytes");
  EXPECT_EQ(parseManifest(one + "parameter\tw\t4\t0\t0\t0\t4x4\t4x4\t"
                                "4294967296\t0\n" + tail,
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 6: bad parameter record");
}

// A shard is read whole into a state of shard_bytes, and resharding finds
// the parameters in a shard at offsets checked against shard_bytes: a
// shard of another size (its file of that size, its checksum right) was
// written past the state (the same layout) or read past (a reshard; found
// by the checkpoint fuzzer, test/fuzz/checkpoint/shard-*-than-shard-bytes).
TEST(Checkpoint, ManifestRefusesAShardOfAnotherSize) {
  const std::string head = "moec-checkpoint\t1\nstep\t3\nseed\t1\n"
                           "mesh\t1\t2\t1\nshard_bytes\t96\n"
                           "shard\trank_0.shard\t96\t00000000deadbeef\n";
  CheckpointManifest back;
  EXPECT_EQ(parseManifest(head + "shard\trank_1.shard\t95\t00000000deadbeef\n"
                                 "end\n",
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 8: shard 'rank_1.shard' has 95 "
            "bytes, not shard_bytes 96");
  EXPECT_EQ(parseManifest(head + "shard\trank_1.shard\t97\t00000000deadbeef\n"
                                 "end\n",
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 8: shard 'rank_1.shard' has 97 "
            "bytes, not shard_bytes 96");
  EXPECT_TRUE(parseManifest(head + "shard\trank_1.shard\t96\t00000000deadbeef"
                                   "\nend\n",
                            "M", back)
                  .ok());
}

// A number is its whole field, and a shard's file name holds no NUL: the
// C string the number or the file is read from would end at it, so a
// field of NULs read as 0 (found by the checkpoint fuzzer) and a shard
// named "rank_0.shard<NUL>x" opened rank_0.shard.
TEST(Checkpoint, ManifestRefusesANulInANumberOrAFileName) {
  using namespace std::string_literals;
  const std::string head = "moec-checkpoint\t1\nstep\t3\n";
  const std::string mesh = "mesh\t1\t1\t1\nshard_bytes\t96\n";
  const std::string shard = "shard\tr\t96\t00000000deadbeef\nend\n";
  CheckpointManifest back;
  ASSERT_TRUE(parseManifest(head + "seed\t1\n" + mesh + shard, "M", back).ok());
  EXPECT_EQ(parseManifest(head + "seed\t1\0"s + "\n" + mesh + shard, "M", back)
                .message(),
            "checkpoint manifest 'M', line 3: bad seed '1\0'"s);
  EXPECT_EQ(parseManifest(head + "seed\t1\nmesh\t1\t1\t1\nshard_bytes\t\0"s +
                              "96\n" + shard,
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 5: unknown or malformed record "
            "'shard_bytes'");
  EXPECT_EQ(parseManifest(head + "seed\t1\n" + mesh +
                              "parameter\tw\t4\t0\t\0\0\0"s +
                              "16\t32\t4\t4\t-1\t0\n" + shard,
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 6: bad parameter record");
  EXPECT_EQ(parseManifest(head + "seed\t1\n" + mesh + "shard\tr\0x"s +
                              "\t96\t00000000deadbeef\nend\n",
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 6: bad shard record");
  EXPECT_EQ(parseManifest(head + "seed\t1\n" + mesh +
                              "shard\tr\t96\t00000000deadbee\0"s + "\nend\n",
                          "M", back)
                .message(),
            "checkpoint manifest 'M', line 6: bad shard record");
}

TEST(Checkpoint, ResumingRefusesWhatIsNotThisProgramsCheckpoint) {
  TinyProgram tiny;
  std::filesystem::path dir = freshDir("refusals");
  CheckpointManifest manifest;
  std::vector<char> back;
  EXPECT_EQ(resumeTiny(dir, tiny, manifest, back).message(),
            "no checkpoint in '" + dir.string() + "' (missing '" +
                (dir / "latest").string() + "')");

  std::vector<char> state(120, 3);
  ASSERT_TRUE(saveTiny(dir, tiny, 2, 7, state).ok());
  std::filesystem::path shard = dir / "step_2" / "rank_0.shard";
  std::string manifestFile = (dir / "step_2" / "manifest.tsv").string();

  // Another model: a parameter of another global shape, or another name.
  TinyProgram other;
  other.parameters[1].shape = {5};
  other.parameters[1].count = 5;
  EXPECT_EQ(resumeTiny(dir, other, manifest, back).message(),
            "checkpoint '" + manifestFile +
                "' holds parameter 'b' as 4 of 4-byte elements; this program "
                "has 5 of 4");
  TinyProgram renamed;
  renamed.parameters[0].name = "v";
  EXPECT_EQ(resumeTiny(dir, renamed, manifest, back).message(),
            "checkpoint '" + manifestFile +
                "' holds parameter 'w' where this program has 'v'");

  // A corrupted shard, then a truncated one.
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(17);
    f.put(4);
  }
  EXPECT_EQ(resumeTiny(dir, tiny, manifest, back).message(),
            "checkpoint shard '" + shard.string() +
                "' is corrupted: its checksum differs from the manifest's");
  std::filesystem::resize_file(shard, 100);
  EXPECT_EQ(resumeTiny(dir, tiny, manifest, back).message(),
            "checkpoint shard '" + shard.string() +
                "' has 100 bytes, the manifest says 120");
  std::filesystem::remove(shard);
  EXPECT_EQ(resumeTiny(dir, tiny, manifest, back).message(),
            "checkpoint shard '" + shard.string() + "' cannot be opened");

  // A cut manifest.
  std::string text = readText(manifestFile);
  std::ofstream(manifestFile) << text.substr(0, text.size() / 2);
  EXPECT_NE(resumeTiny(dir, tiny, manifest, back)
                .message()
                .find("checkpoint manifest '" + manifestFile + "', line "),
            std::string::npos);
  // `latest` names a folder without a manifest.
  std::filesystem::remove(manifestFile);
  EXPECT_EQ(resumeTiny(dir, tiny, manifest, back).message(),
            "'" + (dir / "latest").string() +
                "' names 'step_2', which has no 'manifest.tsv'");
}

/// A crash after the shards but before the commit leaves the previous
/// checkpoint the latest; the half-written one is never resumed from.
TEST(Checkpoint, UncommittedShardsAreNotTheLatest) {
  TinyProgram tiny;
  std::filesystem::path dir = freshDir("uncommitted");
  std::vector<char> first(120, 1), second(120, 2);
  ASSERT_TRUE(saveTiny(dir, tiny, 4, 9, first).ok());
  CheckpointShard shard;
  ASSERT_TRUE(writeCheckpointShard(dir, 8, 0, second.data(), 120, shard).ok());
  // And a temporary file of a manifest being written.
  std::ofstream(dir / "step_8" / "manifest.tsv.tmp") << "moec-checkpoint\t1\n";
  CheckpointManifest manifest;
  std::vector<char> back;
  ASSERT_TRUE(resumeTiny(dir, tiny, manifest, back).ok());
  EXPECT_EQ(manifest.step, 4);
  EXPECT_EQ(back, first);
}

/// A save whose writes fail part way (a full disk: a file-size limit makes
/// the write fail as ENOSPC would, in a child process) reports the file and
/// leaves the previous checkpoint the latest, whole; once at the shard, once
/// at the manifest (the shard's 120 bytes fit, the manifest does not).
TEST(Checkpoint, AFailedWriteDuringSaveKeepsTheLatest) {
  TinyProgram tiny;
  std::filesystem::path dir = freshDir("disk-full");
  std::vector<char> first(120, 1), second(120, 2);
  ASSERT_TRUE(saveTiny(dir, tiny, 4, 9, first).ok());
  for (rlim_t limit : {rlim_t(64), rlim_t(120)}) {
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      std::signal(SIGXFSZ, SIG_IGN);
      rlimit fileSize{limit, limit};
      setrlimit(RLIMIT_FSIZE, &fileSize);
      Status s = saveTiny(dir, tiny, 8, 9, second);
      const char *file = limit == 64 ? "rank_0.shard.tmp" : "manifest.tsv.tmp";
      _exit(!s.ok() && s.message().find("cannot write") != std::string::npos &&
                    s.message().find(file) != std::string::npos
                ? 0
                : 1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "the save under a " << limit << "-byte limit did not fail as "
        << "expected";
    CheckpointManifest manifest;
    std::vector<char> back;
    Status resumed = resumeTiny(dir, tiny, manifest, back);
    ASSERT_TRUE(resumed.ok()) << resumed.message();
    EXPECT_EQ(manifest.step, 4);
    EXPECT_EQ(back, first);
  }
}

/// In this (single-threaded, forked) process: enters a new user and mount
/// namespace, this user mapped to root in it, and mounts a tmpfs of `bytes`
/// at `dir`, which other processes do not see. Needs no privileges where
/// unprivileged user namespaces are allowed; returns why not otherwise.
std::string mountSmallTmpfs(const std::filesystem::path &dir, size_t bytes) {
  std::filesystem::create_directories(dir);
  std::string uid = std::to_string(getuid()), gid = std::to_string(getgid());
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0)
    return std::string("unshare(CLONE_NEWUSER | CLONE_NEWNS): ") +
           std::strerror(errno);
  auto write = [](const char *path, const std::string &text) {
    std::ofstream out(path);
    out << text;
    out.close();
    return static_cast<bool>(out);
  };
  if (!write("/proc/self/setgroups", "deny") ||
      !write("/proc/self/uid_map", "0 " + uid + " 1\n") ||
      !write("/proc/self/gid_map", "0 " + gid + " 1\n"))
    return "cannot map this user to root in the new namespace";
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return std::string("cannot make the mounts private: ") +
           std::strerror(errno);
  std::string options = "size=" + std::to_string(bytes);
  if (mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str()) != 0)
    return std::string("mount -t tmpfs -o ") + options + ": " +
           std::strerror(errno);
  return "";
}

/// Fills the file system holding `dir` up to all but `freeBytes`, with one
/// file, `dir`/filler (replaced).
void fillUpTo(const std::filesystem::path &dir, uint64_t freeBytes) {
  std::filesystem::remove(dir / "filler");
  struct statvfs fs;
  if (statvfs(dir.c_str(), &fs) != 0)
    return;
  uint64_t avail = uint64_t(fs.f_bavail) * fs.f_frsize;
  std::vector<char> zeros(avail > freeBytes ? avail - freeBytes : 0, 0);
  std::ofstream(dir / "filler", std::ios::binary)
      .write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
}

/// The same on a disk that is really full: a 64 KiB tmpfs (mounted in a
/// child process's own user and mount namespace) holds the first
/// checkpoint and a file filling it to all but 0, 1 or 2 pages; tmpfs
/// gives each file a page of its own, so the second save runs out of space
/// (ENOSPC, not the file-size limit's EFBIG) writing the shard, the
/// manifest or `latest`, names that file, and the first stays the latest,
/// whole. Skipped, saying why, where user namespaces or tmpfs mounts are
/// refused.
TEST(Checkpoint, AFullTmpfsDuringSaveKeepsTheLatest) {
  int report[2];
  ASSERT_EQ(pipe(report), 0);
  std::filesystem::path dir = freshDir("tmpfs-full");
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(report[0]);
    auto fail = [&](int code, const std::string &why) {
      ssize_t ignored = ::write(report[1], why.data(), why.size());
      (void)ignored;
      _exit(code);
    };
    if (std::string why = mountSmallTmpfs(dir, 64 * 1024); !why.empty())
      fail(77, why);
    TinyProgram tiny;
    std::vector<char> first(120, 1), second(120, 2);
    if (Status s = saveTiny(dir, tiny, 4, 9, first); !s.ok())
      fail(1, "the first save failed: " + s.message());
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const char *files[] = {"rank_0.shard.tmp", "manifest.tsv.tmp",
                           "latest.tmp"};
    for (int freePages = 0; freePages < 3; ++freePages) {
      std::filesystem::remove_all(dir / "step_8");
      fillUpTo(dir, freePages * page);
      std::string where = " with " + std::to_string(freePages) + " free pages";
      Status s = saveTiny(dir, tiny, 8, 9, second);
      if (s.ok() || s.message().find("cannot write") == std::string::npos ||
          s.message().find(files[freePages]) == std::string::npos ||
          s.message().find(std::strerror(ENOSPC)) == std::string::npos)
        fail(1, "the save" + where + " gave '" + s.message() +
                    "', not a failed write of " + files[freePages]);
      CheckpointManifest manifest;
      std::vector<char> back;
      if (Status r = resumeTiny(dir, tiny, manifest, back); !r.ok())
        fail(1, "resuming after the save" + where + ": " + r.message());
      if (manifest.step != 4 || back != first)
        fail(1, "after the save" + where + " the latest is step " +
                    std::to_string(manifest.step) + ", not step 4 whole");
    }
    _exit(0);
  }
  close(report[1]);
  std::string message;
  char buffer[256];
  for (ssize_t n; (n = read(report[0], buffer, sizeof(buffer))) > 0;)
    message.append(buffer, static_cast<size_t>(n));
  close(report[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child ended by a signal";
  if (WEXITSTATUS(status) == 77)
    GTEST_SKIP() << "no small tmpfs without privileges here: " << message;
  EXPECT_EQ(WEXITSTATUS(status), 0) << message;
}

/// A writer killed (SIGKILL) at some point of a loop of saves leaves a
/// latest checkpoint that resumes, holding the bytes of its own step.
TEST(Checkpoint, AWriterKilledMidSaveLeavesALatestThatResumes) {
  TinyProgram tiny;
  std::filesystem::path dir = freshDir("killed");
  ASSERT_TRUE(saveTiny(dir, tiny, 1, 9, std::vector<char>(120, 1)).ok());
  for (int delayMicroseconds : {0, 50, 200, 500, 1000, 3000}) {
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      for (int64_t step = 2;; ++step)
        if (!saveTiny(dir, tiny, step, 9,
                      std::vector<char>(120, static_cast<char>(step)))
                 .ok())
          _exit(1);
    }
    usleep(delayMicroseconds);
    kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status)) << "the writer stopped by itself";
    CheckpointManifest manifest;
    std::vector<char> back;
    Status resumed = resumeTiny(dir, tiny, manifest, back);
    ASSERT_TRUE(resumed.ok()) << resumed.message();
    EXPECT_EQ(back, std::vector<char>(120, static_cast<char>(manifest.step)))
        << "step " << manifest.step;
  }
}

//===----------------------------------------------------------------------===//
// Resharding
//===----------------------------------------------------------------------===//

/// One parameter of the fake model, global.
struct GlobalParameter {
  const char *name;
  std::vector<int64_t> shape;
  bool expert;
  int elementBytes;
};

const std::vector<GlobalParameter> kModel = {
    {"embed", {10, 6}, false, 4},       // H = 4 divides neither: padding
    {"experts.w1", {4, 6, 3}, true, 4}, // E = 4 experts
    {"norm", {5}, false, 2},            // bf16, padding on H = 2 and 4
};

/// The model on one mesh: each rank's ParameterInfo (docs/partitioning.md's
/// layout rule: chunk the first dimension, after the experts', that H
/// divides, else the first; ceil(n / H) each) and its state.
struct FakeProgram {
  std::vector<ParameterInfo> parameters;
  TrainProgram program;
  explicit FakeProgram(MeshShape mesh) {
    int64_t offset = 0;
    for (const GlobalParameter &g : kModel) {
      ParameterInfo q{g.name, g.shape, 0, 0, 0, 0, g.elementBytes};
      q.globalShape = g.shape;
      q.expertLocal = g.expert;
      if (g.expert)
        q.shape[0] /= mesh.expert;
      if (mesh.shard > 1) {
        size_t first = g.expert ? 1 : 0;
        q.chunkDim = static_cast<int>(first);
        for (size_t d = first; d < g.shape.size(); ++d)
          if (g.shape[d] % mesh.shard == 0) {
            q.chunkDim = static_cast<int>(d);
            break;
          }
        q.shape[q.chunkDim] =
            (g.shape[q.chunkDim] + mesh.shard - 1) / mesh.shard;
      }
      q.count = elementCount(q.shape);
      q.offset = offset;
      q.expAvgOffset = offset + q.count * g.elementBytes;
      q.expAvgSqOffset = offset + 2 * q.count * g.elementBytes;
      offset += 3 * q.count * g.elementBytes;
      parameters.push_back(q);
    }
    program.parameters = parameters.data();
    program.numParameters = static_cast<int>(parameters.size());
    program.mesh = mesh;
    program.derivedStateBytes = 16; // a bf16 copy, not saved
    program.stateBytes = offset + program.derivedStateBytes;
  }
};

/// The global values: element i of tensor k (0 value, 1 and 2 the moments)
/// of parameter j is distinct everywhere.
std::vector<char> globalTensor(size_t j, int k) {
  const GlobalParameter &g = kModel[j];
  int64_t n = elementCount(g.shape);
  std::vector<char> bytes(n * g.elementBytes);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v = static_cast<uint32_t>(1 + i + 1000 * k + 100000 * j);
    std::memcpy(bytes.data() + i * g.elementBytes, &v, g.elementBytes);
  }
  return bytes;
}

/// The saved state of world rank `rank` on `fake`'s mesh, cut from the
/// global values (padding zero).
std::vector<char> expectedState(const FakeProgram &fake, int64_t rank) {
  const TrainProgram &p = fake.program;
  std::vector<char> state(p.stateBytes - p.derivedStateBytes, 0);
  auto c = meshCoordinates(p.mesh, rank);
  for (size_t j = 0; j < kModel.size(); ++j) {
    const ParameterInfo &q = fake.parameters[j];
    BlockPlace place;
    EXPECT_TRUE(
        placeBlock(q.name, parameterLayout(q), p.mesh, c[1], c[2], place).ok());
    const int64_t offsets[3] = {q.offset, q.expAvgOffset, q.expAvgSqOffset};
    for (int k = 0; k < 3; ++k) {
      std::vector<char> global = globalTensor(j, k);
      copyOverlap(kModel[j].shape, wholePlace(kModel[j].shape), global.data(),
                  q.shape, place, state.data() + offsets[k],
                  q.elementBytes);
    }
  }
  return state;
}

/// Every rank of `fake` writes its state, rank 0 commits.
void saveAll(const std::filesystem::path &dir, const FakeProgram &fake,
             int64_t step, const std::vector<std::vector<char>> &states) {
  CheckpointManifest manifest = checkpointManifest(fake.program, step, 77);
  for (size_t r = 0; r < states.size(); ++r) {
    CheckpointShard shard;
    Status s = writeCheckpointShard(dir, step, static_cast<int>(r),
                                    states[r].data(),
                                    static_cast<int64_t>(states[r].size()),
                                    shard);
    ASSERT_TRUE(s.ok()) << s.message();
    manifest.shards.push_back(shard);
  }
  ASSERT_TRUE(commitCheckpoint(dir, manifest).ok());
}

/// Every rank of `fake` saves the state cut from the global values.
void saveExpected(const std::filesystem::path &dir, const FakeProgram &fake,
                  int64_t step) {
  std::vector<std::vector<char>> states;
  for (int64_t r = 0; r < fake.program.mesh.size(); ++r)
    states.push_back(expectedState(fake, r));
  saveAll(dir, fake, step, states);
}

/// Every rank of `fake` resumes from DIR's latest checkpoint.
std::vector<std::vector<char>> resumeAll(const std::filesystem::path &dir,
                                         const FakeProgram &fake,
                                         ResumeKind expected) {
  std::filesystem::path folder;
  CheckpointManifest manifest;
  Status found = findLatestCheckpoint(dir, folder, manifest);
  EXPECT_TRUE(found.ok()) << found.message();
  ResumeKind kind;
  Status matched = matchCheckpoint(folder, manifest, fake.program, kind);
  EXPECT_TRUE(matched.ok()) << matched.message();
  EXPECT_EQ(kind, expected);
  const TrainProgram &p = fake.program;
  std::vector<std::vector<char>> states;
  for (int64_t r = 0; r < p.mesh.size(); ++r) {
    std::vector<char> state(p.stateBytes - p.derivedStateBytes, 0);
    auto c = meshCoordinates(p.mesh, r);
    Status read =
        kind == ResumeKind::SameLayout
            ? readCheckpointShard(folder, manifest, static_cast<int>(r),
                                  state.data())
            : reshardCheckpoint(folder, manifest, p, c[1], c[2], state.data());
    EXPECT_TRUE(read.ok()) << read.message();
    states.push_back(std::move(state));
  }
  return states;
}

/// Issue 13's sequence on W = 4: (H, P) = (2, 2) → (4, 1) → (1, 4), then
/// other world sizes (2, 8 with replicas, 1) and back to (2, 2): every
/// resumed rank holds exactly the blocks cut from the global values.
TEST(Reshard, AcrossLayoutsAndWorldSizesBitExact) {
  std::filesystem::path dir = freshDir("reshard");
  const MeshShape sequence[] = {{1, 2, 2}, {1, 4, 1}, {1, 1, 4}, {1, 2, 1},
                                {2, 2, 2}, {1, 1, 1}, {1, 2, 2}};
  FakeProgram first(sequence[0]);
  std::vector<std::vector<char>> firstStates;
  for (int64_t r = 0; r < first.program.mesh.size(); ++r)
    firstStates.push_back(expectedState(first, r));
  saveAll(dir, first, 1, firstStates);
  int64_t step = 1;
  for (size_t i = 1; i < std::size(sequence); ++i) {
    SCOPED_TRACE("resuming on the mesh " + std::to_string(sequence[i].replicas) +
                 "x" + std::to_string(sequence[i].shard) + "x" +
                 std::to_string(sequence[i].expert));
    FakeProgram next(sequence[i]);
    std::vector<std::vector<char>> states =
        resumeAll(dir, next, ResumeKind::Reshard);
    for (int64_t r = 0; r < next.program.mesh.size(); ++r)
      EXPECT_EQ(states[r], expectedState(next, r)) << "rank " << r;
    saveAll(dir, next, ++step, states);
  }
  // Back on the first layout: the first checkpoint's bytes.
  EXPECT_EQ(resumeAll(dir, first, ResumeKind::SameLayout), firstStates);
}

// A manifest whose parameter has its first moment at its values' offset
// (a hand-edited or hostile one: the driver never writes it) reshards
// those bytes into both; the elements filled were counted for every tensor
// at that offset, so its blocks were said to cover twice the elements
// needed and the resume was refused (found by the checkpoint fuzzer:
// test/fuzz/checkpoint/moments-at-one-offset.tsv).
TEST(Reshard, AMomentAtTheValuesOffsetIsRead) {
  std::filesystem::path dir = freshDir("reshard-aliased");
  FakeProgram old(MeshShape{1, 2, 2});
  saveExpected(dir, old, 1);
  std::filesystem::path folder;
  CheckpointManifest manifest;
  ASSERT_TRUE(findLatestCheckpoint(dir, folder, manifest).ok());
  manifest.parameters[0].expAvgOffset = manifest.parameters[0].offset;
  ASSERT_TRUE(commitCheckpoint(dir, manifest).ok());
  FakeProgram next(MeshShape{1, 4, 1});
  std::vector<std::vector<char>> resumed =
      resumeAll(dir, next, ResumeKind::Reshard);
  const ParameterInfo &q = next.parameters[0];
  for (int64_t r = 0; r < 4; ++r) {
    std::vector<char> want = expectedState(next, r);
    std::memcpy(want.data() + q.expAvgOffset, want.data() + q.offset,
                q.count * q.elementBytes);
    EXPECT_EQ(resumed[r], want) << "rank " << r;
  }
}

TEST(Reshard, AMissingOldShardIsNamed) {
  std::filesystem::path dir = freshDir("reshard-missing");
  FakeProgram old(MeshShape{1, 2, 2});
  saveExpected(dir, old, 3);
  std::filesystem::remove(dir / "step_3" / "rank_2.shard");
  FakeProgram next(MeshShape{1, 4, 1});
  std::filesystem::path folder;
  CheckpointManifest manifest;
  ASSERT_TRUE(findLatestCheckpoint(dir, folder, manifest).ok());
  std::vector<char> state(next.program.stateBytes -
                          next.program.derivedStateBytes);
  EXPECT_EQ(reshardCheckpoint(folder, manifest, next.program, 2, 0,
                              state.data())
                .message(),
            "checkpoint shard '" + (folder / "rank_2.shard").string() +
                "' cannot be opened");
}

} // namespace
