// A strict JSON parser (RFC 8259), enough for tests to check what the project writes.
#pragma once

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace actmem::testing {

struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  std::string text;  // a string's decoded value, or a number as written
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;  // in order, duplicates kept

  const Json& at(const std::string& name) const {
    for (const auto& [key, value] : members) {
      if (key == name) return value;
    }
    throw std::out_of_range("no member " + name);
  }
  double number() const { return std::strtod(text.c_str(), nullptr); }
};

// The value `text` holds; throws std::runtime_error at the first byte that is not JSON.
Json parse_json(const std::string& text);

}  // namespace actmem::testing
