// Run-based connected-component labelling fused with thresholding: the torch-free CPU core.
//
// Why runs. A pixel-based two-scan labeller writes provisional labels and then rewrites every pixel
// with its final label: two reads and two writes of the label image. Nuclei probability maps are
// mostly background crossed by short horizontal runs of foreground, so this core works on runs
// (He, Chao & Suzuki, "A run-based two-scan labeling algorithm", IEEE TIP 2008) and touches each
// pixel exactly twice: one read of the scores, one write of the labels (the memory floor).
//
//  1. scan   (parallel over strips of rows) Each row is thresholded into a bit row (64 pixels a
//            word, SIMD compare + movemask) that stays in L1; its foreground runs [start, end) are
//            the set bits of (bits ^ bits << 1), found with count-trailing-zeros, appended to the
//            strip's run table and joined (union-find) with the runs they touch in the previous row
//            of the same strip. 8-connectivity: runs touch when their column ranges, widened by one
//            pixel, overlap; 4-connectivity: when the ranges themselves overlap.
//  2. merge  (strips in parallel, then per image) The strips' run tables are copied into one, and
//            the first row of every strip is joined with the last row of the strip above. Union
//            always links the larger root under the smaller, so every root is the first run of its
//            component in raster order and every other run has parent < itself.
//  3. number (strips in parallel, a table per strip in between) While a strip is copied, its runs
//            are numbered within it: a root gets the strip's next number, any other run its
//            parent's, already numbered because parent < run. After the seams, each strip's table
//            maps those numbers to the image's labels (the roots still roots take the next labels,
//            strip after strip; those joined to a strip above the label of their new root), and
//            every run is relabelled through it. Labels thus follow the raster order of each
//            object's first pixel: scipy.ndimage.label's order. min_area drops objects by
//            renumbering here, at the run level, and per-object statistics are summed from runs
//            (area, bbox, centroid, score sum), never from pixels.
//  4. write  (parallel over strips) Each row of labels is written once: zeros between runs and
//            the run's label on it, in fixed-width blocks that may overshoot into the next segment
//            of the row (which is written right after), so no store loop has a data-dependent tail.
//
// Steps 1 and 4 touch every pixel; their vector versions (AVX2 thresholding after threshold_bits,
// the AVX2 and AVX-512 writers at the end of the file) run where the CPU has them (ops/label.h:
// simd_level) and give the same labels.
//
// The run table is small for blob-like maps; its worst case (a checkerboard) is one run per two
// pixels. Threading is left to the caller through `parallel_for(n, fn(begin, end))` so the same
// core runs under torch's intra-op pool, OpenMP, TBB or a plain loop.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// Vector versions of the two memory-bound steps, thresholding (AVX2) and writing labels (AVX2, AVX-512),
// compiled for their ISA by function attribute and called only where the CPU has it (ops/label.h:
// simd_level), so the rest of the library keeps the compiler's baseline ISA and no inline function
// exists in two ISA versions.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define UNETSEG_CCL_X86 1
#define UNETSEG_TARGET_AVX2 __attribute__((target("avx2,bmi,bmi2,popcnt")))
#define UNETSEG_TARGET_AVX512 __attribute__((target("avx512f")))
#include <immintrin.h>
#else
#define UNETSEG_CCL_X86 0
#endif

namespace unetseg::ccl {
// Whether the CPU runs what UNETSEG_TARGET_AVX2 code may use (AVX2, BMI1, BMI2, POPCNT: every CPU
// with AVX2 has the others, checked all the same), and also UNETSEG_TARGET_AVX512's.
inline bool cpu_has_avx2_level() {
#if UNETSEG_CCL_X86
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
         __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

inline bool cpu_has_avx512_level() {
#if UNETSEG_CCL_X86
  return cpu_has_avx2_level() && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}
} // namespace unetseg::ccl

namespace unetseg::ccl {

struct Run {
  int32_t row;
  int32_t start;  // first column
  int32_t end;    // one past the last column
  int32_t parent; // union-find parent: a run index in the same table, never larger than this one
};

// Column layout of the per-object statistics table, one row per object.
enum StatsColumn : int {
  kArea = 0,
  kMinRow,
  kMinCol,
  kMaxRow, // exclusive, as skimage.measure.regionprops' bbox
  kMaxCol, // exclusive
  kCentroidRow,
  kCentroidCol,
  kMeanScore,
  kNumStatsColumns
};

// Per-object sums from which the statistics columns are computed, fed by runs.
struct ObjectStats {
  int64_t area = 0, sum_row = 0, sum_col2 = 0; // sum_col2: twice the column sum (exact for runs)
  int32_t min_row = INT32_MAX, min_col = INT32_MAX, max_row = -1, max_col = -1;
  double score = 0;

