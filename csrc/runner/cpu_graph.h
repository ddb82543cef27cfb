// The network's graph specialised for oneDNN on the CPU, at load time: the model file stays a
// portable TorchScript graph (CUDA, other runtimes), and the CPU runner runs a faster version of it.
#pragma once

#include <ATen/ATen.h>
#include <torch/script.h>

namespace unetseg::runner {

// Rewrites the frozen `module`'s forward graph in place for the CPU, in `dtype` (float32 or
// bfloat16), and returns true; returns false and leaves it untouched when the graph holds an op the
// rewrite does not know or this torch lacks oneDNN's fused convolutions. The rewrite:
// - every convolution followed by a ReLU (or MobileNetV2's ReLU6, a hardtanh) becomes one oneDNN
//   convolution with the activation as a post-op (mkldnn::_convolution_pointwise): the
//   activation's extra pass over memory goes;
// - a convolution of a concatenation of two tensors (a U-Net's skip and up-sampled features)
//   becomes a convolution of the first with its part of the weights, then a convolution of the
//   second that adds the first's result as a post-op (the activation follows): the concatenated
//   tensor is never written; when the graph fixes the first tensor's channel count (the convolution
//   that made it, found through crops and the forward's list of skips) the two parts of its weights
//   are constants, and a ReLU after it joins the second convolution as a post-op;
// - in bfloat16 every 2x2 max-pool of stride 2 becomes unetseg::_max_pool_2x2 (max_pool.h), one pass
//   over memory: torch's CPU max-pool also writes the argmax indices (int64) and converts every
//   value, and is 14x slower;
// - on a CPU with AVX512-BF16 and no AMX, a 3x3 convolution to 24 channels (stride 1, padding 1,
//   constant weights; in bfloat16 an even number of input channels; either half of a split one too)
//   becomes unetseg::_conv3x3_c24 (conv3x3_c24.h), with its ReLU and `+ add`: oneDNN leaves a quarter
//   of its vector lanes idle on such layers, the default model's full-resolution ones;
// - convolution weights are stored channels-last, the activations' layout, so oneDNN does not copy
//   them into it on every call;
// - for bfloat16 every floating constant (weights, biases) is stored in bfloat16, and the caller
//   passes bfloat16 inputs instead of running the graph under autocast (autocast does not know the
//   fused ops).
// Same arithmetic as the original graph up to the order of float sums.
bool specialise_for_cpu(torch::jit::Module& module, c10::ScalarType dtype);

} // namespace unetseg::runner
