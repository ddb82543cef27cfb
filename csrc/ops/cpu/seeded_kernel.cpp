// CPU kernels of unetseg::seeded_label and seeded_label_stats: torch glue around the torch-free
// seeded core in seeded.h (scan both channels, classify seeds, grow, number), parallel as the plain
// kernels (label_kernel.cpp): strips of rows, then images or groups of components.
#include "kernel_common.h"

#include <torch/library.h>

namespace unetseg::ops::cpu {
namespace {

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
            with_widest_isa([&] {
              for (int32_t row = strip.row_begin; row < strip.row_end; ++row) {
                reader.threshold_seed_row(boundary, row, foreground.data(), below.data(), seeds + row * words);
                ccl::append_row(strip, row, foreground.data(), width, widen, with_stats, score_sum);
                ccl::append_row(seed_strip, row, seeds + row * words, width, widen, false, score_sum);
              }
            });
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

std::tuple<at::Tensor, at::Tensor> seeded_label_cpu(const at::Tensor& scores, double threshold,
                                                    double boundary_threshold, int64_t connectivity,
                                                    int64_t min_area) {
  const SeededBatch sb = check_seeded_args(scores, threshold, boundary_threshold, connectivity, min_area);
  at::Tensor labels = new_labels(sb.labels_shape);
  at::Tensor counts = at::empty({sb.batch.n}, scores.options().dtype(at::kLong));
  seeded_kernel_impl(scores, sb.batch, sb.channel_stride, threshold, boundary_threshold,
                     connectivity == 8, min_area, labels, counts, nullptr);
  return {labels, counts};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seeded_label_stats_cpu(
    const at::Tensor& scores, double threshold, double boundary_threshold, int64_t connectivity,
    int64_t min_area) {
  const SeededBatch sb = check_seeded_args(scores, threshold, boundary_threshold, connectivity, min_area);
  at::Tensor labels = new_labels(sb.labels_shape);
  at::Tensor counts = at::empty({sb.batch.n}, scores.options().dtype(at::kLong));
  std::optional<at::Tensor> stats;
  seeded_kernel_impl(scores, sb.batch, sb.channel_stride, threshold, boundary_threshold,
                     connectivity == 8, min_area, labels, counts, &stats);
  return {labels, counts, *stats};
}

} // namespace
} // namespace unetseg::ops::cpu

TORCH_LIBRARY_IMPL(unetseg, CPU, m) {
  m.impl("seeded_label", &unetseg::ops::cpu::seeded_label_cpu);
  m.impl("seeded_label_stats", &unetseg::ops::cpu::seeded_label_stats_cpu);
}