  void add_run(const Run& r, double score_sum) {
    const int64_t len = r.end - r.start;
    area += len;
    sum_row += len * r.row;
    sum_col2 += len * (static_cast<int64_t>(r.start) + r.end - 1);
    min_row = std::min(min_row, r.row);
    max_row = std::max(max_row, r.row);
    min_col = std::min(min_col, r.start);
    max_col = std::max(max_col, r.end - 1);
    score += score_sum;
  }

  // kNumStatsColumns values.
  void write(double* out) const {
    const auto n = static_cast<double>(area);
    out[kArea] = n;
    out[kMinRow] = min_row;
    out[kMinCol] = min_col;
    out[kMaxRow] = max_row + 1;
    out[kMaxCol] = max_col + 1;
    out[kCentroidRow] = static_cast<double>(sum_row) / n;
    out[kCentroidCol] = static_cast<double>(sum_col2) / (2.0 * n);
    out[kMeanScore] = score / n;
  }
};

// The runs of one horizontal strip of an image, with indices local to the strip.
struct Strip {
  int64_t image = 0;
  int32_t row_begin = 0, row_end = 0;
  std::vector<Run> runs;
  std::vector<int32_t> row_offsets; // runs of row (row_begin + r) are [row_offsets[r], row_offsets[r+1])
  std::vector<double> score_sums;   // per run, only when statistics are requested
  std::vector<int32_t> edges;       // append_row's scratch
};

namespace detail {

inline int32_t find_root(Run* runs, int32_t x) {
  while (runs[x].parent != x) {
    runs[x].parent = runs[runs[x].parent].parent; // path halving
    x = runs[x].parent;
  }
  return x;
}

// Joins the runs [cur_begin, cur_end) of one row with the touching runs [prev_begin, prev_end) of
// the row above. Both ranges are sorted by column and do not overlap within themselves. At strip
// seams a current run may already belong to a set; in a scan (Fresh) it is its own root, so it
// starts as its set's root without a look-up and simply adopts the smallest root among its
// neighbours (a fifth of the join's time).
template <bool Fresh>
inline void join_rows(Run* runs, int32_t prev_begin, int32_t prev_end, int32_t cur_begin, int32_t cur_end,
                      int32_t widen) {
  int32_t j = prev_begin;
  for (int32_t i = cur_begin; i < cur_end; ++i) {
    const int32_t lo = runs[i].start - widen;
    const int32_t hi = runs[i].end + widen;
    while (j < prev_end && runs[j].end <= lo) ++j;
    int32_t root = Fresh ? i : find_root(runs, i);
    for (int32_t k = j; k < prev_end && runs[k].start < hi; ++k) {
      const int32_t other = find_root(runs, k);
      if (other < root) {
        runs[root].parent = other;
        root = other;
      } else if (other > root) {
        runs[other].parent = root;
      }
    }
    runs[i].parent = root;
  }
}

// Fills [first, last) of a row of `width` with `value`. When the row has room, it stores blocks of
// 16 (one cache line) and so writes up to 15 elements past last: segments of a row are written
// left to right and tile it, so a later segment writes those elements again.
inline void fill_segment(int32_t* row, int32_t first, int32_t last, int32_t width, int32_t value) {
  if (last + 15 > width) {
    std::fill(row + first, row + last, value);
    return;
  }
#if defined(__SSE2__)
  const __m128i v = _mm_set1_epi32(value);
  for (int32_t x = first; x < last; x += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + x), v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + x + 4), v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + x + 8), v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(row + x + 12), v);
  }
#else
  for (int32_t x = first; x < last; x += 16) std::fill(row + x, row + x + 16, value);
#endif
}

} // namespace detail

inline int64_t words_per_row(int64_t width) { return (width + 63) / 64; }

// Packs a row of 0/1 bytes into bits (pixel x is bit x % 64 of word x / 64); bits past width are 0.
inline void pack_bits(const uint8_t* mask, int32_t width, uint64_t* bits) {
  int32_t x = 0;
  for (; x + 64 <= width; x += 64) {
#if defined(__SSE2__)
    uint64_t word = 0;
    const __m128i zero = _mm_setzero_si128();
    for (int k = 0; k < 4; ++k) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(mask + x + 16 * k));
      const auto off = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, zero)));
      word |= static_cast<uint64_t>(~off & 0xFFFFu) << (16 * k);
    }
    bits[x / 64] = word;
