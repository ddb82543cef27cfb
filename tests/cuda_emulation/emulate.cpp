// The CUDA kernels' algorithm (csrc/ops/cuda/ccl_parallel.h) run on the host, one thread index after
// another: a sequential executor in place of the GPU, behind a C ABI for ctypes. Compiled by
// tests/test_cuda.py with the system C++ compiler; no CUDA, no torch.
#include "../../csrc/ops/cuda/ccl_parallel.h"

#include <algorithm>
#include <vector>

namespace {

namespace cp = unetseg::ccl_parallel;

struct HostExec {
  template <class F>
  void for_each(int64_t images, int64_t per_image, const F& f) {
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t p = 0; p < per_image; ++p) f(i, static_cast<int32_t>(p));
    }
  }
  void fill(int32_t* data, int32_t value, int64_t n) { std::fill(data, data + n, value); }
  void fill_counts(int64_t* data, int64_t value, int64_t n) { std::fill(data, data + n, value); }
  int32_t read(const int32_t* value) { return *value; }
  void exclusive_scan(const int32_t* in, int32_t* out, int64_t n) {
    int32_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = sum;
      sum += in[i];
    }
  }
};

} // namespace

extern "C" {

// scores: element strides in `strides` (n, h, w); type as cp::ScoreType.
void emulate_label(const void* scores, int32_t type, int64_t n, int64_t h, int64_t w, const int64_t* strides,
                   float threshold, int32_t eight, int64_t min_area, int32_t* labels, int64_t* counts) {
  const cp::Batch b{n, h, w, strides[0], strides[1], strides[2]};
  std::vector<int32_t> ints(static_cast<size_t>(cp::workspace_ints(b)));
  HostExec exec;
  cp::label(exec, scores, static_cast<cp::ScoreType>(type), b, threshold, eight != 0, min_area,
            cp::carve(ints.data(), b), labels, counts);
}

// Seeded labelling: the boundary channel is `channel_stride` elements after the nucleus channel.
void emulate_seeded(const void* scores, int32_t type, int64_t n, int64_t h, int64_t w, const int64_t* strides,
                    int64_t channel_stride, float threshold, float boundary_threshold, int32_t eight,
                    int64_t min_area, int32_t* labels, int64_t* counts) {
  const cp::Batch b{n, h, w, strides[0], strides[1], strides[2]};
  std::vector<int32_t> ints(static_cast<size_t>(cp::seeded_workspace_ints(b)));
  const size_t element = type == 0 ? 4 : type <= 2 ? 2 : 1;
  HostExec exec;
  cp::seeded_label(exec, scores, static_cast<const char*>(scores) + channel_stride * element,
                   static_cast<cp::ScoreType>(type), b, threshold, boundary_threshold, eight != 0, min_area,
                   cp::carve_seeded(ints.data(), b), labels, counts);
}

void emulate_stats(const void* scores, int32_t type, int64_t n, int64_t h, int64_t w, const int64_t* strides,
                   const int32_t* labels, const int64_t* object_starts, int64_t objects, double* table) {
  const cp::Batch b{n, h, w, strides[0], strides[1], strides[2]};
  std::vector<double> sums(static_cast<size_t>(cp::object_sums_bytes(objects) / 8 + 1));
  HostExec exec;
  cp::object_stats(exec, scores, static_cast<cp::ScoreType>(type), b, labels, object_starts, objects,
                   sums.data(), table);
}
}
