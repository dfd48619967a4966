//===- CheckpointFuzzer.cpp - libFuzzer target: checkpoint readers --------===//
//
// Arbitrary bytes as a checkpoint's manifest.tsv (parseManifest): every
// number, shape and offset in it is untrusted, and resuming indexes shards
// with them. A manifest that parses must print (formatManifest) as a text
// that parses to the same manifest.
//
//===----------------------------------------------------------------------===//

#include "moert/Checkpoint.h"

#include <cstdio>
#include <cstdlib>

using namespace moert;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string text(reinterpret_cast<const char *>(data), size);
  CheckpointManifest manifest;
  if (!parseManifest(text, "manifest.tsv", manifest).ok())
    return 0;
  const std::string printed = formatManifest(manifest);
  CheckpointManifest again;
  Status reread = parseManifest(printed, "printed.tsv", again);
  if (!reread.ok() || formatManifest(again) != printed) {
    std::fprintf(stderr, "a manifest that parsed prints as one that %s:\n%s\n",
                 reread.ok() ? "parses differently" : "does not parse",
                 reread.ok() ? printed.c_str() : reread.message().c_str());
    std::abort();
  }
  return 0;
}
