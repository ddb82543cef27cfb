// Seeded labelling for 2-channel (nucleus + boundary) models: the torch-free CPU core.
//
// Threshold + connected components merges touching nuclei into one object. A model that also
// predicts each nucleus' boundary lets them be split, as the DSB 2018 winners did:
//
//  scan    one pass over both channels labels two things with the run-based core of ccl.h: the
//          foreground (nucleus > t) and the seeds (foreground where the boundary score is below
//          t_b). Seed labels are in the raster order of their first pixel. The seed bits are kept,
//          one bit per pixel.
//  classify each seed is looked up in the foreground component that holds it. A component with one
//          seed is that seed's object, whole; one with no seed (a nucleus so small that its
//          boundary covers it) is an object of its own, so the seeded mode never loses an object
//          that plain labelling finds. Both are written run by run like plain labels; most
//          components are one of these.
//  growth  only components with two or more seeds are grown: rounds of a constrained dilation
//          where every ring pixel (foreground, not seed) with a labelled neighbour takes the label
//          of its labelled neighbour with the highest nucleus score (ties: the smaller label), all
//          at once from the labels of the previous rounds (found 64 pixels at a time; a Jacobi
//          step, so the result does not depend on the visiting order and a data-parallel CUDA
//          version can be bit-identical). Each pixel thus goes to the seed nearest to it along the
//          foreground (geodesic distance), the nucleus score deciding between equally near seeds.
//          Each seed grows in its own bit image, 64 pixels at a time; only pixels reached by two
//          seeds in the same round (the seams) look at scores, pixel by pixel.
//  number  objects are renumbered 1..K in the raster order of their first pixel (the convention of
//          plain labelling) after dropping those with fewer than min_area pixels; the statistics
//          are summed from runs (the grown objects' too), never from a rescan of the image.
//
// Work is that of plain labelling twice over the runs (foreground and seeds) plus one extra read of
// the boundary channel, and 64 pixels at a time for the ring of components that hold several seeds
// (about a quarter of the ring on DSB 2018 predictions).
#pragma once

#include "ccl.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

namespace unetseg::ccl {

// Scratch space of one image, reused across calls.
struct SeededScratch {
  // The seed bits of the image, written by the scan: words_per_row(width) words a row.
  std::vector<uint64_t> seeds;
  int64_t words = 0;

  void resize(int64_t height, int64_t words_per_row) {
    words = words_per_row;
    seeds.resize(static_cast<size_t>(height * words));
  }
  uint64_t* seed_row(int32_t row) { return seeds.data() + row * words; }

  // Growth works on one component at a time, in its bounding box (whole words), with bit images
  // of the box and a zero row above and below. One set per group of components grown at once.
  struct Span {
    int32_t lo, hi;             // a seed's rows that may hold its pixels
    int32_t front_lo, front_hi; // the rows its front of this round was computed on
    bool active;                // it grew in the last round
  };
  struct LabelledRun {
    int32_t row, start, end, label;
  };
  struct Buffers {
    std::vector<uint64_t> ring;              // the component's pixels not labelled yet
    std::vector<uint64_t> grown, front;      // per seed: its pixels, its front of the round
    std::vector<uint64_t> seen, multi, zero; // pixels in one front / in two or more
    std::vector<Span> spans;
    std::vector<uint64_t> labelled;          // pixel by pixel: the labelled pixels
    std::vector<uint8_t> active, next;       // pixel by pixel: rows that may hold the front
    std::vector<LabelledRun> runs;           // the grown objects, labelled with provisional labels
  };
  std::vector<Buffers> buffers;

