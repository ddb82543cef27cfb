#include "unetseg/runner.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <utility>

#include "cpu_capability.h"
#include "cpu_graph.h"
#include "preprocess.h"
#include "unetseg/ops.h"

namespace unetseg {

namespace {

constexpr const char* kMetadataFile = "unetseg.json";
constexpr int64_t kFormatVersion = 1;

// Labelling modes and the probability maps each reads (unetseg.ops.LABELLING_CHANNELS in Python):
// a mode's name is checked here once, then dispatched on as this type.
enum class Labelling { kPlain, kSeeded };

std::optional<Labelling> labelling_named(const std::string& name) {
  if (name == "plain") return Labelling::kPlain;
  if (name == "seeded") return Labelling::kSeeded;
  return std::nullopt;
}

int64_t maps_read(Labelling mode) { return mode == Labelling::kSeeded ? 2 : 1; }

ModelInfo parse_metadata(const std::string& text, const std::string& path) {
  ModelInfo info;
  info.json = text;
  try {
    const auto j = nlohmann::json::parse(text);
    TORCH_CHECK_VALUE(j.value("format", "") == "unetseg-model", "unetseg.Runner: '", path,
                      "' has an extra file ", kMetadataFile, " that is not unetseg model metadata");
    info.format_version = j.at("format_version").get<int64_t>();
    TORCH_CHECK_VALUE(info.format_version == kFormatVersion, "unetseg.Runner: '", path,
                      "' has metadata format version ", info.format_version,
                      "; this unetseg reads version ", kFormatVersion,
                      ". Use the unetseg version that exported it, or export the checkpoint again.");
    info.architecture = j.at("architecture").get<std::string>();
    info.in_channels = j.at("in_channels").get<int64_t>();
    info.out_channels = j.at("out_channels").get<int64_t>();
    info.outputs = j.at("outputs").get<std::vector<std::string>>();
    const auto& norm = j.at("normalisation");
    info.normalisation = norm.at("method").get<std::string>();
    info.percentile_low = norm.at("low").get<double>();
    info.percentile_high = norm.at("high").get<double>();
    info.size_multiple = j.at("size_multiple").get<int64_t>();
    info.threshold = j.at("threshold").get<double>();
    // Optional (files exported before seeded labelling lack them): nucleus + boundary models label
    // with seeds by default.
    const bool has_boundary = info.outputs.size() >= 2 && info.outputs[1].find("boundary") != std::string::npos;
    info.labelling = j.value("labelling", has_boundary ? "seeded" : "plain");
    info.boundary_threshold = j.value("boundary_threshold", 0.5);
    info.min_area = j.value("min_area", int64_t{0});
    info.halo = j.value("halo", int64_t{-1});  // -1: not in the file; measured at load
    if (j.contains("diameter") && !j.at("diameter").is_null()) {
      info.diameter = j.at("diameter").get<double>();
    }
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK_VALUE(false, "unetseg.Runner: '", path, "' has unreadable metadata (", kMetadataFile,
                      "): ", e.what());
  }
  TORCH_CHECK_VALUE(info.normalisation == "percentile", "unetseg.Runner: '", path,
                    "' asks for normalisation '", info.normalisation, "'; this unetseg knows 'percentile'");
  TORCH_CHECK_VALUE(info.in_channels == 1 || info.in_channels == 3, "unetseg.Runner: '", path,
                    "' takes ", info.in_channels, " input channels; expected 1 or 3");
  TORCH_CHECK_VALUE(info.out_channels >= 1 && int64_t(info.outputs.size()) == info.out_channels &&
                        info.outputs[0] == "nucleus",
                    "unetseg.Runner: '", path, "' has outputs that do not start with 'nucleus'");
  TORCH_CHECK_VALUE(info.size_multiple >= 1, "unetseg.Runner: '", path, "' has size_multiple ",
                    info.size_multiple);
  TORCH_CHECK_VALUE(std::isfinite(info.diameter) && info.diameter >= 0, "unetseg.Runner: '", path,
                    "' has canonical diameter ", info.diameter, "; expected a positive number of pixels");
  const auto mode = labelling_named(info.labelling);
  TORCH_CHECK_VALUE(mode.has_value(), "unetseg.Runner: '", path, "' asks for labelling '", info.labelling,
                    "'; this unetseg knows 'plain' and 'seeded'");
  TORCH_CHECK_VALUE(info.out_channels >= maps_read(*mode), "unetseg.Runner: '", path, "' asks for ",
                    info.labelling, " labelling but has no boundary output");
  return info;
}

c10::Device resolve_device(const std::string& name) {
  if (name == "auto") {
    return torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  }
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const c10::Error&) {
    TORCH_CHECK_VALUE(false, "unetseg.Runner: unknown device '", name, "'; expected cpu, cuda, cuda:N or auto");
  }
  TORCH_CHECK_VALUE(device.is_cpu() || device.is_cuda(), "unetseg.Runner: device '", name,
                    "' is not supported; expected cpu, cuda, cuda:N or auto");
  TORCH_CHECK_VALUE(!device.is_cuda() || torch::cuda::is_available(), "unetseg.Runner: device '", name,
                    "' asked for, but this torch has no usable CUDA device; use device='cpu'");
  return device;
}

// Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16): without it, autocast to
// bfloat16 is emulated and slower than float32. ATen's cpuinfo answers, as torch's own kernels ask.
bool cpu_has_native_bfloat16() { return runner::cpu_has("avx512_bf16") || runner::cpu_has("amx_bf16"); }

// "auto": bfloat16 on a CPU with native bfloat16 and on CUDA devices, else float32.
c10::ScalarType resolve_precision(const std::string& name, const c10::Device& device) {
  if (name == "auto") {
    return device.is_cuda() || cpu_has_native_bfloat16() ? at::kBFloat16 : at::kFloat;
  }
  if (name == "float32") {
    return at::kFloat;
  }
  if (name == "bfloat16") {
    return at::kBFloat16;
  }
  TORCH_CHECK_VALUE(name == "float16", "unetseg.Runner: unknown precision '", name,
                    "'; expected auto, float32, bfloat16 or float16");
  TORCH_CHECK_VALUE(device.is_cuda(), "unetseg.Runner: precision float16 needs a CUDA device; use "
                                      "float32 or bfloat16 on the CPU");
  return at::kHalf;
}

std::string precision_name(c10::ScalarType dtype) {
  return dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
}

// Mixed precision for one forward on this thread (autocast state is thread-local).
struct AutocastScope {
  c10::DeviceType type;
  bool on;
  AutocastScope(const c10::Device& device, c10::ScalarType dtype)
      : type(device.type()), on(dtype != at::kFloat) {
    if (on) {
      at::autocast::set_autocast_enabled(type, true);
      at::autocast::set_autocast_dtype(type, dtype);
    }
  }
  ~AutocastScope() {
    if (on) {
      at::autocast::set_autocast_enabled(type, false);
      at::autocast::clear_cache();
    }
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;
};

// Whether `op` has a kernel for `tensor`'s device (CUDA kernels are built only with a CUDA torch).
bool has_kernel(const char* op, const at::Tensor& tensor) {
  if (!tensor.is_cuda()) {
    return true;
  }
  const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(op, "");
  return handle.hasKernelForDispatchKey(c10::DispatchKey::CUDA);
}

int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// Whether a call has context rows or columns (a slide block read with its halo).
bool has_context(const SegmentOptions& opt) {
  return opt.context_top != 0 || opt.context_bottom != 0 || opt.context_left != 0 || opt.context_right != 0;
}

// The median equivalent diameter, sqrt(4 area / pi), of a segmentation's objects; 0 when it has none.
double median_diameter(const Segmentation& s) {
  if (s.count == 0) {
    return 0.0;
  }
  const at::Tensor area = s.objects.select(1, stats::kArea).contiguous();
  std::vector<double> a(area.const_data_ptr<double>(), area.const_data_ptr<double>() + s.count);
  const auto mid = a.begin() + std::ptrdiff_t(a.size() / 2);
  std::nth_element(a.begin(), mid, a.end());
  double median = *mid;
  if (a.size() % 2 == 0) {
    median = (median + *std::max_element(a.begin(), mid)) / 2;
  }
  return std::sqrt(4.0 * median / M_PI);
}

using Point = std::array<int64_t, 2>;  // (x, y)

// The number of lattice points (pixel centres) inside or on the convex hull of `points`, by Pick's
// theorem: the hull's area plus half the lattice points on its boundary, plus one. `points` is
// reordered; `hull` is scratch space.
int64_t lattice_points_in_hull(std::vector<Point>& points, std::vector<Point>& hull) {
  std::sort(points.begin(), points.end());
  const size_t n = points.size();
  if (n < 2) {
    return int64_t(n);
  }
  const auto turns_left = [](const Point& a, const Point& b, const Point& c) {
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]) > 0;
  };
  // Andrew's monotone chain: the lower hull, then the upper one
  hull.resize(2 * n);
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    while (k >= 2 && !turns_left(hull[k - 2], hull[k - 1], points[i])) --k;
    hull[k++] = points[i];
  }
  for (size_t i = n - 1, lower = k + 1; i-- > 0;) {
    while (k >= lower && !turns_left(hull[k - 2], hull[k - 1], points[i])) --k;
    hull[k++] = points[i];
  }
  int64_t twice_area = 0, boundary = 0;
  for (size_t i = 0; i + 1 < k; ++i) {
    const auto &a = hull[i], &b = hull[i + 1];
    twice_area += a[0] * b[1] - b[0] * a[1];
    boundary += std::gcd(std::abs(b[0] - a[0]), std::abs(b[1] - a[1]));
  }
  return (std::abs(twice_area) + boundary) / 2 + 1;
}

