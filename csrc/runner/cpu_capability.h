// What the CPU can do, as ATen's cpuinfo reports it (the source torch's own kernels ask).
#pragma once

#include <ATen/cpu/Utils.h>

namespace unetseg::runner {

// Whether ATen's cpuinfo reports `capability` (e.g. "avx512_bf16", "amx_bf16").
inline bool cpu_has(const char* capability) {
  const auto caps = at::cpu::get_cpu_capabilities();
  const auto it = caps.find(capability);
  return it != caps.end() && it->second.isBool() && it->second.toBool();
}

} // namespace unetseg::runner
