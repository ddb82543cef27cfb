// Data-parallel threshold + connected-component labelling: the algorithm of the CUDA kernels,
// written once for any executor. label_kernel.cu runs it on a GPU (one thread per pixel, atomics in
// global memory, cub's scan); a host executor runs the same functors one index after another, which
// is one valid interleaving of the GPU threads, so the algorithm is testable on a machine with no
// GPU (tests/cuda_emulation). No torch and no CUDA headers here: g++ and nvcc both compile it.
//
// The algorithm, per image of a batch (each launch covers the whole batch: grid.y = image):
//  1. init      parent[p] = p for foreground (score > threshold), kBackground otherwise.
//  2. merge     Each foreground pixel unites with its foreground neighbours before it in raster
//               order (left and up; for 8-connectivity also up-left and up-right, unless up is
//               foreground, which already connects them). Union by atomicMin links the larger root
//               under the smaller (Playne & Hawick 2018; Allegretti et al. 2019's BUF), so each
//               root is its component's smallest pixel index: its first pixel in raster order.
//  3. compress  Every pixel points straight at its root.
//  4. area      (min_area only) Each pixel adds 1 at its root's slot of the output.
//  5. count     Each root (kept by min_area; others become kRemoved) adds 1 to its segment: kSegment
//               consecutive pixels in raster order.
//  6. scan      Exclusive sum of the segment counts.
//  7. number    A root's label is 1 + the roots before it: the scan at its segment (relative to the
//               image's first segment) + the roots before it in its segment. Raster order of first
//               pixels, as scipy.ndimage.label and the CPU op number.
//  8. write     Each pixel copies its root's label (0 for background and removed objects).
//  9. counts    Per image, the sum of its segment counts.
// Every kernel reads only what no thread of the same kernel writes (or writes a value every writer
// agrees on), so any interleaving, the sequential one included, gives the same labels.
//
// Statistics (label_stats) are summed per pixel into per-object slots with atomics after the
// labels, then turned into label_stats' columns with the CPU op's exact arithmetic.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define UNETSEG_HD __host__ __device__ __forceinline__
#else
#define UNETSEG_HD inline
#endif

namespace unetseg::ccl_parallel {

enum class ScoreType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kUInt8 = 3, kBool = 4 };

// A batch of n images of h x w; element strides of the scores (any, e.g. a channel of NCHW).
struct Batch {
  int64_t n, h, w;
  int64_t stride_n, stride_h, stride_w;
};

constexpr int32_t kBackground = -1;
constexpr int32_t kRemoved = -2; // a root whose object min_area removed
constexpr int64_t kSegment = 32;

inline int64_t segments_per_image(const Batch& b) { return (b.h * b.w + kSegment - 1) / kSegment; }

// ---- scalar conversions and atomics that mean the same on host and device ----

UNETSEG_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 -> float32, exact (subnormals, infinities and NaN included).
UNETSEG_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_to_float(sign);
  int32_t e = 113; // subnormal: normalise
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return bits_to_float(sign | (static_cast<uint32_t>(e) << 23) | ((mantissa & 0x3FFu) << 13));
}

template <ScoreType T>
UNETSEG_HD float load_score(const void* data, int64_t offset) {
  if constexpr (T == ScoreType::kFloat32) {
    return static_cast<const float*>(data)[offset];
  } else if constexpr (T == ScoreType::kFloat16) {
    return half_to_float(static_cast<const uint16_t*>(data)[offset]);
  } else if constexpr (T == ScoreType::kBFloat16) {
    return bits_to_float(static_cast<uint32_t>(static_cast<const uint16_t*>(data)[offset]) << 16);
  } else { // uint8 and bool (one byte, 0 or 1)
    return static_cast<float>(static_cast<const uint8_t*>(data)[offset]);
  }
}

UNETSEG_HD int32_t atomic_min(int32_t* address, int32_t value) {
#if defined(__CUDA_ARCH__)
  return atomicMin(address, value);
#else
  const int32_t old = *address;
  if (value < old) *address = value;
  return old;
#endif
}

UNETSEG_HD int32_t atomic_max(int32_t* address, int32_t value) {
#if defined(__CUDA_ARCH__)
  return atomicMax(address, value);
#else
  const int32_t old = *address;
  if (value > old) *address = value;
  return old;
#endif
}

