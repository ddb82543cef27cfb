// Seeded labelling for 2-channel (nucleus + boundary) models: the torch-free CPU core.
//
// Threshold + connected components merges touching nuclei into one object. A model that also
// predicts each nucleus' boundary lets them be split, as the DSB 2018 winners did:
//
//  seeds   foreground (nucleus > t) where the boundary score is below t_b; they are labelled by the
//          run-based core of ccl.h in the same pass that reads the scores (seed labels are in the
//          raster order of their first pixel). The other foreground pixels, the "ring", are kept
//          as one bit per pixel.
//  growth  rounds of a constrained dilation: each round, every ring pixel with a labelled
//          neighbour takes the label of its labelled neighbour with the highest nucleus score
//          (ties: the smaller label), all at once from the labels of the previous rounds (a Jacobi
//          step, so the result does not depend on the visiting order and a data-parallel CUDA
//          version can be bit-identical). Rounds continue until no ring pixel touches a label, so
//          each pixel goes to the seed nearest to it along the foreground (geodesic distance), the
//          nucleus score deciding between equally near seeds.
//  orphans ring pixels that no seed reaches (a foreground component without a seed, e.g. a nucleus
//          so small that its boundary covers it) become objects of their own, so the seeded mode
//          never loses an object that plain labelling finds.
//  number  objects are renumbered 1..K in the raster order of their first pixel (the convention of
//          plain labelling) after dropping those with fewer than min_area pixels; the statistics
//          are summed from the seed runs and the grown pixels, never from a rescan of the image.
//
// Work is proportional to the image for the seed scan and write (as plain labelling) plus the ring
// pixels for growth and renumbering; a 2-channel map costs one extra read of the boundary channel.
#pragma once

#include "ccl.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace unetseg::ccl {

// Scratch space of one image, reused across calls.
struct SeededScratch {
  std::vector<uint64_t> ring; // height * words_per_row(width) bits: unlabelled non-seed foreground
  struct Pixel {
    int32_t row, col;
  };
  std::vector<Pixel> frontier, next, grown;
  std::vector<int32_t> chosen;
  std::vector<ObjectStats> objects; // index: provisional label
  std::vector<int64_t> first;       // raster index of each object's first pixel
  std::vector<int32_t> order, renumber;
};

// The bit row of the seeds (`foreground & below`) from the foreground bits and the bits of
// `boundary < t_b`; stores the rest of the foreground in `ring_row`.
inline void split_seeds(uint64_t* foreground, const uint64_t* below, int64_t words, uint64_t* ring_row) {
  for (int64_t k = 0; k < words; ++k) {
    ring_row[k] = foreground[k] & ~below[k];
    foreground[k] &= below[k];
  }
}

namespace detail {

// Calls fn(row, col) for each in-image neighbour of (row, col).
template <class Fn>
inline void for_each_neighbour(int32_t row, int32_t col, int32_t height, int32_t width,
                               bool eight_connected, Fn&& fn) {
  const bool up = row > 0, down = row + 1 < height, left = col > 0, right = col + 1 < width;
  if (up) {
    if (eight_connected && left) fn(row - 1, col - 1);
    fn(row - 1, col);
    if (eight_connected && right) fn(row - 1, col + 1);
  }
  if (left) fn(row, col - 1);
  if (right) fn(row, col + 1);
  if (down) {
    if (eight_connected && left) fn(row + 1, col - 1);
    fn(row + 1, col);
    if (eight_connected && right) fn(row + 1, col + 1);
  }
}

inline bool test_bit(const uint64_t* bits, int64_t words, int32_t row, int32_t col) {
  return (bits[row * words + col / 64] >> (col % 64)) & 1u;
}

inline void clear_bit(uint64_t* bits, int64_t words, int32_t row, int32_t col) {
  bits[row * words + col / 64] &= ~(uint64_t{1} << (col % 64));
}

} // namespace detail

