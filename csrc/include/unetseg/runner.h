// unetseg::Runner: the whole segmentation pipeline in C++, for embedding in imaging software.
//
//   unetseg::Runner runner("model.pt");                  // a file made by `unetseg export`
//   auto results = runner.segment({image});              // at::Tensor (H, W) or (H, W, C)
//   results[0].labels, results[0].count, results[0].objects
//
// A Runner loads a TorchScript model file and its metadata (the extra file unetseg.json), then for
// each image: converts channels and normalises as the metadata says, pads to the network's size
// multiple, batches images of equal size, runs the network, turns logits into probabilities, and
// labels the probabilities with the fused ops on the device that holds them: threshold + connected
// components of the nucleus map (unetseg::label_stats) for 1-channel models, seeded labelling
// (unetseg::seeded_label_stats, which keeps touching nuclei apart) for nucleus + boundary models.
// No Python is involved at run time.
//
// Large images are cut into tiles with a halo (SegmentOptions::tile_size, ::halo): each tile's
// centre is written into the image's probability map and the whole map is labelled in one go, so
// objects crossing seams are single objects and the result equals the untiled one (the halo covers
// the network's receptive field and tiles start on its pooling grid). The normalisation is always
// computed on the whole image, never per tile.
//
// Scale: a model trained at a canonical nucleus diameter (ModelInfo::diameter, in pixels) sees each
// image resized so that its nuclei have that diameter: SegmentOptions::diameter gives the images'
// median nucleus diameter, or, unset, it is estimated per image (docs/design.md has the measurements).
// (1) The scale at which the network is surest of its nuclei (area-weighted mean nucleus probability),
// among the passes whose objects look like nuclei (plausible, kPlausible, and convex, kConvex: a crowd of
// small nuclei can come out as sure blobs, which are not convex) when any does: the image at its own
// scale, and at every one of kCoarserScales (cheap: a third of the pixels together) that leaves it
// kNucleiAcross canonical diameters across; an image the network is unsure of at its own scale (under
// kConfident, or its objects not convex) is also seen at kFinerScale (by its central crop of
// kFinerCheckSide pixels a side when larger), which counts when its objects are plausible nuclei
// (kPlausible; specks of background come out less sure). Nuclei far larger than the network knows come
// out as specks or fragments of their bright parts, far smaller ones are missed or merged into blobs,
// mostly unsure; the network can be sure of such specks and fragments too, but less so than of the whole
// nuclei at the right scale, and its surety need not rise at each halving on the way there; a crowd of
// small nuclei can look like one sure nucleus at a coarser scale, hence the width a coarser scale must
// leave. (2) The median diameter of the nuclei found there, when plausible, gives the exact factor, and
// the image is segmented again at it unless that is within kDiameterTolerance of the image's own scale.
// When the surest scale was a coarser or finer one, or the own scale's factor is beyond kDrawnTrue,
// the nuclei are measured again at the factor they gave, until within kRefineTolerance of it (at most
// kRefinements more passes): the network draws nuclei it sees far from its canonical size closer to
// that size than they are. Images near the canonical scale cost one pass and a third (the coarser
// checks).
// The probabilities are resized back to the image's own grid before labelling, so labels and
// objects are always at the image's resolution.
//
// Thread safety: all methods are const and may be called from several host threads at once on one
// Runner (each call uses its own buffers; the network is shared read-only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "unetseg/ops.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace unetseg {

