//===- AtomicFile.h - Files that are whole or absent ------------*- C++ -*-===//
//
// Writing a file so that a crash never leaves a half-written file under its
// name: the bytes go to a temporary name, are flushed to the disk (fsync),
// and the file is renamed, the folder synced after. Checkpoints
// (moert/Checkpoint.h) and Hugging Face exports (moert/HfCheckpoint.h)
// write every file this way. Host-only, POSIX.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_ATOMICFILE_H
#define MOERT_ATOMICFILE_H

#include "moert/Status.h"

#include <cstddef>
#include <filesystem>
#include <utility>
#include <vector>

namespace moert {

/// Writes the concatenated `parts` to `path` through a temporary file
/// (flushed to the disk) and a rename, then syncs the folder, so a crash
/// never leaves a half-written file under that name.
Status
writeFileAtomically(const std::filesystem::path &path,
                    const std::vector<std::pair<const void *, size_t>> &parts);

/// Flushes the entries of folder `dir` (new names, renames) to the disk.
Status syncFolder(const std::filesystem::path &dir);

} // namespace moert

#endif // MOERT_ATOMICFILE_H