UNETSEG_HD void atomic_add(int32_t* address, int32_t value) {
#if defined(__CUDA_ARCH__)
  atomicAdd(address, value);
#else
  *address += value;
#endif
}

UNETSEG_HD void atomic_add(unsigned long long* address, unsigned long long value) {
#if defined(__CUDA_ARCH__)
  atomicAdd(address, value);
#else
  *address += value;
#endif
}

UNETSEG_HD void atomic_add(double* address, double value) {
#if defined(__CUDA_ARCH__)
  atomicAdd(address, value);
#else
  *address += value;
#endif
}

// ---- union-find over one image's parent array (indices local to the image) ----

UNETSEG_HD int32_t find_root(const int32_t* parent, int32_t x) {
  int32_t next;
  while ((next = parent[x]) != x) x = next;
  return x;
}

// Links the larger root under the smaller; retries when another thread moved a root meanwhile.
UNETSEG_HD void unite(int32_t* parent, int32_t a, int32_t b) {
  bool done;
  do {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a < b) {
      const int32_t old = atomic_min(&parent[b], a);
      done = old == b;
      b = old;
    } else if (b < a) {
      const int32_t old = atomic_min(&parent[a], b);
      done = old == a;
      a = old;
    } else {
      done = true;
    }
  } while (!done);
}

// ---- the kernels' bodies: f(image, pixel index within the image) ----

struct Image {
  int32_t* parent; // n * h * w, workspace
  int32_t* out;    // n * h * w, the labels
  int64_t hw;
  int32_t w;

  UNETSEG_HD int32_t* parent_of(int64_t image) const { return parent + image * hw; }
  UNETSEG_HD int32_t* out_of(int64_t image) const { return out + image * hw; }
};

template <ScoreType T>
struct Init {
  Image im;
  Batch b;
  const void* scores;
  float threshold;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t y = p / im.w, x = p - y * im.w;
    const float v = load_score<T>(scores, image * b.stride_n + y * b.stride_h + x * b.stride_w);
    im.parent_of(image)[p] = v > threshold ? p : kBackground;
  }
};

struct Merge {
  Image im;
  bool eight;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    int32_t* parent = im.parent_of(image);
    if (parent[p] < 0) return;
    const int32_t w = im.w, y = p / w, x = p - y * w;
    if (x > 0 && parent[p - 1] >= 0) unite(parent, p, p - 1);
    if (y == 0) return;
    const int32_t up = p - w;
    if (parent[up] >= 0) {
      unite(parent, p, up);
    } else if (eight) {
      if (x > 0 && parent[up - 1] >= 0) unite(parent, p, up - 1);
      if (x + 1 < w && parent[up + 1] >= 0) unite(parent, p, up + 1);
    }
  }
};

struct Compress {
  Image im;
  bool zero_roots; // roots' output slots become area counters
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    int32_t* parent = im.parent_of(image);
    if (parent[p] < 0) return;
    const int32_t root = find_root(parent, p);
    parent[p] = root;
    if (zero_roots && root == p) im.out_of(image)[p] = 0;
  }
};

struct Area {
  Image im;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t root = im.parent_of(image)[p];
    if (root >= 0) atomic_add(&im.out_of(image)[root], 1);
  }
};

struct CountRoots {
  Image im;
  int32_t* segment_counts; // n * segments
  int64_t segments;
  int64_t min_area;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    int32_t* parent = im.parent_of(image);
    if (parent[p] != p) return;
    if (min_area > 0 && im.out_of(image)[p] < min_area) {
      parent[p] = kRemoved;
    } else {
      atomic_add(&segment_counts[image * segments + p / kSegment], 1);
    }
  }
};

struct NumberRoots {
  Image im;
  const int32_t* segment_starts; // exclusive scan of the segment counts over the batch
  int64_t segments;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t* parent = im.parent_of(image);
    if (parent[p] != p) return;
    const int64_t segment = p / kSegment;
    int32_t label = segment_starts[image * segments + segment] - segment_starts[image * segments] + 1;
    for (auto q = static_cast<int32_t>(segment * kSegment); q < p; ++q) label += parent[q] == q;
    im.out_of(image)[p] = label;
  }
};