// What a model file's metadata says, as the runner uses it. `json` is the whole metadata text.
struct ModelInfo {
  int64_t format_version = 0;
  std::string architecture;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  std::vector<std::string> outputs;  // meaning of each output channel: "nucleus", "nucleus boundary"
  std::string normalisation;         // "percentile": per image and channel, (x - p_low) / (p_high - p_low)
  double percentile_low = 1.0;
  double percentile_high = 99.8;
  int64_t size_multiple = 1;         // the network pads its input sides to a multiple of this
  double threshold = 0.5;            // default probability threshold
  std::string labelling = "plain";   // default labelling: "plain", or "seeded" (nucleus + boundary)
  double boundary_threshold = 0.5;   // default boundary threshold of the seeded labelling
  int64_t min_area = 0;              // default: objects with fewer pixels are removed
  int64_t halo = 0;                  // tile halo: receptive-field radius rounded up to size_multiple
  double diameter = 0.0;             // canonical nucleus diameter (pixels) it was trained at; 0: none,
                                     // images are never rescaled
  std::string json;
};

struct RunnerOptions {
  std::string device = "auto";        // "cpu", "cuda", "cuda:N", or "auto" (CUDA when available)
  // Network precision: "auto" (bfloat16 on CPUs with native bfloat16, AVX512-BF16 or AMX, and on
  // CUDA; float32 elsewhere), "float32", "bfloat16" or "float16" (CUDA). Runner::options() reports
  // the one chosen.
  std::string precision = "auto";
  int64_t batch_size = 8;             // images per network call (images of equal size are batched)
};

// Per-channel normalisation ranges (after channel conversion): x -> (x - low) / max(high - low, 1e-6).
struct Normalisation {
  std::vector<double> low, high;  // one value per model input channel
};

// Percentiles whose range says whether a colour channel holds anything (signal_channel).
constexpr double kSignalPercentiles[2] = {1.0, 99.8};
// A colour channel is empty when its range is under this fraction of the widest channel's range.
// A gray image saved as blue RGB and compressed as JPEG bleeds 1/40 to 1/20 of the blue range into
// red and green; stained tissue keeps at least 0.15 in every channel (the narrowest of the 708 H&E
// training images).
constexpr double kEmptyChannelRange = 1.0 / 16.0;

// The channel that holds all of a colour image (H, W, 3|4, alpha ignored; uint8, uint16 or float32)
// that is one gray image in colour: a DAPI image saved as blue RGB, or a gray image under a colour
// table that copies it into several channels (cyan, magenta): every other colour channel is empty
// (kEmptyChannelRange) or equal to it. nullopt for every other image (stained tissue, composites of
// several stains, gray images). Without SegmentOptions::channel the runner reads such an image as
// that channel alone, a gray image, as the network was trained on.
std::optional<int64_t> signal_channel(const at::Tensor& image);

// Has torch hand out every CPU tensor of 4 MiB or more as a mapping of its own in transparent huge
// pages, with a cache of freed ones (256 MiB at most, shared with the label outputs), once per
// process, and returns whether it does. A network's activations are large fresh allocations,
// which the kernel otherwise fills one 4 KiB page fault at a time, and which malloc's heaps kept
// as they grew tile after tile on large images: on a Xeon (2 threads) the bfloat16 forward at
// 1024² ran 1.5x faster, the float32 one 1.25x, and a 5000² image peaked at 26 instead of 46-53
// bytes a pixel. Every CPU Runner calls it, and so does `import unetseg`. It wraps the CPU
// allocator torch had (small blocks still come from it; tensors from before free alike); it does
// nothing where the kernel has no transparent huge pages, where the environment has
// UNETSEG_HUGE_PAGES=0, or where a host installed its own allocator (one without a raw deleter, or
// with a higher priority).
bool use_huge_pages();

// Tiles: automatic (tile_size unset) tiles images of more than kAutoTileArea pixels with cores of
// kAutoTile pixels, at whatever scale the diameter has them seen; tile_size N > 0 tiles images with
// a side longer than N; 0 never tiles.
constexpr int64_t kAutoTile = 1024;
constexpr int64_t kAutoTileArea = 2048 * 2048;
// One network call takes at most batch_size images or tiles, and fewer when they are large: no more
// than kForwardPixels pixels in all (at least one image or tile), so the network's activations stay
// bounded whatever the image size.
constexpr int64_t kForwardPixels = 2048 * 1024;

