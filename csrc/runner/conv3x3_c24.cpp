#include "conv3x3_c24.h"

#include "cpu_capability.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#define UNETSEG_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))

namespace unetseg::runner {
namespace {

constexpr int kOut = 24;

// Whether this CPU has AVX512-BF16, asked once: ATen builds its whole capability map on every query,
// and the op checks on every call.
bool cpu_has_avx512_bf16() {
  static const bool has = cpu_has("avx512_bf16");
  return has;
}

#ifdef UNETSEG_HAVE_AVX512_BF16
constexpr int kBlock = 12; // pixels a block: 24 accumulators of the 32 vector registers

// The two element types. `step` input channels feed each multiply-add of a pixel's 16 + 8 sums;
// `madd` does it for the input channels at `s` with the packed weights at `wt` (kOut * step values).
struct BFloat16 {
  using Element = uint16_t;
  static constexpr int64_t step = 2;
  UNETSEG_TARGET_AVX512_BF16 static inline void madd(__m512& z, __m256& y, const Element* s, const Element* wt) {
    int32_t pair; // one broadcast of the pixel's input pair feeds both of its dot products
    std::memcpy(&pair, s, sizeof pair);
    const __m512i v = _mm512_set1_epi32(pair);
    const auto wz = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wt));
    const auto wy = reinterpret_cast<__m256bh>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + 32)));
    z = _mm512_dpbf16_ps(z, reinterpret_cast<__m512bh>(v), wz);
    y = _mm256_dpbf16_ps(y, reinterpret_cast<__m256bh>(_mm512_castsi512_si256(v)), wy);
  }
  UNETSEG_TARGET_AVX512_BF16 static inline __m512 load16(const Element* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  UNETSEG_TARGET_AVX512_BF16 static inline __m256 load8(const Element* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  UNETSEG_TARGET_AVX512_BF16 static inline void store(__m512 z, __m256 y, Element* out) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(z)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), reinterpret_cast<__m128i>(_mm256_cvtneps_pbh(y)));
  }
};

struct Float32 {
  using Element = float;
  static constexpr int64_t step = 1;
  UNETSEG_TARGET_AVX512_BF16 static inline void madd(__m512& z, __m256& y, const Element* s, const Element* wt) {
    const __m512 v = _mm512_set1_ps(*s);
    z = _mm512_fmadd_ps(v, _mm512_loadu_ps(wt), z);
    y = _mm256_fmadd_ps(_mm512_castps512_ps256(v), _mm256_loadu_ps(wt + 16), y);
  }
  UNETSEG_TARGET_AVX512_BF16 static inline __m512 load16(const Element* p) { return _mm512_loadu_ps(p); }
  UNETSEG_TARGET_AVX512_BF16 static inline __m256 load8(const Element* p) { return _mm256_loadu_ps(p); }
  UNETSEG_TARGET_AVX512_BF16 static inline void store(__m512 z, __m256 y, Element* out) {
    _mm512_storeu_ps(out, z);
    _mm256_storeu_ps(out + 16, y);
  }
};

