// CPU kernels of unetseg::label, label.out and label_stats: thin torch glue around the torch-free
// run-based core in ccl.h. Parallel with torch's intra-op pool (at::parallel_for), so
// torch.set_num_threads governs it: strips of rows of every image are scanned and written in
// parallel, images are numbered in parallel.
#include "../label.h"
#include "ccl.h"
#include "seeded.h"
#include "unetseg/ops.h"

#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace unetseg::ops {
namespace {

static_assert(static_cast<int64_t>(ccl::kNumStatsColumns) == stats::kNumColumns);
static_assert(static_cast<int64_t>(ccl::kMeanScore) == stats::kMeanScore);

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
      if (stride_w == 1) return ccl::threshold_bits<Below>(p, width, threshold, bits);
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
        return ccl::threshold_seed_bits(image + row * stride_h, boundary.image + row * boundary.stride_h, width,
                                        threshold, boundary.threshold, foreground, seeds);
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
int64_t plan_strips(std::vector<ccl::Strip>& strips, const ImageBatch& b) {
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

// Step 2-3 of ccl.h after the scan: merges and numbers every image's runs of every table, all
// tables and images at once (statistics of the first table into `image_stats` when non-null).
void merge_and_number(std::initializer_list<RunTable> tables, const ImageBatch& b, int64_t strips_per_image,
                      bool eight_connected, int64_t min_area, std::vector<std::vector<double>>* image_stats) {
  for (const RunTable& table : tables) table.images->resize(static_cast<size_t>(b.n));
  if (image_stats) image_stats->resize(static_cast<size_t>(b.n));
  const auto num_tables = static_cast<int64_t>(tables.size());
  at::parallel_for(0, num_tables * b.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<const ccl::Strip*> own(static_cast<size_t>(strips_per_image));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task % num_tables, i = task / num_tables;
      const RunTable& table = tables.begin()[k];
      for (int64_t s = 0; s < strips_per_image; ++s) own[s] = &(*table.strips)[i * strips_per_image + s];
      ccl::merge_and_number((*table.images)[i], own.data(), strips_per_image, eight_connected, min_area,
                            k == 0 && image_stats ? &(*image_stats)[i] : nullptr, table.keep_scores);
    }
  });
}

// Step 4 of ccl.h: writes the labels of every image, strips in parallel.
void write_labels(const std::vector<ccl::Strip>& strips, const std::vector<ccl::ImageRuns>& images,
                  const ImageBatch& b, int32_t* out) {
  const auto width = static_cast<int32_t>(b.w);
  at::parallel_for(0, static_cast<int64_t>(strips.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const ccl::Strip& strip = strips[k];
      ccl::write_rows(images[strip.image], strip.row_begin, strip.row_end, width,
                      out + strip.image * b.h * b.w + int64_t{strip.row_begin} * b.w, b.w);
    }
  });
}

// Concatenates the per-image statistics into one float64 table.
at::Tensor stats_table(const std::vector<std::vector<double>>& image_stats, int64_t total,
                       const at::TensorOptions& options) {
  at::Tensor table = at::empty({total, stats::kNumColumns}, options.dtype(at::kDouble));
  double* dst = table.data_ptr<double>();
  for (const auto& rows : image_stats) dst = std::copy(rows.begin(), rows.end(), dst);
  return table;
}

bool empty_batch(const ImageBatch& b, const at::Tensor& scores, at::Tensor& counts,
                 std::optional<at::Tensor>* stats) {
  if (b.n != 0 && b.h != 0 && b.w != 0) return false;
  counts.zero_();
  if (stats) *stats = at::zeros({0, stats::kNumColumns}, scores.options().dtype(at::kDouble));
  return true;
}

