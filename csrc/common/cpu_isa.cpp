#include "common/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace helexa {
namespace {

constexpr const char* kNames[] = {"generic", "avx2", "avx512_vnni"};

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XGETBV).
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
  if (avx512) return Isa::avx512_vnni;
  if (avx2) return Isa::avx2;
#endif
  return Isa::generic;
}

Isa initial_cap() {
  const char* env = std::getenv("HELEXA_CPU_ISA");
  if (env == nullptr || *env == '\0') return Isa::avx512_vnni;
  try {
    return isa_from_name(env);
  } catch (const std::invalid_argument&) {
    return Isa::generic;  // an unknown cap is taken as the safest choice
  }
}

std::atomic<int>& cap_slot() {
  static std::atomic<int> cap{static_cast<int>(initial_cap())};
  return cap;
}

}  // namespace

const char* isa_name(Isa isa) { return kNames[static_cast<int>(isa)]; }

Isa isa_from_name(const std::string& name) {
  for (int i = 0; i < 3; ++i) {
    if (name == kNames[i]) return static_cast<Isa>(i);
  }
  throw std::invalid_argument("unknown CPU ISA '" + name +
                              "': expected one of generic, avx2, avx512_vnni");
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() {
  const int cap = cap_slot().load(std::memory_order_relaxed);
  const int best = static_cast<int>(detected_isa());
  return static_cast<Isa>(cap < best ? cap : best);
}

void set_isa_cap(Isa cap) { cap_slot().store(static_cast<int>(cap), std::memory_order_relaxed); }

std::vector<std::string> usable_isa_names() {
  std::vector<std::string> out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i) out.emplace_back(kNames[i]);
  return out;
}

}  // namespace helexa
