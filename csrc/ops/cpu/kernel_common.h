// What the CPU kernels of the label ops share (label_kernel.cpp: plain; seeded_kernel.cpp: seeded):
// reading rows of scores, a pool of reusable run tables, strips of rows, numbering, writing labels
// and the statistics table, new label tensors.
#pragma once

#include "../../common/mapped_blocks.h"
#include "../label.h"
#include "ccl.h"
#include "seeded.h"
#include "unetseg/ops.h"

#include <ATen/Dispatch_v2.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>


namespace unetseg::ops::cpu {

static_assert(static_cast<int64_t>(ccl::kNumStatsColumns) == stats::kNumColumns);
static_assert(static_cast<int64_t>(ccl::kMeanScore) == stats::kMeanScore);

// Runs `fn()` compiled for the widest instruction set level the scan has (ccl::with_avx2) when the
// CPU has it: the same results, the bit work in one instruction each.
template <class Fn>
void with_widest_isa(Fn&& fn) {
#if UNETSEG_CCL_X86
  if (simd_level() >= CpuSimd::kAvx2) return ccl::with_avx2(fn);
#endif
  fn();
}

// Rows per strip never drop below this, so small images are not cut into slivers.
constexpr int64_t kMinStripRows = 4;

// Foreground test of one row, as torch's `scores > threshold`: floating scores compare in their own
// dtype (the threshold rounded to it), masks compare as float32.
template <typename scalar_t>
struct RowReader {
  const scalar_t* image;
  int64_t stride_h, stride_w;
  float threshold;
  int32_t width;
  uint8_t* bytes; // width bytes of scratch

  // bits of `score > threshold`, or of `score < threshold` when Below.
  template <bool Below = false>
  void threshold_row(int32_t row, uint64_t* bits) const {
    const scalar_t* p = image + row * stride_h;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (stride_w == 1) {
#if UNETSEG_CCL_X86
        if (simd_level() >= CpuSimd::kAvx2) return ccl::threshold_bits_avx2<Below>(p, width, threshold, bits);
#endif
        return ccl::threshold_bits<Below>(p, width, threshold, bits);
      }
    }
    auto test = [t = threshold](scalar_t value) {
      const auto v = static_cast<float>(value);
      return static_cast<uint8_t>(Below ? v < t : v > t);
    };
    if (stride_w == 1) {
      for (int32_t x = 0; x < width; ++x) bytes[x] = test(p[x]);
    } else {
      for (int32_t x = 0; x < width; ++x) bytes[x] = test(p[x * stride_w]);
    }
    ccl::pack_bits(bytes, width, bits);
  }

  // Seeded labelling: the foreground bits of this (nucleus) reader and the seed bits (foreground
  // where `boundary`, a Below reader of the other channel, is below its threshold); `below` is
  // scratch. Contiguous float32 rows read both channels in one pass.
  void threshold_seed_row(const RowReader& boundary, int32_t row, uint64_t* foreground, uint64_t* below,
                          uint64_t* seeds) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (stride_w == 1) {
        const scalar_t* nucleus = image + row * stride_h;
        const scalar_t* other = boundary.image + row * boundary.stride_h;
#if UNETSEG_CCL_X86
        if (simd_level() >= CpuSimd::kAvx2) {
          return ccl::threshold_seed_bits_avx2(nucleus, other, width, threshold, boundary.threshold, foreground,
                                               seeds);
        }
#endif
        return ccl::threshold_seed_bits(nucleus, other, width, threshold, boundary.threshold, foreground, seeds);
      }
    }
    threshold_row(row, foreground);
    boundary.template threshold_row<true>(row, below);
    ccl::seed_bits(foreground, below, ccl::words_per_row(width), seeds);
  }

  float score(int32_t row, int32_t col) const {
    return static_cast<float>(image[row * stride_h + col * stride_w]);
  }

  double score_sum(int32_t row, int32_t start, int32_t end) const {
    const scalar_t* p = image + row * stride_h;
    double sum[4] = {0, 0, 0, 0}; // independent chains: one add per cycle, not one per latency
    int32_t x = start;
    for (; x + 4 <= end; x += 4)
      for (int k = 0; k < 4; ++k) sum[k] += static_cast<float>(p[(x + k) * stride_w]);
    for (; x < end; ++x) sum[0] += static_cast<float>(p[x * stride_w]);
    return (sum[0] + sum[1]) + (sum[2] + sum[3]);
  }
};

// The run tables of one call. Fresh multi-megabyte tables would be page-faulted in (and zeroed by
// the kernel) on every call, which costs as much as the labelling itself, so calls borrow a
// workspace from a pool and give it back with its capacity: a steady stream of same-sized calls
// allocates nothing. Concurrent callers each borrow their own.
struct Workspace {
  std::vector<ccl::Strip> strips;
  std::vector<ccl::ImageRuns> images;
  std::vector<std::vector<double>> stats;
  std::vector<ccl::Strip> seed_strips; // seeded labelling: the seeds' runs, strips as `strips`
  std::vector<ccl::ImageRuns> seed_images;
  std::vector<ccl::SeededScratch> seeded;
};