// (1, C, H, W) float resized to (h, w): bilinear, antialiased when shrinking (as cv2's INTER_AREA
// in training, an average over each output pixel's footprint).
at::Tensor resize(const at::Tensor& x, int64_t h, int64_t w) {
  const bool shrink = h < x.size(2) || w < x.size(3);
  return shrink ? at::_upsample_bilinear2d_aa(x, {h, w}, /*align_corners=*/false)
                : at::upsample_bilinear2d(x, {h, w}, /*align_corners=*/false);
}

// One tile: the rows/cols [y0, y1) x [x0, x1) fed to the network, and the core [cy0, cy1) x
// [cx0, cx1) kept from its output.
struct Tile {
  int64_t y0, y1, x0, x1, cy0, cy1, cx0, cx1;
};

// Cores of side `tile` over rows [top, h - bottom) and all columns, each grown by `halo` on every
// side and clipped to the image. tile and halo are multiples of the network's size multiple (and
// so is `top` where it matters: the slide pipeline's band halo), so every tile starts on its
// pooling grid, and a tile at the right or bottom edge is padded as the whole image is.
std::vector<Tile> plan_tiles(int64_t h, int64_t w, int64_t tile, int64_t halo, const std::array<int64_t, 4>& context) {
  const auto [top, bottom, left, right] = context;
  std::vector<Tile> tiles;
  for (int64_t cy = top; cy < h - bottom; cy += tile) {
    for (int64_t cx = left; cx < w - right; cx += tile) {
      const int64_t cy1 = std::min(h - bottom, cy + tile), cx1 = std::min(w - right, cx + tile);
      tiles.push_back({std::max<int64_t>(0, cy - halo), std::min(h, cy1 + halo), std::max<int64_t>(0, cx - halo),
                       std::min(w, cx1 + halo), cy, cy1, cx, cx1});
    }
  }
  return tiles;
}