// Rescaling: factors (canonical / image diameter) stay within [kMinRescale, kMaxRescale] (training
// clips to the same range, unetseg.data.dataset); an image is not rescaled to more than
// kMaxRescaledPixels; an estimated diameter within a factor kDiameterTolerance of the scale already
// used is taken as it is.
constexpr double kMinRescale = 1.0 / 16.0;
constexpr double kMaxRescale = 4.0;
constexpr int64_t kMaxRescaledPixels = int64_t{1} << 28;
constexpr double kDiameterTolerance = 1.25;
// Nuclei seen far from the canonical size come out closer to it than they are (56 px nuclei seen at a
// quarter, 14 px there, came out 17 px; 4.4 px nuclei at their own scale 7.1 px): the exact factor of
// a coarser or finer surest scale, or of the own scale when beyond kDrawnTrue, is refined: the
// nuclei are measured again at it until within kRefineTolerance, at most kRefinements times. Within
// kDrawnTrue at the own scale they come out near their size (9.4 px as 10.7, 45.8 px as 45.3), and
// refining there measured slightly worse on the validation images.
constexpr double kRefineTolerance = 1.1;
constexpr int kRefinements = 2;
constexpr double kDrawnTrue = 2.0;
constexpr double kConfident = 0.88;
constexpr double kCoarserScales[] = {0.5, 0.25, 0.125, 0.0625};
constexpr double kNucleiAcross = 4.0;
constexpr double kFinerScale = 2.0;
constexpr int64_t kFinerCheckSide = 1024;
// The least surety at which a pass's objects are taken as nuclei to measure (the exact factor, the
// finer check): specks of background noise come out under it (0.74-0.84), nuclei at 0.85 and more.
constexpr double kPlausible = 0.85;
// The least convexity (the fraction of their convex hulls the objects fill) at which a pass's objects
// are taken as nucleus-shaped: nuclei fill 0.72-1.00 of their hulls an image (median 0.97), the blobs
// the network makes of a crowd of small nuclei under half.
constexpr double kConvex = 0.7;
// A coarser pass whose objects come apart, at twice its scale, into more than kCrowdSplit times as
// many objects that look like nuclei is a crowd of small nuclei, not nuclei: large nuclei seen in
// fragments break into about three each at most.
constexpr double kCrowdSplit = 4.0;

// The fraction of their convex hulls the objects of int32 labels (H, W) fill: their pixels over the
// pixels (lattice points) inside or on the convex hulls of each object's pixel centres; 1 without
// objects. The estimate's test of nucleus shape (kConvex).
double convexity(const at::Tensor& labels);

// min_area counts pixels at the scale the network sees: the model's canonical diameter for a model
// that has one. So it removes objects by their size against the nuclei at any scale: on the grid of
// an image resized by `factor` (canonical / image diameter) it is min_area / factor² of the image's
// pixels (slides, labelled on their own grid too, count it the same way).
inline int64_t min_area_at(int64_t canonical_min_area, double factor) {
  return static_cast<int64_t>(std::llround(static_cast<double>(canonical_min_area) / (factor * factor)));
}

