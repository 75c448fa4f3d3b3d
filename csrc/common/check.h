// Cheap argument checks for native entry points. A failed check throws std::invalid_argument,
// which pybind11 turns into a Python ValueError carrying the message.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace helexa {

template <class... Parts>
[[noreturn]] static void fail_argument(const Parts&... parts) {
  std::ostringstream msg;
  (msg << ... << parts);
  throw std::invalid_argument(msg.str());
}

}  // namespace helexa

#define HELEXA_CHECK(cond, ...)                     \
  do {                                              \
    if (!(cond)) ::helexa::fail_argument(__VA_ARGS__); \
  } while (0)