// `items` cut into consecutive batches of at most `size`.
template <class T>
std::vector<std::vector<T>> in_batches(const std::vector<T>& items, int64_t size) {
  std::vector<std::vector<T>> out;
  for (size_t s = 0; s < items.size(); s += size_t(size)) {
    out.emplace_back(items.begin() + s, items.begin() + std::min(items.size(), s + size_t(size)));
  }
  return out;
}

} // namespace

double convexity(const at::Tensor& labels) {
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.scalar_type() == at::kInt,
                    "unetseg.convexity: expected int32 labels (H, W), got ", labels.scalar_type(), " ",
                    labels.sizes());
  const at::Tensor l = labels.cpu().contiguous();
  const int64_t h = l.size(0), w = l.size(1);
  const int32_t* p = l.const_data_ptr<int32_t>();
  // per object, its rows in raster order: {row, leftmost, rightmost} (the extremes hold its hull)
  std::vector<std::vector<std::array<int64_t, 3>>> rows;
  int64_t pixels = 0;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      if (const int32_t v = p[y * w + x]; v > 0) {
        if (size_t(v) > rows.size()) rows.resize(size_t(v));
        auto& r = rows[size_t(v) - 1];
        if (r.empty() || r.back()[0] != y) {
          r.push_back({y, x, x});
        } else {
          r.back()[2] = x;
        }
        ++pixels;
      }
    }
  }
  if (pixels == 0) {
    return 1.0;
  }
  int64_t in_hulls = 0;
  std::vector<Point> points, hull;
  for (const auto& r : rows) {
    points.clear();
    for (const auto& [y, left, right] : r) {
      points.push_back({left, y});
      points.push_back({right, y});
    }
    in_hulls += lattice_points_in_hull(points, hull);
  }
  return double(pixels) / double(in_hulls);
}

struct Runner::Impl {
  torch::jit::Module module;  // frozen; forward() is safe to call from several threads
  ModelInfo info;
  RunnerOptions options;
  c10::Device device{c10::kCPU};
  c10::ScalarType precision = at::kFloat;
  bool cpu_graph = false;  // the graph specialised for the CPU in `precision` (cpu_graph.h): no autocast

  // Probabilities (B, out_channels, h, w) on the device for B inputs of size (h, w), in one forward
  // (eight with `tta`); fill(i, view) writes input i, normalised, into view, a float32 (h, w,
  // in_channels) tensor.
  template <class Fill>
  at::Tensor forward(int64_t b, int64_t h, int64_t w, bool tta, const Fill& fill) const {
    const int64_t hp = round_up(h, info.size_multiple), wp = round_up(w, info.size_multiple);
    // Zero padding right and bottom, as the network itself pads (so results equal the eager
    // model's). Channels-last: the layout images come in, and the faster one for oneDNN's
    // convolutions on the CPU (about 1.6x on this U-Net).
    // For a GPU the batch is built in pinned memory and copied asynchronously: the host fills the
    // next batch while the GPU runs this one (the caching host allocator reuses a pinned block only
    // after its copy has finished), and nothing waits for the GPU until results are copied back.
    at::Tensor batch = at::empty({b, info.in_channels, hp, wp}, at::TensorOptions(at::kFloat)
                                                                   .memory_format(at::MemoryFormat::ChannelsLast)
                                                                   .pinned_memory(device.is_cuda()));
    batch.zero_();
    for (int64_t i = 0; i < b; ++i) {
      fill(i, batch[i].permute({1, 2, 0}).narrow(0, 0, h).narrow(1, 0, w));
    }
    batch = batch.to(device, /*non_blocking=*/device.is_cuda());
    if (!tta) {
      return network(batch).narrow(2, 0, h).narrow(3, 0, w);
    }
    // The padded batch is turned and mirrored as a whole, so every output turns back onto it. The
    // sum runs in a fixed order: the average is deterministic.
    at::Tensor sum;
    for (int64_t turns = 0; turns < 4; ++turns) {
      for (const bool mirror : {false, true}) {
        at::Tensor x = batch.rot90(turns, {2, 3});
        if (mirror) x = x.flip({3});
        at::Tensor p = network(x.contiguous(at::MemoryFormat::ChannelsLast));
        if (mirror) p = p.flip({3});
        p = p.rot90(-turns, {2, 3});
        sum = sum.defined() ? sum.add_(p) : p.contiguous();
      }
    }
    return sum.div_(8).narrow(2, 0, h).narrow(3, 0, w);
  }

  // Probabilities (B, out_channels, H, W), float32, of a normalised, padded batch (B, C, H, W).
  at::Tensor network(const at::Tensor& batch) const {
    at::Tensor logits;
    auto m = module;  // a handle; copies share the frozen network
    if (cpu_graph) {
      logits = m.forward({batch.to(precision)}).toTensor();
    } else {
      AutocastScope autocast(device, precision);
      logits = m.forward({batch}).toTensor();
    }
    const int64_t h = batch.size(2), w = batch.size(3);
    TORCH_CHECK(logits.dim() == 4 && logits.size(0) == batch.size(0) &&
                    logits.size(1) == info.out_channels && logits.size(2) >= h && logits.size(3) >= w,
                "unetseg.Runner: the network returned shape ", logits.sizes(), " for input ",
                batch.sizes(), "; expected (N, ", info.out_channels, ", H, W)");
    return logits.narrow(2, 0, h).narrow(3, 0, w).to(at::kFloat).sigmoid_();
  }

