// CPU kernels of unetseg::label, label.out and label_stats: thin torch glue around the torch-free
// run-based core in ccl.h. Parallel with torch's intra-op pool (at::parallel_for), so
// torch.set_num_threads governs it: strips of rows of every image are scanned and written in
// parallel, images are numbered in parallel.
#include "kernel_common.h"

#include <torch/library.h>

namespace unetseg::ops::cpu {
namespace {

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
          with_widest_isa([&] {
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

std::tuple<at::Tensor, at::Tensor> label_cpu(const at::Tensor& scores, double threshold,
                                             int64_t connectivity, int64_t min_area) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  at::Tensor labels = new_labels(scores.sizes());
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
    at::Tensor l = new_labels(scores.sizes());
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
  at::Tensor labels = new_labels(scores.sizes());
  at::Tensor counts = at::empty({b.n}, scores.options().dtype(at::kLong));
  std::optional<at::Tensor> stats;
  label_kernel_impl(scores, b, threshold, connectivity == 8, min_area, labels, counts, &stats);
  return {labels, counts, *stats};
}

} // namespace
} // namespace unetseg::ops::cpu

TORCH_LIBRARY_IMPL(unetseg, CPU, m) {
  m.impl("label", &unetseg::ops::cpu::label_cpu);
  m.impl("label_out", &unetseg::ops::cpu::label_out_cpu);
  m.impl("label_stats", &unetseg::ops::cpu::label_stats_cpu);
}
