#include "preprocess.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace unetseg::runner {

at::Tensor check_image(const at::Tensor& image, size_t index, std::optional<int64_t> channel) {
  TORCH_CHECK_VALUE(image.defined(), "unetseg.Runner: image ", index, " is an undefined tensor");
  TORCH_CHECK_VALUE(image.device().is_cpu(), "unetseg.Runner: image ", index,
                    " is on ", image.device(), "; images are passed as CPU tensors");
  TORCH_CHECK_VALUE(image.dim() == 2 || image.dim() == 3, "unetseg.Runner: image ", index,
                    " has shape ", image.sizes(), "; expected (H, W) or (H, W, C)");
  const auto dtype = image.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kByte || dtype == at::kUInt16 || dtype == at::kFloat,
                    "unetseg.Runner: image ", index, " has dtype ", dtype,
                    "; expected uint8, uint16 or float32");
  at::Tensor hwc = image.dim() == 2 ? image.unsqueeze(2) : image;
  const int64_t c = hwc.size(2);
  if (channel) {
    TORCH_CHECK_VALUE(*channel >= 0 && *channel < c, "unetseg.Runner: channel ", *channel,
                      " asked for, but image ", index, " has shape ", image.sizes(), " (", c,
                      " channel(s) last); expected a channel in 0..", c - 1);
    hwc = hwc.narrow(2, *channel, 1);
  } else {
    TORCH_CHECK_VALUE(c >= 1 && c <= 4 && c != 2, "unetseg.Runner: image ", index, " has shape ", image.sizes(),
                      "; expected gray, RGB or RGBA channels last, or pick the nuclear channel with channel=N in 0..",
                      c - 1, " (--channel N on the command line", c == 2 ? "; for gray + alpha, 0)" : ")");
  }
  TORCH_CHECK_VALUE(hwc.size(0) > 0 && hwc.size(1) > 0, "unetseg.Runner: image ", index,
                    " is empty (shape ", image.sizes(), ")");
  if (dtype == at::kFloat) {
    TORCH_CHECK_VALUE(at::isfinite(hwc).all().item<bool>(), "unetseg.Runner: image ", index,
                      " contains NaN or infinite values");
  }
  if (!channel) {
    if (const auto k = unetseg::signal_channel(hwc)) {
      hwc = hwc.narrow(2, *k, 1);
    }
  }
  return hwc;
}

namespace {

// Order statistics of a channel's values, fed in pieces (rows of an image): a histogram for
// integral values (exact and linear, 512 KiB whatever the image), the values themselves otherwise.
class OrderStatistics {
 public:
  explicit OrderStatistics(bool integral) : integral_(integral) {
    if (integral) hist_.assign(65536, 0);
  }

  void add(const at::Tensor& values) {
    const at::Tensor v = values.contiguous();
    const float* p = v.const_data_ptr<float>();
    const int64_t n = v.numel();
    if (integral_) {
      for (int64_t i = 0; i < n; ++i) {
        ++hist_[size_t(p[i])];
      }
    } else {
      values_.insert(values_.end(), p, p + n);
    }
    n_ += n;
  }

  // numpy.percentile (linear method) of everything added: the virtual index q/100 * (n - 1) lies
  // between order statistics k and k + 1.
  std::pair<float, float> percentiles(double low, double high) {
    const double vlo = low / 100.0 * double(n_ - 1), vhi = high / 100.0 * double(n_ - 1);
    const int64_t klo = int64_t(std::floor(vlo)), khi = int64_t(std::floor(vhi));
    const float a = at_rank(klo), b = at_rank(std::min(klo + 1, n_ - 1));
    const float c = at_rank(khi), d = at_rank(std::min(khi + 1, n_ - 1));
    return {lerp(a, b, vlo - double(klo)), lerp(c, d, vhi - double(khi))};
  }

 private:
  float at_rank(int64_t rank) {
    if (integral_) {
      int64_t seen = 0;
      size_t value = 0;
      while (seen + hist_[value] <= rank) {
        seen += hist_[value++];
      }
      return float(value);
    }
    std::nth_element(values_.begin(), values_.begin() + rank, values_.end());
    return values_[size_t(rank)];
  }