#else
    uint64_t word = 0;
    for (int k = 0; k < 64; ++k) word |= static_cast<uint64_t>(mask[x + k] != 0) << k;
    bits[x / 64] = word;
#endif
  }
  if (x < width) {
    uint64_t word = 0;
    for (int k = 0; x + k < width; ++k) word |= static_cast<uint64_t>(mask[x + k] != 0) << k;
    bits[x / 64] = word;
  }
}

// The bits of `p[k] > threshold` (`p[k] < threshold` when Below) for the n <= 64 floats at p, four
// at a time. NaN compares false either way.
template <bool Below = false>
inline uint64_t compare_bits(const float* p, int32_t n, float threshold) {
  uint64_t word = 0;
  int32_t k = 0;
#if defined(__SSE2__)
  const __m128 t = _mm_set1_ps(threshold);
  for (; k + 4 <= n; k += 4) {
    const __m128 v = _mm_loadu_ps(p + k);
    word |= static_cast<uint64_t>(_mm_movemask_ps(Below ? _mm_cmplt_ps(v, t) : _mm_cmpgt_ps(v, t))) << k;
  }
#endif
  for (; k < n; ++k) word |= static_cast<uint64_t>(Below ? p[k] < threshold : p[k] > threshold) << k;
  return word;
}

// The bit row of `score > threshold` (or `score < threshold` when Below) for a contiguous float32
// row, without a byte stage.
template <bool Below = false>
void threshold_bits(const float* row, int32_t width, float threshold, uint64_t* bits) {
  int32_t x = 0;
  for (; x + 64 <= width; x += 64) bits[x / 64] = compare_bits<Below>(row + x, 64, threshold);
  if (x < width) bits[x / 64] = compare_bits<Below>(row + x, width - x, threshold);
}

// The bit rows of `nucleus > threshold` and `nucleus > threshold && boundary < boundary_threshold`
// for contiguous float32 rows of a 2-channel map, in one pass over both. The boundary matters only
// under the foreground: words with no foreground skip its read.
inline void threshold_seed_bits(const float* nucleus, const float* boundary, int32_t width, float threshold,
                                float boundary_threshold, uint64_t* foreground, uint64_t* seeds) {
  auto word = [&](int32_t x, int32_t n) {
    const uint64_t fg = compare_bits(nucleus + x, n, threshold);
    foreground[x / 64] = fg;
    seeds[x / 64] = fg ? fg & compare_bits<true>(boundary + x, n, boundary_threshold) : 0;
  };
  int32_t x = 0;
  for (; x + 64 <= width; x += 64) word(x, 64);
  if (x < width) word(x, width - x);
}

#if UNETSEG_CCL_X86
namespace detail {
// compare_bits, eight floats per compare. (AVX-512's sixteen gain 4% more on a 64 MiB map: the
// step is bound by memory once the compares are this wide.)
template <bool Below>
UNETSEG_TARGET_AVX2 inline uint64_t compare_bits_avx2(const float* p, int32_t n, float threshold) {
  constexpr int kPredicate = Below ? _CMP_LT_OQ : _CMP_GT_OQ; // ordered: NaN compares false
  const __m256 t = _mm256_set1_ps(threshold);
  auto eight = [&](int32_t k) UNETSEG_TARGET_AVX2 {
    return static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + k), t, kPredicate))) << k;
  };
  uint64_t word = 0;
  if (n == 64) { // the whole words of a row: a loop of constant length, unrolled
    for (int32_t k = 0; k < 64; k += 8) word |= eight(k);
    return word;
  }
  int32_t k = 0;
  for (; k + 8 <= n; k += 8) word |= eight(k);
  for (; k < n; ++k) word |= static_cast<uint64_t>(Below ? p[k] < threshold : p[k] > threshold) << k;
  return word;
}
} // namespace detail

// threshold_bits, eight floats per compare.
template <bool Below = false>
UNETSEG_TARGET_AVX2 void threshold_bits_avx2(const float* row, int32_t width, float threshold, uint64_t* bits) {
  for (int32_t x = 0; x < width; x += 64) {
    bits[x / 64] = detail::compare_bits_avx2<Below>(row + x, std::min(64, width - x), threshold);
  }
}

