//===- TokenFile.cpp - The token blocks a training program reads ----------===//
//
// See moert/TokenFile.h. The size is checked before anything is allocated;
// the values after they are read. Hosts are little-endian (x86-64, arm64),
// so the file's int64 are copied as they are.
//
//===----------------------------------------------------------------------===//

#include "moert/TokenFile.h"

#include <cstring>
#include <fstream>

using namespace moert;

namespace {

Status checkSize(const std::string &path, int64_t bytes, int64_t seq) {
  if (seq <= 0)
    return Status::failure("token file '" + path + "': sequence length " +
                           std::to_string(seq) + " is not positive");
  int64_t blockBytes = seq * 8;
  if (bytes == 0 || bytes % blockBytes != 0)
    return Status::failure(
        "token file '" + path + "' has " + std::to_string(bytes) +
        " bytes, not a whole number of blocks of " + std::to_string(seq) +
        " int64 tokens (" + std::to_string(blockBytes) +
        " bytes): the program was compiled for sequence length " +
        std::to_string(seq));
  return Status::success();
}

Status checkValues(const std::string &path, const std::vector<int64_t> &tokens,
                   int64_t seq, int64_t vocab) {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      return Status::failure(
          "token file '" + path + "': block " + std::to_string(i / seq) +
          ", position " + std::to_string(i % seq) + " holds " +
          std::to_string(tokens[i]) + ", outside the vocabulary [0, " +
          std::to_string(vocab) + ")");
  return Status::success();
}

} // namespace

Status moert::readTokenFile(const std::string &path, int64_t seq,
                            int64_t vocab, std::vector<int64_t> &tokens) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in)
    return Status::failure("cannot open token file '" + path + "'");
  int64_t bytes = static_cast<int64_t>(in.tellg());
  if (Status s = checkSize(path, bytes, seq); !s.ok())
    return s;
  tokens.resize(bytes / 8);
  in.seekg(0);
  in.read(reinterpret_cast<char *>(tokens.data()), bytes);
  if (!in)
    return Status::failure("cannot read token file '" + path + "'");
  return checkValues(path, tokens, seq, vocab);
}

Status moert::parseTokenFile(const char *bytes, size_t size,
                             const std::string &path, int64_t seq,
                             int64_t vocab, std::vector<int64_t> &tokens) {
  if (Status s = checkSize(path, static_cast<int64_t>(size), seq); !s.ok())
    return s;
  tokens.resize(size / 8);
  std::memcpy(tokens.data(), bytes, size);
  return checkValues(path, tokens, seq, vocab);
}