// Labels `scores` into the contiguous int32 tensor `labels` and int64 `counts`; fills `stats` when
// asked. Every argument has been checked.
void label_kernel_impl(const at::Tensor& scores, const ImageBatch& b, double threshold,
                       bool eight_connected, int64_t min_area, at::Tensor& labels,
                       at::Tensor& counts, std::optional<at::Tensor>* stats) {
  if (empty_batch(b, scores, counts, stats)) return;
  const bool with_stats = stats != nullptr;
  const auto width = static_cast<int32_t>(b.w);
  const WorkspacePool::Lease workspace = WorkspacePool::instance().borrow();
  std::vector<ccl::Strip>& strips = workspace->strips;
  const int64_t strips_per_image = plan_strips(strips, b);

  AT_DISPATCH_V2(
      scores.scalar_type(), "unetseg_label_cpu", AT_WRAP([&] {
        const auto* base = scores.const_data_ptr<scalar_t>();
        const float t = rounded_threshold(scores.scalar_type(), threshold);
        at::parallel_for(0, static_cast<int64_t>(strips.size()), 1, [&](int64_t begin, int64_t end) {
          std::vector<uint8_t> bytes(static_cast<size_t>(width));
          std::vector<uint64_t> bits;
          for (int64_t k = begin; k < end; ++k) {
            ccl::Strip& strip = strips[k];
            const RowReader<scalar_t> reader{base + strip.image * b.stride_n, b.stride_h, b.stride_w,
                                             t, width, bytes.data()};
            ccl::scan_strip(
                strip, width, eight_connected, with_stats,
                [&](int32_t row, uint64_t* words) { reader.threshold_row(row, words); },
                [&](int32_t row, int32_t s, int32_t e) { return reader.score_sum(row, s, e); }, bits);
          }
        });
      }),
      at::kFloat, at::kHalf, at::kBFloat16, at::kByte, at::kBool);

  std::vector<std::vector<double>>& image_stats = workspace->stats;
  merge_and_number({{&strips, &workspace->images, false}}, b, strips_per_image, eight_connected, min_area,
                   with_stats ? &image_stats : nullptr);
  write_labels(strips, workspace->images, b, labels.data_ptr<int32_t>());

  int64_t* count = counts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t i = 0; i < b.n; ++i) total += count[i] = workspace->images[i].count;
  if (with_stats) *stats = stats_table(image_stats, total, scores.options());
}