// `n` (1 or kBlock) output pixels of one row from pixel x of `rows`: rows[k] is input row y + k - 1
// (nullptr outside the image) and must hold the pixels x - 1 ... x + n; `add` (nullptr: none) and
// `out` point at the first pixel's 24 values.
template <typename E, int n>
UNETSEG_TARGET_AVX512_BF16 void block(const typename E::Element* const rows[3], int64_t x, int64_t ic,
                                      const typename E::Element* w, const float* bias,
                                      const typename E::Element* add, bool relu, typename E::Element* out) {
  __m512 z[n];
  __m256 y[n];
#pragma GCC unroll 12
  for (int p = 0; p < n; ++p) {
    z[p] = _mm512_loadu_ps(bias);
    y[p] = _mm256_loadu_ps(bias + 16);
  }
  for (int tap = 0; tap < 9; ++tap) {
    const typename E::Element* row = rows[tap / 3];
    if (!row) continue;
    const typename E::Element* wt = w + tap * ic * kOut;
    const typename E::Element* s = row + (x + tap % 3 - 1) * ic;
    for (int64_t c = 0; c < ic; c += E::step, wt += E::step * kOut, s += E::step) {
#pragma GCC unroll 12
      for (int p = 0; p < n; ++p) E::madd(z[p], y[p], s + p * ic, wt);
    }
  }
#pragma GCC unroll 12
  for (int p = 0; p < n; ++p) {
    if (add) {
      z[p] = _mm512_add_ps(z[p], E::load16(add + p * kOut));
      y[p] = _mm256_add_ps(y[p], E::load8(add + p * kOut + 16));
    }
    if (relu) { // max(sum, +0): +0 for -0 too
      z[p] = _mm512_max_ps(z[p], _mm512_setzero_ps());
      y[p] = _mm256_max_ps(y[p], _mm256_setzero_ps());
    }
    E::store(z[p], y[p], out + p * kOut);
  }
}

// One output row from its input rows (nullptr outside the image). The pixels inside read the input
// in place; the first and the last read a copy of their 2 x 3 neighbours with a zero pixel outside
// (`edge`: 9 pixels' room).
template <typename E>
UNETSEG_TARGET_AVX512_BF16 void conv_row(const typename E::Element* const rows[3], int64_t width, int64_t ic,
                                         const typename E::Element* w, const float* bias,
                                         const typename E::Element* add, bool relu, typename E::Element* out,
                                         typename E::Element* edge) {
  using T = typename E::Element;
  const auto at = [&](int64_t x) { return add ? add + x * kOut : nullptr; };
  // pixels 0 and width - 1 (one pixel when width is 1), each from a 3-pixel copy of its rows
  for (const int64_t x : {int64_t{0}, width - 1}) {
    const T* copies[3];
    for (int k = 0; k < 3; ++k) {
      copies[k] = nullptr;
      if (!rows[k]) continue;
      T* copy = edge + k * 3 * ic;
      for (int64_t dx = -1; dx <= 1; ++dx) {
        const bool inside = x + dx >= 0 && x + dx < width;
        T* pixel = copy + (dx + 1) * ic;
        if (inside) {
          std::memcpy(pixel, rows[k] + (x + dx) * ic, ic * sizeof(T));
        } else {
          std::fill(pixel, pixel + ic, T(0));
        }
      }
      copies[k] = copy;
    }
    block<E, 1>(copies, 1, ic, w, bias, at(x), relu, out + x * kOut);
    if (width == 1) return;
  }
  int64_t x = 1;
  for (; x + kBlock <= width - 1; x += kBlock) block<E, kBlock>(rows, x, ic, w, bias, at(x), relu, out + x * kOut);
  for (; x < width - 1; ++x) block<E, 1>(rows, x, ic, w, bias, at(x), relu, out + x * kOut);
}

// Every output row, in place from the input but for its two end pixels.
template <typename E>
void conv(const at::Tensor& in, const at::Tensor& packed, const at::Tensor& bias, const at::Tensor& added, bool relu,
          at::Tensor& out) {
  using T = typename E::Element;
  const int64_t n = in.size(0), ic = in.size(1), h = in.size(2), width = in.size(3);
  const T *src = static_cast<const T*>(in.const_data_ptr()), *w = static_cast<const T*>(packed.const_data_ptr());
  const T* a = added.defined() ? static_cast<const T*>(added.const_data_ptr()) : nullptr;
  const float* b = bias.const_data_ptr<float>();
  T* dst = static_cast<T*>(out.data_ptr());
  at::parallel_for(0, n * h, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> edge(9 * ic);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t image = r / h, y = r % h;
      const T* rows[3];
      for (int k = 0; k < 3; ++k) {
        const int64_t yy = y + k - 1;
        rows[k] = yy < 0 || yy >= h ? nullptr : src + (image * h + yy) * width * ic;
      }
      conv_row<E>(rows, width, ic, w, b, a ? a + r * width * kOut : nullptr, relu, dst + r * width * kOut, edge.data());
    }
  });
}