struct Write {
  Image im;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t* parent = im.parent_of(image);
    int32_t* out = im.out_of(image);
    const int32_t root = parent[p];
    if (root < 0) {
      out[p] = 0;
    } else if (root != p) {
      out[p] = parent[root] == kRemoved ? 0 : out[root];
    }
  }
};

struct Counts {
  const int32_t* segment_counts;
  const int32_t* segment_starts;
  int64_t segments;
  int64_t* counts;
  UNETSEG_HD void operator()(int64_t image, int32_t) const {
    const int64_t last = (image + 1) * segments - 1;
    counts[image] = int64_t{segment_starts[last]} + segment_counts[last] - segment_starts[image * segments];
  }
};

// Workspace of label(): the parent array and the segment counts and starts (+ the executor's scan
// scratch, which the executor sizes).
struct Workspace {
  int32_t* parent;
  int32_t* segment_counts;
  int32_t* segment_starts;
};

inline int64_t workspace_ints(const Batch& b) { return b.n * b.h * b.w + 2 * b.n * segments_per_image(b); }

inline Workspace carve(int32_t* ints, const Batch& b) {
  const int64_t pixels = b.n * b.h * b.w, segments = b.n * segments_per_image(b);
  return Workspace{ints, ints + pixels, ints + pixels + segments};
}

// Labels a batch into contiguous `out` (n * h * w int32) and `counts` (n int64, on the executor's
// memory). Exec provides for_each(images, per_image, f), fill(int32*, value, n),
// fill_counts(int64*, value, n) and exclusive_scan(const int32* in, int32* out, n). `threshold` is already rounded to the scores'
// dtype (as the CPU op compares). Images must have at most 2^31 - 1 pixels.
template <class Exec>
void label(Exec& exec, const void* scores, ScoreType type, const Batch& b, float threshold, bool eight,
           int64_t min_area, Workspace ws, int32_t* out, int64_t* counts) {
  const int64_t hw = b.h * b.w, segments = segments_per_image(b);
  if (b.n == 0) return;
  if (hw == 0) {
    exec.fill_counts(counts, 0, b.n);
    return;
  }
  const Image im{ws.parent, out, hw, static_cast<int32_t>(b.w)};
  switch (type) {
    case ScoreType::kFloat32: exec.for_each(b.n, hw, Init<ScoreType::kFloat32>{im, b, scores, threshold}); break;
    case ScoreType::kFloat16: exec.for_each(b.n, hw, Init<ScoreType::kFloat16>{im, b, scores, threshold}); break;
    case ScoreType::kBFloat16: exec.for_each(b.n, hw, Init<ScoreType::kBFloat16>{im, b, scores, threshold}); break;
    case ScoreType::kUInt8: exec.for_each(b.n, hw, Init<ScoreType::kUInt8>{im, b, scores, threshold}); break;
    case ScoreType::kBool: exec.for_each(b.n, hw, Init<ScoreType::kBool>{im, b, scores, threshold}); break;
  }
  exec.for_each(b.n, hw, Merge{im, eight});
  exec.for_each(b.n, hw, Compress{im, min_area > 0});
  if (min_area > 0) exec.for_each(b.n, hw, Area{im});
  exec.fill(ws.segment_counts, 0, b.n * segments);
  exec.for_each(b.n, hw, CountRoots{im, ws.segment_counts, segments, min_area});
  exec.exclusive_scan(ws.segment_counts, ws.segment_starts, b.n * segments);
  exec.for_each(b.n, hw, NumberRoots{im, ws.segment_starts, segments});
  exec.for_each(b.n, hw, Write{im});
  exec.for_each(b.n, 1, Counts{ws.segment_counts, ws.segment_starts, segments, counts});
}