struct SegmentOptions {
  std::optional<double> threshold;           // probability threshold; default: the model's
  std::optional<int64_t> min_area;           // remove smaller objects (canonical-scale pixels, min_area_at);
                                             // default: the model's
  int64_t connectivity = 8;                  // 8 or 4
  std::string labelling = "auto";            // "auto" (the model's), "plain" or "seeded"
  std::optional<double> boundary_threshold;  // seeded labelling; default: the model's
  std::optional<int64_t> tile_size;          // tile core side (see kAutoTile); rounded up to size_multiple
  std::optional<int64_t> halo;               // tile halo in pixels; default: the model's (info().halo)
  std::optional<Normalisation> normalisation;  // fixed ranges for every image; default: per image
  // Rows and columns at the edges of every image that the network sees but that are neither
  // predicted nor labelled: outputs have H - context_top - context_bottom rows and
  // W - context_left - context_right columns. For a block of a larger image read with its halo
  // around it (the slide pipeline): tiles are planned over the rest, so the context only ever
  // serves as tile halo and costs no network output.
  int64_t context_top = 0, context_bottom = 0, context_left = 0, context_right = 0;
  // Test-time augmentation: the network runs on the eight symmetries of the square (four quarter
  // turns, each also mirrored) and the probabilities, turned back, are averaged. Eight times the
  // network's work, for a smoother and more accurate map (docs/model_card.md has the figures).
  bool tta = false;
  // The images' median nucleus diameter in pixels, for models with a canonical diameter
  // (ModelInfo::diameter): each image is resized by canonical / diameter. Unset: estimated per image
  // (see the top of this file); blocks with context rows or columns (slides) then run at their own
  // scale. A model without a canonical diameter refuses a value.
  std::optional<double> diameter;
  // The image channel holding the nuclei (0-based, channels last): the runner segments that plane
  // alone, as a gray image. Unset: images are gray, RGB or RGBA (two channels are ambiguous).
  std::optional<int64_t> channel;
};

// SegmentOptions with the model's defaults filled in and checked: what segment() labels with.
struct ResolvedOptions {
  double threshold = 0.5;
  double boundary_threshold = 0.5;
  int64_t min_area = 0;
  std::string labelling;  // "plain" or "seeded"
};

struct Segmentation {
  at::Tensor labels;   // int32 (H, W) on the CPU: 0 background, objects 1..count in raster order
  int64_t count = 0;
  at::Tensor objects;  // float64 (count, stats::kNumColumns) on the CPU (see ops.h); row k: label k+1
  double diameter = 0.0;  // the nucleus diameter the image was segmented at (given or estimated);
                          // 0 for models without a canonical diameter
};

class Runner {
 public:
  // Loads `model_path`. Throws c10::Error naming the problem for a missing or corrupt file, a
  // TorchScript file without unetseg metadata, an unknown metadata version, or a bad option.
  explicit Runner(const std::string& model_path, const RunnerOptions& options = {});

  const ModelInfo& info() const;
  c10::Device device() const;
  const RunnerOptions& options() const;
  // Whether the network runs the graph the CPU runner rewrote for oneDNN (fused activations, split
  // skip concatenations; csrc/runner/cpu_graph.h), rather than the model file's graph as it is.
  bool fused() const;

  // Images: CPU tensors (H, W) or (H, W, C), uint8, uint16 or float32, any sizes; C 1, 3 or 4 (an
  // alpha channel is dropped; gray is repeated for RGB models and RGB averaged for gray ones), or
  // any C with SegmentOptions::channel.
  std::vector<Segmentation> segment(const std::vector<at::Tensor>& images,
                                    const SegmentOptions& options = {}) const;
  Segmentation segment(const at::Tensor& image, const SegmentOptions& options = {}) const;

  // The post-processing segment() applies for `options`. Throws for a probability outside [0, 1], a
  // negative min_area, an unknown labelling, or seeded labelling on a model without a boundary output.
  ResolvedOptions resolve(const SegmentOptions& options = {}) const;

  // The network's probabilities: float32 (out_channels, H, W) per image, on the CPU. Uses the
  // tiling and normalisation fields of `options`; the labelling fields only where the diameter is
  // estimated, which segments each image as segment() does (the probabilities are those at the
  // scale it settles on, for about the time segment() takes).
  std::vector<at::Tensor> predict(const std::vector<at::Tensor>& images,
                                  const SegmentOptions& options = {}) const;

  // The normalisation ranges the runner computes for `image` (percentiles of the whole image); a
  // caller streaming a large slide computes them once (e.g. on a subsample) and passes them to
  // every band through SegmentOptions::normalisation.
  // `channel` as SegmentOptions::channel.
  Normalisation normalisation(const at::Tensor& image, std::optional<int64_t> channel = std::nullopt) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

} // namespace unetseg
