// torch's large CPU tensors as mapped blocks in transparent huge pages (unetseg/runner.h,
// use_huge_pages; common/mapped_blocks.h says why mapped, why huge pages, why cached).
//
// A U-Net's activations at 1024² are tensors of 25-100 MB, fresh mappings from malloc that the
// kernel filled on first touch one zeroed 4 KiB page at a time: 17 ms for a 100 MB tensor, 7 ms in
// 2 MiB pages, none when the block is reused. That was a fifth of the float32 forward and a third
// of the bfloat16 one (Intel Xeon, 2 threads). torch can advise huge pages itself
// (THP_MEM_ALLOC_ENABLE=1), but reads that variable once, at its first allocation: usually before
// unetseg is imported or a C++ host constructs a Runner; and it leaves blocks under 32 MiB to
// malloc's heaps, which grew tile after tile on large images (peak RSS 46-53 bytes a pixel at 5000²).
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "../common/mapped_blocks.h"
#include "unetseg/runner.h"

namespace unetseg {
namespace {

// torch's CPU allocator (`base`) for small blocks, MappedBlocks::shared() for the others. Every
// block has the same deleter (torch's raw allocation API asks for one), which gives the mapped
// blocks back and the others to base's deleter.
class HugePageAllocator final : public c10::Allocator {
 public:
  static HugePageAllocator* instance;

  explicit HugePageAllocator(c10::Allocator* base) : base_(base), base_deleter_(base->raw_deleter()) {}

  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    if (n >= MappedBlocks::kMappedFrom) {
      p = MappedBlocks::shared().take(n);
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "unetseg: out of memory: ", n, " bytes could not be mapped");
    } else {
      p = base_->raw_allocate(n);
    }
    return {p, p, &release, c10::Device(c10::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

 private:
  static void release(void* p) {
    if (!MappedBlocks::shared().give_back(p)) instance->base_deleter_(p);
  }

  c10::Allocator* base_;
  c10::DeleterFnPtr base_deleter_;
};

HugePageAllocator* HugePageAllocator::instance = nullptr;

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
    c10::Allocator* base = c10::GetCPUAllocator();
    // a base without a raw deleter (a host's own allocator) cannot share one deleter with the blocks
    if (!kHasMappedBlocks || opted_out() || !kernel_has_transparent_huge_pages() || base->raw_deleter() == nullptr) {
      return false;
    }
    // never destroyed: tensors may be freed during static destruction
    HugePageAllocator::instance = new HugePageAllocator(base);
    c10::SetCPUAllocator(HugePageAllocator::instance);
    return c10::GetCPUAllocator() == HugePageAllocator::instance; // a host's allocator of higher priority stays
  }();
  return installed;
}

} // namespace unetseg
