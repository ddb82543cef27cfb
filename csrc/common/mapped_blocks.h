// Large blocks of memory as mappings of their own in transparent huge pages, with a cache of freed
// ones: what the label outputs' allocator (ops/cpu/kernel_common.h, LabelAllocator) and torch's
// wrapped CPU allocator (runner/huge_pages.cpp) hand out for blocks of kMappedFrom bytes or more.
//
// Why mappings of their own: malloc serves blocks under its adaptive mmap threshold (which rises to
// 32 MiB once such a block is freed) from its heaps, keeps freed ones, and gives memory back only
// from a heap's top; a tiled image's tensors of 4-32 MiB, freed in another order than they came,
// left the heaps growing tile after tile. Why huge pages: a fresh block is filled by the kernel on
// first touch, one zeroed page per fault; 2 MiB pages take 512 times fewer faults. Why a cache: a
// block handed out again (same size) costs neither faults nor zeroing, and the network's
// activations come in the same few sizes call after call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace unetseg {

#if defined(__linux__) && defined(MADV_HUGEPAGE)
constexpr bool kHasMappedBlocks = true;
#else
constexpr bool kHasMappedBlocks = false;
#endif

class MappedBlocks {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kMappedFrom = size_t{4} << 20;   // smaller blocks stay malloc's
  static constexpr size_t kCachedBytes = size_t{256} << 20; // freed blocks kept, oldest unmapped first

  // The process's one cache (never destroyed: blocks may be freed during static destruction).
  static MappedBlocks& shared() {
    static auto* blocks = [] {
      auto* made = new MappedBlocks();
#if defined(__linux__)
      // a fork (a DataLoader starting its workers) while another thread holds the lock would leave it
      // locked forever in the child: the lock is taken around every fork
      pthread_atfork(&lock_shared, &unlock_shared, &unlock_shared);
#endif
      return made;
    }();
    return *blocks;
  }

  // A block of at least `bytes` (>= kMappedFrom): the cached one of the same rounded size given back
  // last, or a new mapping; nullptr when the system has no memory left.
  void* take(size_t bytes) {
    const size_t size = rounded(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.rbegin(); it != free_.rend(); ++it) { // the latest given back: warmest in the caches
        if (it->first == size) {
          void* p = it->second;
          free_bytes_ -= size;
          free_.erase(std::next(it).base());
          live_[p] = size;
          return p;
        }
      }
    }
    void* p = map(size);
    if (p == nullptr) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    live_[p] = size;
    return p;
  }

  // Takes back a block from take(), or returns false for one it did not hand out.
  bool give_back(void* p) {
    std::vector<std::pair<size_t, void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(p);
      if (it == live_.end()) return false;
      const size_t size = it->second;
      live_.erase(it);
      if (size > kCachedBytes) {
        // larger than the whole budget: cached, it would first push every other block out
        drop.emplace_back(size, p);
      } else {
        free_.emplace_back(size, p);
        free_bytes_ += size;
      }
      while (free_bytes_ > kCachedBytes) {
        drop.push_back(free_.front());
        free_bytes_ -= free_.front().first;
        free_.erase(free_.begin());
      }
    }
    for (const auto& [size, q] : drop) unmap(q, size);
    return true;
  }

 private:
  static void lock_shared() { shared().mutex_.lock(); }
  static void unlock_shared() { shared().mutex_.unlock(); }

  static size_t rounded(size_t bytes) { return (bytes + kHugePage - 1) & ~(kHugePage - 1); }

  // `size` bytes (a multiple of kHugePage) starting on a huge page, advised huge pages: mapped with a
  // huge page of slack, whose unused ends are unmapped.
  static void* map(size_t size) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    void* slack = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slack == MAP_FAILED) return nullptr;
    const auto start = reinterpret_cast<uintptr_t>(slack);
    const uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
    if (aligned > start) munmap(slack, aligned - start);
    const uintptr_t end = start + size + kHugePage;
    if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
    void* p = reinterpret_cast<void*>(aligned);
    madvise(p, size, MADV_HUGEPAGE); // a hint: ignored where THP are off
    return p;
#else
    (void)size;
    return nullptr;
#endif
  }

  static void unmap(void* p, size_t size) {
#if defined(__linux__)
    munmap(p, size);
#else
    (void)p;
    (void)size;
#endif
  }

  std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;      // the size of each block handed out
  std::vector<std::pair<size_t, void*>> free_;  // blocks given back, oldest first
  size_t free_bytes_ = 0;
};

} // namespace unetseg
