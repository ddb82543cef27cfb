// The CUDA label kernels' host API: raw device pointers and a stream, no torch (so CI compiles the
// kernels with nvcc on a machine whose torch has no CUDA; label_glue.cpp adapts them to tensors).
#pragma once

#include "ccl_parallel.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace unetseg::cuda {

using ccl_parallel::Batch;
using ccl_parallel::ScoreType;

// Device bytes of workspace that label() needs for this batch.
size_t label_workspace_bytes(const Batch& b);

// Threshold + labelling of a batch (ccl_parallel.h) into contiguous device `labels` (n * h * w
// int32) and `counts` (n int64). `scores` is device memory of `type` with the batch's element
// strides; `threshold` is already rounded to that dtype. Asynchronous on `stream`; returns the
// first launch error.
cudaError_t label(const void* scores, ScoreType type, const Batch& b, float threshold, bool eight,
                  int64_t min_area, int32_t* labels, int64_t* counts, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream);

// Device bytes of workspace that seeded_label() needs for this batch.
size_t seeded_workspace_bytes(const Batch& b);

// Seeded labelling (ccl_parallel.h; the CPU op's rule, bit-identical) of nucleus + boundary scores:
// `nucleus` and `boundary` are device pointers to the two channels' first elements, with the
// batch's element strides; thresholds already rounded to `type`. Outputs as label(). Growth reads a
// flag back to the host every few rounds, so this call waits for the stream then.
cudaError_t seeded_label(const void* nucleus, const void* boundary, ScoreType type, const Batch& b,
                         float threshold, float boundary_threshold, bool eight, int64_t min_area, int32_t* labels,
                         int64_t* counts, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Device bytes of workspace that object_stats() needs for `objects` objects.
size_t stats_workspace_bytes(int64_t objects);

// Per-object statistics of labels made by label(): `table` is objects x 8 float64 on the device
// (unetseg::stats columns); `object_starts` (n int64, device) the exclusive scan of the counts.
cudaError_t object_stats(const void* scores, ScoreType type, const Batch& b, const int32_t* labels,
                         const int64_t* object_starts, int64_t objects, void* workspace,
                         double* table, cudaStream_t stream);

} // namespace unetseg::cuda
