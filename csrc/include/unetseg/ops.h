// unetseg ops: the public C++ entry points. Each call goes through the PyTorch dispatcher, so it
// runs the kernel of the device holding `scores` (CPU, or CUDA where built) and is the same op that
// Python reaches as torch.ops.unetseg.* and TorchScript models call.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace unetseg {

// Threshold + connected components, fused.
//   scores:  (H, W), (N, H, W) or (N, 1, H, W); float32/float16/bfloat16 scores or bool/uint8
//            masks, any strides. Foreground where `scores > threshold`, compared as torch compares
//            a tensor with a Python float (in the scores' dtype for floating types, so NaN is
//            background); threshold 0 on a mask means nonzero.
//   connectivity: 8 (3x3 ones) or 4 (the cross).
//   min_area: objects with fewer pixels are removed and the rest renumbered.
// Returns labels (int32, shape of scores; 0 background, objects 1..K in raster order of their first
// pixel, bit-identical to scipy.ndimage.label) and counts (int64, one per image).
std::tuple<at::Tensor, at::Tensor> label(const at::Tensor& scores, double threshold = 0.5,
                                         int64_t connectivity = 8, int64_t min_area = 0);

// As label(), into caller-owned tensors (int32 labels shaped like scores, int64 counts (N,), any
// strides), so repeated calls allocate no output.
void label_out(const at::Tensor& scores, double threshold, int64_t connectivity, int64_t min_area,
               at::Tensor& labels, at::Tensor& counts);

// As label(), plus per-object statistics: float64 (sum(counts), stats::kNumColumns), the objects of
// image 0 first, each image's in label order (image i's rows start at counts[:i].sum()).
std::tuple<at::Tensor, at::Tensor, at::Tensor> label_stats(const at::Tensor& scores,
                                                           double threshold = 0.5,
                                                           int64_t connectivity = 8,
                                                           int64_t min_area = 0);

namespace stats {
// Columns of label_stats' table. The bbox is [min, max) as skimage.measure.regionprops' bbox.
enum Column : int64_t {
  kArea = 0,
  kMinRow,
  kMinCol,
  kMaxRow,
  kMaxCol,
  kCentroidRow,
  kCentroidCol,
  kMeanScore,
  kNumColumns
};
} // namespace stats

} // namespace unetseg