class WorkspacePool {
 public:
  struct Lease {
    std::unique_ptr<Workspace> workspace;
    ~Lease() { WorkspacePool::instance().give_back(std::move(workspace)); }
    Workspace* operator->() const { return workspace.get(); }
    Workspace& operator*() const { return *workspace; }
  };

  static WorkspacePool& instance() {
    static WorkspacePool pool;
    return pool;
  }

  Lease borrow() {
    std::unique_ptr<Workspace> workspace;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        workspace = std::move(free_.back());
        free_.pop_back();
      }
    }
    return Lease{workspace ? std::move(workspace) : std::make_unique<Workspace>()};
  }

 private:
  void give_back(std::unique_ptr<Workspace> workspace) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < kMaxIdle) free_.push_back(std::move(workspace));
  }

  static constexpr size_t kMaxIdle = 4;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Workspace>> free_;
};

// Cuts every image of the batch into strips of rows: about two strips per thread over the batch.
// Returns the number of strips per image.
inline int64_t plan_strips(std::vector<ccl::Strip>& strips, const ImageBatch& b) {
  const int64_t threads = at::get_num_threads();
  const int64_t per_image =
      std::clamp<int64_t>((2 * threads + b.n - 1) / b.n, 1, std::max<int64_t>(1, b.h / kMinStripRows));
  strips.resize(static_cast<size_t>(b.n * per_image));
  for (int64_t i = 0; i < b.n; ++i) {
    for (int64_t s = 0; s < per_image; ++s) {
      ccl::Strip& strip = strips[i * per_image + s];
      strip.image = i;
      strip.row_begin = static_cast<int32_t>(b.h * s / per_image);
      strip.row_end = static_cast<int32_t>(b.h * (s + 1) / per_image);
    }
  }
  return per_image;
}

// One run table of a call: the strips of every image and, out, the merged runs of every image.
struct RunTable {
  const std::vector<ccl::Strip>* strips;
  std::vector<ccl::ImageRuns>* images;
  bool keep_scores; // keep the runs' score sums
};

// Steps 2-3 of ccl.h after the scan, for every image of every table: the strips' runs copied into
// one table per image and numbered within their strip (all strips at once), the seams joined and
// each strip's roots given their labels in the image (all images at once), every run relabelled
// (all strips at once) and, where asked, objects under min_area dropped and the first table's
// statistics written into `image_stats` (all images at once).
inline void merge_and_number(std::initializer_list<RunTable> tables, const ImageBatch& b, int64_t strips_per_image,
                             bool eight_connected, int64_t min_area, std::vector<std::vector<double>>* image_stats) {
  const auto num_tables = static_cast<int64_t>(tables.size());
  auto table = [&](int64_t k) -> const RunTable& { return tables.begin()[k]; };
  auto strips_of = [&](int64_t k, int64_t i) { // the strips of image i of table k, top to bottom
    std::vector<const ccl::Strip*> own(static_cast<size_t>(strips_per_image));
    for (int64_t s = 0; s < strips_per_image; ++s) own[s] = &(*table(k).strips)[i * strips_per_image + s];
    return own;
  };
  auto with_scores = [&](int64_t k) { return table(k).keep_scores || (k == 0 && image_stats); };
  for (int64_t k = 0; k < num_tables; ++k) {
    table(k).images->resize(static_cast<size_t>(b.n));
    for (int64_t i = 0; i < b.n; ++i) {
      ccl::size_image((*table(k).images)[i], strips_of(k, i).data(), strips_per_image, with_scores(k));
    }
  }
  const int64_t strips_per_table = b.n * strips_per_image;
  auto each_strip = [&](auto&& fn) { // fn(image, table k, strip index in the table)
    at::parallel_for(0, num_tables * strips_per_table, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t k = task / strips_per_table, strip = task % strips_per_table;
        fn((*table(k).images)[strip / strips_per_image], k, strip);
      }
    });
  };
  auto each_image = [&](auto&& fn) { // fn(image, table k, image index i)
    at::parallel_for(0, num_tables * b.n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) fn((*table(task / b.n).images)[task % b.n], task / b.n, task % b.n);
    });
  };
  each_strip([&](ccl::ImageRuns& image, int64_t k, int64_t strip) {
    ccl::copy_strip(image, (*table(k).strips)[strip], strip % strips_per_image, with_scores(k));
  });
  each_image([&](ccl::ImageRuns& image, int64_t k, int64_t i) {
    ccl::join_strips(image, strips_of(k, i).data(), strips_per_image, eight_connected);
  });
  each_strip([&](ccl::ImageRuns& image, int64_t, int64_t strip) { ccl::label_strip(image, strip % strips_per_image); });
  if (image_stats) image_stats->resize(static_cast<size_t>(b.n));
  if (min_area > 0 || image_stats) {
    each_image([&](ccl::ImageRuns& image, int64_t k, int64_t i) {
      ccl::keep_and_measure(image, min_area, k == 0 && image_stats ? &(*image_stats)[i] : nullptr);
    });
  }
}

