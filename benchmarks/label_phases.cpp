// Where the label op's time goes: the steps of the torch-free core (csrc/ops/cpu/ccl.h) timed one by
// one on a float32 map, with std::thread standing in for torch's pool (two strips a thread, as the
// op plans them). Built and run by bench_label_phases.py:
//
//     label_phases MAP.f32 HEIGHT WIDTH THREADS REPEATS
//
// prints one line per step: its name and its median time in ms.
#include "../csrc/ops/cpu/ccl.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace unetseg::ccl;

namespace {

void threshold_row(const float* row, int32_t width, uint64_t* bits) {
#if UNETSEG_CCL_X86
  if (cpu_has_avx2_level()) return threshold_bits_avx2(row, width, 0.5f, bits);
#endif
  threshold_bits(row, width, 0.5f, bits);
}

// Runs fn(strip) for every strip, `threads` threads taking strips in turn.
void in_parallel(int threads, int strips, const std::function<void(int)>& fn) {
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int s = t; s < strips; s += threads) fn(s);
    });
  }
  for (auto& thread : pool) thread.join();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s MAP.f32 HEIGHT WIDTH THREADS REPEATS\n", argv[0]);
    return 2;
  }
  const int32_t h = std::atoi(argv[2]), w = std::atoi(argv[3]);
  const int threads = std::atoi(argv[4]), repeats = std::atoi(argv[5]), num_strips = 2 * threads;
  std::vector<float> map(static_cast<size_t>(h) * w);
  std::ifstream(argv[1], std::ios::binary).read(reinterpret_cast<char*>(map.data()), map.size() * sizeof(float));
  auto* out = static_cast<int32_t*>(std::aligned_alloc(64, map.size() * sizeof(int32_t)));
  std::fill(out, out + map.size(), 0);

  std::vector<Strip> strips(num_strips);
  std::vector<const Strip*> strip_ptrs;
  for (int s = 0; s < num_strips; ++s) {
    strips[s].row_begin = static_cast<int32_t>(int64_t{h} * s / num_strips);
    strips[s].row_end = static_cast<int32_t>(int64_t{h} * (s + 1) / num_strips);
    strip_ptrs.push_back(&strips[s]);
  }
  ImageRuns image;
  std::vector<std::vector<int32_t>> scratch(num_strips, std::vector<int32_t>(write_scratch_size(w)));
  std::vector<std::vector<uint64_t>> bits(num_strips, std::vector<uint64_t>(words_per_row(w)));

  auto scan = [&](int s) {
    auto body = [&] {
      scan_strip(
          strips[s], w, true, false, [&](int32_t row, uint64_t* b) { threshold_row(&map[size_t(row) * w], w, b); },
          [](int32_t, int32_t, int32_t) { return 0.0; }, bits[s]);
    };
#if UNETSEG_CCL_X86
    if (cpu_has_avx2_level()) return with_avx2(body);
#endif
    body();
  };
  auto write = [&](int s) {
    int32_t* rows = out + size_t(strips[s].row_begin) * w;
#if UNETSEG_CCL_X86
    if (cpu_has_avx512_level()) {
      return write_rows_avx512(image, strips[s].row_begin, strips[s].row_end, w, rows, w, scratch[s].data());
    }
    if (cpu_has_avx2_level()) return write_rows_avx2(image, strips[s].row_begin, strips[s].row_end, w, rows, w, scratch[s].data());
#endif
    write_rows_streamed(image, strips[s].row_begin, strips[s].row_end, w, rows, w, scratch[s].data());
  };

  std::map<std::string, std::vector<double>> times;
  auto timed = [&](const std::string& name, const std::function<void()>& fn) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times[name].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  };
  for (int rep = 0; rep < repeats + 1; ++rep) { // the first round warms up
    timed("1 threshold only (reads the map)", [&] {
      in_parallel(threads, num_strips, [&](int s) {
        for (int32_t row = strips[s].row_begin; row < strips[s].row_end; ++row) {
          threshold_row(&map[size_t(row) * w], w, bits[s].data());
        }
      });
    });
    timed("2 scan (threshold, runs, joins)", [&] { in_parallel(threads, num_strips, scan); });
    timed("3 copy and number runs within strips (strips in parallel)", [&] {
      size_image(image, strip_ptrs.data(), num_strips, false);
      in_parallel(threads, num_strips, [&](int s) { copy_strip(image, strips[s], s, false); });
    });
    timed("4 join seams, strip tables (one thread)", [&] { join_strips(image, strip_ptrs.data(), num_strips, true); });
    timed("5 relabel (strips in parallel)", [&] { in_parallel(threads, num_strips, [&](int s) { label_strip(image, s); }); });
    timed("6 write labels", [&] { in_parallel(threads, num_strips, write); });
    timed("memory floor (streamed copy, f32 in, i32 out)", [&] {
      in_parallel(threads, num_strips, [&](int s) {
        const size_t begin = size_t(strips[s].row_begin) * w, end = size_t(strips[s].row_end) * w;
        for (size_t i = begin; i < end; i += 4) {
#if defined(__SSE2__)
          _mm_stream_si128(reinterpret_cast<__m128i*>(out + i), _mm_castps_si128(_mm_loadu_ps(&map[i])));
#else
          std::copy(reinterpret_cast<const int32_t*>(&map[i]), reinterpret_cast<const int32_t*>(&map[i]) + 4, out + i);
#endif
        }
#if defined(__SSE2__)
        _mm_sfence();
#endif
      });
    });
  }
  for (auto& [name, t] : times) {
    t.erase(t.begin());
    std::printf("%s\t%.3f\n", name.c_str(), median(t));
  }
  std::printf("runs\t%zu\nobjects\t%lld\n", image.runs.size(), static_cast<long long>(image.count));
  std::free(out);
  return 0;
}