// ---- seeded labelling (csrc/ops/cpu/seeded.h's rule, data-parallel) ----
//
// Nucleus + boundary scores (2-channel models). Bit-identical to the CPU op:
//  1. init      fg[p] = p where nucleus > t, seed[p] = p where also boundary < t_b (else kBackground).
//  2. merge, compress  both, as plain labelling: fg[p] is p's component root, seed[p] its seed's
//               root (its first pixel, so seed roots compare as the CPU's seed labels do).
//  3. seeds     each seed root adds 1 to its component's seed count and atomicMins itself into the
//               component's `one seed` slot (both at the component root).
//  4. canon     every foreground pixel gets its object's canonical pixel: its own seed's root; else
//               the one seed's root when its component holds one seed; the component root when it
//               holds none (an object of its own); kRing when several (to be grown).
//  5. growth    Jacobi rounds, two kernels each: `choose` reads the canonical pixels and writes, for
//               each ring pixel with a labelled neighbour, the neighbour label with the highest
//               nucleus score (ties: the smaller seed root = the smaller CPU seed label); `commit`
//               copies the choices in. Every round labels the ring pixels one step further along the
//               foreground from the seeds, as the CPU's frontier rounds do. Rounds go on until a batch
//               of kRoundsPerCheck rounds leaves no ring pixel (the host reads two flags a batch).
//  6. first     each pixel atomicMins its index into its object's `first` slot (and adds 1 to its
//               area with min_area): the object's first pixel in raster order.
//  7. number    as plain labelling, with the kept objects' first pixels in place of roots: counted
//               per segment, scanned, numbered; every pixel copies its first pixel's label.
// Workspace: four ints a pixel (fg, seed/canon, and two per-root slots reused between steps).

constexpr int32_t kRing = -3;           // a pixel of a component with several seeds, not yet grown
constexpr int kRoundsPerCheck = 4;      // growth rounds between two reads of the `changed` flag

template <ScoreType T>
struct SeededInit {
  Image fg, seed;
  Batch b;
  const void* nucleus;
  const void* boundary;
  float threshold, boundary_threshold;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t y = p / fg.w, x = p - y * fg.w;
    const int64_t offset = image * b.stride_n + y * b.stride_h + x * b.stride_w;
    const bool foreground = load_score<T>(nucleus, offset) > threshold;
    fg.parent_of(image)[p] = foreground ? p : kBackground;
    seed.parent_of(image)[p] = foreground && load_score<T>(boundary, offset) < boundary_threshold ? p : kBackground;
  }
};

struct CountSeeds {
  Image fg, seed;
  int32_t* seed_count; // n * h * w, at component roots
  int32_t* one_seed;   // n * h * w, at component roots
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    if (seed.parent_of(image)[p] != p) return;
    const int64_t root = image * fg.hw + fg.parent_of(image)[p];
    atomic_add(&seed_count[root], 1);
    atomic_min(&one_seed[root], p);
  }
};

struct Canon {
  Image fg, seed; // seed becomes the canonical pixels
  const int32_t* seed_count;
  const int32_t* one_seed;
  int32_t* any_ring;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t root = fg.parent_of(image)[p];
    int32_t* canon = seed.parent_of(image);
    if (root < 0 || canon[p] >= 0) return; // background, or a seed pixel (its seed's root already)
    const int64_t slot = image * fg.hw + root;
    const int32_t seeds = seed_count[slot];
    if (seeds >= 2) {
      canon[p] = kRing;
      *any_ring = 1;
    } else {
      canon[p] = seeds == 1 ? one_seed[slot] : root;
    }
  }
};

template <ScoreType T>
struct Choose {
  Image canon;
  Batch b;
  const void* nucleus;
  bool eight;
  int32_t* chosen; // n * h * w
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t* c = canon.parent_of(image);
    if (c[p] != kRing) return;
    const int32_t w = canon.w, y = p / w, x = p - y * w;
    const auto h = static_cast<int32_t>(b.h);
    int32_t best = -1;
    float best_score = 0.0f;
    for (int32_t dy = -1; dy <= 1; ++dy) {
      for (int32_t dx = -1; dx <= 1; ++dx) {
        if ((dy == 0 && dx == 0) || (!eight && dy != 0 && dx != 0)) continue;
        const int32_t yy = y + dy, xx = x + dx;
        if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
        const int32_t l = c[yy * w + xx];
        if (l < 0) continue;
        const float s = load_score<T>(nucleus, image * b.stride_n + yy * b.stride_h + xx * b.stride_w);
        if (best < 0 || s > best_score || (s == best_score && l < best)) {
          best = l;
          best_score = s;
        }
      }
    }
    chosen[image * canon.hw + p] = best;
  }
};

