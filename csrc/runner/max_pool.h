// The 2x2 max-pool of the CPU runner's bfloat16 graph (cpu_graph.h), in one pass.
#pragma once

#include <ATen/core/Tensor.h>

namespace unetseg::runner {

// max_pool2d(x, 2) of a 4-d bfloat16 tensor (N, C, H, W) without indices: each output element the
// maximum of its 2x2 cell (NaN if the cell holds one, as torch.maximum gives; odd last rows and
// columns dropped, as the pool does), as a channels-last tensor. One read of the input and one
// write: torch's CPU max-pool also writes int64 argmax indices and converts every bfloat16 value,
// and the maximum of four strided quarters (three torch.maximum calls) passes over memory three
// times. Registered as the op unetseg::_max_pool_2x2.
at::Tensor max_pool_2x2(const at::Tensor& x);

} // namespace unetseg::runner
