//===- JsonKeys.h - Duplicate keys and deep nesting in JSON -----*- C++ -*-===//
//
// Two checks of JSON a user wrote or brought, beside the parsers.
// JSON does not forbid an object that names a key twice, and the readers
// keep one of the values without a word (llvm::json and nlohmann::json the
// last). For a file a user wrote or brought (a job config, a model's
// config.json, a safetensors header or index) that is a mistake to report,
// not a choice to make for them: the readers call this after parsing.
// And a file nested tens of thousands of levels deep would exhaust the
// stack of llvm::json's recursive parser: the compiler's readers check the
// nesting before parsing. In
// moert_hf, host-only, so that the compiler and the programs share it.
//
//===----------------------------------------------------------------------===//

#ifndef MOERT_JSONKEYS_H
#define MOERT_JSONKEYS_H

#include <optional>
#include <string>
#include <string_view>

namespace moert {

/// The first key named twice in one object of a JSON text.
struct DuplicateJsonKey {
  std::string key;
  /// The object's place as a JSON pointer: "" for the top-level object,
  /// "/ops" for the object under the key "ops", "/list/2" for an array's
  /// third element.
  std::string objectPointer;

  /// "key 'K' appears twice in the top-level object: say it once".
  std::string describe() const;
};

/// The first duplicate key of `text`, or none. `text` is expected to be JSON
/// a parser accepted; where it is not, none is reported (the parser's own
/// error is the one to show).
std::optional<DuplicateJsonKey> findDuplicateJsonKey(std::string_view text);

/// The deepest nesting of arrays and objects a JSON file may have: far more
/// than any config, manifest or index holds, and far below the depth at
/// which a recursive parser (llvm::json) runs out of stack.
constexpr int kMaxJsonDepth = 512;

/// Why `text` cannot be handed to a recursive parser: "its arrays and
/// objects nest more than 512 levels deep (at byte N)", or none. Strings
/// are skipped, escapes included; anything else is left to the parser.
std::optional<std::string> checkJsonNesting(std::string_view text);

} // namespace moert

#endif // MOERT_JSONKEYS_H
