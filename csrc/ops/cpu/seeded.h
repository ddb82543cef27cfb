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
  // Bit images, words_per_row(width) words a row: the non-seed foreground not yet labelled nor
  // queued, and the labelled pixels (seeds, then grown pixels).
  std::vector<uint64_t> ring, labelled;
  struct Pixel {
    int32_t row, col;
  };
  std::vector<Pixel> frontier, next, grown;
  std::vector<int32_t> chosen;
  std::vector<ObjectStats> objects; // index: provisional label
  std::vector<int64_t> first;       // raster index of each object's first pixel
  std::vector<int32_t> order, renumber;
};

// Splits one row of foreground bits, given the bits of `boundary < t_b`: the seeds (`foreground &
// below`) stay in `foreground` and go to `seed_row`, the rest of the foreground to `ring_row`.
inline void split_seeds(uint64_t* foreground, const uint64_t* below, int64_t words, uint64_t* ring_row,
                        uint64_t* seed_row) {
  for (int64_t k = 0; k < words; ++k) {
    ring_row[k] = foreground[k] & ~below[k];
    seed_row[k] = foreground[k] &= below[k];
  }
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

// The neighbours of (row, col) whose bit is set in `bits`, masked by `keep`.
inline uint32_t neighbour_bits(const uint64_t* bits, int64_t words, int32_t height, int32_t row,
                               int32_t col, uint32_t keep) {
  const uint64_t* r = bits + row * words;
  uint32_t m = window3(r, words, col) << 3;
  if (row > 0) m |= window3(r - words, words, col);
  if (row + 1 < height) m |= window3(r + words, words, col) << 6;
  return m & keep;
}

// Word k of a bit row dilated by one pixel left and right (with the centre when `centre`).
inline uint64_t spread(const uint64_t* row, int64_t words, int64_t k, bool centre) {
  uint64_t w = (row[k] << 1) | (row[k] >> 1);
  if (k > 0) w |= row[k - 1] >> 63;
  if (k + 1 < words) w |= row[k + 1] << 63;
  return centre ? w | row[k] : w;
}

} // namespace detail

