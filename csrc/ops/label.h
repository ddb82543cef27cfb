// Argument checking and batch geometry shared by every backend of the label ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace unetseg::ops {

// scores seen as a batch of N images of H x W with element strides.
struct ImageBatch {
  int64_t n, h, w;
  int64_t stride_n, stride_h, stride_w;
};

// Checks every user-facing argument (TORCH_CHECK with what was received and what is expected)
// and returns the batch geometry of scores.
ImageBatch check_label_args(const at::Tensor& scores, double threshold, int64_t connectivity,
                            int64_t min_area);

// Checks the caller-supplied outputs of label_out: dtype, device and exact shape.
void check_label_outputs(const at::Tensor& scores, const ImageBatch& batch,
                         const at::Tensor& labels, const at::Tensor& counts);

} // namespace unetseg::ops