#endif // UNETSEG_HAVE_AVX512_BF16

} // namespace

bool conv3x3_c24_wins() {
#ifdef UNETSEG_HAVE_AVX512_BF16
  static const bool wins = cpu_has_avx512_bf16() && !cpu_has("amx_bf16");
  return wins;
#else
  return false;
#endif
}

bool conv3x3_c24_fits(const at::Tensor& weight) {
  const bool bfloat16 = weight.scalar_type() == at::kBFloat16;
  return weight.dim() == 4 && weight.size(0) == kOut && weight.size(1) > 0 && weight.size(2) == 3 &&
         weight.size(3) == 3 && (bfloat16 ? weight.size(1) % 2 == 0 : weight.scalar_type() == at::kFloat);
}

at::Tensor pack_conv3x3_c24(const at::Tensor& weight) {
  TORCH_CHECK(conv3x3_c24_fits(weight),
              "unetseg::_pack_conv3x3_c24 takes weights [24, C, 3, 3] in float32, or in bfloat16 with an even C, got ",
              weight.scalar_type(), " ", weight.sizes());
  const int64_t ic = weight.size(1), step = weight.scalar_type() == at::kBFloat16 ? 2 : 1;
  return weight.reshape({kOut, ic / step, step, 3, 3}).permute({3, 4, 1, 0, 2}).contiguous();
}

at::Tensor conv3x3_c24(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& add, bool relu) {
#ifndef UNETSEG_HAVE_AVX512_BF16
  static_cast<void>(relu);
  TORCH_CHECK(false, "unetseg::_conv3x3_c24: this build of unetseg has no AVX512-BF16 kernels (its compiler lacked "
                     "the intrinsics)");
#endif
  TORCH_CHECK(cpu_has_avx512_bf16(), "unetseg::_conv3x3_c24 needs a CPU with AVX512-BF16");
  const at::ScalarType dtype = x.scalar_type();
  const bool bfloat16 = dtype == at::kBFloat16;
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu() && (bfloat16 ? x.size(1) % 2 == 0 : dtype == at::kFloat),
              "unetseg::_conv3x3_c24 takes a CPU tensor (N, C, H, W) in float32, or in bfloat16 with an even C, got ",
              dtype, " ", x.sizes(), " on ", x.device());
  const int64_t ic = x.size(1);
  TORCH_CHECK(packed.scalar_type() == dtype && packed.is_contiguous() && packed.numel() == 9 * ic * kOut,
              "unetseg::_conv3x3_c24: packed weights (unetseg::_pack_conv3x3_c24) for ", ic, " input channels in ",
              dtype, " expected, got ", packed.scalar_type(), " ", packed.sizes());
  TORCH_CHECK(!bias || (bias->dim() == 1 && bias->size(0) == kOut), "unetseg::_conv3x3_c24: a bias of 24 expected, got ",
              bias ? bias->sizes() : at::IntArrayRef{});
  at::Tensor out = at::empty({x.size(0), kOut, x.size(2), x.size(3)}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  TORCH_CHECK(!add || (add->sizes() == out.sizes() && add->scalar_type() == dtype),
              "unetseg::_conv3x3_c24: `add` of the output's shape ", out.sizes(), " in ", dtype, " expected, got ",
              add ? add->scalar_type() : dtype, " ", add ? add->sizes() : at::IntArrayRef{});
  if (out.numel() == 0) return out;
  const at::Tensor in = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor added = add ? add->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
  const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::zeros({kOut}, at::kFloat);
#ifdef UNETSEG_HAVE_AVX512_BF16
  if (bfloat16) {
    conv<BFloat16>(in, packed, b, added, relu, out);
  } else {
    conv<Float32>(in, packed, b, added, relu, out);
  }
#endif
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
