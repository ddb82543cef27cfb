// A candidate for the default model's 24-channel full-resolution layers in bfloat16 on CPUs with
// AVX512-BF16 but no AMX (AMD Zen 4): a 3x3 convolution, stride 1, padding 1, channels-last, 24
// output channels, an even number of input channels, + bias (+ a tensor of the output's shape)
// (+ ReLU). oneDNN's kernels hold 32 output channels a pixel in two 16-lane vectors, a quarter of
// them unused; here 16 lanes + 8 lanes, every lane used, twelve pixels a block (24 accumulators).
// Timed against oneDNN by bench_conv24.py; not used by unetseg.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

namespace {

constexpr int kOut = 24;
constexpr int kBlock = 12; // pixels a block

// Accumulators (16 + 8 output channels) of one pixel, + the added tensor, ReLU, to bfloat16.
inline void store_pixel(__m512 z, __m256 y, const uint16_t* add, bool relu, uint16_t* out) {
  if (add) {
    const __m256i hz = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(add));
    const __m128i hy = _mm_loadu_si128(reinterpret_cast<const __m128i*>(add + 16));
    z = _mm512_add_ps(z, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hz), 16)));
    y = _mm256_add_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hy), 16)));
  }
  if (relu) {
    z = _mm512_max_ps(z, _mm512_setzero_ps());
    y = _mm256_max_ps(y, _mm256_setzero_ps());
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(z)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(y)));
}

// `n` (1 or kBlock) output pixels from x0 of one row. rows[k]: the zero-padded input row y + k - 1
// at its pixel 0 (nullptr outside the image); w: packed [tap][ic / 2][24 oc][2 ic].
template <int n>
void block(const uint16_t* const rows[3], int x0, int ic, const uint16_t* w, const float* bias,
           const uint16_t* add, bool relu, uint16_t* out) {
  __m512 z[n];
  __m256 y[n];
#pragma GCC unroll 12
  for (int p = 0; p < n; ++p) {
    z[p] = _mm512_loadu_ps(bias);
    y[p] = _mm256_loadu_ps(bias + 16);
  }
  const int pairs = ic / 2;
  for (int tap = 0; tap < 9; ++tap) {
    const uint16_t* row = rows[tap / 3];
    if (!row) continue;
    const uint16_t* wt = w + tap * pairs * 2 * kOut;
    const uint16_t* s = row + (x0 + tap % 3 - 1) * ic;
    for (int q = 0; q < pairs; ++q, wt += 2 * kOut, s += 2) {
      const __m512bh wz = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wt));
      const __m256bh wy = reinterpret_cast<__m256bh>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + 32)));
#pragma GCC unroll 12
      for (int p = 0; p < n; ++p) {
        int32_t pair;
        std::memcpy(&pair, s + p * ic, sizeof pair);
        const __m512i v = _mm512_set1_epi32(pair);
        z[p] = _mm512_dpbf16_ps(z[p], reinterpret_cast<__m512bh>(v), wz);
        y[p] = _mm256_dpbf16_ps(y[p], reinterpret_cast<__m256bh>(_mm512_castsi512_si256(v)), wy);
      }
    }
  }
#pragma GCC unroll 12
  for (int p = 0; p < n; ++p) store_pixel(z[p], y[p], add ? add + (x0 + p) * kOut : nullptr, relu, out + (x0 + p) * kOut);
}

} // namespace

// [24, ic, 3, 3] -> [3][3][ic / 2][24][2]: for each tap and input pair, the 24 output channels'
// two weights side by side, as vdpbf16ps reads them.
torch::Tensor pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == kOut && weight.size(1) % 2 == 0 && weight.size(2) == 3 &&
                  weight.size(3) == 3 && weight.scalar_type() == at::kBFloat16,
              "weights: [24, even, 3, 3] bfloat16");
  const int64_t ic = weight.size(1);
  return weight.view({kOut, ic / 2, 2, 3, 3}).permute({3, 4, 1, 0, 2}).contiguous();
}

torch::Tensor conv(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& bias,
                   const c10::optional<torch::Tensor>& add, bool relu) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "x: 4-d channels-last bfloat16");
  const int64_t n = x.size(0), ic = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(packed.numel() == 9 * ic * kOut, "packed weights for ", ic, " input channels");
  at::Tensor out = at::empty({n, kOut, h, w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (add) TORCH_CHECK(add->sizes() == out.sizes() && add->is_contiguous(at::MemoryFormat::ChannelsLast), "add: the output's shape, channels-last");
  const at::Tensor b = bias.to(at::kFloat).contiguous();
  const auto* in = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  const uint16_t* added = add ? reinterpret_cast<const uint16_t*>(add->data_ptr()) : nullptr;
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  const float* bp = b.data_ptr<float>();
  at::parallel_for(0, n * h, 4, [&](int64_t begin, int64_t end) {
    // three input rows with a zero pixel either side
    std::vector<uint16_t> padded(3 * (w + 2) * ic, 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t img = r / h, y = r % h;
      const uint16_t* rows[3];
      for (int k = 0; k < 3; ++k) {
        const int64_t yy = y + k - 1;
        if (yy < 0 || yy >= h) {
          rows[k] = nullptr;
          continue;
        }
        uint16_t* dst = padded.data() + (k * (w + 2) + 1) * ic;
        std::memcpy(dst, in + (img * h + yy) * w * ic, w * ic * sizeof(uint16_t));
        rows[k] = dst;
      }
      const uint16_t* a = added ? added + r * w * kOut : nullptr;
      uint16_t* row_out = o + r * w * kOut;
      int x0 = 0;
      for (; x0 + kBlock <= w; x0 += kBlock) block<kBlock>(rows, x0, ic, wp, bp, a, relu, row_out);
      for (; x0 < w; ++x0) block<1>(rows, x0, ic, wp, bp, a, relu, row_out);
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack", &pack);
  m.def("conv", &conv, py::arg("x"), py::arg("packed"), py::arg("bias"), py::arg("add") = py::none(), py::arg("relu") = true);
}