  // Images or tiles of (h, w) pixels per network call: batch_size, fewer when they are large.
  int64_t batch_for(int64_t h, int64_t w) const {
    return std::clamp<int64_t>(kForwardPixels / std::max<int64_t>(1, h * w), 1, options.batch_size);
  }

  // The tile core side for an (h, w) image, or 0 for no tiling.
  int64_t tile_for(int64_t h, int64_t w, const SegmentOptions& opt) const {
    if (!opt.tile_size.has_value()) {
      return h * w > kAutoTileArea ? round_up(kAutoTile, info.size_multiple) : 0;
    }
    const int64_t tile = *opt.tile_size;
    TORCH_CHECK_VALUE(tile >= 0, "unetseg.Runner: tile_size must be >= 0 pixels (0: no tiling), got ", tile);
    return tile > 0 && (h > tile || w > tile) ? round_up(tile, info.size_multiple) : 0;
  }

  // Calls done(which, probs) with the probabilities (B, out_channels, H, W) on the device of the
  // images `which`: images of equal size batched, each large image on its own, tiled.
  template <class Done>
  void probabilities(const std::vector<at::Tensor>& hwc, const SegmentOptions& opt, const Done& done) const {
    const Normalisation* fixed = opt.normalisation ? &*opt.normalisation : nullptr;
    if (fixed != nullptr) {
      runner::check_ranges(*fixed, info);
    }
    TORCH_CHECK_VALUE(opt.halo.value_or(0) >= 0, "unetseg.Runner: halo must be >= 0 pixels, got ", *opt.halo);
    const int64_t halo = round_up(opt.halo.value_or(info.halo), info.size_multiple);
    const std::array<int64_t, 4> context{opt.context_top, opt.context_bottom, opt.context_left, opt.context_right};
    const auto [top, bottom, left, right] = context;
    TORCH_CHECK_VALUE(top >= 0 && bottom >= 0 && left >= 0 && right >= 0,
                      "unetseg.Runner: context rows and columns must be >= 0, got (", top, ", ", bottom, ", ", left,
                      ", ", right, ") (top, bottom, left, right)");
    for (size_t i = 0; i < hwc.size(); ++i) {
      TORCH_CHECK_VALUE(top + bottom < hwc[i].size(0), "unetseg.Runner: image ", i, " has ", hwc[i].size(0),
                        " rows, not more than its context rows (", top, " above, ", bottom,
                        " below); nothing would be left to predict");
      TORCH_CHECK_VALUE(left + right < hwc[i].size(1), "unetseg.Runner: image ", i, " has ", hwc[i].size(1),
                        " columns, not more than its context columns (", left, " left, ", right,
                        " right); nothing would be left to predict");
    }
    std::vector<at::Tensor> whole;  // images labelled untiled
    std::vector<size_t> whole_index;
    for (size_t i = 0; i < hwc.size(); ++i) {
      const int64_t h = hwc[i].size(0), w = hwc[i].size(1), tile = tile_for(h, w, opt);
      if (tile == 0) {
        whole.push_back(hwc[i]);
        whole_index.push_back(i);
        continue;
      }
      // The whole image's ranges (never a tile's), each tile normalised as it goes into its batch:
      // the image is never held normalised (12 bytes a pixel in RGB).
      const Normalisation ranges = fixed != nullptr ? *fixed : runner::image_ranges(hwc[i], info);
      at::Tensor probs =
          at::empty({1, info.out_channels, h - top - bottom, w - left - right}, at::TensorOptions(at::kFloat).device(device));
      const auto tiles = plan_tiles(h, w, tile, halo, context);
      std::map<std::pair<int64_t, int64_t>, std::vector<const Tile*>> by_shape;
      for (const auto& t : tiles) {
        by_shape[{t.y1 - t.y0, t.x1 - t.x0}].push_back(&t);
      }
      for (const auto& [shape, group] : by_shape) {
        for (const auto& part : in_batches(group, batch_for(shape.first, shape.second))) {
          const at::Tensor out = forward(int64_t(part.size()), shape.first, shape.second, opt.tta, [&](int64_t k, const at::Tensor& view) {
            const Tile& t = *part[size_t(k)];
            runner::normalise_into(hwc[i].narrow(0, t.y0, t.y1 - t.y0).narrow(1, t.x0, t.x1 - t.x0), info, view,
                                   &ranges);
          });
          for (size_t k = 0; k < part.size(); ++k) {
            const Tile& t = *part[k];
            probs[0].narrow(1, t.cy0 - top, t.cy1 - t.cy0).narrow(2, t.cx0 - left, t.cx1 - t.cx0)
                .copy_(out[int64_t(k)].narrow(1, t.cy0 - t.y0, t.cy1 - t.cy0).narrow(2, t.cx0 - t.x0, t.cx1 - t.cx0));
          }
        }
      }
      done(std::vector<size_t>{i}, probs);
    }
    for (const auto& group : batches(whole)) {
      std::vector<size_t> which;
      for (size_t k : group) {
        which.push_back(whole_index[k]);
      }
      const int64_t h = whole[group[0]].size(0), w = whole[group[0]].size(1);
      done(which, forward(int64_t(group.size()), h, w, opt.tta,
                          [&](int64_t k, const at::Tensor& view) {
                            runner::normalise_into(whole[group[size_t(k)]], info, view, fixed);
                          }).narrow(2, top, h - top - bottom).narrow(3, left, w - left - right));
    }
  }

