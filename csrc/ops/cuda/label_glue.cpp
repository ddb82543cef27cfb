// CUDA kernels of unetseg::label, label_out, label_stats, seeded_label and seeded_label_stats: the
// thin torch glue around label_kernel.cu (tensors in; raw pointers, the current stream and
// caching-allocator workspace out). Built only when the installed torch has CUDA. Nothing here
// synchronises with the host except the stats ops, whose table size is the object count, and
// seeded growth, which reads its loop flag every few rounds.
#include "../label.h"
#include "label_cuda.h"
#include "unetseg/ops.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace unetseg::ops {
namespace {

cuda::ScoreType score_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return cuda::ScoreType::kFloat32;
    case at::kHalf: return cuda::ScoreType::kFloat16;
    case at::kBFloat16: return cuda::ScoreType::kBFloat16;
    case at::kByte: return cuda::ScoreType::kUInt8;
    default: return cuda::ScoreType::kBool; // check_label_args admitted nothing else
  }
}

void check_cuda(cudaError_t status, const char* op) {
  TORCH_CHECK(status == cudaSuccess, "unetseg.", op, " on CUDA failed: ", cudaGetErrorString(status));
}

cuda::Batch device_batch(const ImageBatch& b) {
  return cuda::Batch{b.n, b.h, b.w, b.stride_n, b.stride_h, b.stride_w};
}

// Labels into contiguous int32 `labels` and int64 `counts` on the scores' device.
void label_into(const at::Tensor& scores, const ImageBatch& b, double threshold, int64_t connectivity,
                int64_t min_area, at::Tensor& labels, at::Tensor& counts) {
  const cuda::Batch batch = device_batch(b);
  const size_t bytes = cuda::label_workspace_bytes(batch);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, scores.options().dtype(at::kByte));
  check_cuda(cuda::label(scores.const_data_ptr(), score_type(scores.scalar_type()), batch,
                         rounded_threshold(scores.scalar_type(), threshold), connectivity == 8, min_area,
                         labels.data_ptr<int32_t>(), counts.data_ptr<int64_t>(), workspace.data_ptr(),
                         bytes, c10::cuda::getCurrentCUDAStream()),
             "label");
}

at::Tensor stats_of(const at::Tensor& scores, const ImageBatch& b, const at::Tensor& labels,
                    const at::Tensor& counts) {
  const int64_t objects = counts.numel() ? counts.sum().item<int64_t>() : 0; // the table's size
  at::Tensor table = at::empty({objects, stats::kNumColumns}, scores.options().dtype(at::kDouble));
  if (objects == 0) return table;
  const at::Tensor starts = counts.cumsum(0).sub(counts);
  at::Tensor workspace = at::empty({static_cast<int64_t>(cuda::stats_workspace_bytes(objects))},
                                   scores.options().dtype(at::kByte));
  check_cuda(cuda::object_stats(scores.const_data_ptr(), score_type(scores.scalar_type()), device_batch(b),
                                labels.const_data_ptr<int32_t>(), starts.const_data_ptr<int64_t>(), objects,
                                workspace.data_ptr(), table.data_ptr<double>(),
                                c10::cuda::getCurrentCUDAStream()),
             "label_stats");
  return table;
}

// New labels and counts of checked scores (the caller holds the device guard).
std::tuple<at::Tensor, at::Tensor> new_labels(const at::Tensor& scores, const ImageBatch& b, double threshold,
                                              int64_t connectivity, int64_t min_area) {
  at::Tensor labels = at::empty(scores.sizes(), scores.options().dtype(at::kInt));
  at::Tensor counts = at::empty({b.n}, scores.options().dtype(at::kLong));
  label_into(scores, b, threshold, connectivity, min_area, labels, counts);
  return {labels, counts};
}

std::tuple<at::Tensor, at::Tensor> label_cuda(const at::Tensor& scores, double threshold,
                                              int64_t connectivity, int64_t min_area) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  const c10::cuda::CUDAGuard guard(scores.device());
  return new_labels(scores, b, threshold, connectivity, min_area);
}