// Seeded labelling (seeded.h) of the 2-channel `scores` (channel 0 nucleus at the batch's strides,
// channel 1 boundary `channel_stride` elements further) into contiguous `labels` and `counts`.
void seeded_kernel_impl(const at::Tensor& scores, const ImageBatch& b, int64_t channel_stride,
                        double threshold, double boundary_threshold, bool eight_connected,
                        int64_t min_area, at::Tensor& labels, at::Tensor& counts,
                        std::optional<at::Tensor>* stats) {
  if (empty_batch(b, scores, counts, stats)) return;
  const bool with_stats = stats != nullptr;
  const auto width = static_cast<int32_t>(b.w);
  const int64_t words = ccl::words_per_row(width);
  const int32_t widen = eight_connected ? 1 : 0;
  const WorkspacePool::Lease workspace = WorkspacePool::instance().borrow();
  std::vector<ccl::Strip>& strips = workspace->strips;
  const int64_t strips_per_image = plan_strips(strips, b);
  std::vector<ccl::Strip>& seed_strips = workspace->seed_strips;
  seed_strips.resize(strips.size()); // the same plan: image and rows of every strip
  for (size_t k = 0; k < strips.size(); ++k) {
    seed_strips[k].image = strips[k].image;
    seed_strips[k].row_begin = strips[k].row_begin;
    seed_strips[k].row_end = strips[k].row_end;
  }
  std::vector<ccl::SeededScratch>& scratch = workspace->seeded;
  scratch.resize(static_cast<size_t>(b.n));
  for (auto& s : scratch) s.resize(b.h, words);
  int32_t* out = labels.data_ptr<int32_t>();
  int64_t* count = counts.data_ptr<int64_t>();
  std::vector<std::vector<double>>& image_stats = workspace->stats;
  image_stats.resize(with_stats ? b.n : 0);

  AT_DISPATCH_V2(
      scores.scalar_type(), "unetseg_seeded_label_cpu", AT_WRAP([&] {
        const auto* base = scores.const_data_ptr<scalar_t>();
        const float t = rounded_threshold(scores.scalar_type(), threshold);
        const float tb = rounded_threshold(scores.scalar_type(), boundary_threshold);
        auto nucleus = [&](int64_t image, uint8_t* bytes) {
          return RowReader<scalar_t>{base + image * b.stride_n, b.stride_h, b.stride_w, t, width, bytes};
        };
        // One pass over both channels labels the foreground and the seeds.
        at::parallel_for(0, static_cast<int64_t>(strips.size()), 1, [&](int64_t begin, int64_t end) {
          std::vector<uint8_t> bytes(static_cast<size_t>(width));
          std::vector<uint64_t> foreground(static_cast<size_t>(words)), below(static_cast<size_t>(words));
          for (int64_t k = begin; k < end; ++k) {
            ccl::Strip& strip = strips[k];
            ccl::Strip& seed_strip = seed_strips[k];
            const RowReader<scalar_t> reader = nucleus(strip.image, bytes.data());
            const RowReader<scalar_t> boundary{reader.image + channel_stride, b.stride_h, b.stride_w,
                                               tb, width, bytes.data()};
            uint64_t* seeds = scratch[strip.image].seed_row(0);
            auto score_sum = [&](int32_t row, int32_t s, int32_t e) { return reader.score_sum(row, s, e); };
            ccl::reset(strip);
            ccl::reset(seed_strip);
            for (int32_t row = strip.row_begin; row < strip.row_end; ++row) {
              reader.threshold_seed_row(boundary, row, foreground.data(), below.data(), seeds + row * words);
              ccl::append_row(strip, row, foreground.data(), width, widen, with_stats, score_sum);
              ccl::append_row(seed_strip, row, seeds + row * words, width, widen, false, score_sum);
            }
          }
        });
        // The foreground's and the seeds' runs of every image merged and numbered, all at once.
        merge_and_number({{&strips, &workspace->images, with_stats}, {&seed_strips, &workspace->seed_images, false}},
                         b, strips_per_image, eight_connected, 0, nullptr);
        // Growth: images in parallel, or the groups of components of a single image.
        auto grow = [&](int64_t i, int32_t max_groups) {
          const RowReader<scalar_t> reader = nucleus(i, nullptr);
          count[i] = ccl::grow_and_number(
              workspace->images[i], workspace->seed_images[i], scratch[i], width, eight_connected, min_area,
              max_groups, [&](int32_t row, int32_t col) { return reader.score(row, col); },
              [&](int32_t row, int32_t s, int32_t e) { return reader.score_sum(row, s, e); },
              [](int32_t n, auto&& fn) {
                at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
                  for (int64_t g = begin; g < end; ++g) fn(static_cast<int32_t>(g));
                });
              },
              out + i * b.h * b.w, with_stats ? &image_stats[i] : nullptr);
        };
        if (b.n == 1) { // outside any parallel region, so that the groups can run at once
          grow(0, at::get_num_threads());
        } else {
          at::parallel_for(0, b.n, 1, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) grow(i, 1);
          });
        }
        write_labels(strips, workspace->images, b, out);
      }),
      at::kFloat, at::kHalf, at::kBFloat16, at::kByte, at::kBool);

  if (with_stats) {
    int64_t total = 0;
    for (int64_t i = 0; i < b.n; ++i) total += count[i];
    *stats = stats_table(image_stats, total, scores.options());
  }
}