// Growth, orphans and numbering of one image. On entry `seeds` holds the labelled seed runs
// (merge_and_number with min_area 0; score_sums filled when `stats`), `labels` (row-major, `width`
// elements a row) holds their labels and zeros elsewhere, and `scratch.ring` the ring bits.
// `score(row, col)` is the nucleus score of a pixel. Returns the object count; fills `stats` with
// count * kNumStatsColumns values when non-null.
template <class Score>
int64_t grow_and_number(const ImageRuns& seeds, SeededScratch& scratch, int32_t height, int32_t width,
                        bool eight_connected, int64_t min_area, Score&& score, int32_t* labels,
                        std::vector<double>* stats) {
  using Pixel = SeededScratch::Pixel;
  const int64_t words = words_per_row(width);
  uint64_t* ring = scratch.ring.data();
  auto at = [&](int32_t row, int32_t col) -> int32_t& { return labels[int64_t{row} * width + col]; };
  constexpr int32_t kQueued = -1; // a ring pixel already in the next frontier

  // Objects 1..S: the seeds, their statistics summed from runs.
  const auto num_seeds = static_cast<int32_t>(seeds.count);
  std::vector<ObjectStats>& objects = scratch.objects;
  std::vector<int64_t>& first = scratch.first;
  objects.assign(static_cast<size_t>(num_seeds) + 1, ObjectStats{});
  first.assign(static_cast<size_t>(num_seeds) + 1, -1);
  const bool with_scores = stats != nullptr;
  for (size_t i = 0; i < seeds.runs.size(); ++i) {
    const Run& r = seeds.runs[i];
    const int32_t k = seeds.run_labels[i];
    objects[k].add_run(r, with_scores ? seeds.score_sums[i] : 0.0);
    if (first[k] < 0) first[k] = int64_t{r.row} * width + r.start; // runs are in raster order
  }

  auto add_pixel = [&](int32_t k, int32_t row, int32_t col) {
    objects[k].add_pixel(row, col, with_scores ? static_cast<double>(score(row, col)) : 0.0);
    first[k] = std::min(first[k], int64_t{row} * width + col);
  };

  // Growth: the first frontier is every ring pixel touching a seed.
  std::vector<Pixel>& frontier = scratch.frontier;
  std::vector<Pixel>& next = scratch.next;
  std::vector<Pixel>& grown = scratch.grown;
  std::vector<int32_t>& chosen = scratch.chosen;
  frontier.clear();
  grown.clear();
  for (int32_t row = 0; row < height; ++row) {
    for (int64_t k = 0; k < words; ++k) {
      for (uint64_t word = ring[row * words + k]; word; word &= word - 1) {
        const auto col = static_cast<int32_t>(k * 64 + __builtin_ctzll(word));
        bool touches = false;
        detail::for_each_neighbour(row, col, height, width, eight_connected,
                                   [&](int32_t r, int32_t c) { touches |= at(r, c) > 0; });
        if (touches) frontier.push_back({row, col});
      }
    }
  }
  for (const Pixel& p : frontier) at(p.row, p.col) = kQueued;
  while (!frontier.empty()) {
    chosen.resize(frontier.size());
    for (size_t i = 0; i < frontier.size(); ++i) {
      int32_t best = 0;
      float best_score = 0.0f;
      detail::for_each_neighbour(frontier[i].row, frontier[i].col, height, width, eight_connected,
                                 [&](int32_t r, int32_t c) {
                                   const int32_t l = at(r, c);
                                   if (l <= 0) return;
                                   const float s = score(r, c);
                                   if (best == 0 || s > best_score || (s == best_score && l < best)) {
                                     best = l;
                                     best_score = s;
                                   }
                                 });
      chosen[i] = best;
    }
    next.clear();
    for (size_t i = 0; i < frontier.size(); ++i) {
      const Pixel p = frontier[i];
      at(p.row, p.col) = chosen[i];
      detail::clear_bit(ring, words, p.row, p.col);
      add_pixel(chosen[i], p.row, p.col);
    }
    for (const Pixel& p : frontier) {
      detail::for_each_neighbour(p.row, p.col, height, width, eight_connected, [&](int32_t r, int32_t c) {
        if (detail::test_bit(ring, words, r, c) && at(r, c) == 0) {
          at(r, c) = kQueued;
          next.push_back({r, c});
        }
      });
    }
    grown.insert(grown.end(), frontier.begin(), frontier.end());
    frontier.swap(next);
  }

  // Orphans: the ring pixels left are foreground components without a seed. Each is flooded from
  // its first pixel in raster order.
  int32_t count = num_seeds;
  for (int32_t row = 0; row < height; ++row) {
    for (int64_t k = 0; k < words; ++k) {
      while (uint64_t word = ring[row * words + k]) {
        const auto col = static_cast<int32_t>(k * 64 + __builtin_ctzll(word));
        const int32_t label = ++count;
        objects.emplace_back();
        first.push_back(int64_t{row} * width + col);
        const size_t begin = grown.size();
        detail::clear_bit(ring, words, row, col);
        grown.push_back({row, col});
        for (size_t i = begin; i < grown.size(); ++i) {
          const Pixel p = grown[i];
          at(p.row, p.col) = label;
          add_pixel(label, p.row, p.col);
          detail::for_each_neighbour(p.row, p.col, height, width, eight_connected, [&](int32_t r, int32_t c) {
            if (detail::test_bit(ring, words, r, c)) {
              detail::clear_bit(ring, words, r, c);
              grown.push_back({r, c});
            }
          });
        }
      }
    }
  }

  // Numbering: raster order of first pixels, after min_area.
  std::vector<int32_t>& order = scratch.order;
  order.resize(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 1);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return first[a] < first[b]; });
  std::vector<int32_t>& renumber = scratch.renumber;
  renumber.assign(static_cast<size_t>(count) + 1, 0);
  int32_t kept = 0;
  bool identity = true;
  for (const int32_t k : order) {
    if (objects[k].area >= min_area) renumber[k] = ++kept;
    identity &= renumber[k] == k;
  }
  if (!identity) {
    for (size_t i = 0; i < seeds.runs.size(); ++i) {
      const Run& r = seeds.runs[i];
      const int32_t k = seeds.run_labels[i];
      if (renumber[k] != k) std::fill(&at(r.row, r.start), &at(r.row, r.start) + (r.end - r.start), renumber[k]);
    }
    for (const Pixel& p : grown) at(p.row, p.col) = renumber[at(p.row, p.col)];
  }

  if (stats) {
    stats->resize(static_cast<size_t>(kept) * kNumStatsColumns);
    double* out = stats->data();
    for (const int32_t k : order) {
      if (renumber[k]) {
        objects[k].write(out);
        out += kNumStatsColumns;
      }
    }
  }
  return kept;
}

} // namespace unetseg::ccl
