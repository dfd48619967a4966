//===- JsonKeys.cpp - Duplicate keys and deep nesting in JSON ------------===//
//
// See JsonKeys.h. The text is walked with nlohmann::json's SAX interface
// (the parser the runtime reads JSON with), which hands over every key of
// every object in order; llvm::json, which the compiler reads JSON with,
// has no such interface and keeps the last value.
//
//===----------------------------------------------------------------------===//

#include "moert/JsonKeys.h"

#include <nlohmann/json.hpp>

#include <set>
#include <vector>

using namespace moert;

namespace {
/// Tracks the keys of the open objects and keeps the first repeated one.
class DuplicateKeyFinder : public nlohmann::json_sax<nlohmann::json> {
public:
  std::optional<DuplicateJsonKey> found;

  bool null() override { return scalar(); }
  bool boolean(bool) override { return scalar(); }
  bool number_integer(number_integer_t) override { return scalar(); }
  bool number_unsigned(number_unsigned_t) override { return scalar(); }
  bool number_float(number_float_t, const string_t &) override {
    return scalar();
  }
  bool string(string_t &) override { return scalar(); }
  bool binary(binary_t &) override { return scalar(); }
  bool start_object(std::size_t) override { return open(true); }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(false); }
  bool end_array() override { return close(); }
  bool key(string_t &key) override {
    Frame &frame = stack.back();
    frame.lastKey = key;
    // The first duplicate is kept; the walk goes on to the end, so that a
    // text that turns out not to be JSON reports none.
    if (!frame.keys.insert(key).second && !found)
      found = DuplicateJsonKey{key, pointer()};
    return true;
  }
  bool parse_error(std::size_t, const std::string &,
                   const nlohmann::detail::exception &) override {
    return false;
  }

private:
  struct Frame {
    bool object;
    std::set<std::string> keys;
    std::string lastKey;
    size_t index = 0; ///< arrays: the next element's index
  };
  std::vector<Frame> stack;
  std::vector<std::string> components;

  /// A value ended: in an array, the next one has the next index.
  bool scalar() {
    if (!stack.empty() && !stack.back().object)
      ++stack.back().index;
    return true;
  }
  bool open(bool object) {
    if (!stack.empty())
      components.push_back(stack.back().object
                               ? stack.back().lastKey
                               : std::to_string(stack.back().index));
    stack.push_back({object, {}, {}, 0});
    return true;
  }
  bool close() {
    stack.pop_back();
    if (!components.empty())
      components.pop_back();
    return scalar();
  }
  /// The innermost open object as a JSON pointer (RFC 6901 escapes).
  std::string pointer() const {
    std::string out;
    for (const std::string &component : components) {
      out += '/';
      for (char c : component)
        out += c == '~' ? std::string("~0")
                        : c == '/' ? std::string("~1") : std::string(1, c);
    }
    return out;
  }
};
} // namespace

std::string DuplicateJsonKey::describe() const {
  return "key '" + key + "' appears twice in " +
         (objectPointer.empty() ? std::string("the top-level object")
                                : "the object at '" + objectPointer + "'") +
         ": say it once";
}

std::optional<DuplicateJsonKey>
moert::findDuplicateJsonKey(std::string_view text) {
  DuplicateKeyFinder finder;
  if (!nlohmann::json::sax_parse(text.begin(), text.end(), &finder))
    return std::nullopt;
  return finder.found;
}

std::optional<std::string> moert::checkJsonNesting(std::string_view text) {
  int depth = 0;
  bool inString = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (inString) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        return "its arrays and objects nest more than " +
               std::to_string(kMaxJsonDepth) + " levels deep (at byte " +
               std::to_string(i) + ")";
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::nullopt;
}