struct Commit {
  Image canon;
  const int32_t* chosen;
  int32_t* changed;   // set when a pixel is labelled
  int32_t* remaining; // set when a ring pixel stays unlabelled
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    int32_t* c = canon.parent_of(image);
    if (c[p] != kRing) return;
    const int32_t l = chosen[image * canon.hw + p];
    if (l < 0) {
      *remaining = 1;
      return;
    }
    c[p] = l;
    *changed = 1;
  }
};

struct FirstPixel {
  Image canon;
  int32_t* first; // n * h * w, at canonical pixels
  int32_t* area;  // n * h * w, at canonical pixels; null without min_area
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t c = canon.parent_of(image)[p];
    if (c < 0) return;
    const int64_t slot = image * canon.hw + c;
    atomic_min(&first[slot], p);
    if (area) atomic_add(&area[slot], 1);
  }
};

// Objects by their first pixel: is p the first pixel of a kept object?
struct Starts {
  Image canon;
  const int32_t* first;
  const int32_t* area;
  int64_t min_area;
  UNETSEG_HD bool operator()(int64_t image, int32_t p) const {
    const int32_t c = canon.parent_of(image)[p];
    if (c < 0) return false;
    const int64_t slot = image * canon.hw + c;
    return first[slot] == p && (min_area == 0 || area[slot] >= min_area);
  }
};

struct CountStarts {
  Starts starts;
  int32_t* segment_counts;
  int64_t segments;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    if (starts(image, p)) atomic_add(&segment_counts[image * segments + p / kSegment], 1);
  }
};

struct NumberStarts {
  Starts starts;
  const int32_t* segment_starts;
  int64_t segments;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t c = starts.canon.parent_of(image)[p];
    if (c < 0 || starts.first[image * starts.canon.hw + c] != p) return; // not an object's first pixel
    int32_t* out = starts.canon.out_of(image);
    if (!starts(image, p)) { // removed by min_area
      out[p] = 0;
      return;
    }
    const int64_t segment = p / kSegment;
    int32_t label = segment_starts[image * segments + segment] - segment_starts[image * segments] + 1;
    for (auto q = static_cast<int32_t>(segment * kSegment); q < p; ++q) label += starts(image, q);
    out[p] = label;
  }
};

struct WriteSeeded {
  Image canon;
  const int32_t* first;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t c = canon.parent_of(image)[p];
    int32_t* out = canon.out_of(image);
    if (c < 0) {
      out[p] = 0;
      return;
    }
    const int32_t start = first[image * canon.hw + c];
    if (start != p) out[p] = out[start];
  }
};

struct SeededWorkspace {
  int32_t* fg;
  int32_t* canon;
  int32_t* slot_a; // seed counts, then the growth's choices, then areas
  int32_t* slot_b; // one seed per component, then first pixels
  int32_t* segment_counts;
  int32_t* segment_starts;
  int32_t* flag; // 2 ints: any ring pixel / labelled in this batch of rounds, then ring pixels remain
};

inline int64_t seeded_workspace_ints(const Batch& b) { return 4 * b.n * b.h * b.w + 2 * b.n * segments_per_image(b) + 2; }

inline SeededWorkspace carve_seeded(int32_t* ints, const Batch& b) {
  const int64_t pixels = b.n * b.h * b.w, segments = b.n * segments_per_image(b);
  return SeededWorkspace{ints, ints + pixels, ints + 2 * pixels, ints + 3 * pixels,
                         ints + 4 * pixels, ints + 4 * pixels + segments, ints + 4 * pixels + 2 * segments};
}