  // Labels probabilities (B, out_channels, H, W) on the device: one Segmentation per image.
  std::vector<Segmentation> label(const at::Tensor& probs, const ResolvedOptions& r, int64_t connectivity) const {
    // Labelled where the probabilities are; on the CPU when this build has no CUDA kernels.
    const bool seeded = labelling_named(r.labelling) == Labelling::kSeeded;
    const at::Tensor maps = seeded ? probs.narrow(1, 0, 2) : probs.select(1, 0);
    const at::Tensor here =
        has_kernel(seeded ? "unetseg::seeded_label_stats" : "unetseg::label_stats", maps) ? maps : maps.cpu();
    auto [labels, counts, stats] =
        seeded ? seeded_label_stats(here, r.threshold, r.boundary_threshold, connectivity, r.min_area)
               : label_stats(here, r.threshold, connectivity, r.min_area);
    labels = labels.cpu();
    counts = counts.cpu();
    stats = stats.cpu();
    std::vector<Segmentation> out(size_t(probs.size(0)));
    int64_t offset = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      Segmentation& s = out[i];
      s.labels = labels[int64_t(i)];
      s.count = counts[int64_t(i)].item<int64_t>();
      s.objects = stats.narrow(0, offset, s.count);
      s.diameter = info.diameter;
      offset += s.count;
    }
    return out;
  }

  // Every image segmented at its own scale, images of equal size batched; with `probs`, their
  // probabilities too, (out_channels, H, W) on the CPU.
  std::vector<Segmentation> segment_native(const std::vector<at::Tensor>& hwc, const SegmentOptions& opt,
                                           const ResolvedOptions& r, std::vector<at::Tensor>* probs = nullptr) const {
    std::vector<Segmentation> out(hwc.size());
    if (probs) {
      probs->resize(hwc.size());
    }
    probabilities(hwc, opt, [&](const std::vector<size_t>& which, const at::Tensor& batch) {
      auto segs = label(batch, r, opt.connectivity);
      const at::Tensor cpu = probs ? batch.cpu() : at::Tensor();
      for (size_t i = 0; i < which.size(); ++i) {
        out[which[i]] = std::move(segs[i]);
        if (probs) {
          (*probs)[which[i]] = cpu[int64_t(i)].contiguous();
        }
      }
    });
    return out;
  }

  // The side lengths of an (h, w) image resized by `factor`, checked against kMaxRescaledPixels.
  std::pair<int64_t, int64_t> scaled_size(int64_t h, int64_t w, double factor) const {
    const int64_t sh = std::max<int64_t>(1, std::llround(double(h) * factor));
    const int64_t sw = std::max<int64_t>(1, std::llround(double(w) * factor));
    TORCH_CHECK_VALUE(sh * sw <= kMaxRescaledPixels, "unetseg.Runner: a nucleus diameter of ",
                      info.diameter / factor, " pixels resizes a ", h, " x ", w, " image by ", factor, " to ", sh,
                      " x ", sw, " pixels, more than the ", kMaxRescaledPixels,
                      " allowed; give a larger diameter, or segment the image as a slide");
    return {sh, sw};
  }

  // The probabilities (1, out_channels, H, W), on the device, of one image (H, W, C) seen by the
  // network at `factor` times its size (normalised with the ranges of the image itself), resized
  // back to the image's grid.
  at::Tensor scaled_probabilities(const at::Tensor& hwc, double factor, const SegmentOptions& opt) const {
    const int64_t h = hwc.size(0), w = hwc.size(1);
    const auto [sh, sw] = scaled_size(h, w, factor);
    SegmentOptions o = opt;
    if (!o.normalisation) {
      o.normalisation = runner::image_ranges(hwc, info);
    }
    if (!o.tile_size) {
      // tiled at every scale as at its own size (tile_for's rule): a 4096² image seen at half its size
      // is 2048² pixels, which alone would not be tiled, and its activations in one call took twice
      // the memory of the whole tiled pass
      if (const int64_t tile = tile_for(h, w, o)) o.tile_size = tile;
    }
    at::Tensor probs;
    {  // the resized image goes before the probabilities are resized back
      const at::Tensor x = resize(hwc.to(at::kFloat).permute({2, 0, 1}).unsqueeze(0), sh, sw);
      probabilities({x[0].permute({1, 2, 0})}, o,
                    [&](const std::vector<size_t>&, const at::Tensor& p) { probs = p; });
    }
    return resize(probs, h, w);
  }

  Segmentation segment_scaled(const at::Tensor& hwc, double factor, const SegmentOptions& opt,
                              const ResolvedOptions& r) const {
    ResolvedOptions here = r;
    here.min_area = min_area_at(r.min_area, factor);
    Segmentation s = std::move(label(scaled_probabilities(hwc, factor, opt), here, opt.connectivity)[0]);
    s.diameter = info.diameter / factor;
    return s;
  }

  // The factor for a given diameter, checked; 1 for models without a canonical diameter when none is given.
  std::optional<double> given_factor(const SegmentOptions& opt) const {
    if (!opt.diameter) {
      return std::nullopt;
    }
    const double d = *opt.diameter;
    TORCH_CHECK_VALUE(info.diameter > 0, "unetseg.Runner: diameter ", d,
                      " given, but this model has no canonical nucleus diameter (it was trained without "
                      "rescaling); leave diameter unset");
    TORCH_CHECK_VALUE(std::isfinite(d) && d > 0, "unetseg.Runner: diameter must be a positive number of pixels "
                                                 "(the images' median nucleus diameter), got ", d);
    const double factor = info.diameter / d;
    TORCH_CHECK_VALUE(factor >= kMinRescale && factor <= kMaxRescale, "unetseg.Runner: diameter ", d,
                      " pixels would resize images by ", factor, ", outside [", kMinRescale, ", ", kMaxRescale,
                      "] of the model's canonical diameter ", info.diameter, "; expected a diameter between ",
                      info.diameter / kMaxRescale, " and ", info.diameter / kMinRescale, " pixels");
    TORCH_CHECK_VALUE(factor == 1.0 || !has_context(opt),
                      "unetseg.Runner: a diameter other than the model's (", info.diameter,
                      ") cannot be combined with context rows or columns (slide blocks run at their own scale)");
    return factor;
  }

  // The scale an image is segmented at, from its estimated diameter (see runner.h). `seg` holds the
  // image at its own scale on entry, and on return the segmentation at `factor` when `segmented`;
  // else it must be segmented again at `factor`.
  struct Estimate {
    double factor = 1.0;
    bool segmented = true;
  };

  Estimate estimate(const at::Tensor& hwc, const SegmentOptions& opt, const ResolvedOptions& r,
                    Segmentation& seg) const {
    const int64_t h = hwc.size(0), w = hwc.size(1);
    const double largest = std::min(kMaxRescale, std::sqrt(double(kMaxRescaledPixels) / (double(h) * double(w))));
    double factor = surest_scale(hwc, largest, opt, r, seg).factor;
    // a crop's segmentation (finer_sample) is no result: the whole image is segmented again
    bool whole = seg.labels.size(0) == h && seg.labels.size(1) == w;
    // 2. at that scale, the nuclei's own median diameter gives the exact factor, if they are
    // plausibly nuclei: on an image of background the network finds specks it is unsure of, whose
    // size says nothing (and the image stays at the scale found). Nuclei seen far from the canonical
    // size come out closer to it than they are: they are measured again at the factor they give
    // (kRefineTolerance, kRefinements, kDrawnTrue).
    for (int refined = 0;; ++refined) {
      const double d = confidence(seg) >= kPlausible ? median_diameter(seg) : 0.0;
      if (d <= 0) {
        return {factor, whole};
      }
      const double exact = std::clamp(info.diameter / d, kMinRescale, std::max(kMinRescale, largest));
      const bool own_scale = refined == 0 && factor == 1.0;
      const double tolerance = own_scale ? kDiameterTolerance : kRefineTolerance;
      if (whole && std::abs(std::log(exact / factor)) <= std::log(tolerance)) {
        return {factor, true};
      }
      // nuclei within kDrawnTrue of the canonical size at the image's own scale come out near their size
      const bool drawn_true = own_scale && std::abs(std::log(exact)) <= std::log(kDrawnTrue);
      if (drawn_true || refined == kRefinements) {
        return {exact, false};
      }
      seg = segment_scaled(hwc, exact, opt, r);
      factor = exact;
      whole = true;
    }
  }

  // Each image segmented at the scale of its estimated diameter; `segs` holds the images at their
  // own scale on entry.
  void estimate_and_rescale(const std::vector<at::Tensor>& hwc, const SegmentOptions& opt, const ResolvedOptions& r,
                            std::vector<Segmentation>& segs) const {
    for (size_t i = 0; i < hwc.size(); ++i) {
      const Estimate e = estimate(hwc[i], opt, r, segs[i]);
      if (!e.segmented) {
        segs[i] = segment_scaled(hwc[i], e.factor, opt, r);
      }
    }
  }

  struct SurestScale {
    double factor = 1.0;  // the scale the image was seen at
    double surety = 0.0;  // confidence() there
    bool nuclei = false;  // its objects look like nuclei: plausible (kPlausible) and convex (kConvex)

    SurestScale(double factor, const Segmentation& s)
        : factor(factor), surety(confidence(s)), nuclei(surety >= kPlausible && convexity(s.labels) >= kConvex) {}
    // objects that look like nuclei beat objects that do not, however sure the network is of those
    bool operator>(const SurestScale& o) const { return std::pair(nuclei, surety) > std::pair(o.nuclei, o.surety); }
  };

  // 1. The scale at which the network is surest of its nuclei, and (into `seg`, which holds the image
  // at its own scale on entry) the segmentation there. Where nuclei are far larger than it was
  // trained on it finds their bright parts or fragments, and can be sure of them; far smaller, blobs,
  // unsure. So even a sure first pass is compared with every coarser scale (they cost a third of it
  // together): the surety need not rise at each halving on the way to the right one. A coarser scale
  // must leave the image kNucleiAcross canonical nuclei across: on fewer pixels a crowd of small
  // nuclei looks like one sure nucleus.
  SurestScale surest_scale(const at::Tensor& hwc, double largest, const SegmentOptions& opt, const ResolvedOptions& r,
                           Segmentation& seg) const {
    SurestScale surest(1.0, seg);
    const bool sure = surest.nuclei && surest.surety >= kConfident;
    const auto keep_if_surer = [&](Segmentation&& s, const SurestScale& here) {
      if (here > surest) {
        surest = here;
        seg = std::move(s);
      }
    };
    const double shortest = double(std::min(hwc.size(0), hwc.size(1)));
    // the pass at twice the scale of the next coarser one: its object count and whether they look like nuclei
    int64_t finer_count = seg.count;
    bool finer_nuclei = surest.nuclei;
    for (const double coarser : kCoarserScales) {
      if (shortest * coarser < std::max(double(info.size_multiple), kNucleiAcross * info.diameter)) {
        break;
      }
      Segmentation s = segment_scaled(hwc, coarser, opt, r);
      SurestScale here(coarser, s);
      // a crowd of small nuclei made into a few round blobs: at twice the scale they come apart into
      // many objects that look like nuclei (a large nucleus seen in fragments gives a few)
      if (finer_nuclei && double(finer_count) > kCrowdSplit * double(s.count)) {
        here.nuclei = false;
      }
      finer_count = s.count;
      finer_nuclei = here.nuclei;
      keep_if_surer(std::move(s), here);
    }
    // Nuclei a third of the canonical size or less are missed or merged at the image's own scale,
    // unsure: an unsure image is also seen at kFinerScale, where they are nuclei again. It counts
    // only when its objects are plausible nuclei (kPlausible): background comes out as specks.
    if (!sure && kFinerScale <= largest) {
      Segmentation finer = finer_sample(hwc, opt, r);
      if (const SurestScale here(kFinerScale, finer); here.surety >= kPlausible) {
        keep_if_surer(std::move(finer), here);
      }
    }
    return surest;
  }

  // The image's central crop of at most kFinerCheckSide x kFinerCheckSide (the whole image when it
  // fits), normalised with the whole image's ranges, segmented at kFinerScale: a sample whose nuclei
  // speak for the image's at a sixteenth of the cost of a 4096 x 4096 image.
  Segmentation finer_sample(const at::Tensor& hwc, const SegmentOptions& opt, const ResolvedOptions& r) const {
    const int64_t h = hwc.size(0), w = hwc.size(1);
    SegmentOptions o = opt;
    if (!o.normalisation) {
      o.normalisation = runner::image_ranges(hwc, info);
    }
    const int64_t ch = std::min(h, kFinerCheckSide), cw = std::min(w, kFinerCheckSide);
    return segment_scaled(hwc.narrow(0, (h - ch) / 2, ch).narrow(1, (w - cw) / 2, cw), kFinerScale, o, r);
  }

  // The area-weighted mean nucleus probability of a segmentation's objects (0 without objects).
  static double confidence(const Segmentation& s) {
    if (s.count == 0) {
      return 0.0;
    }
    const at::Tensor area = s.objects.select(1, stats::kArea), score = s.objects.select(1, stats::kMeanScore);
    return (area * score).sum().item<double>() / area.sum().item<double>();
  }

  // The halo when the file does not say: the receptive-field radius measured by perturbation (an
  // impulse at the centre of a random input; the output changes wherever the impulse is seen).
  int64_t measure_halo() const {
    c10::InferenceMode guard;
    for (int64_t side = round_up(256, info.size_multiple); side <= 4096; side *= 2) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
      at::Tensor x = at::rand({1, info.in_channels, side, side}, gen, at::kFloat);
      at::Tensor y = x.clone();
      y.select(2, side / 2).select(2, side / 2).add_(10.0f);
      auto m = module;
      const at::Tensor a = m.forward({x.to(device)}).toTensor(), b = m.forward({y.to(device)}).toTensor();
      const at::Tensor changed = (a != b).any(1)[0].nonzero().cpu();
      if (changed.size(0) == 0) {
        return 0;
      }
      const int64_t radius = (changed - side / 2).abs().max().item<int64_t>();
      if (radius < side / 2 - 1) {
        return round_up(radius, info.size_multiple);
      }
    }
    TORCH_CHECK_VALUE(false, "unetseg.Runner: the network's receptive field is wider than 2048 pixels; "
                             "pass the tile halo explicitly");
  }

  // Groups image indices by size (in first-seen order), each group cut into batches.
  std::vector<std::vector<size_t>> batches(const std::vector<at::Tensor>& hwc) const {
    std::map<std::pair<int64_t, int64_t>, size_t> group_of;
    std::vector<std::vector<size_t>> groups;
    for (size_t i = 0; i < hwc.size(); ++i) {
      const auto key = std::make_pair(hwc[i].size(0), hwc[i].size(1));
      auto [it, added] = group_of.emplace(key, groups.size());
      if (added) {
        groups.emplace_back();
      }
      groups[it->second].push_back(i);
    }
    std::vector<std::vector<size_t>> out;
    for (const auto& g : groups) {
      for (auto& batch : in_batches(g, batch_for(hwc[g[0]].size(0), hwc[g[0]].size(1)))) {
        out.push_back(std::move(batch));
      }
    }
    return out;
  }

  std::vector<at::Tensor> checked(const std::vector<at::Tensor>& images, std::optional<int64_t> channel) const {
    std::vector<at::Tensor> hwc;
    hwc.reserve(images.size());
    for (size_t i = 0; i < images.size(); ++i) {
      hwc.push_back(runner::check_image(images[i], i, channel));
    }
    return hwc;
  }};

