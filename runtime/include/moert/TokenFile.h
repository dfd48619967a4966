//===- TokenFile.h - The token blocks a training program reads --*- C++ -*-===//
//
// A token file is raw little-endian int64 [blocks, seq] (`python -m
// moec.data` writes it); the labels are the tokens (the loss shifts them).
// It is refused, naming the file, when its size is not a whole number of
// blocks of the program's sequence length or a token is outside the
// vocabulary (naming the block, the position and the value). Host-only.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_TOKENFILE_H
#define MOERT_TOKENFILE_H

#include "moert/Status.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moert {

/// Reads the token file `path` of blocks of `seq` tokens, each in
/// [0, vocab), into `tokens`.
Status readTokenFile(const std::string &path, int64_t seq, int64_t vocab,
                     std::vector<int64_t> &tokens);

/// Decodes `size` bytes of a token file named `path` (its contents in
/// memory) into `tokens`, with readTokenFile's checks.
Status parseTokenFile(const char *bytes, size_t size, const std::string &path,
                      int64_t seq, int64_t vocab,
                      std::vector<int64_t> &tokens);

} // namespace moert

#endif // MOERT_TOKENFILE_H
