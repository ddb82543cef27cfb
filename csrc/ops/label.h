// Argument checking and batch geometry shared by every backend of the label ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

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

// A (N, 2, H, W) or (2, H, W) nucleus + boundary batch: `batch` describes the nucleus channel,
// the boundary channel is `channel_stride` elements further; labels have the shape without the
// channel dimension.
struct SeededBatch {
  ImageBatch batch;
  int64_t channel_stride;
  std::vector<int64_t> labels_shape;
};

// As check_label_args, for the seeded ops.
SeededBatch check_seeded_args(const at::Tensor& scores, double threshold, double boundary_threshold,
                              int64_t connectivity, int64_t min_area);

// The threshold as every backend compares it: rounded to the scores' dtype when that is a floating
// type (torch compares a tensor with a Python float in the tensor's dtype), as is for masks.
float rounded_threshold(at::ScalarType dtype, double threshold);

// Checks the caller-supplied outputs of label_out: dtype, device and exact shape.
void check_label_outputs(const at::Tensor& scores, const ImageBatch& batch,
                         const at::Tensor& labels, const at::Tensor& counts);

// The vector instructions of the CPU kernels: kAvx2 thresholds and writes labels with AVX2 and
// finds runs with BMI1/2 and POPCNT, kAvx512 writes labels with AVX-512F, kGeneric uses SSE2 (on
// x86-64) and the compiler's baseline. The widest the
// CPU has is found once; set_cpu_simd (ops.h) may pick a narrower one. Every choice gives the same
// labels. Ordered: a level includes the ones below it.
enum class CpuSimd { kGeneric, kAvx2, kAvx512 };
CpuSimd simd_level();

} // namespace unetseg::ops