  struct Box {
    int32_t row_begin, row_end, word_begin, word_end;
    int64_t pixels;
  };
  std::vector<Box> boxes;                            // per foreground component to grow
  std::vector<int32_t> run_begin, comp_runs;         // the runs of each component to grow, grouped
  std::vector<int32_t> seed_begin, comp_seeds;       // the seeds of each component to grow, grouped
  std::vector<int32_t> seed_run_begin, seed_runs;    // the runs of each of those seeds, grouped
  std::vector<int32_t> group_begin;                  // the first component of each group
  std::vector<ObjectStats> objects; // index: provisional label
  std::vector<int64_t> first;       // raster index of each object's first pixel
  std::vector<int32_t> order, renumber;
  std::vector<int32_t> object, seed_component; // per foreground component / per seed
};

// The seed bits of one row (`foreground & below`, below: the bits of `boundary < t_b`).
inline void seed_bits(const uint64_t* foreground, const uint64_t* below, int64_t words, uint64_t* seed_row) {
  for (int64_t k = 0; k < words; ++k) seed_row[k] = foreground[k] & below[k];
}

namespace detail {

// Bits col - 1, col, col + 1 of a bit row as bits 0, 1, 2 (0 outside the row; bits past the width
// are 0 in every bit row).
inline uint32_t window3(const uint64_t* row, int64_t words, int32_t col) {
  const int32_t k = col >> 6, b = col & 63;
  const uint64_t w = row[k];
  if (b >= 1 && b <= 62) return static_cast<uint32_t>(w >> (b - 1)) & 7u;
  uint32_t m = static_cast<uint32_t>(w >> b & 1u) << 1;
  if (b == 0) {
    if (k > 0) m |= static_cast<uint32_t>(row[k - 1] >> 63);
    m |= static_cast<uint32_t>(w >> 1 & 1u) << 2;
  } else {
    m |= static_cast<uint32_t>(w >> 62 & 1u);
    if (k + 1 < words) m |= static_cast<uint32_t>(row[k + 1] & 1u) << 2;
  }
  return m;
}

// Neighbourhood masks: bit 3 * (dr + 1) + (dc + 1) stands for the pixel at (row + dr, col + dc).
constexpr uint32_t kEightNeighbours = 0x1EF; // all but the centre
constexpr uint32_t kFourNeighbours = 0x0AA;  // the cross
constexpr int8_t kDr[9] = {-1, -1, -1, 0, 0, 0, 1, 1, 1};
constexpr int8_t kDc[9] = {-1, 0, 1, -1, 0, 1, -1, 0, 1};

// The neighbours of (row, col) whose bit is set in `bits`, masked by `keep`. The rows above and
// below the image must exist (SeededScratch's zero rows).
inline uint32_t neighbour_bits(const uint64_t* bits, int64_t words, int32_t row, int32_t col, uint32_t keep) {
  const uint64_t* r = bits + row * words;
  const int32_t k = col >> 6, b = col & 63;
  if (b >= 1 && b <= 62) {
    return ((static_cast<uint32_t>(r[k - words] >> (b - 1)) & 7u) | (static_cast<uint32_t>(r[k] >> (b - 1)) & 7u) << 3 |
            (static_cast<uint32_t>(r[k + words] >> (b - 1)) & 7u) << 6) &
           keep;
  }
  return (window3(r - words, words, col) | window3(r, words, col) << 3 | window3(r + words, words, col) << 6) & keep;
}

// The same from three row pointers (the rows above, at and below `col`'s row).
inline uint32_t neighbour_bits3(const uint64_t* up, const uint64_t* mid, const uint64_t* down, int64_t words,
                                int32_t col, uint32_t keep) {
  return (window3(up, words, col) | window3(mid, words, col) << 3 | window3(down, words, col) << 6) & keep;
}

// fn(start, end) for each run of set bits of a bit row of `words` words, left to right.
template <class Fn>
inline void for_each_run(const uint64_t* bits, int32_t words, Fn&& fn) {
  uint64_t carry = 0;
  int32_t start = 0;
  bool inside = false;
  for (int32_t k = 0; k < words; ++k) {
    const uint64_t word = bits[k];
    for (uint64_t edges = word ^ ((word << 1) | carry); edges; edges &= edges - 1) {
      const int32_t x = k * 64 + __builtin_ctzll(edges);
      if (inside) fn(start, x);
      start = x;
      inside = !inside;
    }
    carry = word >> 63;
  }
  if (inside) fn(start, words * 64);
}

// Word k of a bit row dilated by one pixel left and right (with the centre when `centre`).
inline uint64_t spread(const uint64_t* row, int64_t words, int64_t k, bool centre) {
  uint64_t w = (row[k] << 1) | (row[k] >> 1);
  if (k > 0) w |= row[k - 1] >> 63;
  if (k + 1 < words) w |= row[k + 1] << 63;
  return centre ? w | row[k] : w;
}

// Word k of the neighbours of a bit row's pixels (its rows above and below given too), under 8- or
// 4-connectivity.
inline uint64_t dilate(const uint64_t* up, const uint64_t* mid, const uint64_t* down, int64_t words, int64_t k,
                       bool eight_connected) {
  return eight_connected ? spread(up, words, k, true) | spread(mid, words, k, false) | spread(down, words, k, true)
                         : up[k] | down[k] | spread(mid, words, k, false);
}

} // namespace detail

// A component's seeds are grown with one bit image each while they take at most this many words
// together (2 MiB: L2-sized); beyond that, pixel by pixel.
constexpr int64_t kSeedPlaneWords = int64_t{1} << 18;

namespace detail {

// The bits of word k of a bit row that lie in columns [start, end).
inline uint64_t range_bits(int32_t k, int32_t start, int32_t end) {
  const int32_t lo = std::max(start - k * 64, 0), hi = std::min(end - k * 64, 64);
  return (hi == 64 ? ~uint64_t{0} : (uint64_t{1} << hi) - 1) & ~((uint64_t{1} << lo) - 1);
}

// The index of the run of sorted, disjoint `runs[begin, end)` that contains column `col`.
inline int32_t run_at(const Run* runs, int32_t begin, int32_t end, int32_t col) {
  const Run* it = std::upper_bound(runs + begin, runs + end, col, [](int32_t c, const Run& r) { return c < r.start; });
  return static_cast<int32_t>(it - runs) - 1;
}

} // namespace detail

namespace detail {

// The steps of grow_and_number on one image, each a member function, sharing the image's runs,
// scratch space and per-pixel accessors.
template <class Score, class ScoreSum>
class SeededGrowth {
 public:
  SeededGrowth(ImageRuns& foreground, const ImageRuns& seeds, SeededScratch& scratch, int32_t width,
               bool eight_connected, const Score& score, const ScoreSum& score_sum, int32_t* labels, bool with_scores)
      : foreground_(foreground), seeds_(seeds), s_(scratch), width_(width), eight_connected_(eight_connected),
        keep_(eight_connected ? kEightNeighbours : kFourNeighbours), score_(score), score_sum_(score_sum),
        labels_(labels), with_scores_(with_scores) {
    for (int n = 0; n < 9; ++n) offset_[n] = kDr[n] * int64_t{width} + kDc[n];
  }

