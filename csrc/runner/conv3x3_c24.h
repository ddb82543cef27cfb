// The CPU runner's 3x3 convolution for 24 output channels (cpu_graph.h), for CPUs with AVX512-BF16
// but no AMX (AMD Zen 4): there oneDNN holds a pixel's 24 output channels in two 16-lane vectors, a
// quarter of its lanes idle, and a 512-bit operation costs two 256-bit halves, so 16 + 8 lanes do
// in three halves what oneDNN does in four, on the default model's full-resolution layers, in
// bfloat16 and float32.
#pragma once

#include <ATen/core/Tensor.h>

namespace unetseg::runner {

// Whether the graph should use conv3x3_c24: the CPU has AVX512-BF16 and no AMX (with AMX oneDNN's
// kernels are several times faster).
bool conv3x3_c24_wins();

// Whether conv3x3_c24 computes a convolution with `weight`: [24, C, 3, 3] in float32, or in bfloat16
// with an even C.
bool conv3x3_c24_fits(const at::Tensor& weight);

// `weight` [24, C, 3, 3] -> in float32 [3][3][C][24]: per tap and input channel, the 24 output
// channels' weights; in bfloat16 [3][3][C / 2][24][2]: per tap and input pair, the 24 output
// channels' two weights side by side, as vdpbf16ps reads them. The op unetseg::_pack_conv3x3_c24.
at::Tensor pack_conv3x3_c24(const at::Tensor& weight);

// conv2d(x, weight, bias, stride 1, padding 1) (+ add) (+ ReLU) of a 4-d x in float32, or in
// bfloat16 with an even number of channels, out channels-last in x's dtype, with `packed` =
// pack_conv3x3_c24(weight). Each pixel's 24 sums sit in 16 + 8 float lanes, twelve pixels a block;
// the input is read in place but for each row's two end pixels. The arithmetic, bit for bit: each
// sum starts at the bias (0 without), then for each tap (row-major) whose input row is inside the
// image: in float32, for each input channel, sum = fma(x, w, sum); in bfloat16, for each input pair
// (2i, 2i + 1), sum = f32(sum + x[2i + 1] w[2i + 1]), then sum = f32(sum + x[2i] w[2i])
// (vdpbf16ps, as Intel's pseudocode states and Zen 4 computes; the products are exact, denormal
// inputs and results are zero); columns outside the image count as +0 inputs; then
// sum = f32(sum + add), ReLU as max(sum, +0), and in bfloat16 rounding to the nearest, ties to
// even. Needs AVX512-BF16 (an error elsewhere). The op unetseg::_conv3x3_c24.
at::Tensor conv3x3_c24(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& add, bool relu);

} // namespace unetseg::runner