template <ScoreType T, class Exec>
void seeded_label_typed(Exec& exec, const void* nucleus, const void* boundary, const Batch& b, float threshold,
                        float boundary_threshold, bool eight, int64_t min_area, SeededWorkspace ws, int32_t* out,
                        int64_t* counts) {
  const int64_t hw = b.h * b.w, pixels = b.n * hw, segments = segments_per_image(b);
  const auto w = static_cast<int32_t>(b.w);
  const Image fg{ws.fg, out, hw, w}, canon{ws.canon, out, hw, w};
  exec.for_each(b.n, hw, SeededInit<T>{fg, canon, b, nucleus, boundary, threshold, boundary_threshold});
  exec.for_each(b.n, hw, Merge{fg, eight});
  exec.for_each(b.n, hw, Merge{canon, eight});
  exec.for_each(b.n, hw, Compress{fg, false});
  exec.for_each(b.n, hw, Compress{canon, false});
  exec.fill(ws.slot_a, 0, pixels);
  exec.fill(ws.slot_b, INT32_MAX, pixels);
  exec.for_each(b.n, hw, CountSeeds{fg, canon, ws.slot_a, ws.slot_b});
  exec.fill(ws.flag, 0, 1);
  exec.for_each(b.n, hw, Canon{fg, canon, ws.slot_a, ws.slot_b, ws.flag});
  // Growth until no ring pixel is left (every one is connected to a seed through the foreground, so
  // each round labels some; `changed` guards the loop all the same).
  bool grow = exec.read(ws.flag) != 0;
  while (grow) {
    exec.fill(ws.flag, 0, 1);
    for (int round = 0; round < kRoundsPerCheck; ++round) {
      exec.fill(ws.flag + 1, 0, 1);
      exec.for_each(b.n, hw, Choose<T>{canon, b, nucleus, eight, ws.slot_a});
      exec.for_each(b.n, hw, Commit{canon, ws.slot_a, ws.flag, ws.flag + 1});
    }
    grow = exec.read(ws.flag) != 0 && exec.read(ws.flag + 1) != 0;
  }
  int32_t* area = min_area > 0 ? ws.slot_a : nullptr;
  exec.fill(ws.slot_b, INT32_MAX, pixels);
  if (area) exec.fill(area, 0, pixels);
  exec.for_each(b.n, hw, FirstPixel{canon, ws.slot_b, area});
  const Starts starts{canon, ws.slot_b, area, min_area};
  exec.fill(ws.segment_counts, 0, b.n * segments);
  exec.for_each(b.n, hw, CountStarts{starts, ws.segment_counts, segments});
  exec.exclusive_scan(ws.segment_counts, ws.segment_starts, b.n * segments);
  exec.for_each(b.n, hw, NumberStarts{starts, ws.segment_starts, segments});
  exec.for_each(b.n, hw, WriteSeeded{canon, ws.slot_b});
  exec.for_each(b.n, 1, Counts{ws.segment_counts, ws.segment_starts, segments, counts});
}

// Seeded labelling of a batch: `nucleus` and `boundary` point at the two channels' first elements
// (same strides, `b`). As label(), plus exec.read(const int32_t*) -> int32_t, which returns a value of
// the executor's memory to the host (a synchronisation on a GPU).
template <class Exec>
void seeded_label(Exec& exec, const void* nucleus, const void* boundary, ScoreType type, const Batch& b,
                  float threshold, float boundary_threshold, bool eight, int64_t min_area, SeededWorkspace ws,
                  int32_t* out, int64_t* counts) {
  if (b.n == 0) return;
  if (b.h * b.w == 0) {
    exec.fill_counts(counts, 0, b.n);
    return;
  }
  switch (type) {
#define UNETSEG_SEEDED(T) \
  case T: return seeded_label_typed<T>(exec, nucleus, boundary, b, threshold, boundary_threshold, eight, min_area, ws, out, counts);
    UNETSEG_SEEDED(ScoreType::kFloat32)
    UNETSEG_SEEDED(ScoreType::kFloat16)
    UNETSEG_SEEDED(ScoreType::kBFloat16)
    UNETSEG_SEEDED(ScoreType::kUInt8)
    UNETSEG_SEEDED(ScoreType::kBool)
#undef UNETSEG_SEEDED
  }
}

// ---- per-object statistics from labels ----

// Per-object accumulators, one slot per object of the batch (image i's objects start at
// object_starts[i]).
struct ObjectSums {
  unsigned long long* area;
  unsigned long long* sum_row;
  unsigned long long* sum_col;
  int32_t* min_row;
  int32_t* min_col;
  int32_t* max_row;
  int32_t* max_col;
  double* score;
};

constexpr int64_t kStatsColumns = 8; // as unetseg::stats::Column

// Bytes of ObjectSums for `objects` objects (8-byte fields first, so every field stays aligned).
inline int64_t object_sums_bytes(int64_t objects) { return objects * (4 * 8 + 4 * 4); }