  // Objects: seeds 1..S (in the raster order of their first pixel), then the components without a
  // seed. `object[c]` is component c's object, or -1 when c holds several seeds. Returns the count.
  int32_t assign_objects() {
    const Run* fg_runs = foreground_.runs.data();
    const auto num_seeds = static_cast<int32_t>(seeds_.count);
    const auto num_components = static_cast<int32_t>(foreground_.count);
    std::vector<int32_t>& object = s_.object;
    object.assign(static_cast<size_t>(num_components) + 1, 0);
    s_.seed_component.resize(static_cast<size_t>(num_seeds) + 1);
    for (size_t i = 0; i < seeds_.runs.size(); ++i) {
      const Run& r = seeds_.runs[i];
      if (r.parent != static_cast<int32_t>(i)) continue; // each seed once, at its root run
      const int32_t c = foreground_.run_labels[run_at(fg_runs, foreground_.row_offsets[r.row],
                                                      foreground_.row_offsets[r.row + 1], r.start)];
      const int32_t k = seeds_.run_labels[i];
      s_.seed_component[k] = c;
      object[c] = object[c] == 0 ? k : -1;
    }
    int32_t count = num_seeds;
    for (int32_t c = 1; c <= num_components; ++c) {
      if (object[c] == 0) object[c] = ++count;
    }
    s_.objects.assign(static_cast<size_t>(count) + 1, ObjectStats{});
    s_.first.assign(static_cast<size_t>(count) + 1, INT64_MAX);
    return count;
  }

  // Components of one or no seed are objects as they are, summed from their runs. The runs of the
  // others are grouped by component (a counting sort), with each one's bounding box. Returns the
  // pixels to grow.
  int64_t sum_whole_objects_and_box_the_rest() {
    const Run* fg_runs = foreground_.runs.data();
    const int32_t* fg_labels = foreground_.run_labels.data();
    const auto num_fg_runs = static_cast<int32_t>(foreground_.runs.size());
    const auto num_components = static_cast<int32_t>(foreground_.count);
    const std::vector<int32_t>& object = s_.object;
    std::vector<int32_t>& run_begin = s_.run_begin;
    s_.boxes.resize(static_cast<size_t>(num_components) + 1);
    run_begin.assign(static_cast<size_t>(num_components) + 2, 0);
    int64_t to_grow = 0;
    for (int32_t i = 0; i < num_fg_runs; ++i) {
      const Run& r = fg_runs[i];
      const int32_t c = fg_labels[i], o = object[c];
      if (o > 0) {
        if (with_scores_) {
          s_.objects[o].add_run(r, foreground_.score_sums[i]);
        } else {
          s_.objects[o].area += r.end - r.start;
        }
        s_.first[o] = std::min(s_.first[o], int64_t{r.row} * width_ + r.start);
        continue;
      }
      SeededScratch::Box& box = s_.boxes[c];
      if (run_begin[c + 1]++ == 0) box = {r.row, r.row, r.start >> 6, (r.end - 1) >> 6, 0};
      box.row_end = r.row; // runs come in raster order
      box.pixels += r.end - r.start;
      box.word_begin = std::min(box.word_begin, r.start >> 6);
      box.word_end = std::max(box.word_end, (r.end - 1) >> 6);
      to_grow += r.end - r.start;
    }
    for (int32_t c = 1; c <= num_components + 1; ++c) run_begin[c] += run_begin[c - 1];
    s_.comp_runs.resize(static_cast<size_t>(run_begin[num_components + 1]));
    for (int32_t i = 0; i < num_fg_runs; ++i) {
      const int32_t c = fg_labels[i];
      if (object[c] < 0) s_.comp_runs[run_begin[c]++] = i; // run_begin[c] ends at component c + 1's start
    }
    return to_grow;
  }