  static float lerp(float a, float b, double t_) {  // numpy's _lerp, in float32 like numpy's result
    const float t = float(t_), diff = b - a;
    return t >= 0.5f ? b - diff * (1.0f - t) : a + diff * t;
  }

  bool integral_;
  std::vector<int64_t> hist_;
  std::vector<float> values_;
  int64_t n_ = 0;
};

} // namespace

std::pair<float, float> percentiles(const at::Tensor& values, double low, double high, bool integral) {
  OrderStatistics s(integral);
  s.add(values);
  return s.percentiles(low, high);
}

namespace {

// Channels as unetseg.data.transforms.to_channels, converted to float32 straight into `out`.
void convert_channels_into(const at::Tensor& hwc, const ModelInfo& info, const at::Tensor& out) {
  at::Tensor x = hwc;
  if (x.size(2) == 4) {
    x = x.narrow(2, 0, 3);  // RGBA: alpha dropped
  } else if (x.size(2) == 2) {
    x = x.narrow(2, 0, 1);  // gray + alpha
  }
  const int64_t c = x.size(2), channels = info.in_channels;
  if (c == channels) {
    out.copy_(x);
  } else if (channels == 1 && c == 3) {
    // numpy: the mean of integers is float64 and astype(the image dtype) truncates; the mean of
    // float32 is float32.
    out.copy_(x.scalar_type() == at::kFloat ? x.sum(2, true).div_(3)
                                            : x.to(at::kDouble).mean(2, true).floor_());
  } else if (channels == 3 && c == 1) {
    out.copy_(x.expand({x.size(0), x.size(1), 3}));
  } else {
    TORCH_CHECK_VALUE(false, "unetseg.Runner: cannot make ", channels, " channels from an image with ", c);
  }
}

// Whether a model's RGB input repeats one gray channel (then all three share one range).
bool repeated_gray(const at::Tensor& hwc, const ModelInfo& info) {
  return info.in_channels == 3 && (hwc.size(2) == 1 || hwc.size(2) == 2);
}

// Empty order statistics of each channel the image really has (a gray image repeated into RGB: one).
std::vector<OrderStatistics> channel_statistics(const at::Tensor& hwc, const ModelInfo& info) {
  return std::vector<OrderStatistics>(repeated_gray(hwc, info) ? 1 : size_t(info.in_channels),
                                      OrderStatistics(hwc.scalar_type() != at::kFloat));
}

// Adds converted rows (h, w, in_channels) to the statistics of their channels.
void add_rows(std::vector<OrderStatistics>& stats, const at::Tensor& converted) {
  for (size_t k = 0; k < stats.size(); ++k) {
    stats[k].add(converted.select(2, int64_t(k)));
  }
}

// Per-channel percentiles, from the order statistics of the channels the image really has.
Normalisation ranges_from(std::vector<OrderStatistics>& stats, const ModelInfo& info) {
  Normalisation r;
  for (int64_t k = 0; k < info.in_channels; ++k) {
    const auto [lo, hi] = stats[std::min(size_t(k), stats.size() - 1)].percentiles(info.percentile_low,
                                                                                  info.percentile_high);
    r.low.push_back(lo);
    r.high.push_back(hi);
  }
  return r;
}

// Per-channel percentiles of the converted image `out`.
Normalisation ranges_of(const at::Tensor& converted, const at::Tensor& hwc, const ModelInfo& info) {
  std::vector<OrderStatistics> stats = channel_statistics(hwc, info);
  add_rows(stats, converted);
  return ranges_from(stats, info);
}

} // namespace