// Growth, orphans and numbering of one image. On entry `seeds` holds the labelled seed runs
// (merge_and_number with min_area 0; score_sums filled when `stats`), `labels` (row-major, `width`
// elements a row) holds their labels and zeros elsewhere, and `scratch.ring` / `scratch.labelled`
// the ring and seed bits. `score(row, col)` is the nucleus score of a pixel. Returns the object
// count; fills `stats` with count * kNumStatsColumns values when non-null.
template <class Score>
int64_t grow_and_number(const ImageRuns& seeds, SeededScratch& scratch, int32_t height, int32_t width,
                        bool eight_connected, int64_t min_area, Score&& score, int32_t* labels,
                        std::vector<double>* stats) {
  using Pixel = SeededScratch::Pixel;
  const int64_t words = words_per_row(width);
  const uint32_t keep = eight_connected ? detail::kEightNeighbours : detail::kFourNeighbours;
  uint64_t* ring = scratch.ring.data();
  uint64_t* labelled = scratch.labelled.data();
  auto at = [&](int32_t row, int32_t col) -> int32_t& { return labels[int64_t{row} * width + col]; };
  auto clear = [&](uint64_t* bits, int32_t row, int32_t col) {
    bits[row * words + (col >> 6)] &= ~(uint64_t{1} << (col & 63));
  };

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
  // Pushes the neighbours of (row, col) still in the ring onto `queue` and takes them out of it.
  auto queue_ring_neighbours = [&](int32_t row, int32_t col, std::vector<Pixel>& queue) {
    for (uint32_t m = detail::neighbour_bits(ring, words, height, row, col, keep); m; m &= m - 1) {
      const int i = __builtin_ctz(m);
      const int32_t r = row + detail::kDr[i], c = col + detail::kDc[i];
      clear(ring, r, c);
      queue.push_back({r, c});
    }
  };

  // Growth. The first frontier: ring pixels next to a seed, found a word at a time.
  std::vector<Pixel>& frontier = scratch.frontier;
  std::vector<Pixel>& next = scratch.next;
  std::vector<Pixel>& grown = scratch.grown;
  std::vector<int32_t>& chosen = scratch.chosen;
  frontier.clear();
  grown.clear();
  for (int32_t row = 0; row < height; ++row) {
    const uint64_t* mid = labelled + row * words;
    for (int64_t k = 0; k < words; ++k) {
      uint64_t& word = ring[row * words + k];
      if (!word) continue;
      uint64_t near = detail::spread(mid, words, k, false);
      if (row > 0) near |= eight_connected ? detail::spread(mid - words, words, k, true) : mid[k - words];
      if (row + 1 < height) near |= eight_connected ? detail::spread(mid + words, words, k, true) : mid[k + words];
      const uint64_t hits = word & near;
      word &= ~hits;
      for (uint64_t h = hits; h; h &= h - 1) frontier.push_back({row, static_cast<int32_t>(k * 64 + __builtin_ctzll(h))});
    }
  }
  while (!frontier.empty()) {
    // Choose every label from the labels of earlier rounds...
    chosen.resize(frontier.size());
    for (size_t i = 0; i < frontier.size(); ++i) {
      const Pixel p = frontier[i];
      const uint32_t m = detail::neighbour_bits(labelled, words, height, p.row, p.col, keep);
      int n = __builtin_ctz(m);
      int32_t best = at(p.row + detail::kDr[n], p.col + detail::kDc[n]);
      bool one_label = true;
      for (uint32_t rest = m & (m - 1); rest; rest &= rest - 1) {
        n = __builtin_ctz(rest);
        one_label &= at(p.row + detail::kDr[n], p.col + detail::kDc[n]) == best;
      }
      if (!one_label) { // between different labels the highest nucleus score wins, then the smaller label
        float best_score = 0.0f;
        best = 0;
        for (uint32_t rest = m; rest; rest &= rest - 1) {
          n = __builtin_ctz(rest);
          const int32_t r = p.row + detail::kDr[n], c = p.col + detail::kDc[n];
          const int32_t l = at(r, c);
          const float s = score(r, c);
          if (best == 0 || s > best_score || (s == best_score && l < best)) {
            best = l;
            best_score = s;
          }
        }
      }
      chosen[i] = best;
    }
    // ...then commit them all and queue the ring pixels they touch.
    next.clear();
    for (size_t i = 0; i < frontier.size(); ++i) {
      const Pixel p = frontier[i];
      at(p.row, p.col) = chosen[i];
      labelled[p.row * words + (p.col >> 6)] |= uint64_t{1} << (p.col & 63);
      add_pixel(chosen[i], p.row, p.col);
      queue_ring_neighbours(p.row, p.col, next);
    }
    grown.insert(grown.end(), frontier.begin(), frontier.end());
    frontier.swap(next);
  }

  // Orphans: the ring pixels left are foreground components without a seed. Each is flooded from
  // its first pixel in raster order.
  int32_t count = num_seeds;
  for (int32_t row = 0; row < height; ++row) {
    for (int64_t k = 0; k < words; ++k) {
      while (const uint64_t word = ring[row * words + k]) {
        const auto col = static_cast<int32_t>(k * 64 + __builtin_ctzll(word));
        const int32_t label = ++count;
        objects.emplace_back();
        first.push_back(int64_t{row} * width + col);
        size_t i = grown.size();
        clear(ring, row, col);
        grown.push_back({row, col});
        for (; i < grown.size(); ++i) {
          const Pixel p = grown[i];
          at(p.row, p.col) = label;
          add_pixel(label, p.row, p.col);
          queue_ring_neighbours(p.row, p.col, grown);
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