Runner::Runner(const std::string& model_path, const RunnerOptions& options) {
  TORCH_CHECK_VALUE(std::filesystem::is_regular_file(model_path), "unetseg.Runner: model file '",
                    model_path, "' does not exist");
  TORCH_CHECK_VALUE(options.batch_size >= 1, "unetseg.Runner: batch_size must be >= 1, got ",
                    options.batch_size);
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  impl->device = resolve_device(options.device);
  impl->precision = resolve_precision(options.precision, impl->device);
  impl->options.precision = precision_name(impl->precision);  // what runs: "auto" resolved
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
  try {
    impl->module = torch::jit::load(model_path, impl->device, extra);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "unetseg.Runner: cannot load '", model_path,
                      "' as a TorchScript model file: ", e.what_without_backtrace());
  }
  TORCH_CHECK_VALUE(!extra[kMetadataFile].empty(), "unetseg.Runner: '", model_path,
                    "' is a TorchScript file without unetseg metadata (", kMetadataFile,
                    "); make model files with `unetseg export CHECKPOINT -o model.pt`");
  impl->info = parse_metadata(extra[kMetadataFile], model_path);
  impl->module.eval();
  if (impl->info.halo < 0) {
    impl->info.halo = impl->measure_halo();
  }
  // oneDNN's bfloat16 convolutions need a CPU with native bfloat16 (AVX512-BF16 or AMX); elsewhere an
  // asked-for bfloat16 keeps autocast, whose convolutions fall back to torch's own kernels.
  if (!impl->device.is_cuda() && at::hasMKLDNN() && (impl->precision == at::kFloat || cpu_has_native_bfloat16())) {
    impl->cpu_graph = runner::specialise_for_cpu(impl->module, impl->precision);
  }
  if (!impl->device.is_cuda()) use_huge_pages();
  impl_ = std::move(impl);
}