  // The seeds of each component to grow, grouped by component, and the runs of each such seed,
  // grouped by seed (counting sorts, ending as in sum_whole_objects_and_box_the_rest).
  void group_seeds(int64_t to_grow) {
    const auto num_seeds = static_cast<int32_t>(seeds_.count);
    const auto num_components = static_cast<int32_t>(foreground_.count);
    std::vector<int32_t>& seed_begin = s_.seed_begin;
    std::vector<int32_t>& seed_run_begin = s_.seed_run_begin;
    seed_begin.assign(static_cast<size_t>(num_components) + 2, 0);
    seed_run_begin.assign(static_cast<size_t>(num_seeds) + 2, 0);
    if (to_grow == 0) return;
    auto grown_seed = [&](int32_t k) { return s_.object[s_.seed_component[k]] < 0; };
    for (int32_t k = 1; k <= num_seeds; ++k) {
      if (grown_seed(k)) ++seed_begin[s_.seed_component[k] + 1];
    }
    for (int32_t c = 1; c <= num_components + 1; ++c) seed_begin[c] += seed_begin[c - 1];
    s_.comp_seeds.resize(static_cast<size_t>(seed_begin[num_components + 1]));
    for (int32_t k = 1; k <= num_seeds; ++k) {
      if (grown_seed(k)) s_.comp_seeds[seed_begin[s_.seed_component[k]]++] = k;
    }
    for (size_t i = 0; i < seeds_.runs.size(); ++i) {
      if (grown_seed(seeds_.run_labels[i])) ++seed_run_begin[seeds_.run_labels[i] + 1];
    }
    for (int32_t k = 1; k <= num_seeds + 1; ++k) seed_run_begin[k] += seed_run_begin[k - 1];
    s_.seed_runs.resize(static_cast<size_t>(seed_run_begin[num_seeds + 1]));
    for (size_t i = 0; i < seeds_.runs.size(); ++i) {
      const int32_t k = seeds_.run_labels[i];
      if (grown_seed(k)) s_.seed_runs[seed_run_begin[k]++] = static_cast<int32_t>(i);
    }
  }

  // Groups of consecutive components of about equal pixel counts, to be grown at once: components
  // never touch, so a group reads and writes only its own pixels, objects and buffers. Returns the
  // group count.
  int32_t plan_groups(int64_t to_grow, int32_t max_groups) {
    constexpr int64_t kGroupPixels = 2048; // less growth than this in a group is not worth a thread
    const auto num_components = static_cast<int32_t>(foreground_.count);
    const auto num_groups = static_cast<int32_t>(
        to_grow == 0 ? 0 : std::clamp<int64_t>(to_grow / kGroupPixels, 1, std::max(max_groups, 1)));
    std::vector<int32_t>& group_begin = s_.group_begin;
    group_begin.assign(static_cast<size_t>(num_groups) + 1, num_components + 1);
    int64_t before = 0;
    for (int32_t c = 1, g = -1; c <= num_components; ++c) {
      if (s_.object[c] > 0) continue;
      for (const auto to = static_cast<int32_t>(before * num_groups / to_grow); g < to;) {
        group_begin[++g] = c; // a group skipped over (one component outweighs it) is empty
      }
      before += s_.boxes[c].pixels;
    }
    if (s_.buffers.size() < static_cast<size_t>(num_groups)) s_.buffers.resize(static_cast<size_t>(num_groups));
    return num_groups;
  }

  // Grows the components of group g into its buffers' runs.
  void grow_group(int32_t g) {
    SeededScratch::Buffers& buffers = s_.buffers[g];
    buffers.runs.clear();
    for (int32_t c = s_.group_begin[g]; c < s_.group_begin[g + 1]; ++c) {
      if (s_.object[c] < 0) grow_component(c, buffers);
    }
  }

  // Numbering: raster order of first pixels, after min_area; `write_groups(fn)` runs fn(g) for
  // every group. The grown components' pixels are written here; write_rows writes the rest (from
  // foreground.run_labels). Returns the object count.
  template <class ForEachGroup>
  int64_t number(int32_t count, int64_t min_area, ForEachGroup&& for_each_group, std::vector<double>* stats) {
    std::vector<int32_t>& order = s_.order;
    order.resize(static_cast<size_t>(count));
    std::iota(order.begin(), order.end(), 1);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s_.first[a] < s_.first[b]; });
    std::vector<int32_t>& renumber = s_.renumber;
    renumber.assign(static_cast<size_t>(count) + 1, 0);
    int32_t kept = 0;
    for (const int32_t k : order) {
      if (s_.objects[k].area >= min_area) renumber[k] = ++kept;
    }
    for_each_group([&](int32_t g) {
      for (const SeededScratch::LabelledRun& r : s_.buffers[g].runs) {
        std::fill_n(&at(r.row, r.start), r.end - r.start, renumber[r.label]);
      }
    });
    int32_t* fg_labels = foreground_.run_labels.data();
    for (size_t i = 0; i < foreground_.runs.size(); ++i) {
      const int32_t o = s_.object[fg_labels[i]];
      fg_labels[i] = o > 0 ? renumber[o] : -1;
    }
    if (stats) {
      stats->resize(static_cast<size_t>(kept) * kNumStatsColumns);
      double* out = stats->data();
      for (const int32_t k : order) {
        if (renumber[k]) {
          s_.objects[k].write(out);
          out += kNumStatsColumns;
        }
      }
    }
    return kept;
  }

