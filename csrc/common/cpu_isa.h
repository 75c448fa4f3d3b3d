// Instruction sets our CPU kernels are built for, and the one chosen at run time.
// Each ISA's kernels live in their own translation unit compiled with that ISA's flags; which
// one runs is decided here, once, from what the CPU and the OS support, optionally capped by
// HELEXA_CPU_ISA or set_isa_cap() so one host can test every variant.
#pragma once

#include <string>
#include <vector>

namespace helexa {

// Ordered from least to most capable; a cap allows everything up to and including it.
enum class Isa : int { generic = 0, avx2 = 1, avx512_vnni = 2 };

const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument naming the choices

Isa detected_isa();   // the best ISA this CPU and OS can run
Isa active_isa();     // detected_isa() limited by the cap
void set_isa_cap(Isa cap);
std::vector<std::string> usable_isa_names();  // generic .. detected_isa(), in order

}  // namespace helexa
