// C++ unit tests of unetseg::Runner, with no Python in the process.
//   test_runner DEFAULT_MODEL.pt SMALL_MODEL.pt
// DEFAULT_MODEL is the bundled trained model (it must find drawn nuclei); SMALL_MODEL a small
// exported U-Net (for errors, batching, threads and consistency with the op).
#include <unetseg/ops.h>
#include <unetseg/runner.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond "\n"; \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

// Runs f and checks that it throws a c10::Error whose message contains `needle`.
void check_throws(const std::function<void()>& f, const std::string& needle, int line) {
  try {
    f();
  } catch (const c10::Error& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) {
      std::cerr << "line " << line << ": error without '" << needle << "': " << e.what_without_backtrace() << "\n";
      ++failures;
    }
    return;
  }
  std::cerr << "line " << line << ": expected an error containing '" << needle << "'\n";
  ++failures;
}
#define CHECK_THROWS(expr, needle) check_throws([&] { expr; }, needle, __LINE__)

// A dark noisy uint8 image with `n` bright, well separated disks of radius 9 on a grid.
at::Tensor disks(int64_t n, int64_t size) {
  at::manual_seed(0);
  at::Tensor image = at::randint(10, 30, {size, size}, at::kByte);
  auto a = image.accessor<uint8_t, 2>();
  const int64_t per_row = (size - 10) / 40;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t cy = 25 + 40 * (k / per_row), cx = 25 + 40 * (k % per_row);
    for (int64_t y = cy - 9; y <= cy + 9; ++y)
      for (int64_t x = cx - 9; x <= cx + 9; ++x)
        if ((y - cy) * (y - cy) + (x - cx) * (x - cx) <= 81) a[y][x] = uint8_t(170 + (x + y) % 40);
  }
  return image;
}

// Batch size and thread count change the convolutions' float rounding (~1e-7 in probabilities),
// so results are compared at a threshold no probability lies within 1e-6 of: there the labels must
// be identical and the object tables equal up to rounding.
bool same(const unetseg::Segmentation& a, const unetseg::Segmentation& b) {
  return a.count == b.count && a.labels.equal(b.labels) && at::allclose(a.objects, b.objects, 1e-6, 1e-6);
}

double threshold_away_from(const std::vector<at::Tensor>& probs) {
  double best = 0.5, margin = 0;
  for (double t = 0.30; t <= 0.70; t += 0.005) {
    double m = 1;
    for (const auto& p : probs) m = std::min(m, (p[0] - t).abs().min().item<double>());
    if (m > margin) {
      margin = m;
      best = t;
    }
  }
  CHECK(margin > 1e-6);
  return best;
}

void test_trained_model_finds_nuclei(const std::string& model) {
  const unetseg::Runner runner(model, {"cpu"});
  CHECK(runner.info().architecture == "unet");
  CHECK(runner.info().outputs.at(0) == "nucleus");
  CHECK(runner.info().json.find("dsb2018_stage1_train") != std::string::npos);
  const auto result = runner.segment(disks(16, 200));
  CHECK(result.count == 16);
  CHECK(result.labels.scalar_type() == at::kInt && result.labels.sizes() == at::IntArrayRef({200, 200}));
  const auto t = result.objects.accessor<double, 2>();
  for (int64_t k = 0; k < result.count; ++k) {  // about the drawn disks: area ~ pi * 81, centred on the grid
    CHECK(t[k][unetseg::stats::kArea] > 150 && t[k][unetseg::stats::kArea] < 400);
    CHECK(std::fmod(t[k][unetseg::stats::kCentroidRow] - 25.0 + 2.0, 40.0) < 4.0);
  }
}

void test_segment_equals_label_stats_of_predict(const unetseg::Runner& runner) {
  const at::Tensor image = disks(9, 130).narrow(1, 0, 117);  // not a multiple of anything, strided
  const auto seg = runner.segment(image, {0.45, 3, 4});
  const auto probs = runner.predict({image})[0];
  CHECK(probs.sizes() == at::IntArrayRef({1, 130, 117}));
  auto [labels, counts, stats] = unetseg::label_stats(probs[0], 0.45, 4, 3);
  CHECK(seg.labels.equal(labels));
  CHECK(seg.count == counts[0].item<int64_t>());
  CHECK(seg.objects.equal(stats));
}