 private:
  // A component to grow, in its bounding box (whole words, with a zero row above and below; it stays
  // in cache through the component's rounds).
  struct Component {
    int32_t rows, nk, lo, k0, col0; // box rows and words; its first image row, word and column
    int64_t plane;                  // words of one bit image of the box
    const int32_t* kseed;           // its seeds' labels
    int32_t num;                    // how many (>= 2)
    uint64_t* ring;                 // its pixels that are not seeds, not labelled yet (box row 0 = image row lo)
  };

  int32_t& at(int32_t row, int32_t col) const { return labels_[int64_t{row} * width_ + col]; }
  const Run& seed_run(int32_t j) const { return seeds_.runs[s_.seed_runs[j]]; }

  // Sets or clears the bits of run r in a box bit image.
  void set_run(const Component& comp, uint64_t* bits, const Run& r, bool on) const {
    uint64_t* row = bits + int64_t{r.row - comp.lo} * comp.nk - comp.k0;
    for (int32_t k = r.start >> 6; k <= (r.end - 1) >> 6; ++k) {
      row[k] = on ? row[k] | range_bits(k, r.start, r.end) : row[k] & ~range_bits(k, r.start, r.end);
    }
  }

  // A grown object's run: into the group's list (written with the final label by number) and the
  // object's sums.
  void emit(SeededScratch::Buffers& buffers, int32_t row, int32_t start, int32_t end, int32_t k) {
    buffers.runs.push_back({row, start, end, k});
    if (with_scores_) {
      s_.objects[k].add_run(Run{row, start, end, 0}, score_sum_(row, start, end));
    } else {
      s_.objects[k].area += end - start;
    }
    s_.first[k] = std::min(s_.first[k], int64_t{row} * width_ + start);
  }

  // Growth of one component, in rounds. A round's front is the ring pixels next to a pixel labelled
  // in earlier rounds; each front pixel takes the label of such a neighbour (between different
  // labels the highest nucleus score wins, then the smaller label), all read before any pixel of
  // the round joins the labelled ones.
  void grow_component(int32_t c, SeededScratch::Buffers& buffers) {
    const SeededScratch::Box box = s_.boxes[c];
    Component comp{};
    comp.rows = box.row_end - box.row_begin + 1;
    comp.nk = box.word_end - box.word_begin + 1;
    comp.lo = box.row_begin;
    comp.k0 = box.word_begin;
    comp.col0 = comp.k0 * 64;
    comp.plane = int64_t{comp.rows + 2} * comp.nk;
    comp.kseed = s_.comp_seeds.data() + s_.seed_begin[c - 1];
    comp.num = s_.seed_begin[c] - s_.seed_begin[c - 1];
    buffers.ring.assign(static_cast<size_t>(comp.plane), 0);
    comp.ring = buffers.ring.data() + comp.nk;
    for (int32_t j = s_.run_begin[c - 1]; j < s_.run_begin[c]; ++j) {
      set_run(comp, comp.ring, foreground_.runs[s_.comp_runs[j]], true);
    }
    for (int32_t s = 0; s < comp.num; ++s) {
      for (int32_t j = s_.seed_run_begin[comp.kseed[s] - 1]; j < s_.seed_run_begin[comp.kseed[s]]; ++j) {
        set_run(comp, comp.ring, seed_run(j), false);
      }
    }
    if (int64_t{comp.num} * comp.plane <= kSeedPlaneWords) {
      grow_by_seed_images(comp, buffers);
    } else {
      grow_by_pixels(c, comp, buffers);
    }
  }

