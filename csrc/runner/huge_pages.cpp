// Transparent huge pages for torch's large CPU tensors (unetseg/runner.h, use_huge_pages).
//
// Why: a U-Net's activations at 1024² are tensors of 25-100 MB, each a fresh mapping from malloc
// that the kernel fills on first touch one 4 KiB page at a time (a page fault and a zeroed page
// each): 17 ms for a 100 MB tensor, against 7 ms in 2 MiB pages. That was a fifth of the float32
// forward and a third of the bfloat16 one (Intel Xeon, 2 threads). torch can do the same itself
// (THP_MEM_ALLOC_ENABLE=1), but reads that variable once, at its first allocation: usually before
// unetseg is imported or a C++ host constructs a Runner.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "../common/huge_pages.h"
#include "unetseg/runner.h"

namespace unetseg {
namespace {

// The allocator torch had (`base`), with every allocation of a huge page or more advised to be
// backed by huge pages before anything touches it. Same memory, same deleter: tensors allocated
// before or after it was installed free alike.
class HugePageAllocator final : public c10::Allocator {
 public:
  explicit HugePageAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr data = base_->allocate(n);
    if (n >= kHugePageBytes && data.get() != nullptr) advise_huge_pages(data.get(), n);
    return data;
  }
  bool is_simple_data_ptr(const c10::DataPtr& data) const override { return base_->is_simple_data_ptr(data); }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  void copy_data(void* dest, const void* src, size_t count) const override { base_->copy_data(dest, src, count); }

 private:
  c10::Allocator* base_;
};

// Whether the kernel gives huge pages to advised memory: /sys/kernel/mm/transparent_hugepage/enabled
// reads "[always] madvise never" or "always [madvise] never", not "... [never]".
bool kernel_has_transparent_huge_pages() {
  std::ifstream file("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  return std::getline(file, modes) && modes.find("[never]") == std::string::npos;
}

bool opted_out() {
  const char* value = std::getenv("UNETSEG_HUGE_PAGES");
  return value != nullptr && std::strcmp(value, "0") == 0;
}

} // namespace

bool use_huge_pages() {
  static const bool installed = [] {
    if (!kCanAdviseHugePages || opted_out() || !kernel_has_transparent_huge_pages()) return false;
    // never destroyed: torch may allocate during static destruction
    auto* allocator = new HugePageAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(allocator);
    return c10::GetCPUAllocator() == allocator; // a host's allocator of higher priority stays
  }();
  return installed;
}

} // namespace unetseg
