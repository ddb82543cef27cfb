// Every schema of the unetseg op library, the public C++ entry points (through the dispatcher) and
// the argument checks every backend shares. Kernels live in cpu/ and cuda/, one file each.
#include "unetseg/ops.h"

#include "cpu/ccl.h"
#include "label.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <iterator>
#include <limits>
#include <utility>

namespace unetseg {

namespace ops {

namespace {

// The checks every label op shares: scores' dtype, connectivity, min_area and threshold.
void check_common(const char* op, const at::Tensor& scores, double threshold, int64_t connectivity,
                  int64_t min_area) {
  TORCH_CHECK(scores.defined(), op, ": scores is an undefined tensor");
  const auto dtype = scores.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 ||
                  dtype == at::kBool || dtype == at::kByte,
              op, ": scores must be float32, float16 or bfloat16 (probabilities) or bool or uint8 "
              "(masks), got ", dtype, "; convert with .float() or .to(torch.uint8)");
  TORCH_CHECK(connectivity == 4 || connectivity == 8,
              op, ": connectivity must be 4 (edge neighbours) or 8 (edge and corner neighbours), got ",
              connectivity);
  TORCH_CHECK(min_area >= 0, op, ": min_area must be >= 0 pixels, got ", min_area);
  TORCH_CHECK(!std::isnan(threshold), op, ": threshold must be a number, got nan");
}

// The geometry of a (H, W) or (N, H, W) view.
ImageBatch geometry(const char* op, const at::Tensor& images) {
  const int64_t dim = images.dim();
  ImageBatch b{};
  b.n = dim == 2 ? 1 : images.size(0);
  b.h = images.size(dim - 2);
  b.w = images.size(dim - 1);
  b.stride_n = dim == 2 ? 0 : images.stride(0);
  b.stride_h = images.stride(dim - 2);
  b.stride_w = images.stride(dim - 1);
  TORCH_CHECK(b.h * b.w <= std::numeric_limits<int32_t>::max(),
              op, ": an image may have at most 2^31 - 1 pixels (int32 labels), got ", b.h, " x ", b.w,
              " = ", b.h * b.w, "; split it into tiles");
  return b;
}

} // namespace

ImageBatch check_label_args(const at::Tensor& scores, double threshold, int64_t connectivity,
                            int64_t min_area) {
  constexpr const char* op = "unetseg.label";
  check_common(op, scores, threshold, connectivity, min_area);
  const int64_t dim = scores.dim();
  TORCH_CHECK(dim == 2 || dim == 3 || dim == 4,
              op, ": scores must be (H, W), (N, H, W) or (N, 1, H, W), got a ", dim,
              "-D tensor of shape ", scores.sizes());
  TORCH_CHECK(dim != 4 || scores.size(1) == 1,
              op, ": a 4-D scores tensor must be (N, 1, H, W), got ", scores.sizes(), " with ",
              scores.size(1), " channels; pass one channel, e.g. scores[:, 0], or use ",
              "seeded_label for (N, 2, H, W) nucleus + boundary scores");
  return geometry(op, dim == 4 ? scores.select(1, 0) : scores);
}

SeededBatch check_seeded_args(const at::Tensor& scores, double threshold, double boundary_threshold,
                              int64_t connectivity, int64_t min_area) {
  constexpr const char* op = "unetseg.seeded_label";
  check_common(op, scores, threshold, connectivity, min_area);
  TORCH_CHECK(!std::isnan(boundary_threshold), op, ": boundary_threshold must be a number, got nan");
  const int64_t dim = scores.dim();
  TORCH_CHECK((dim == 3 || dim == 4) && scores.size(dim - 3) == 2,
              op, ": scores must be (2, H, W) or (N, 2, H, W) (channel 0: nucleus, channel 1: "
              "nucleus boundary), got shape ", scores.sizes(), "; one-channel scores go to label");
  const at::Tensor nucleus = scores.select(dim - 3, 0);
  return SeededBatch{geometry(op, nucleus), scores.stride(dim - 3), nucleus.sizes().vec()};
}

float rounded_threshold(at::ScalarType dtype, double threshold) {
  switch (dtype) {
    case at::kHalf: return static_cast<float>(static_cast<c10::Half>(threshold));
    case at::kBFloat16: return static_cast<float>(static_cast<c10::BFloat16>(threshold));
    default: return static_cast<float>(threshold);
  }
}

void check_label_outputs(const at::Tensor& scores, const ImageBatch& batch,
                         const at::Tensor& labels, const at::Tensor& counts) {
  TORCH_CHECK(labels.scalar_type() == at::kInt, "unetseg.label_out: labels must be int32, got ",
              labels.scalar_type());
  TORCH_CHECK(counts.scalar_type() == at::kLong, "unetseg.label_out: counts must be int64, got ",
              counts.scalar_type());
  TORCH_CHECK(labels.device() == scores.device() && counts.device() == scores.device(),
              "unetseg.label_out: outputs must be on the scores' device ", scores.device(),
              ", got labels on ", labels.device(), " and counts on ", counts.device());
  TORCH_CHECK(labels.sizes() == scores.sizes(), "unetseg.label_out: labels must have the shape of ",
              "scores ", scores.sizes(), ", got ", labels.sizes());
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == batch.n,
              "unetseg.label_out: counts must have shape [", batch.n, "], got ", counts.sizes());
}