  // One bit image per seed, grown 64 pixels at a time: a front pixel next to one seed's pixels only
  // is that seed's without looking at it; only pixels next to several seeds' (the seams, found as
  // bits set in two seeds' fronts) compare scores. Each seed's images are valid on its row span,
  // which widens by at most a row each way a round.
  void grow_by_seed_images(const Component& comp, SeededScratch::Buffers& buffers) {
    const int32_t nk = comp.nk, num = comp.num;
    buffers.grown.resize(static_cast<size_t>(num * comp.plane));
    buffers.front.resize(static_cast<size_t>(num * comp.plane));
    buffers.seen.assign(static_cast<size_t>(comp.plane), 0);
    buffers.multi.assign(static_cast<size_t>(comp.plane), 0);
    buffers.zero.assign(static_cast<size_t>(nk), 0);
    buffers.spans.resize(static_cast<size_t>(num));
    SeedImages images{buffers, comp.plane, nk};
    for (int32_t s = 0; s < num; ++s) {
      const int32_t b = s_.seed_run_begin[comp.kseed[s] - 1], e = s_.seed_run_begin[comp.kseed[s]];
      images.spans[s] = {seed_run(b).row - comp.lo, seed_run(e - 1).row - comp.lo, 0, -1, true};
      std::fill(images.grown_row(s, images.spans[s].lo), images.grown_row(s, images.spans[s].hi + 1), 0);
      for (int32_t j = b; j < e; ++j) set_run(comp, images.grown_row(s, 0), seed_run(j), true);
    }
    uint64_t* seen = buffers.seen.data() + nk;
    uint64_t* multi = buffers.multi.data() + nk;
    for (;;) {
      int32_t union_lo = comp.rows, union_hi = -1;
      const uint64_t seams = seed_fronts(comp, images, seen, multi, union_lo, union_hi);
      if (union_hi < 0) break;
      if (seams) settle_seams(comp, images, multi, union_lo, union_hi);
      for (int32_t s = 0; s < num; ++s) images.join_front(s);
      for (int32_t row = union_lo; row <= union_hi; ++row) {
        for (int32_t k = 0; k < nk; ++k) {
          comp.ring[row * nk + k] &= ~seen[row * nk + k];
          seen[row * nk + k] = multi[row * nk + k] = 0;
        }
      }
    }
    for (int32_t s = 0; s < num; ++s) {
      for (int32_t row = images.spans[s].lo; row <= images.spans[s].hi; ++row) {
        for_each_run(images.grown_row(s, row), nk, [&](int32_t start, int32_t end) {
          emit(buffers, comp.lo + row, comp.col0 + start, comp.col0 + end, comp.kseed[s]);
        });
      }
    }
  }

  // The per-seed bit images of grow_by_seed_images: each seed's pixels and its front of the round,
  // valid on the seed's row span.
  struct SeedImages {
    SeededScratch::Buffers& buffers;
    int64_t plane;
    int32_t nk;
    SeededScratch::Span* spans = buffers.spans.data();

    uint64_t* grown_row(int32_t s, int32_t row) const { return buffers.grown.data() + s * plane + (row + 1) * nk; }
    uint64_t* front_row(int32_t s, int32_t row) const { return buffers.front.data() + s * plane + (row + 1) * nk; }
    const uint64_t* read_row(int32_t s, int32_t row) const {
      return row >= spans[s].lo && row <= spans[s].hi ? grown_row(s, row) : buffers.zero.data();
    }
    bool in_front(int32_t s, int32_t row) const { // this round's front of s covers the row
      return spans[s].active && row >= spans[s].front_lo && row <= spans[s].front_hi;
    }
    // The front of seed s joins its pixels, and its span widens to cover it.
    void join_front(int32_t s) {
      SeededScratch::Span& span = spans[s];
      if (!span.active) return;
      for (int32_t row = span.front_lo; row <= span.front_hi; ++row) {
        uint64_t* g_row = grown_row(s, row);
        const uint64_t* f_row = front_row(s, row);
        if (row < span.lo || row > span.hi) {
          std::copy_n(f_row, nk, g_row);
        } else {
          for (int32_t k = 0; k < nk; ++k) g_row[k] |= f_row[k];
        }
      }
      span.lo = std::min(span.lo, span.front_lo);
      span.hi = std::max(span.hi, span.front_hi);
    }
  };

  // Each active seed's front of the round (its ring neighbours), marking pixels in one front in
  // `seen` and in two or more in `multi`; widens [union_lo, union_hi] to the rows of every front.
  // Returns nonzero when some pixel is in two fronts.
  uint64_t seed_fronts(const Component& comp, SeedImages& images, uint64_t* seen, uint64_t* multi,
                       int32_t& union_lo, int32_t& union_hi) const {
    const int32_t nk = comp.nk;
    uint64_t seams = 0;
    for (int32_t s = 0; s < comp.num; ++s) {
      SeededScratch::Span& span = images.spans[s];
      if (!span.active) continue;
      span.front_lo = std::max(span.lo - 1, 0);
      span.front_hi = std::min(span.hi + 1, comp.rows - 1);
      uint64_t any = 0;
      for (int32_t row = span.front_lo; row <= span.front_hi; ++row) {
        const uint64_t *up = images.read_row(s, row - 1), *mid = images.read_row(s, row);
        const uint64_t* down = images.read_row(s, row + 1);
        const uint64_t* ring_row = comp.ring + row * nk;
        uint64_t* f_row = images.front_row(s, row);
        uint64_t* seen_row = seen + row * nk;
        uint64_t* multi_row = multi + row * nk;
        for (int32_t k = 0; k < nk; ++k) {
          uint64_t f = ring_row[k];
          if (f) f &= dilate(up, mid, down, nk, k, eight_connected_);
          f_row[k] = f;
          const uint64_t twice = seen_row[k] & f;
          multi_row[k] |= twice;
          seams |= twice;
          seen_row[k] |= f;
          any |= f;
        }
      }
      span.active = any != 0;
      if (span.active) {
        union_lo = std::min(union_lo, span.front_lo);
        union_hi = std::max(union_hi, span.front_hi);
      }
    }
    return seams;
  }

