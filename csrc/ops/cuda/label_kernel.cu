// CUDA kernels of the label ops: ccl_parallel.h's functors launched one thread per pixel (grid.y:
// the image, so a batch is one launch per step), cub's device scan, raw pointers and one stream.
#include "label_cuda.h"

#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <climits>

namespace unetseg::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksX = int64_t{1} << 20; // grid-stride beyond this
constexpr int64_t kMaxImagesPerLaunch = 65535;    // grid.y limit

template <class F>
__global__ void __launch_bounds__(kThreads) for_each_kernel(F f, int64_t image0, int64_t per_image) {
  const int64_t image = image0 + blockIdx.y;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t p = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; p < per_image; p += step) {
    f(image, static_cast<int32_t>(p));
  }
}

template <class T>
__global__ void fill_kernel(T* data, T value, int64_t n) {
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += step) data[i] = value;
}

// The executor of ccl_parallel's algorithms on one stream; remembers the first error.
struct CudaExec {
  cudaStream_t stream;
  void* scan_scratch = nullptr;
  size_t scan_bytes = 0;
  cudaError_t error = cudaSuccess;

  void check(cudaError_t status) {
    if (error == cudaSuccess) error = status;
  }

  static unsigned blocks_for(int64_t n) {
    return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocksX));
  }

  template <class F>
  void for_each(int64_t images, int64_t per_image, const F& f) {
    if (error != cudaSuccess || images == 0 || per_image == 0) return;
    for (int64_t i0 = 0; i0 < images; i0 += kMaxImagesPerLaunch) {
      const dim3 grid(blocks_for(per_image), static_cast<unsigned>(std::min(kMaxImagesPerLaunch, images - i0)));
      for_each_kernel<<<grid, kThreads, 0, stream>>>(f, i0, per_image);
    }
    check(cudaGetLastError());
  }

  template <class T>
  void fill_values(T* data, T value, int64_t n) {
    if (error != cudaSuccess || n == 0) return;
    fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(data, value, n);
    check(cudaGetLastError());
  }
  void fill(int32_t* data, int32_t value, int64_t n) { fill_values(data, value, n); }
  void fill_counts(int64_t* data, int64_t value, int64_t n) { fill_values(data, value, n); }

  // A value of device memory on the host: waits for the stream (seeded growth's loop test). 0 after
  // an error, so loops stop.
  int32_t read(const int32_t* value) {
    int32_t host = 0;
    if (error != cudaSuccess) return 0;
    check(cudaMemcpyAsync(&host, value, sizeof host, cudaMemcpyDeviceToHost, stream));
    check(cudaStreamSynchronize(stream));
    return error == cudaSuccess ? host : 0;
  }

  void exclusive_scan(const int32_t* in, int32_t* out, int64_t n) {
    if (error != cudaSuccess) return;
    size_t bytes = scan_bytes;
    check(cub::DeviceScan::ExclusiveSum(scan_scratch, bytes, in, out, static_cast<int>(n), stream));
  }
};

// Images per call of ccl_parallel::label, so that a call's segments fit cub's int item count.
int64_t images_per_call(const Batch& b) {
  return std::max<int64_t>(1, INT_MAX / std::max<int64_t>(1, ccl_parallel::segments_per_image(b)));
}

size_t scan_scratch_bytes(const Batch& b) {
  const int64_t items = std::min(b.n, images_per_call(b)) * ccl_parallel::segments_per_image(b);
  size_t bytes = 0;
  cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                static_cast<int32_t*>(nullptr), static_cast<int>(items));
  return bytes;
}

size_t element_size(ScoreType type) {
  return type == ScoreType::kFloat32 ? 4 : (type == ScoreType::kFloat16 || type == ScoreType::kBFloat16) ? 2 : 1;
}

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Workspace of a labelling whose int32 scratch for a call of `call.n` images is ints(call): that
// scratch (for the largest call) and cub's scan scratch after it.
template <class Ints>
size_t total_workspace_bytes(const Batch& b, Ints ints) {
  Batch call = b;
  call.n = std::min(b.n, images_per_call(b));
  return aligned(static_cast<size_t>(ints(call)) * sizeof(int32_t)) + scan_scratch_bytes(b);
}