// threshold_seed_bits, eight floats per compare.
UNETSEG_TARGET_AVX2 inline void threshold_seed_bits_avx2(const float* nucleus, const float* boundary, int32_t width,
                                                         float threshold, float boundary_threshold,
                                                         uint64_t* foreground, uint64_t* seeds) {
  for (int32_t x = 0; x < width; x += 64) {
    const int32_t n = std::min(64, width - x);
    const uint64_t fg = detail::compare_bits_avx2<false>(nucleus + x, n, threshold);
    foreground[x / 64] = fg;
    seeds[x / 64] = fg ? fg & detail::compare_bits_avx2<true>(boundary + x, n, boundary_threshold) : 0;
  }
}

// Calls `fn()` compiled for the AVX2 level (AVX2, BMI1/2, POPCNT): flatten inlines every call in
// it, to any depth, so the scan's bit work (count-trailing-zeros, population counts, clearing the
// lowest bit) gets one instruction each instead of the baseline's sequences and library calls:
// the scan of a 4096² nuclei map takes 2.1 ms against 2.8.
template <class Fn>
UNETSEG_TARGET_AVX2 __attribute__((flatten)) void with_avx2(Fn&& fn) {
  fn();
}
#endif

namespace detail {
// Writes the positions of the set bits of `edges` (pixel `base` + bit) at out[0..popcount) and
// returns popcount. Four positions are written whatever the count (past the count: harmless
// values in the caller's slack), so the usual word, with 0 to 4 edges, costs no branch that
// depends on its bits: a loop per edge mispredicted its exit on almost every word.
inline int32_t edge_positions(uint64_t edges, int32_t base, int32_t* out) {
  const auto count = static_cast<int32_t>(__builtin_popcountll(edges));
  constexpr uint64_t kTop = uint64_t{1} << 63; // keeps ctz defined once edges is empty
  for (int k = 0; k < 4; ++k, edges &= edges - 1) out[k] = base + __builtin_ctzll(edges | kTop);
  for (int32_t k = 4; edges; ++k, edges &= edges - 1) out[k] = base + __builtin_ctzll(edges);
  return count;
}
} // namespace detail

// Scratch ints append_row needs for rows of `width`: every edge of a row (at most width + 1)
// and edge_positions' slack.
inline size_t edge_scratch_size(int32_t width) { return static_cast<size_t>(width) + 8; }

// Step 1 for one row: appends the runs of the row's bit row `bits` (words_per_row(width) words,
// bits past width 0) to `strip` and joins them with the runs of the strip's previous row.
// `score_sum(row, start, end)` returns the sum of the scores of a run (called only when
// with_scores).
template <class ScoreSum>
void append_row(Strip& strip, int32_t row, const uint64_t* bits, int32_t width, int32_t widen,
                bool with_scores, ScoreSum&& score_sum) {
  const int64_t words = words_per_row(width);
  const int32_t prev_end = strip.row_offsets.back();
  const int32_t prev_begin = strip.row_offsets.size() >= 2 ? strip.row_offsets[strip.row_offsets.size() - 2] : prev_end;
  const auto cur_begin = static_cast<int32_t>(strip.runs.size());
  // Every set bit of word ^ (word << 1) is a run boundary: starts and ends alternate, in order.
  strip.edges.resize(edge_scratch_size(width));
  int32_t* edges = strip.edges.data();
  int32_t n = 0;
  uint64_t carry = 0;
  for (int64_t k = 0; k < words; ++k) {
    const uint64_t word = bits[k];
    n += detail::edge_positions(word ^ ((word << 1) | carry), static_cast<int32_t>(k * 64), edges + n);
    carry = word >> 63;
  }
  if (n & 1) edges[n++] = width; // the row ends inside a run
  strip.runs.resize(static_cast<size_t>(cur_begin + n / 2));
  Run* runs = strip.runs.data() + cur_begin;
  for (int32_t i = 0; i < n / 2; ++i) runs[i] = Run{row, edges[2 * i], edges[2 * i + 1], cur_begin + i};
  if (with_scores) {
    for (int32_t i = 0; i < n / 2; ++i) strip.score_sums.push_back(score_sum(row, runs[i].start, runs[i].end));
  }
  const auto cur_end = static_cast<int32_t>(strip.runs.size());
  detail::join_rows<true>(strip.runs.data(), prev_begin, prev_end, cur_begin, cur_end, widen);
  strip.row_offsets.push_back(cur_end);
}