namespace {

CpuSimd native_simd() {
  if (ccl::cpu_has_avx512_level()) return CpuSimd::kAvx512;
  if (ccl::cpu_has_avx2_level()) return CpuSimd::kAvx2;
  return CpuSimd::kGeneric;
}

std::atomic<CpuSimd>& chosen_simd() {
  static std::atomic<CpuSimd> chosen{native_simd()};
  return chosen;
}

constexpr std::pair<CpuSimd, const char*> kSimdNames[] = {
    {CpuSimd::kGeneric, "generic"}, {CpuSimd::kAvx2, "avx2"}, {CpuSimd::kAvx512, "avx512"}};

const char* simd_name(CpuSimd level) {
  for (const auto& [value, name] : kSimdNames) {
    if (value == level) return name;
  }
  return "generic";
}

} // namespace

CpuSimd simd_level() { return chosen_simd().load(std::memory_order_relaxed); }

} // namespace ops

std::string cpu_simd() { return ops::simd_name(ops::simd_level()); }

void set_cpu_simd(const std::string& name) {
  const auto* found = std::find_if(std::begin(ops::kSimdNames), std::end(ops::kSimdNames),
                                   [&](const auto& entry) { return name == entry.second; });
  TORCH_CHECK(found != std::end(ops::kSimdNames), "unetseg.set_cpu_simd: expected \"generic\", \"avx2\" or "
              "\"avx512\", got \"", name, "\"");
  const ops::CpuSimd widest = ops::native_simd();
  TORCH_CHECK(found->first <= widest, "unetseg.set_cpu_simd: this CPU has no ", name, "; the widest it has is \"",
              ops::simd_name(widest), "\"");
  ops::chosen_simd().store(found->first, std::memory_order_relaxed);
}

namespace {

template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Signature>();
}

} // namespace

std::tuple<at::Tensor, at::Tensor> label(const at::Tensor& scores, double threshold,
                                         int64_t connectivity, int64_t min_area) {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double, int64_t, int64_t)>(
          "unetseg::label", "");
  return op.call(scores, threshold, connectivity, min_area);
}

void label_out(const at::Tensor& scores, double threshold, int64_t connectivity, int64_t min_area,
               at::Tensor& labels, at::Tensor& counts) {
  static const auto op =
      find_op<void(const at::Tensor&, double, int64_t, int64_t, at::Tensor&, at::Tensor&)>(
          "unetseg::label_out", "");
  op.call(scores, threshold, connectivity, min_area, labels, counts);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> label_stats(const at::Tensor& scores,
                                                           double threshold,
                                                           int64_t connectivity,
                                                           int64_t min_area) {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, double, int64_t, int64_t)>("unetseg::label_stats", "");
  return op.call(scores, threshold, connectivity, min_area);
}

std::tuple<at::Tensor, at::Tensor> seeded_label(const at::Tensor& scores, double threshold,
                                                double boundary_threshold, int64_t connectivity,
                                                int64_t min_area) {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, double, double, int64_t, int64_t)>("unetseg::seeded_label", "");
  return op.call(scores, threshold, boundary_threshold, connectivity, min_area);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seeded_label_stats(const at::Tensor& scores,
                                                                  double threshold,
                                                                  double boundary_threshold,
                                                                  int64_t connectivity,
                                                                  int64_t min_area) {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, double, double, int64_t, int64_t)>("unetseg::seeded_label_stats", "");
  return op.call(scores, threshold, boundary_threshold, connectivity, min_area);
}

} // namespace unetseg

TORCH_LIBRARY(unetseg, m) {
  m.def("label(Tensor scores, float threshold=0.5, int connectivity=8, int min_area=0) "
        "-> (Tensor labels, Tensor counts)");
  m.def("label_out(Tensor scores, float threshold, int connectivity, int min_area, "
        "Tensor(a!) labels, Tensor(b!) counts) -> ()");
  m.def("label_stats(Tensor scores, float threshold=0.5, int connectivity=8, int min_area=0) "
        "-> (Tensor labels, Tensor counts, Tensor stats)");
  m.def("seeded_label(Tensor scores, float threshold=0.5, float boundary_threshold=0.5, "
        "int connectivity=8, int min_area=0) -> (Tensor labels, Tensor counts)");
  m.def("seeded_label_stats(Tensor scores, float threshold=0.5, float boundary_threshold=0.5, "
        "int connectivity=8, int min_area=0) -> (Tensor labels, Tensor counts, Tensor stats)");
}
