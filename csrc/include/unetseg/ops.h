// unetseg ops: the public C++ entry points. Each call goes through the PyTorch dispatcher, so it
// runs the kernel of the device holding `scores` (CPU, or CUDA where built) and is the same op that
// Python reaches as torch.ops.unetseg.* and TorchScript models call.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
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

// Seeded labelling for 2-channel (nucleus + boundary) models, which keeps touching nuclei apart.
//   scores: (2, H, W) or (N, 2, H, W); channel 0 the nucleus score, channel 1 the boundary score;
//           dtypes and strides as label().
// Foreground is `nucleus > threshold`; seeds are the foreground pixels whose `boundary <
// boundary_threshold` (both compared as label() compares), labelled as label() labels. Each
// foreground pixel connected to a seed then joins the seed nearest to it along the foreground
// (rounds of dilation inside the foreground; between equally near seeds, the neighbour with the
// highest nucleus score, then the smaller label, wins). Foreground components without a seed are
// objects of their own. Objects with fewer than min_area pixels are removed; the rest are numbered
// 1..K in raster order of their first pixel. Labels have the shape of scores without the channel
// dimension; counts as label().
std::tuple<at::Tensor, at::Tensor> seeded_label(const at::Tensor& scores, double threshold = 0.5,
                                                double boundary_threshold = 0.5,
                                                int64_t connectivity = 8, int64_t min_area = 0);

// As seeded_label(), plus label_stats()' per-object statistics (mean_score: of the nucleus score).
std::tuple<at::Tensor, at::Tensor, at::Tensor> seeded_label_stats(const at::Tensor& scores,
                                                                  double threshold = 0.5,
                                                                  double boundary_threshold = 0.5,
                                                                  int64_t connectivity = 8,
                                                                  int64_t min_area = 0);

// The vector instruction set the CPU kernels use: "avx512" where the CPU has AVX-512F, "avx2" where
// it has AVX2, else "generic" (found at run time). Every choice gives the same labels; set_cpu_simd
// picks one for later calls (to compare or time them) and refuses one the CPU lacks. Not meant to
// change while ops run.
std::string cpu_simd();
void set_cpu_simd(const std::string& name);

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