const ModelInfo& Runner::info() const { return impl_->info; }
c10::Device Runner::device() const { return impl_->device; }
const RunnerOptions& Runner::options() const { return impl_->options; }
bool Runner::fused() const { return impl_->cpu_graph; }

std::vector<at::Tensor> Runner::predict(const std::vector<at::Tensor>& images, const SegmentOptions& options) const {
  c10::InferenceMode guard;
  const auto hwc = impl_->checked(images, options.channel);
  const Impl& impl = *impl_;
  const std::optional<double> given = impl.given_factor(options);
  const bool context = has_context(options);
  std::vector<double> factors(hwc.size(), given.value_or(1.0));
  std::vector<at::Tensor> out(images.size());
  if (impl.info.diameter > 0 && !given && !context) {
    // the scale segment() would choose, found by segmenting (the estimate needs the nuclei); the
    // pass at the images' own scale gives the probabilities of those that stay there
    const ResolvedOptions r = resolve(options);
    std::vector<at::Tensor> native_probs;
    std::vector<Segmentation> segs = impl.segment_native(hwc, options, r, &native_probs);
    for (size_t i = 0; i < hwc.size(); ++i) {
      factors[i] = impl.estimate(hwc[i], options, r, segs[i]).factor;
      if (factors[i] == 1.0) {
        out[i] = std::move(native_probs[i]);
      }
    }
  }
  std::vector<at::Tensor> native;
  std::vector<size_t> native_index;
  for (size_t i = 0; i < hwc.size(); ++i) {
    if (out[i].defined()) {
      continue;
    }
    if (factors[i] == 1.0) {
      native.push_back(hwc[i]);
      native_index.push_back(i);
    } else {
      out[i] = impl.scaled_probabilities(hwc[i], factors[i], options)[0].cpu().contiguous();
    }
  }
  impl.probabilities(native, options, [&](const std::vector<size_t>& which, const at::Tensor& probs) {
    const at::Tensor cpu = probs.cpu();
    for (size_t i = 0; i < which.size(); ++i) {
      out[native_index[which[i]]] = cpu[int64_t(i)].contiguous();
    }
  });
  return out;
}

