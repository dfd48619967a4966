//===- TrainingJobFuzzer.cpp - libFuzzer target: the job's reader ---------===//
//
// Arbitrary bytes read twice into a TrainingJob, through the reader every
// command shares: as a JSON config (readTrainingJobConfigText), and as
// flags, one `key value` per line (setTrainingJobText, as `--key value`),
// then validated and checked against each consumer. A job that reads
// without error must print back as a config that reads into the same
// JSON: a value the reader takes but toJson cannot say is a bug.
//
//===----------------------------------------------------------------------===//

#include "moec/Support/TrainingJob.h"

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdlib>

using namespace moec;

namespace {

/// Checks every consumer, then that the job's config reads back to itself.
void checkReadJob(const TrainingJob &job) {
  for (JobConsumer consumer :
       {JobConsumer::Plan, JobConsumer::Train, JobConsumer::Compile})
    llvm::consumeError(checkImplemented(job, consumer));
  std::string text;
  llvm::raw_string_ostream os(text);
  os << llvm::json::Value(job.toJson());
  TrainingJob again;
  if (llvm::Error err = readTrainingJobConfigText(text, "printed", again)) {
    llvm::errs() << "a job that read prints as a config that does not: "
                 << text << "\n"
                 << llvm::toString(std::move(err)) << "\n";
    std::abort();
  }
  if (llvm::json::Value(again.toJson()) != llvm::json::Value(job.toJson())) {
    llvm::errs() << "a job's config reads back differently: " << text << "\n";
    std::abort();
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  llvm::StringRef input(reinterpret_cast<const char *>(data), size);

  TrainingJob fromConfig;
  if (llvm::Error err =
          readTrainingJobConfigText(input, "fuzz.json", fromConfig))
    llvm::consumeError(std::move(err));
  else
    checkReadJob(fromConfig);

  TrainingJob fromFlags;
  bool read = true;
  llvm::SmallVector<llvm::StringRef> lines;
  input.split(lines, '\n');
  for (llvm::StringRef line : lines) {
    auto [key, value] = line.split(' ');
    if (llvm::Error err = setTrainingJobText(fromFlags, key, value)) {
      llvm::consumeError(std::move(err));
      read = false;
      break;
    }
  }
  if (read) {
    if (llvm::Error err = fromFlags.validate())
      llvm::consumeError(std::move(err));
    else
      checkReadJob(fromFlags);
  }
  return 0;
}