// Empties a strip's run table before its scan.
inline void reset(Strip& strip) {
  strip.runs.clear();
  strip.score_sums.clear();
  strip.row_offsets.assign(1, 0);
}

// Step 1. `threshold_row(row, bits)` writes the row's words_per_row(width) words of foreground bits
// (bits past width 0); `score_sum` as for append_row.
template <class ThresholdRow, class ScoreSum>
void scan_strip(Strip& strip, int32_t width, bool eight_connected, bool with_scores,
                ThresholdRow&& threshold_row, ScoreSum&& score_sum, std::vector<uint64_t>& bits) {
  bits.resize(static_cast<size_t>(words_per_row(width)));
  reset(strip);
  for (int32_t row = strip.row_begin; row < strip.row_end; ++row) {
    threshold_row(row, bits.data());
    append_row(strip, row, bits.data(), width, eight_connected ? 1 : 0, with_scores, score_sum);
  }
}

// The labelled result of one image at the run level.
struct ImageRuns {
  std::vector<Run> runs;            // all strips, in raster order, parents as global indices
  std::vector<int32_t> row_offsets; // height + 1 entries
  std::vector<double> score_sums;
  std::vector<int32_t> run_labels;  // final label of each run (0: removed by min_area)
  int64_t count = 0;
  // Numbering, strip by strip: where each strip's runs start (and the total), each strip's roots
  // before the seams were joined (global indices, in order), and each strip's table from a run's
  // label within its strip (its root's place among them, from 1) to its label in the image.
  std::vector<int32_t> strip_runs;
  std::vector<std::vector<int32_t>> strip_roots;
  std::vector<std::vector<int32_t>> strip_labels;
};

// Step 2, first half, for one image given its strips in top-to-bottom order: sizes the image's
// tables for the strips' runs and sets strip_runs. copy_strip then fills them, strips in
// parallel.
inline void size_image(ImageRuns& image, const Strip* const* strips, int64_t num_strips, bool with_scores) {
  image.strip_runs.assign(1, 0);
  for (int64_t s = 0; s < num_strips; ++s) {
    image.strip_runs.push_back(image.strip_runs.back() + static_cast<int32_t>(strips[s]->runs.size()));
  }
  const auto total = static_cast<size_t>(image.strip_runs.back());
  image.runs.resize(total);
  image.row_offsets.resize(static_cast<size_t>(strips[num_strips - 1]->row_end) + 1);
  image.row_offsets.back() = image.strip_runs.back();
  image.score_sums.resize(with_scores ? total : 0);
  image.run_labels.resize(total);
  image.strip_roots.resize(static_cast<size_t>(num_strips));
  image.strip_labels.resize(static_cast<size_t>(num_strips));
}

// Copies strip `s` of the image (its runs, and score sums when with_scores) into the image's
// tables, its parents made global, and numbers its runs within the strip: a root gets the strip's
// next number, any other run its parent's (already numbered: parent < run, in the same strip).
inline void copy_strip(ImageRuns& image, const Strip& strip, int64_t s, bool with_scores) {
  const int32_t offset = image.strip_runs[s];
  Run* dst = image.runs.data() + offset;
  int32_t* labels = image.run_labels.data();
  std::vector<int32_t>& roots = image.strip_roots[s];
  roots.clear();
  for (size_t i = 0; i < strip.runs.size(); ++i) {
    const auto run = static_cast<int32_t>(i) + offset;
    dst[i] = strip.runs[i];
    dst[i].parent += offset;
    if (dst[i].parent == run) {
      roots.push_back(run);
      labels[run] = static_cast<int32_t>(roots.size());
    } else {
      labels[run] = labels[dst[i].parent];
    }
  }
  if (with_scores) std::copy(strip.score_sums.begin(), strip.score_sums.end(), image.score_sums.begin() + offset);
  for (int32_t r = 0; r < strip.row_end - strip.row_begin; ++r) {
    image.row_offsets[strip.row_begin + r] = strip.row_offsets[r] + offset;
  }
}