Normalisation Runner::normalisation(const at::Tensor& image, std::optional<int64_t> channel) const {
  c10::InferenceMode guard;
  return runner::image_ranges(runner::check_image(image, 0, channel), impl_->info);
}

ResolvedOptions Runner::resolve(const SegmentOptions& options) const {
  const ModelInfo& info = impl_->info;
  ResolvedOptions r;
  r.threshold = options.threshold.value_or(info.threshold);
  r.boundary_threshold = options.boundary_threshold.value_or(info.boundary_threshold);
  TORCH_CHECK_VALUE(r.threshold >= 0.0 && r.threshold <= 1.0, "unetseg.Runner: threshold ", r.threshold,
                    " is not a probability; expected a value in [0, 1]");
  TORCH_CHECK_VALUE(r.boundary_threshold >= 0.0 && r.boundary_threshold <= 1.0,
                    "unetseg.Runner: boundary_threshold ", r.boundary_threshold,
                    " is not a probability; expected a value in [0, 1]");
  r.min_area = options.min_area.value_or(info.min_area);
  TORCH_CHECK_VALUE(r.min_area >= 0, "unetseg.Runner: min_area must be >= 0 pixels, got ", r.min_area);
  r.labelling = options.labelling == "auto" ? info.labelling : options.labelling;
  const auto mode = labelling_named(r.labelling);
  TORCH_CHECK_VALUE(mode.has_value(), "unetseg.Runner: labelling '", options.labelling,
                    "' is not one of 'auto', 'plain', 'seeded'");
  TORCH_CHECK_VALUE(info.out_channels >= maps_read(*mode), "unetseg.Runner: ", r.labelling,
                    " labelling needs a model with a boundary output; this one has outputs [",
                    c10::Join(", ", info.outputs), "]. Use labelling 'plain'.");
  return r;
}

std::vector<Segmentation> Runner::segment(const std::vector<at::Tensor>& images,
                                          const SegmentOptions& options) const {
  const ResolvedOptions r = resolve(options);
  c10::InferenceMode guard;
  const auto hwc = impl_->checked(images, options.channel);
  const Impl& impl = *impl_;
  const std::optional<double> factor = impl.given_factor(options);
  if (factor && *factor != 1.0) {
    std::vector<Segmentation> out;
    for (const auto& image : hwc) {
      out.push_back(impl.segment_scaled(image, *factor, options, r));
    }
    return out;
  }
  std::vector<Segmentation> out = impl.segment_native(hwc, options, r);
  const bool context = has_context(options);
  if (impl.info.diameter > 0 && !factor && !context) {
    impl.estimate_and_rescale(hwc, options, r, out);
  }
  return out;
}

Segmentation Runner::segment(const at::Tensor& image, const SegmentOptions& options) const {
  return std::move(segment(std::vector<at::Tensor>{image}, options)[0]);
}

} // namespace unetseg