// Runs a labelling over the batch in calls of at most images_per_call images, on one executor:
// run(exec, call, i0, ints) labels images i0 .. i0 + call.n with `ints` (ints(call) int32) of scratch.
template <class Ints, class Run>
cudaError_t in_calls(const Batch& b, Ints ints, void* workspace, size_t bytes, cudaStream_t stream, Run run) {
  if (bytes < total_workspace_bytes(b, ints)) return cudaErrorInvalidValue;
  const int64_t per_call = images_per_call(b);
  Batch call = b;
  call.n = std::min(b.n, per_call);
  const size_t ints_bytes = aligned(static_cast<size_t>(ints(call)) * sizeof(int32_t));
  CudaExec exec{stream, static_cast<char*>(workspace) + ints_bytes, bytes - ints_bytes};
  for (int64_t i0 = 0; i0 < b.n && exec.error == cudaSuccess; i0 += per_call) {
    call.n = std::min(per_call, b.n - i0);
    run(exec, call, i0, static_cast<int32_t*>(workspace));
  }
  return exec.error;
}

// The int32 scratch of label() and seeded_label() per call.
int64_t label_ints(const Batch& call) { return ccl_parallel::workspace_ints(call); }
int64_t seeded_ints(const Batch& call) { return ccl_parallel::seeded_workspace_ints(call); }

} // namespace

size_t label_workspace_bytes(const Batch& b) { return total_workspace_bytes(b, label_ints); }

cudaError_t label(const void* scores, ScoreType type, const Batch& b, float threshold, bool eight,
                  int64_t min_area, int32_t* labels, int64_t* counts, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream) {
  const auto* base = static_cast<const char*>(scores);
  return in_calls(b, label_ints, workspace, workspace_bytes, stream,
                  [&](CudaExec& exec, const Batch& call, int64_t i0, int32_t* ints) {
                    ccl_parallel::label(exec, base + i0 * b.stride_n * element_size(type), type, call, threshold,
                                        eight, min_area, ccl_parallel::carve(ints, call), labels + i0 * b.h * b.w,
                                        counts + i0);
                  });
}

size_t seeded_workspace_bytes(const Batch& b) { return total_workspace_bytes(b, seeded_ints); }

cudaError_t seeded_label(const void* nucleus, const void* boundary, ScoreType type, const Batch& b,
                         float threshold, float boundary_threshold, bool eight, int64_t min_area, int32_t* labels,
                         int64_t* counts, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const auto* n0 = static_cast<const char*>(nucleus);
  const auto* b0 = static_cast<const char*>(boundary);
  return in_calls(b, seeded_ints, workspace, workspace_bytes, stream,
                  [&](CudaExec& exec, const Batch& call, int64_t i0, int32_t* ints) {
                    const int64_t skip = i0 * b.stride_n * static_cast<int64_t>(element_size(type));
                    ccl_parallel::seeded_label(exec, n0 + skip, b0 + skip, type, call, threshold,
                                               boundary_threshold, eight, min_area,
                                               ccl_parallel::carve_seeded(ints, call), labels + i0 * b.h * b.w,
                                               counts + i0);
                  });
}

size_t stats_workspace_bytes(int64_t objects) {
  return static_cast<size_t>(ccl_parallel::object_sums_bytes(objects));
}

cudaError_t object_stats(const void* scores, ScoreType type, const Batch& b, const int32_t* labels,
                         const int64_t* object_starts, int64_t objects, void* workspace,
                         double* table, cudaStream_t stream) {
  CudaExec exec{stream};
  ccl_parallel::object_stats(exec, scores, type, b, labels, object_starts, objects, workspace, table);
  return exec.error;
}

} // namespace unetseg::cuda