// Step 2, second half, and the tables of step 3 for one image whose strips copy_strip has copied:
// joins each strip's first row with the last row of the strip above, then gives each strip's
// roots their labels in the image: those still roots the image's next label, in raster order, the
// others (joined to a strip above) the label of the root they now have. Sets the image's count.
inline void join_strips(ImageRuns& image, const Strip* const* strips, int64_t num_strips, bool eight_connected) {
  Run* runs = image.runs.data();
  for (int64_t s = 1; s < num_strips; ++s) {
    const int32_t row = strips[s]->row_begin;
    detail::join_rows<false>(runs, image.row_offsets[row - 1], image.row_offsets[row], image.row_offsets[row],
                             image.row_offsets[row + 1], eight_connected ? 1 : 0);
  }
  int32_t count = 0;
  for (int64_t s = 0; s < num_strips; ++s) {
    const std::vector<int32_t>& roots = image.strip_roots[s];
    std::vector<int32_t>& table = image.strip_labels[s];
    table.resize(roots.size() + 1);
    table[0] = 0;
    for (size_t k = 0; k < roots.size(); ++k) {
      const int32_t root = detail::find_root(runs, roots[k]);
      if (root == roots[k]) {
        table[k + 1] = ++count;
      } else { // in a strip above, whose table is done
        const auto above = std::upper_bound(image.strip_runs.begin(), image.strip_runs.end(), root) - 1;
        table[k + 1] = image.strip_labels[above - image.strip_runs.begin()][image.run_labels[root]];
      }
    }
  }
  image.count = count;
}

// Step 3 for the runs of strip `s` after join_strips: each run's label within its strip becomes
// its label in the image.
inline void label_strip(ImageRuns& image, int64_t s) {
  const int32_t* table = image.strip_labels[s].data();
  int32_t* labels = image.run_labels.data();
  for (int32_t i = image.strip_runs[s]; i < image.strip_runs[s + 1]; ++i) labels[i] = table[labels[i]];
}

// The end of step 3 for one labelled image: drops objects under min_area (renumbering the rest in
// order) and, when `stats` is non-null, writes count * kNumStatsColumns values (row-major) into it;
// the image must then have its runs' score sums.
inline void keep_and_measure(ImageRuns& image, int64_t min_area, std::vector<double>* stats) {
  const size_t total = image.runs.size();
  const Run* runs = image.runs.data();
  int32_t* labels = image.run_labels.data();
  auto count = static_cast<int32_t>(image.count);
  if (min_area > 0 && count > 0) {
    std::vector<int64_t> area(static_cast<size_t>(count) + 1, 0);
    for (size_t i = 0; i < total; ++i) area[labels[i]] += runs[i].end - runs[i].start;
    std::vector<int32_t> renumber(static_cast<size_t>(count) + 1, 0);
    int32_t kept = 0;
    for (int32_t k = 1; k <= count; ++k) renumber[k] = area[k] >= min_area ? ++kept : 0;
    for (size_t i = 0; i < total; ++i) labels[i] = renumber[labels[i]];
    count = kept;
  }
  image.count = count;

  if (stats) {
    std::vector<ObjectStats> acc(static_cast<size_t>(count) + 1);
    for (size_t i = 0; i < total; ++i) {
      if (labels[i]) acc[labels[i]].add_run(runs[i], image.score_sums[i]);
    }
    stats->resize(static_cast<size_t>(count) * kNumStatsColumns);
    double* out = stats->data();
    for (int32_t k = 1; k <= count; ++k, out += kNumStatsColumns) acc[k].write(out);
  }
}

// Step 4: writes rows [row_begin, row_end) of one image's labels; `out` points at row_begin and
// rows are `row_stride` elements apart. A run labelled -1 is left as it is (its pixels were written
// by someone else): no block store crosses its start.
inline void write_rows(const ImageRuns& image, int32_t row_begin, int32_t row_end, int32_t width,
                       int32_t* out, int64_t row_stride) {
  for (int32_t row = row_begin; row < row_end; ++row, out += row_stride) {
    const int32_t first = image.row_offsets[row], last = image.row_offsets[row + 1];
    int32_t x = 0, skip = first - 1, bound = width;
    for (int32_t i = first; i < last; ++i) {
      const Run& r = image.runs[i];
      if (skip < i) { // the next run to leave alone bounds every store before it
        for (skip = i; skip < last && image.run_labels[skip] >= 0; ++skip) {}
        bound = skip < last ? image.runs[skip].start : width;
      }
      detail::fill_segment(out, x, r.start, bound, 0);
      if (image.run_labels[i] >= 0) detail::fill_segment(out, r.start, r.end, bound, image.run_labels[i]);
      x = r.end;
    }
    detail::fill_segment(out, x, width, width, 0);
  }
}