// Label outputs of at least this many bytes are written with streaming stores (ccl.h,
// write_rows_streamed, write_rows_avx2 and write_rows_avx512). Measured on a Xeon (2 threads, nuclei maps):
// streaming 64 MiB of labels took 8 ms against 11.6 ms cached, but 16 MiB took 2.1 against 1.7 ms:
// smaller outputs still gain from the caches, and there the AVX-512 writer gains nothing on
// write_rows.
constexpr int64_t kStreamFromBytes = int64_t{32} << 20;

// Step 4 of ccl.h: writes the labels of every image, strips in parallel.
inline void write_labels(const std::vector<ccl::Strip>& strips, const std::vector<ccl::ImageRuns>& images,
                  const ImageBatch& b, int32_t* out) {
  const auto width = static_cast<int32_t>(b.w);
  const bool stream = b.n * b.h * b.w * int64_t{sizeof(int32_t)} >= kStreamFromBytes;
  const CpuSimd simd = UNETSEG_CCL_X86 && stream ? simd_level() : CpuSimd::kGeneric;
  at::parallel_for(0, static_cast<int64_t>(strips.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> scratch(stream ? ccl::write_scratch_size(width) : 0);
    for (int64_t k = begin; k < end; ++k) {
      const ccl::Strip& strip = strips[k];
      const ccl::ImageRuns& image = images[strip.image];
      int32_t* rows = out + strip.image * b.h * b.w + int64_t{strip.row_begin} * b.w;
#if UNETSEG_CCL_X86
      if (simd == CpuSimd::kAvx512) {
        ccl::write_rows_avx512(image, strip.row_begin, strip.row_end, width, rows, b.w, scratch.data());
        continue;
      }
      if (simd == CpuSimd::kAvx2) {
        ccl::write_rows_avx2(image, strip.row_begin, strip.row_end, width, rows, b.w, scratch.data());
        continue;
      }
#endif
      if (stream) {
        ccl::write_rows_streamed(image, strip.row_begin, strip.row_end, width, rows, b.w, scratch.data());
      } else {
        ccl::write_rows(image, strip.row_begin, strip.row_end, width, rows, b.w);
      }
    }
  });
  (void)simd;
}

// Concatenates the per-image statistics into one float64 table.
inline at::Tensor stats_table(const std::vector<std::vector<double>>& image_stats, int64_t total,
                       const at::TensorOptions& options) {
  at::Tensor table = at::empty({total, stats::kNumColumns}, options.dtype(at::kDouble));
  double* dst = table.data_ptr<double>();
  for (const auto& rows : image_stats) dst = std::copy(rows.begin(), rows.end(), dst);
  return table;
}

inline bool empty_batch(const ImageBatch& b, const at::Tensor& scores, at::Tensor& counts,
                 std::optional<at::Tensor>* stats) {
  if (b.n != 0 && b.h != 0 && b.w != 0) return false;
  counts.zero_();
  if (stats) *stats = at::zeros({0, stats::kNumColumns}, scores.options().dtype(at::kDouble));
  return true;
}

// Large label outputs are mapped blocks from the process's cache (common/mapped_blocks.h): a fresh
// block is zeroed by the kernel on its first touch, about as long as labelling it takes (4096²:
// 64 MiB, ~4 ms); a reused block is not (the kernels write every label, background included).
// Smaller ones go straight to torch's allocator (malloc reuses those by itself). torch's own CPU
// allocator hands out the same blocks where use_huge_pages() wrapped it; this one does whatever the
// process's allocator is.
class LabelAllocator final : public c10::Allocator {
 public:
  static LabelAllocator& instance() {
    static auto* allocator = new LabelAllocator(); // never destroyed: tensors may outlive static destruction
    return *allocator;
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (kHasMappedBlocks && bytes >= MappedBlocks::kMappedFrom) {
      void* p = MappedBlocks::shared().take(bytes);
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr, "unetseg: out of memory for ", bytes, " bytes of labels");
      return {p, p, &release, c10::Device(c10::kCPU)};
    }
    void* p = c10::alloc_cpu(bytes);
    return {p, p, &c10::free_cpu, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static void release(void* p) { MappedBlocks::shared().give_back(p); }
};

// A new (uninitialised) int32 label tensor on the CPU, from the LabelAllocator.
inline at::Tensor new_labels(at::IntArrayRef shape) {
  return at::detail::empty_generic(shape, &LabelAllocator::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   at::kInt, std::nullopt);
}

} // namespace unetseg::ops::cpu