  // Each seam pixel (in several seeds' fronts) goes to one seed, by the rule, from the seeds'
  // labelled neighbours; it is cleared from the other fronts.
  void settle_seams(const Component& comp, SeedImages& images, const uint64_t* multi, int32_t union_lo,
                    int32_t union_hi) const {
    const int32_t nk = comp.nk;
    for (int32_t row = union_lo; row <= union_hi; ++row) {
      for (int32_t k = 0; k < nk; ++k) {
        for (uint64_t m = multi[row * nk + k]; m; m &= m - 1) {
          const uint64_t bit = m & (~m + 1);
          const int32_t col = k * 64 + __builtin_ctzll(m);
          int32_t winner = -1;
          float best = 0.0f;
          for (int32_t s = 0; s < comp.num; ++s) {
            if (!images.in_front(s, row) || !(images.front_row(s, row)[k] & bit)) continue;
            // The best score among s's labelled neighbours (there is one: the pixel is in s's front).
            float top = -std::numeric_limits<float>::infinity();
            for (uint32_t n = neighbour_bits3(images.read_row(s, row - 1), images.read_row(s, row),
                                              images.read_row(s, row + 1), nk, col, keep_);
                 n; n &= n - 1) {
              const int d = __builtin_ctz(n);
              top = std::max(top, score_(comp.lo + row + kDr[d], comp.col0 + col + kDc[d]));
            }
            if (winner < 0 || top > best) { // seeds in label order: a tie keeps the smaller label
              winner = s;
              best = top;
            }
          }
          for (int32_t s = 0; s < comp.num; ++s) {
            if (s != winner && images.in_front(s, row)) images.front_row(s, row)[k] &= ~bit;
          }
        }
      }
    }
  }

  // Many seeds in a large box (one bit image per seed would not fit in cache): one bit image of the
  // labelled pixels and the labels themselves, the rule applied pixel by pixel. Only rows next to
  // the previous round's front are scanned. Other components' seeds copied into the box do no
  // harm: they are never neighbours of this one's ring.
  void grow_by_pixels(int32_t c, const Component& comp, SeededScratch::Buffers& buffers) {
    const int32_t rows = comp.rows, nk = comp.nk;
    buffers.labelled.resize(static_cast<size_t>(comp.plane));
    buffers.front.resize(static_cast<size_t>(comp.plane));
    buffers.active.assign(static_cast<size_t>(rows) + 2, 1);
    buffers.next.resize(static_cast<size_t>(rows) + 2);
    uint64_t* labelled = buffers.labelled.data() + nk;
    uint64_t* front = buffers.front.data() + nk;
    uint8_t* active = buffers.active.data() + 1;
    uint8_t* next = buffers.next.data() + 1;
    std::fill_n(labelled - nk, nk, 0);
    std::fill_n(labelled + int64_t{rows} * nk, nk, 0);
    for (int32_t row = 0; row < rows; ++row) std::copy_n(s_.seed_row(comp.lo + row) + comp.k0, nk, labelled + row * nk);
    for (int32_t s = 0; s < comp.num; ++s) {
      for (int32_t j = s_.seed_run_begin[comp.kseed[s] - 1]; j < s_.seed_run_begin[comp.kseed[s]]; ++j) {
        const Run& r = seed_run(j);
        std::fill_n(&at(r.row, r.start), r.end - r.start, comp.kseed[s]);
      }
    }
    for (bool more = true; more;) {
      more = false;
      for (int32_t row = 0; row < rows; ++row) {
        if (!active[row]) continue;
        active[row] = label_front_row(comp, labelled, front, row); // now: this round's front is not empty
      }
      // The round's front joins the labelled pixels; the rows next to it may hold the next front.
      std::fill(next - 1, next + rows + 1, 0);
      for (int32_t row = 0; row < rows; ++row) {
        if (!active[row]) continue;
        uint64_t* mid = labelled + row * nk;
        uint64_t* ring_row = comp.ring + row * nk;
        const uint64_t* front_row = front + row * nk;
        for (int32_t k = 0; k < nk; ++k) {
          mid[k] |= front_row[k];
          ring_row[k] &= ~front_row[k];
        }
        next[row - 1] = next[row] = next[row + 1] = 1;
        more = true;
      }
      std::swap(active, next);
    }
    for (int32_t j = s_.run_begin[c - 1]; j < s_.run_begin[c]; ++j) { // the runs, cut where the label changes
      const Run& r = foreground_.runs[s_.comp_runs[j]];
      const int32_t* row = &at(r.row, 0);
      for (int32_t start = r.start, end; start < r.end; start = end) {
        for (end = start + 1; end < r.end && row[end] == row[start];) ++end;
        emit(buffers, r.row, start, end, row[start]);
      }
    }
  }

