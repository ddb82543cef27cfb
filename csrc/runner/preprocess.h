// Input checking, channel conversion and normalisation of the runner: the C++ twin of
// unetseg.data.transforms.to_channels + Normalisation (numpy), so a C++ host feeds the network
// exactly what training fed it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "unetseg/runner.h"

namespace unetseg::runner {

// Checks image `index` of a call (CPU; (H, W) or (H, W, C); uint8, uint16 or float32; finite) and
// returns it as (H, W, C): with `channel`, that channel alone (H, W, 1); without, C must be 1 (gray),
// 3 (RGB) or 4 (RGBA): two channels are ambiguous (gray + alpha, or two stains), and a colour image
// that is one gray image in colour (unetseg::signal_channel) comes back as that channel alone.
// Errors name what was received and what is expected.
at::Tensor check_image(const at::Tensor& image, size_t index, std::optional<int64_t> channel = std::nullopt);

// Writes the image (H, W, C) converted to info.in_channels and normalised into `out`, a float32
// (H, W, in_channels) view of a channels-last batch buffer: with `fixed` ranges when given, else with
// the image's own percentiles.
void normalise_into(const at::Tensor& hwc, const ModelInfo& info, const at::Tensor& out,
                    const Normalisation* fixed = nullptr);

// The percentile ranges normalise_into computes for the image (H, W, C).
Normalisation image_ranges(const at::Tensor& hwc, const ModelInfo& info);

// Checks user-given ranges: one finite (low, high) per model input channel.
void check_ranges(const Normalisation& ranges, const ModelInfo& info);

// numpy.percentile (linear method) of the values of a float32 tensor; `integral` says they are all
// integers in [0, 65535] (from uint8/uint16 images), which allows an exact counting selection.
std::pair<float, float> percentiles(const at::Tensor& values, double low, double high, bool integral);

} // namespace unetseg::runner
