// segment_image: segments one image with a unetseg model file, from C++ only.
//
//   segment_image MODEL.pt IMAGE.pgm|ppm LABELS.npy
//
// Reads a binary PGM (gray) or PPM (RGB) image, 8 or 16 bit, wraps the pixels in a tensor without
// copying (what a host application does with its own buffers), runs unetseg::Runner, prints the
// object table as CSV and writes the labels as an int32 .npy file.
#include <unetseg/runner.h>

#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Image {
  int64_t height = 0, width = 0, channels = 0;
  bool sixteen_bit = false;
  std::vector<uint8_t> bytes;
};

// Netpbm P5 (gray) / P6 (RGB), maxval up to 65535 (16-bit samples are big-endian).
Image read_netpbm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string magic;
  in >> magic;
  if (magic != "P5" && magic != "P6") throw std::runtime_error(path + ": expected a binary PGM (P5) or PPM (P6)");
  auto next_number = [&in]() {
    in >> std::ws;
    while (in.peek() == '#') {
      std::string comment;
      std::getline(in, comment);
      in >> std::ws;
    }
    int64_t v;
    in >> v;
    return v;
  };
  Image im;
  im.channels = magic == "P5" ? 1 : 3;
  im.width = next_number();
  im.height = next_number();
  const int64_t maxval = next_number();
  in.get();  // the single whitespace before the pixels
  im.sixteen_bit = maxval > 255;
  im.bytes.resize(size_t(im.height * im.width * im.channels * (im.sixteen_bit ? 2 : 1)));
  in.read(reinterpret_cast<char*>(im.bytes.data()), std::streamsize(im.bytes.size()));
  if (!in) throw std::runtime_error(path + ": truncated pixel data");
  if (im.sixteen_bit) {
    for (size_t i = 0; i < im.bytes.size(); i += 2) std::swap(im.bytes[i], im.bytes[i + 1]);
  }
  return im;
}

void write_npy_int32(const std::string& path, const at::Tensor& labels) {
  std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (" +
                       std::to_string(labels.size(0)) + ", " + std::to_string(labels.size(1)) + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');  // pad so that the data starts 64-aligned
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t n = uint16_t(header.size());
  out.write(reinterpret_cast<const char*>(&n), 2);
  out << header;
  const at::Tensor c = labels.contiguous();
  out.write(reinterpret_cast<const char*>(c.const_data_ptr<int32_t>()), std::streamsize(c.numel() * 4));
  if (!out) throw std::runtime_error("cannot write " + path);
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt IMAGE.pgm|ppm LABELS.npy\n";
    return 2;
  }
  try {
    Image im = read_netpbm(argv[2]);
    const at::Tensor pixels = at::from_blob(im.bytes.data(), {im.height, im.width, im.channels},
                                            im.sixteen_bit ? at::kUInt16 : at::kByte);

    const unetseg::Runner runner(argv[1]);  // device "auto", the model's threshold
    const unetseg::Segmentation result = runner.segment(pixels);

    std::cout << "label,area,min_row,min_col,max_row,max_col,centroid_row,centroid_col,mean_score\n";
    const auto table = result.objects.accessor<double, 2>();
    for (int64_t k = 0; k < result.count; ++k) {
      std::cout << k + 1;
      for (int64_t c = 0; c < unetseg::stats::kNumColumns; ++c) std::cout << ',' << table[k][c];
      std::cout << '\n';
    }
    std::cerr << argv[2] << ": " << result.count << " nuclei (" << runner.info().architecture << " on "
              << runner.device() << ")\n";
    write_npy_int32(argv[3], result.labels);
  } catch (const c10::Error& e) {
    // the message only: a user's mistake (a missing file, a bad image) needs no C++ backtrace
    std::cerr << "segment_image: " << e.what_without_backtrace() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "segment_image: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