// Scratch ints the streamed row writers (write_rows_streamed, _avx2, _avx512) need for rows of
// `width` (zeroed): a row of 64-byte blocks and the alignment slack.
inline size_t write_scratch_size(int32_t width) { return static_cast<size_t>(width) + 48; }

namespace detail {
// The 64-byte aligned row buffer inside write_scratch_size(width) ints of scratch.
inline int32_t* row_buffer(int32_t* scratch) {
  return reinterpret_cast<int32_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
}

// Where a row of labels starting at `out` lies in aligned blocks of `Bytes` bytes: its first block,
// the ints of that block before out[0] (`misalign`: the row buffer is laid out the same way, so
// buffer[x] shares out[x]'s offset in its block), and how many blocks its `width` labels touch.
template <uintptr_t Bytes>
struct BlockedRow {
  int32_t* first;
  int32_t misalign;
  int32_t blocks;
};

template <uintptr_t Bytes>
inline BlockedRow<Bytes> blocked_row(int32_t* out, int32_t width) {
  constexpr auto lanes = static_cast<int32_t>(Bytes / sizeof(int32_t));
  const auto address = reinterpret_cast<uintptr_t>(out);
  const auto misalign = static_cast<int32_t>((address & (Bytes - 1)) / sizeof(int32_t));
  return {reinterpret_cast<int32_t*>(address & ~(Bytes - 1)), misalign, (misalign + width + lanes - 1) / lanes};
}

// Whether a row has a run labelled -1, whose pixels the row writers must leave alone.
inline bool has_kept_run(const ImageRuns& image, int32_t row) {
  const int32_t* labels = image.run_labels.data();
  return std::any_of(labels + image.row_offsets[row], labels + image.row_offsets[row + 1],
                     [](int32_t label) { return label < 0; });
}
} // namespace detail

// write_rows for label images larger than the caches, in portable code: each row whose runs are
// all labelled (none -1) is assembled in `scratch` (L1-resident, all background on entry, laid out
// so that scratch and row share their offset in a 16-byte block), then copied out with streaming
// stores where SSE2 has them: the row is written without first reading its lines into the cache
// (the write-allocate that makes a plain store cost twice its bytes). Each element is set back to
// background as it leaves. Rows with a run labelled -1 are left to write_rows.
inline void write_rows_streamed(const ImageRuns& image, int32_t row_begin, int32_t row_end, int32_t width,
                                int32_t* out, int64_t row_stride, int32_t* scratch) {
  int32_t* lines = detail::row_buffer(scratch);
  for (int32_t row = row_begin; row < row_end; ++row, out += row_stride) {
    if (detail::has_kept_run(image, row)) {
      write_rows(image, row, row + 1, width, out, row_stride);
      continue;
    }
    int32_t* buffer = lines + detail::blocked_row<16>(out, width).misalign;
    for (int32_t i = image.row_offsets[row]; i < image.row_offsets[row + 1]; ++i) {
      std::fill(buffer + image.runs[i].start, buffer + image.runs[i].end, image.run_labels[i]);
    }
    int32_t x = 0;
    auto copy_one = [&](int32_t at) {
      out[at] = buffer[at];
      buffer[at] = 0;
    };
#if defined(__SSE2__)
    for (; x < width && (reinterpret_cast<uintptr_t>(out + x) & 15) != 0; ++x) copy_one(x);
    const __m128i zero = _mm_setzero_si128();
    for (; x + 4 <= width; x += 4) {
      auto* from = reinterpret_cast<__m128i*>(buffer + x);
      _mm_stream_si128(reinterpret_cast<__m128i*>(out + x), _mm_load_si128(from));
      _mm_store_si128(from, zero);
    }
#endif
    for (; x < width; ++x) copy_one(x);
  }
#if defined(__SSE2__)
  _mm_sfence(); // streamed stores are weakly ordered: visible before the caller goes on
#endif
}