// A new int32 label tensor. Large ones are advised to use transparent huge pages before their
// first touch: faulting in a 64 MiB output 4 KiB at a time costs more than labelling it.
at::Tensor new_labels(const at::Tensor& scores, at::IntArrayRef shape) {
  at::Tensor labels = at::empty(shape, scores.options().dtype(at::kInt));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<uintptr_t>(labels.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + labels.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE); // a hint
#endif
  return labels;
}

std::tuple<at::Tensor, at::Tensor> label_cpu(const at::Tensor& scores, double threshold,
                                             int64_t connectivity, int64_t min_area) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  at::Tensor labels = new_labels(scores, scores.sizes());
  at::Tensor counts = at::empty({b.n}, scores.options().dtype(at::kLong));
  label_kernel_impl(scores, b, threshold, connectivity == 8, min_area, labels, counts, nullptr);
  return {labels, counts};
}

void label_out_cpu(const at::Tensor& scores, double threshold, int64_t connectivity,
                   int64_t min_area, at::Tensor& labels, at::Tensor& counts) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  check_label_outputs(scores, b, labels, counts);
  if (labels.is_contiguous() && counts.is_contiguous()) {
    label_kernel_impl(scores, b, threshold, connectivity == 8, min_area, labels, counts, nullptr);
  } else {
    at::Tensor l = new_labels(scores, scores.sizes());
    at::Tensor c = at::empty({b.n}, counts.options());
    label_kernel_impl(scores, b, threshold, connectivity == 8, min_area, l, c, nullptr);
    labels.copy_(l);
    counts.copy_(c);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> label_stats_cpu(const at::Tensor& scores,
                                                               double threshold,
                                                               int64_t connectivity,
                                                               int64_t min_area) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  at::Tensor labels = new_labels(scores, scores.sizes());
  at::Tensor counts = at::empty({b.n}, scores.options().dtype(at::kLong));
  std::optional<at::Tensor> stats;
  label_kernel_impl(scores, b, threshold, connectivity == 8, min_area, labels, counts, &stats);
  return {labels, counts, *stats};
}

std::tuple<at::Tensor, at::Tensor> seeded_label_cpu(const at::Tensor& scores, double threshold,
                                                    double boundary_threshold, int64_t connectivity,
                                                    int64_t min_area) {
  const SeededBatch sb = check_seeded_args(scores, threshold, boundary_threshold, connectivity, min_area);
  at::Tensor labels = new_labels(scores, sb.labels_shape);
  at::Tensor counts = at::empty({sb.batch.n}, scores.options().dtype(at::kLong));
  seeded_kernel_impl(scores, sb.batch, sb.channel_stride, threshold, boundary_threshold,
                     connectivity == 8, min_area, labels, counts, nullptr);
  return {labels, counts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seeded_label_stats_cpu(
    const at::Tensor& scores, double threshold, double boundary_threshold, int64_t connectivity,
    int64_t min_area) {
  const SeededBatch sb = check_seeded_args(scores, threshold, boundary_threshold, connectivity, min_area);
  at::Tensor labels = new_labels(scores, sb.labels_shape);
  at::Tensor counts = at::empty({sb.batch.n}, scores.options().dtype(at::kLong));
  std::optional<at::Tensor> stats;
  seeded_kernel_impl(scores, sb.batch, sb.channel_stride, threshold, boundary_threshold,
                     connectivity == 8, min_area, labels, counts, &stats);
  return {labels, counts, *stats};
}

} // namespace
} // namespace unetseg::ops

TORCH_LIBRARY_IMPL(unetseg, CPU, m) {
  m.impl("label", &unetseg::ops::label_cpu);
  m.impl("label_out", &unetseg::ops::label_out_cpu);
  m.impl("label_stats", &unetseg::ops::label_stats_cpu);
  m.impl("seeded_label", &unetseg::ops::seeded_label_cpu);
  m.impl("seeded_label_stats", &unetseg::ops::seeded_label_stats_cpu);
}
