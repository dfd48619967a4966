//===- TokenFileFuzzer.cpp - libFuzzer target: the token reader -----------===//
//
// Arbitrary bytes as a token file: the first two bytes choose the program's
// sequence length (1..256) and vocabulary (1..65536, a power of two or not),
// the rest is the file. A file that reads must hold only tokens in the
// vocabulary, in whole blocks.
//
//===----------------------------------------------------------------------===//

#include "moert/TokenFile.h"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2)
    return 0;
  const int64_t seq = 1 + data[0];
  const int64_t vocab = 1 + data[1] * 257;
  std::vector<int64_t> tokens;
  moert::Status status =
      moert::parseTokenFile(reinterpret_cast<const char *>(data + 2), size - 2,
                            "fuzz.bin", seq, vocab, tokens);
  if (!status.ok())
    return 0;
  if (tokens.empty() || tokens.size() % seq != 0)
    std::abort();
  for (int64_t token : tokens)
    if (token < 0 || token >= vocab)
      std::abort();
  return 0;
}