#if UNETSEG_CCL_X86
// write_rows_streamed with AVX2: as write_rows_avx512 below, in 32-byte blocks of eight labels,
// with AVX2's vector-masked stores.
UNETSEG_TARGET_AVX2 inline void write_rows_avx2(const ImageRuns& image, int32_t row_begin, int32_t row_end,
                                                int32_t width, int32_t* out, int64_t row_stride, int32_t* scratch) {
  const Run* runs = image.runs.data();
  const int32_t* labels = image.run_labels.data();
  int32_t* lines = detail::row_buffer(scratch);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  auto lanes_below = [&](int32_t n) UNETSEG_TARGET_AVX2 { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane); };
  for (int32_t row = row_begin; row < row_end; ++row, out += row_stride) {
    if (detail::has_kept_run(image, row)) {
      write_rows(image, row, row + 1, width, out, row_stride);
      continue;
    }
    const auto [first_block, misalign, blocks] = detail::blocked_row<32>(out, width);
    int32_t* buffer = lines + misalign;
    for (int32_t i = image.row_offsets[row]; i < image.row_offsets[row + 1]; ++i) {
      const __m256i v = _mm256_set1_epi32(labels[i]);
      int32_t x = runs[i].start;
      for (; x + 8 <= runs[i].end; x += 8) _mm256_storeu_si256(reinterpret_cast<__m256i*>(buffer + x), v);
      if (x < runs[i].end) _mm256_maskstore_epi32(buffer + x, lanes_below(runs[i].end - x), v);
    }
    int32_t* block = first_block;
    for (int32_t k = 0; k < blocks; ++k, block += 8) {
      auto* line = reinterpret_cast<__m256i*>(lines + 8 * k);
      const __m256i v = _mm256_load_si256(line);
      _mm256_store_si256(line, _mm256_setzero_si256()); // background for the next row
      const int32_t first = k == 0 ? misalign : 0, end = std::min(8, misalign + width - 8 * k); // lanes of this row
      if (first == 0 && end == 8) {
        _mm256_stream_si256(reinterpret_cast<__m256i*>(block), v);
      } else {
        _mm256_maskstore_epi32(block, _mm256_andnot_si256(lanes_below(first), lanes_below(end)), v);
      }
    }
  }
  _mm_sfence(); // streamed stores are weakly ordered: visible before the caller goes on
}

// write_rows_streamed with AVX-512: each row is assembled in `scratch` (laid out like the row's
// 64-byte blocks in memory, all background on entry), each run's label with whole-block stores and
// one masked store for its end, then copied out one block at a time with streaming stores, each
// block set back to background as it leaves. Runs of nuclei maps are about one block long, so this
// costs a few stores per run and two per block, with no branch per block. The row's partial end
// blocks use masked stores, which leave the neighbouring row's lanes untouched. A row with a run
// labelled -1 is left to write_rows.
UNETSEG_TARGET_AVX512 inline void write_rows_avx512(const ImageRuns& image, int32_t row_begin, int32_t row_end,
                                                    int32_t width, int32_t* out, int64_t row_stride,
                                                    int32_t* scratch) {
  const Run* runs = image.runs.data();
  const int32_t* labels = image.run_labels.data();
  int32_t* lines = detail::row_buffer(scratch);
  for (int32_t row = row_begin; row < row_end; ++row, out += row_stride) {
    if (detail::has_kept_run(image, row)) {
      write_rows(image, row, row + 1, width, out, row_stride);
      continue;
    }
    const auto [first_block, misalign, blocks] = detail::blocked_row<64>(out, width);
    int32_t* buffer = lines + misalign;
    for (int32_t i = image.row_offsets[row]; i < image.row_offsets[row + 1]; ++i) {
      const __m512i v = _mm512_set1_epi32(labels[i]);
      int32_t x = runs[i].start;
      for (; x + 16 <= runs[i].end; x += 16) _mm512_storeu_si512(buffer + x, v);
      if (x < runs[i].end) {
        _mm512_mask_storeu_epi32(buffer + x, static_cast<__mmask16>((1u << (runs[i].end - x)) - 1), v);
      }
    }
    int32_t* block = first_block;
    for (int32_t k = 0; k < blocks; ++k, block += 16) {
      const __m512i v = _mm512_load_si512(lines + 16 * k);
      _mm512_store_si512(lines + 16 * k, _mm512_setzero_si512()); // background for the next row
      uint32_t keep = 0xFFFFu; // lanes of this row
      if (k == 0) keep &= 0xFFFFu << misalign;
      if (k == blocks - 1) keep &= 0xFFFFu >> (16 * blocks - misalign - width);
      if (keep != 0xFFFFu) {
        _mm512_mask_store_epi32(block, static_cast<__mmask16>(keep), v);
      } else {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(block), v);
      }
    }
  }
  _mm_sfence(); // streamed stores are weakly ordered: visible before the caller goes on
}
#endif

} // namespace unetseg::ccl
