#include "conv3x3_c24.h"

#include "cpu_capability.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

#define UNETSEG_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

namespace unetseg::runner {
namespace {

constexpr int kOut = 24;
constexpr int kBlock = 12; // pixels a block: 24 accumulators of the 32 vector registers

// One pixel's sums (16 + 8 output channels) + its `add` values (nullptr: none), ReLU, to bfloat16.
UNETSEG_TARGET_AVX512_BF16 inline void store_pixel(__m512 z, __m256 y, const uint16_t* add, bool relu,
                                                   uint16_t* out) {
  if (add) {
    const __m256i hz = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(add));
    const __m128i hy = _mm_loadu_si128(reinterpret_cast<const __m128i*>(add + 16));
    z = _mm512_add_ps(z, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hz), 16)));
    y = _mm256_add_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hy), 16)));
  }
  if (relu) { // max(sum, +0): +0 for -0 too
    z = _mm512_max_ps(z, _mm512_setzero_ps());
    y = _mm256_max_ps(y, _mm256_setzero_ps());
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(z)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(y)));
}

// `n` (1 or kBlock) output pixels from x0 of one row. rows[k]: input row y + k - 1 at its pixel 0,
// with a zero pixel either side (nullptr outside the image); w: packed weights.
template <int n>
UNETSEG_TARGET_AVX512_BF16 void block(const uint16_t* const rows[3], int64_t x0, int64_t ic, const uint16_t* w,
                                      const float* bias, const uint16_t* add, bool relu, uint16_t* out) {
  __m512 z[n];
  __m256 y[n];
#pragma GCC unroll 12
  for (int p = 0; p < n; ++p) {
    z[p] = _mm512_loadu_ps(bias);
    y[p] = _mm256_loadu_ps(bias + 16);
  }
  const int64_t pairs = ic / 2;
  for (int tap = 0; tap < 9; ++tap) {
    const uint16_t* row = rows[tap / 3];
    if (!row) continue;
    const uint16_t* wt = w + tap * pairs * 2 * kOut;
    const uint16_t* s = row + (x0 + tap % 3 - 1) * ic;
    for (int64_t q = 0; q < pairs; ++q, wt += 2 * kOut, s += 2) {
      const auto wz = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wt));
      const auto wy = reinterpret_cast<__m256bh>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + 32)));
#pragma GCC unroll 12
      for (int p = 0; p < n; ++p) {
        int32_t pair; // one broadcast of the pixel's input pair feeds both of its dot products
        std::memcpy(&pair, s + p * ic, sizeof pair);
        const __m512i v = _mm512_set1_epi32(pair);
        z[p] = _mm512_dpbf16_ps(z[p], reinterpret_cast<__m512bh>(v), wz);
        y[p] = _mm256_dpbf16_ps(y[p], reinterpret_cast<__m256bh>(_mm512_castsi512_si256(v)), wy);
      }
    }
  }
#pragma GCC unroll 12
  for (int p = 0; p < n; ++p) {
    store_pixel(z[p], y[p], add ? add + (x0 + p) * kOut : nullptr, relu, out + (x0 + p) * kOut);
  }
}

UNETSEG_TARGET_AVX512_BF16 void conv_row(const uint16_t* const rows[3], int64_t width, int64_t ic, const uint16_t* w,
                                         const float* bias, const uint16_t* add, bool relu, uint16_t* out) {
  int64_t x0 = 0;
  for (; x0 + kBlock <= width; x0 += kBlock) block<kBlock>(rows, x0, ic, w, bias, add, relu, out);
  for (; x0 < width; ++x0) block<1>(rows, x0, ic, w, bias, add, relu, out);
}

const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.const_data_ptr<at::BFloat16>()); }

} // namespace

bool conv3x3_c24_wins() {
  static const bool wins = cpu_has("avx512_bf16") && !cpu_has("amx_bf16");
  return wins;
}

bool conv3x3_c24_fits(const at::Tensor& weight) {
  return weight.dim() == 4 && weight.size(0) == kOut && weight.size(1) > 0 && weight.size(1) % 2 == 0 &&
         weight.size(2) == 3 && weight.size(3) == 3 && weight.scalar_type() == at::kBFloat16;
}

at::Tensor pack_conv3x3_c24(const at::Tensor& weight) {
  TORCH_CHECK(conv3x3_c24_fits(weight), "unetseg::_pack_conv3x3_c24 takes bfloat16 weights [24, even, 3, 3], got ",
              weight.scalar_type(), " ", weight.sizes());
  const int64_t ic = weight.size(1);
  return weight.reshape({kOut, ic / 2, 2, 3, 3}).permute({3, 4, 1, 0, 2}).contiguous();
}

at::Tensor conv3x3_c24(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& add, bool relu) {
  TORCH_CHECK(cpu_has("avx512_bf16"), "unetseg::_conv3x3_c24 needs a CPU with AVX512-BF16");
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.size(1) % 2 == 0,
              "unetseg::_conv3x3_c24 takes a bfloat16 CPU tensor (N, C, H, W) with an even C, got ", x.scalar_type(),
              " ", x.sizes(), " on ", x.device());
  const int64_t n = x.size(0), ic = x.size(1), h = x.size(2), width = x.size(3);
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() && packed.numel() == 9 * ic * kOut,
              "unetseg::_conv3x3_c24: packed weights (unetseg::_pack_conv3x3_c24) for ", ic,
              " input channels expected, got ", packed.scalar_type(), " ", packed.sizes());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == kOut), "unetseg::_conv3x3_c24: a bias of 24 expected, got ",
              bias ? bias->sizes() : at::IntArrayRef{});
  at::Tensor out = at::empty({n, kOut, h, width}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  TORCH_CHECK(!add || (add->sizes() == out.sizes() && add->scalar_type() == at::kBFloat16),
              "unetseg::_conv3x3_c24: `add` of the output's shape ", out.sizes(), " in bfloat16 expected, got ",
              add ? add->sizes() : at::IntArrayRef{});
  if (out.numel() == 0) return out;
  const at::Tensor in = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor added = add ? add->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::zeros({kOut}, at::kFloat);
  const uint16_t *src = bits(in), *w = bits(packed), *a = add ? bits(added) : nullptr;
  const float* bp = b.const_data_ptr<float>();
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, n * h, 4, [&](int64_t begin, int64_t end) {
    // the three input rows of an output row, each with a zero pixel either side
    std::vector<uint16_t> padded(3 * (width + 2) * ic, 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t image = r / h, y = r % h;
      const uint16_t* rows[3];
      for (int k = 0; k < 3; ++k) {
        const int64_t yy = y + k - 1;
        rows[k] = nullptr;
        if (yy < 0 || yy >= h) continue;
        uint16_t* row = padded.data() + (k * (width + 2) + 1) * ic;
        std::memcpy(row, src + (image * h + yy) * width * ic, width * ic * sizeof(uint16_t));
        rows[k] = row;
      }
      conv_row(rows, width, ic, w, bp, a ? a + r * width * kOut : nullptr, relu, dst + r * width * kOut);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(unetseg, m) {
  m.def("_pack_conv3x3_c24(Tensor weight) -> Tensor");
  m.def("_conv3x3_c24(Tensor x, Tensor packed, Tensor? bias, Tensor? add, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(unetseg, CPU, m) {
  m.impl("_pack_conv3x3_c24", &pack_conv3x3_c24);
  m.impl("_conv3x3_c24", &conv3x3_c24);
}

} // namespace unetseg::runner
