// Cheap argument checks for native entry points. A failed check throws std::invalid_argument,
// which pybind11 turns into a Python ValueError carrying the message.
//
// Messages are built with std::string and std::to_string, never iostreams: a process that holds
// two libstdc++ copies (torch's, the system's, one linked statically into an extension) can crash
// in locale facets the first time an ostream formats a number.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

namespace helexa {

static inline void append_text(std::string& out, const char* part) { out += part; }
static inline void append_text(std::string& out, const std::string& part) { out += part; }
template <class T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
static inline void append_text(std::string& out, T part) {
  out += std::to_string(part);
}

template <class... Parts>
[[noreturn]] static void fail_argument(const Parts&... parts) {
  std::string msg;
  (append_text(msg, parts), ...);
  throw std::invalid_argument(msg);
}

}  // namespace helexa

#define HELEXA_CHECK(cond, ...)                        \
  do {                                                 \
    if (!(cond)) ::helexa::fail_argument(__VA_ARGS__); \
  } while (0)
