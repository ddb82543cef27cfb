// One definition of the transparent-huge-page advice that the label outputs' allocator
// (ops/cpu/kernel_common.h, LabelAllocator) and torch's wrapped CPU allocator (runner/huge_pages.cpp)
// give fresh memory.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace unetseg {

// Whether this build can advise huge pages (Linux with MADV_HUGEPAGE).
#if defined(__linux__) && defined(MADV_HUGEPAGE)
constexpr bool kCanAdviseHugePages = true;
#else
constexpr bool kCanAdviseHugePages = false;
#endif

constexpr size_t kHugePageBytes = size_t{2} << 20;

// Asks the kernel to back the whole 2 MiB pages inside [p, p + bytes) with transparent huge pages
// when they are first touched: one fault and one zeroed 2 MiB page instead of 512 faults of 4 KiB.
// A hint: ignored where THP are off, and a failure changes nothing.
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (begin + kHugePageBytes - 1) & ~(kHugePageBytes - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePageBytes - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

} // namespace unetseg
