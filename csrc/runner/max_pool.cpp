#include "max_pool.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace unetseg::runner {
namespace {

// bfloat16 bits as a signed 16-bit key in the order of their values: non-negative values keep
// their bits, negative ones have the magnitude bits flipped (so -0 sorts just below +0, which no
// comparison of values tells apart). A NaN first loses its sign, so it is the largest key (above
// +inf) and wins every maximum, as torch.maximum propagates NaN. Integer operations only, so the
// compiler vectorises the loop with the baseline instruction set.
inline int16_t key(uint16_t bits) {
  const bool nan = (bits & 0x7FFF) > 0x7F80;
  const uint16_t positive_if_nan = nan ? uint16_t(bits & 0x7FFF) : bits;
  const auto s = static_cast<int16_t>(positive_if_nan);
  return static_cast<int16_t>(s ^ ((s >> 15) & 0x7FFF));
}

inline uint16_t bits_of(int16_t k) { return static_cast<uint16_t>(k ^ ((k >> 15) & 0x7FFF)); }

// Output rows [begin, end) (image-major) of a channels-last (n, c, h, w) input.
void pool_rows(const uint16_t* in, uint16_t* out, int64_t c, int64_t h, int64_t w, int64_t begin, int64_t end) {
  const int64_t oh = h / 2, ow = w / 2;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t image = row / oh, y = row % oh;
    const uint16_t* top = in + ((image * h + 2 * y) * w) * c;
    const uint16_t* bottom = top + w * c;
    uint16_t* o = out + row * ow * c;
    for (int64_t x = 0; x < ow; ++x, o += c) {
      const uint16_t *a = top + 2 * x * c, *b = a + c, *p = bottom + 2 * x * c, *q = p + c;
      for (int64_t k = 0; k < c; ++k) {
        o[k] = bits_of(std::max(std::max(key(a[k]), key(b[k])), std::max(key(p[k]), key(q[k]))));
      }
    }
  }
}

} // namespace

at::Tensor max_pool_2x2(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kBFloat16,
              "unetseg::_max_pool_2x2 takes a bfloat16 CPU tensor (N, C, H, W), got ", x.scalar_type(), " ",
              x.sizes(), " on ", x.device());
  const at::Tensor in = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor out = at::empty({n, c, h / 2, w / 2}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const auto* src = reinterpret_cast<const uint16_t*>(in.const_data_ptr<c10::BFloat16>());
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
  // a task of at least 64 Ki outputs: the rows of small maps are not worth a thread each
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, (w / 2) * c));
  at::parallel_for(0, n * (h / 2), grain,
                   [&](int64_t begin, int64_t end) { pool_rows(src, dst, c, h, w, begin, end); });
  return out;
}

TORCH_LIBRARY_FRAGMENT(unetseg, m) { m.def("_max_pool_2x2(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(unetseg, CPU, m) { m.impl("_max_pool_2x2", &max_pool_2x2); }

} // namespace unetseg::runner