inline ObjectSums carve_sums(void* bytes, int64_t objects) {
  auto* u64 = static_cast<unsigned long long*>(bytes);
  auto* f64 = reinterpret_cast<double*>(u64 + 3 * objects);
  auto* i32 = reinterpret_cast<int32_t*>(f64 + objects);
  return ObjectSums{u64, u64 + objects, u64 + 2 * objects, i32, i32 + objects, i32 + 2 * objects,
                    i32 + 3 * objects, f64};
}

struct ResetSums {
  ObjectSums s;
  UNETSEG_HD void operator()(int64_t, int32_t k) const {
    s.area[k] = s.sum_row[k] = s.sum_col[k] = 0;
    s.min_row[k] = s.min_col[k] = INT32_MAX;
    s.max_row[k] = s.max_col[k] = -1;
    s.score[k] = 0;
  }
};

template <ScoreType T>
struct Accumulate {
  ObjectSums s;
  const int32_t* labels;
  const int64_t* object_starts;
  Batch b;
  const void* scores;
  UNETSEG_HD void operator()(int64_t image, int32_t p) const {
    const int32_t label = labels[image * b.h * b.w + p];
    if (label == 0) return;
    const int64_t k = object_starts[image] + label - 1;
    const auto w = static_cast<int32_t>(b.w);
    const int32_t y = p / w, x = p - y * w;
    atomic_add(&s.area[k], 1ull);
    atomic_add(&s.sum_row[k], static_cast<unsigned long long>(y));
    atomic_add(&s.sum_col[k], static_cast<unsigned long long>(x));
    atomic_min(&s.min_row[k], y);
    atomic_max(&s.max_row[k], y);
    atomic_min(&s.min_col[k], x);
    atomic_max(&s.max_col[k], x);
    atomic_add(&s.score[k], static_cast<double>(
        load_score<T>(scores, image * b.stride_n + y * b.stride_h + x * b.stride_w)));
  }
};

// The columns of unetseg::stats, computed as ccl::ObjectStats::write computes them (bit-identical
// for every column but the mean score, whose sum runs in another order).
struct Finish {
  ObjectSums s;
  double* table; // objects x kStatsColumns
  UNETSEG_HD void operator()(int64_t, int32_t k) const {
    double* row = table + int64_t{k} * kStatsColumns;
    const auto n = static_cast<double>(s.area[k]);
    row[0] = n;
    row[1] = s.min_row[k];
    row[2] = s.min_col[k];
    row[3] = s.max_row[k] + 1;
    row[4] = s.max_col[k] + 1;
    row[5] = static_cast<double>(s.sum_row[k]) / n;
    row[6] = static_cast<double>(2 * s.sum_col[k]) / (2.0 * n);
    row[7] = s.score[k] / n;
  }
};

// Fills `table` (objects x kStatsColumns float64) from labels made by label(); `object_starts`
// (n int64) is the exclusive scan of its counts; `sums` has object_sums_bytes(objects) bytes.
template <class Exec>
void object_stats(Exec& exec, const void* scores, ScoreType type, const Batch& b, const int32_t* labels,
                  const int64_t* object_starts, int64_t objects, void* sums, double* table) {
  if (objects == 0) return;
  const ObjectSums s = carve_sums(sums, objects);
  exec.for_each(1, objects, ResetSums{s});
  const int64_t hw = b.h * b.w;
  switch (type) {
    case ScoreType::kFloat32: exec.for_each(b.n, hw, Accumulate<ScoreType::kFloat32>{s, labels, object_starts, b, scores}); break;
    case ScoreType::kFloat16: exec.for_each(b.n, hw, Accumulate<ScoreType::kFloat16>{s, labels, object_starts, b, scores}); break;
    case ScoreType::kBFloat16: exec.for_each(b.n, hw, Accumulate<ScoreType::kBFloat16>{s, labels, object_starts, b, scores}); break;
    case ScoreType::kUInt8: exec.for_each(b.n, hw, Accumulate<ScoreType::kUInt8>{s, labels, object_starts, b, scores}); break;
    case ScoreType::kBool: exec.for_each(b.n, hw, Accumulate<ScoreType::kBool>{s, labels, object_starts, b, scores}); break;
  }
  exec.for_each(1, objects, Finish{s, table});
}

} // namespace unetseg::ccl_parallel