void test_dtypes_and_channels(const unetseg::Runner& runner) {
  const at::Tensor u8 = disks(4, 96);
  const auto want = runner.predict({u8})[0];
  const std::vector<at::Tensor> same_images = {
      u8.to(at::kUInt16) * 257,                        // 16 bit, same picture
      u8.to(at::kFloat) / 255.0,                       // float
      u8.unsqueeze(2),                                 // (H, W, 1)
      u8.unsqueeze(2).expand({96, 96, 3}),             // RGB with equal channels (averaged back)
      at::stack({u8 * 0, u8 * 0, u8}, 2),              // gray saved as blue RGB: the blue channel
  };
  for (const auto& p : runner.predict(same_images)) {
    CHECK((p - want).abs().max().item<float>() < 1e-5);
  }
  // the nuclear channel of a 5-channel stack, by SegmentOptions::channel
  unetseg::SegmentOptions pick;
  pick.channel = 2;
  const at::Tensor stack = at::stack({u8 / 2, u8 * 0, u8, u8 / 3, u8 / 4}, 2);
  CHECK((runner.predict({stack}, pick)[0] - want).abs().max().item<float>() < 1e-5);
  bool refused = false;
  try {
    runner.predict({at::stack({u8, at::full_like(u8, 255)}, 2)});  // two channels: which one?
  } catch (const c10::Error& e) {
    refused = std::string(e.what_without_backtrace()).find("pick the nuclear channel with channel=N") != std::string::npos;
  }
  CHECK(refused);
  // which channel of a colour image is all of it (runner.h)
  CHECK(unetseg::signal_channel(at::stack({u8 * 0, u8, u8 * 0}, 2)) == 1);
  CHECK(!unetseg::signal_channel(at::stack({u8, u8.flip(1), u8 * 0}, 2)).has_value());
  CHECK(!unetseg::signal_channel(u8).has_value());
}

void test_batching_and_threads(const std::string& model) {
  const std::vector<at::Tensor> images = {disks(4, 96), disks(6, 130), disks(2, 96).t().contiguous(),
                                          disks(3, 90)};
  const unetseg::Runner one_by_one(model, {"cpu", "float32", 1});
  const unetseg::Runner batched(model, {"cpu", "float32", 3});
  const unetseg::SegmentOptions options{threshold_away_from(one_by_one.predict(images))};
  std::vector<unetseg::Segmentation> want;
  for (const auto& im : images) want.push_back(one_by_one.segment(im, options));
  std::vector<std::vector<unetseg::Segmentation>> got(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&, t] { got[t] = batched.segment(images, options); });
  }
  for (auto& t : threads) t.join();
  for (const auto& results : got) {
    CHECK(results.size() == images.size());
    for (size_t i = 0; i < images.size(); ++i) CHECK(same(results[i], want[i]));
  }
}

void test_errors(const std::string& model) {
  CHECK_THROWS(unetseg::Runner("/nonexistent/model.pt"), "does not exist");
  CHECK_THROWS(unetseg::Runner(model, {"tpu"}), "unknown device");
  CHECK_THROWS(unetseg::Runner(model, {"cpu", "float64"}), "unknown precision");
  CHECK_THROWS(unetseg::Runner(model, {"cpu", "float32", 0}), "batch_size");
  const unetseg::Runner runner(model, {"cpu"});
  const at::Tensor good = disks(1, 64);
  CHECK_THROWS(runner.segment({good, good.to(at::kInt)}), "image 1 has dtype Int");
  CHECK_THROWS(runner.segment(at::zeros({8, 8, 5}, at::kByte)), "pick the nuclear channel with channel=N in 0..4 (--channel N");
  CHECK_THROWS(runner.segment(at::zeros({2, 3, 8, 8}, at::kByte)), "expected (H, W) or (H, W, C)");
  CHECK_THROWS(runner.segment(at::zeros({0, 8}, at::kByte)), "empty");
  CHECK_THROWS(runner.segment(at::full({8, 8}, NAN, at::kFloat)), "NaN");
  CHECK_THROWS(runner.segment(good, {2.0}), "not a probability");
  CHECK_THROWS(runner.segment(good, {0.5, 0, 6}), "connectivity");
  CHECK(runner.segment(std::vector<at::Tensor>{}).empty());
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: test_runner DEFAULT_MODEL.pt SMALL_MODEL.pt\n";
    return 2;
  }
  const std::string trained = argv[1], small = argv[2];
  const unetseg::Runner runner(small, {"cpu"});
  test_trained_model_finds_nuclei(trained);
  test_segment_equals_label_stats_of_predict(runner);
  test_dtypes_and_channels(runner);
  test_batching_and_threads(small);
  test_errors(small);
  std::cout << (failures ? "FAILED" : "all C++ runner tests passed") << " (" << failures << " failures)\n";
  return failures ? 1 : 0;
}