void check_ranges(const Normalisation& ranges, const ModelInfo& info) {
  TORCH_CHECK_VALUE(int64_t(ranges.low.size()) == info.in_channels && int64_t(ranges.high.size()) == info.in_channels,
                    "unetseg.Runner: normalisation has ", ranges.low.size(), " low and ", ranges.high.size(),
                    " high values; this model takes ", info.in_channels, " input channels (one of each per channel)");
  for (size_t k = 0; k < ranges.low.size(); ++k) {
    TORCH_CHECK_VALUE(std::isfinite(ranges.low[k]) && std::isfinite(ranges.high[k]),
                      "unetseg.Runner: normalisation range of channel ", k, " is (", ranges.low[k], ", ",
                      ranges.high[k], "); expected finite values");
  }
}

Normalisation image_ranges(const at::Tensor& hwc, const ModelInfo& info) {
  // Converted a band of rows at a time: the image is never held converted (12 bytes a pixel in RGB).
  constexpr int64_t kBandPixels = 1 << 20;
  const int64_t h = hwc.size(0), w = hwc.size(1), rows = std::clamp<int64_t>(kBandPixels / w, 1, h);
  std::vector<OrderStatistics> stats = channel_statistics(hwc, info);
  at::Tensor band = at::empty({rows, w, info.in_channels}, at::kFloat);
  for (int64_t r = 0; r < h; r += rows) {
    const int64_t n = std::min(rows, h - r);
    const at::Tensor part = band.narrow(0, 0, n);
    convert_channels_into(hwc.narrow(0, r, n), info, part);
    add_rows(stats, part);
  }
  return ranges_from(stats, info);
}

void normalise_into(const at::Tensor& hwc, const ModelInfo& info, const at::Tensor& out, const Normalisation* fixed) {
  convert_channels_into(hwc, info, out);
  const Normalisation r = fixed != nullptr ? *fixed : ranges_of(out, hwc, info);
  // (x - low) / max(high - low, 1e-6), in float32 as numpy.
  const auto n = static_cast<size_t>(info.in_channels);
  std::vector<float> low(n), scale(n);
  for (size_t k = 0; k < n; ++k) {
    low[k] = float(r.low[k]);
    scale[k] = std::max(float(r.high[k]) - float(r.low[k]), 1e-6f);
  }
  out.sub_(at::from_blob(low.data(), {info.in_channels}, at::kFloat))
      .div_(at::from_blob(scale.data(), {info.in_channels}, at::kFloat));
}

} // namespace unetseg::runner

namespace unetseg {

std::optional<int64_t> signal_channel(const at::Tensor& hwc) {
  if (hwc.dim() != 3) {
    return std::nullopt;
  }
  const int64_t c = hwc.size(2);
  if (c != 3 && c != 4) {
    return std::nullopt;
  }
  const auto dtype = hwc.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kByte || dtype == at::kUInt16 || dtype == at::kFloat,
                    "unetseg.signal_channel: the image has dtype ", dtype, "; expected uint8, uint16 or float32");
  // The ranges from a strided subsample of at most ~4 Mpx: a decision, not a normalisation.
  const int64_t h = hwc.size(0), w = hwc.size(1);
  const auto stride = int64_t(std::ceil(std::sqrt(double(h) * double(w) / double(int64_t{1} << 22))));
  const at::Tensor sample = hwc.slice(0, 0, h, stride).slice(1, 0, w, stride);
  const bool integral = dtype != at::kFloat;
  double range[3], widest = 0.0;
  for (int64_t k = 0; k < 3; ++k) {
    const auto [lo, hi] =
        runner::percentiles(sample.select(2, k).to(at::kFloat), kSignalPercentiles[0], kSignalPercentiles[1], integral);
    range[k] = double(hi) - double(lo);
    widest = std::max(widest, range[k]);
  }
  if (widest <= 0.0) {
    return std::nullopt;  // a constant image: nothing to choose
  }
  std::optional<int64_t> signal;
  for (int64_t k = 0; k < 3; ++k) {
    if (range[k] < widest * kEmptyChannelRange) {
      continue;
    }
    if (!signal) {
      signal = k;
    } else if (!at::equal(hwc.select(2, k), hwc.select(2, *signal))) {
      return std::nullopt;  // two different signals: a colour image
    }
  }
  return signal;
}

} // namespace unetseg