  // One row of grow_by_pixels' round: its front (ring pixels next to labelled ones) into `front`,
  // each front pixel labelled by the rule in `labels`. Returns whether the row's front is not empty.
  bool label_front_row(const Component& comp, const uint64_t* labelled, uint64_t* front, int32_t row) const {
    const int32_t nk = comp.nk;
    const uint64_t* mid = labelled + row * nk;
    const uint64_t* ring_row = comp.ring + row * nk;
    uint64_t* front_row = front + row * nk;
    uint64_t any = 0;
    for (int32_t k = 0; k < nk; ++k) {
      uint64_t f = ring_row[k];
      if (f) f &= dilate(mid - nk, mid, mid + nk, nk, k, eight_connected_);
      front_row[k] = f;
      any |= f;
      for (; f; f &= f - 1) {
        const int32_t col = k * 64 + __builtin_ctzll(f), image_row = comp.lo + row, image_col = comp.col0 + col;
        int32_t* at_p = &at(image_row, image_col);
        const uint32_t m = neighbour_bits(labelled, nk, row, col, keep_);
        int32_t best = at_p[offset_[__builtin_ctz(m)]];
        bool one_label = true;
        for (uint32_t rest = m & (m - 1); rest; rest &= rest - 1) one_label &= at_p[offset_[__builtin_ctz(rest)]] == best;
        if (!one_label) {
          float best_score = 0.0f;
          best = 0;
          for (uint32_t rest = m; rest; rest &= rest - 1) {
            const int n = __builtin_ctz(rest);
            const int32_t l = at_p[offset_[n]];
            const float sc = score_(image_row + kDr[n], image_col + kDc[n]);
            if (best == 0 || sc > best_score || (sc == best_score && l < best)) {
              best = l;
              best_score = sc;
            }
          }
        }
        *at_p = best; // read by no other pixel of this round: its labelled bit is not set yet
      }
    }
    return any != 0;
  }

  ImageRuns& foreground_;
  const ImageRuns& seeds_;
  SeededScratch& s_;
  int32_t width_;
  bool eight_connected_;
  uint32_t keep_;
  const Score& score_;
  const ScoreSum& score_sum_;
  int32_t* labels_;
  bool with_scores_;
  int64_t offset_[9]; // of each neighbour in `labels`
};

} // namespace detail

// Growth and numbering of one image. On entry `foreground` and `seeds` hold the labelled runs of
// the foreground and of the seeds (numbered without min_area; the foreground's score_sums
// filled when `stats`), and `scratch.seeds` the seed bits. A foreground component with no seed is an object
// of its own (its seeds were all boundary: e.g. a nucleus so small that its boundary covers it), so
// the seeded mode never loses an object that plain labelling finds; one with a single seed is that
// seed's object, whole. Only components with two or more seeds are grown, and written here into
// `labels` (row-major, `width` elements a row). `score(row, col)` is the nucleus
// score of a pixel, `score_sum(row, start, end)` the sum over a run; `parallel_for(n, fn)` runs
// fn(0) ... fn(n - 1) in any order or concurrently (groups of components, at most `max_groups`).
// On return `foreground.run_labels` holds every other run's final label (0: removed by min_area)
// and -1 on the runs written here, for write_rows. Returns the object count; fills `stats` with
// count * kNumStatsColumns values when non-null.
template <class Score, class ScoreSum, class ParallelFor>
int64_t grow_and_number(ImageRuns& foreground, const ImageRuns& seeds, SeededScratch& scratch, int32_t width,
                        bool eight_connected, int64_t min_area, int32_t max_groups, Score&& score,
                        ScoreSum&& score_sum, ParallelFor&& parallel_for, int32_t* labels,
                        std::vector<double>* stats) {
  detail::SeededGrowth<std::decay_t<Score>, std::decay_t<ScoreSum>> growth(
      foreground, seeds, scratch, width, eight_connected, score, score_sum, labels, stats != nullptr);
  const int32_t count = growth.assign_objects();
  const int64_t to_grow = growth.sum_whole_objects_and_box_the_rest();
  growth.group_seeds(to_grow);
  const int32_t num_groups = growth.plan_groups(to_grow, max_groups);
  parallel_for(num_groups, [&](int32_t g) { growth.grow_group(g); });
  return growth.number(count, min_area, [&](auto&& fn) { parallel_for(num_groups, fn); }, stats);
}

} // namespace unetseg::ccl