void label_out_cuda(const at::Tensor& scores, double threshold, int64_t connectivity, int64_t min_area,
                    at::Tensor& labels, at::Tensor& counts) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  check_label_outputs(scores, b, labels, counts);
  const c10::cuda::CUDAGuard guard(scores.device());
  if (labels.is_contiguous() && counts.is_contiguous()) {
    label_into(scores, b, threshold, connectivity, min_area, labels, counts);
  } else {
    at::Tensor l = at::empty(scores.sizes(), labels.options());
    at::Tensor c = at::empty({b.n}, counts.options());
    label_into(scores, b, threshold, connectivity, min_area, l, c);
    labels.copy_(l);
    counts.copy_(c);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> label_stats_cuda(const at::Tensor& scores, double threshold,
                                                                int64_t connectivity, int64_t min_area) {
  const ImageBatch b = check_label_args(scores, threshold, connectivity, min_area);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto [labels, counts] = new_labels(scores, b, threshold, connectivity, min_area);
  return {labels, counts, stats_of(scores, b, labels, counts)};
}

// Seeded labelling of checked 2-channel scores (the caller holds the device guard).
std::tuple<at::Tensor, at::Tensor> new_seeded_labels(const at::Tensor& scores, const SeededBatch& sb,
                                                     double threshold, double boundary_threshold,
                                                     int64_t connectivity, int64_t min_area) {
  at::Tensor labels = at::empty(sb.labels_shape, scores.options().dtype(at::kInt));
  at::Tensor counts = at::empty({sb.batch.n}, scores.options().dtype(at::kLong));
  const cuda::Batch batch = device_batch(sb.batch);
  const size_t bytes = cuda::seeded_workspace_bytes(batch);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, scores.options().dtype(at::kByte));
  const auto* nucleus = static_cast<const char*>(scores.const_data_ptr());
  const at::ScalarType dtype = scores.scalar_type();
  check_cuda(cuda::seeded_label(nucleus, nucleus + sb.channel_stride * static_cast<int64_t>(scores.element_size()),
                                score_type(dtype), batch, rounded_threshold(dtype, threshold),
                                rounded_threshold(dtype, boundary_threshold), connectivity == 8, min_area,
                                labels.data_ptr<int32_t>(), counts.data_ptr<int64_t>(), workspace.data_ptr(), bytes,
                                c10::cuda::getCurrentCUDAStream()),
             "seeded_label");
  return {labels, counts};
}

std::tuple<at::Tensor, at::Tensor> seeded_label_cuda(const at::Tensor& scores, double threshold,
                                                     double boundary_threshold, int64_t connectivity,
                                                     int64_t min_area) {
  const SeededBatch sb = check_seeded_args(scores, threshold, boundary_threshold, connectivity, min_area);
  const c10::cuda::CUDAGuard guard(scores.device());
  return new_seeded_labels(scores, sb, threshold, boundary_threshold, connectivity, min_area);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seeded_label_stats_cuda(const at::Tensor& scores, double threshold,
                                                                       double boundary_threshold,
                                                                       int64_t connectivity, int64_t min_area) {
  const SeededBatch sb = check_seeded_args(scores, threshold, boundary_threshold, connectivity, min_area);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto [labels, counts] = new_seeded_labels(scores, sb, threshold, boundary_threshold, connectivity, min_area);
  return {labels, counts, stats_of(scores, sb.batch, labels, counts)}; // the nucleus channel's scores
}

} // namespace
} // namespace unetseg::ops

TORCH_LIBRARY_IMPL(unetseg, CUDA, m) {
  m.impl("label", &unetseg::ops::label_cuda);
  m.impl("label_out", &unetseg::ops::label_out_cuda);
  m.impl("label_stats", &unetseg::ops::label_stats_cuda);
  m.impl("seeded_label", &unetseg::ops::seeded_label_cuda);
  m.impl("seeded_label_stats", &unetseg::ops::seeded_label_stats_cuda);
}
