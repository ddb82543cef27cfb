// unetseg._C: the pybind11 module. Importing it loads libunetseg (linked with --no-as-needed),
// whose static initialisers register torch.ops.unetseg.*; ops reach Python through torch.ops.
// It binds the C++ Runner only: unetseg.segment_batch / unetseg.Runner wrap it in Python.
#include <torch/csrc/utils/pybind.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "unetseg/runner.h"

#ifndef UNETSEG_VERSION
#define UNETSEG_VERSION "unknown"
#endif

namespace py = pybind11;

namespace {

using Ranges = std::optional<std::pair<std::vector<double>, std::vector<double>>>;

// The tiling and normalisation fields shared by segment and predict.
unetseg::SegmentOptions with_tiles(unetseg::SegmentOptions o, std::optional<int64_t> tile_size,
                                   std::optional<int64_t> halo, const Ranges& normalisation) {
  o.tile_size = tile_size;
  o.halo = halo;
  if (normalisation) {
    o.normalisation = unetseg::Normalisation{normalisation->first, normalisation->second};
  }
  return o;
}

} // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "unetseg native core: the C++ Runner (ops are in torch.ops.unetseg)";
  m.attr("__version__") = UNETSEG_VERSION;

  py::class_<unetseg::Runner>(m, "Runner")
      .def(py::init([](const std::string& model, const std::string& device,
                       const std::string& precision, int64_t batch_size) {
             py::gil_scoped_release nogil;
             return unetseg::Runner(model, unetseg::RunnerOptions{device, precision, batch_size});
           }),
           py::arg("model"), py::arg("device") = "auto", py::arg("precision") = "float32",
           py::arg("batch_size") = 8)
      .def_property_readonly("metadata_json", [](const unetseg::Runner& r) { return r.info().json; })
      .def_property_readonly("device", [](const unetseg::Runner& r) { return r.device().str(); })
      .def_property_readonly("batch_size", [](const unetseg::Runner& r) { return r.options().batch_size; })
      .def_property_readonly("labelling", [](const unetseg::Runner& r) { return r.info().labelling; })
      .def_property_readonly("precision", [](const unetseg::Runner& r) { return r.options().precision; })
      .def_property_readonly("halo", [](const unetseg::Runner& r) { return r.info().halo; })
      .def(
          "resolve",
          [](const unetseg::Runner& r, std::optional<double> threshold, std::optional<int64_t> min_area,
             const std::string& labelling, std::optional<double> boundary_threshold) {
            const auto o = r.resolve({threshold, min_area, 8, labelling, boundary_threshold});
            py::dict d;
            d["labelling"] = o.labelling;
            d["threshold"] = o.threshold;
            d["boundary_threshold"] = o.boundary_threshold;
            d["min_area"] = o.min_area;
            return d;
          },
          py::arg("threshold") = py::none(), py::arg("min_area") = py::none(), py::arg("labelling") = "auto",
          py::arg("boundary_threshold") = py::none())
      .def(
          "normalisation",
          [](const unetseg::Runner& r, const at::Tensor& image) {
            unetseg::Normalisation n;
            {
              py::gil_scoped_release nogil;
              n = r.normalisation(image);
            }
            return py::make_tuple(n.low, n.high);
          },
          py::arg("image"))
      .def(
          "segment",
          [](const unetseg::Runner& r, const std::vector<at::Tensor>& images,
             std::optional<double> threshold, std::optional<int64_t> min_area, int64_t connectivity,
             const std::string& labelling, std::optional<double> boundary_threshold,
             std::optional<int64_t> tile_size, std::optional<int64_t> halo, const Ranges& normalisation, bool tta) {
            auto options = with_tiles({threshold, min_area, connectivity, labelling, boundary_threshold}, tile_size,
                                      halo, normalisation);
            options.tta = tta;
            std::vector<unetseg::Segmentation> results;
            {
              py::gil_scoped_release nogil;
              results = r.segment(images, options);
            }
            py::list out;
            for (auto& s : results) {
              out.append(py::make_tuple(s.labels, s.count, s.objects));
            }
            return out;
          },
          py::arg("images"), py::arg("threshold") = py::none(), py::arg("min_area") = py::none(),
          py::arg("connectivity") = 8, py::arg("labelling") = "auto",
          py::arg("boundary_threshold") = py::none(), py::arg("tile_size") = py::none(),
          py::arg("halo") = py::none(), py::arg("normalisation") = py::none(), py::arg("tta") = false)
      .def(
          "predict",
          [](const unetseg::Runner& r, const std::vector<at::Tensor>& images, std::optional<int64_t> tile_size,
             std::optional<int64_t> halo, const Ranges& normalisation, std::array<int64_t, 4> context, bool tta) {
            auto options = with_tiles({}, tile_size, halo, normalisation);
            options.tta = tta;
            options.context_top = context[0];
            options.context_bottom = context[1];
            options.context_left = context[2];
            options.context_right = context[3];
            py::gil_scoped_release nogil;
            return r.predict(images, options);
          },
          py::arg("images"), py::arg("tile_size") = py::none(), py::arg("halo") = py::none(),
          py::arg("normalisation") = py::none(), py::arg("context") = std::array<int64_t, 4>{0, 0, 0, 0},
          py::arg("tta") = false);
}
