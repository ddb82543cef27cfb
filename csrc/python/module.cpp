// unetseg._C: the pybind11 module. Importing it loads libunetseg (linked with --no-as-needed),
// whose static initialisers register torch.ops.unetseg.*; ops reach Python through torch.ops.
// It binds the C++ Runner only: unetseg.segment_batch / unetseg.Runner wrap it in Python.
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <vector>

#include "unetseg/ops.h"
#include "unetseg/runner.h"

#ifndef UNETSEG_VERSION
#define UNETSEG_VERSION "unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "unetseg native core: the C++ Runner (ops are in torch.ops.unetseg)";
  m.attr("__version__") = UNETSEG_VERSION;
  // The rescaling rule of runner.h, for the slide pipeline's one diameter per slide.
  m.attr("MIN_RESCALE") = unetseg::kMinRescale;
  m.attr("MAX_RESCALE") = unetseg::kMaxRescale;
  m.attr("DIAMETER_TOLERANCE") = unetseg::kDiameterTolerance;
  m.def("min_area_at", &unetseg::min_area_at, py::arg("canonical_min_area"), py::arg("factor"));
  // Which channel of a colour image is all of it (runner.h), for Python's to_channels and the slides'
  // one decision per slide.
  m.def(
      "signal_channel",
      [](const at::Tensor& image) {
        py::gil_scoped_release nogil;
        return unetseg::signal_channel(image);
      },
      py::arg("image"));
  // The diameter estimate's measure of nucleus shape (runner.h), for tests against a plain reference.
  m.def("convexity", &unetseg::convexity, py::arg("labels"));
  // The CPU kernels' vector instruction set (ops.h): tests and benchmarks compare the choices.
  m.def("cpu_simd", &unetseg::cpu_simd);
  m.def("use_huge_pages", &unetseg::use_huge_pages);
  m.def("set_cpu_simd", &unetseg::set_cpu_simd, py::arg("name"));

  // Options travel as these classes with named fields (never as positional lists), so a field
  // added to or moved in the C++ struct cannot shift another.
  py::class_<unetseg::Normalisation>(m, "Normalisation")
      .def(py::init([](std::vector<double> low, std::vector<double> high) {
             return unetseg::Normalisation{std::move(low), std::move(high)};
           }),
           py::arg("low"), py::arg("high"))
      .def_readwrite("low", &unetseg::Normalisation::low)
      .def_readwrite("high", &unetseg::Normalisation::high);

  py::class_<unetseg::SegmentOptions>(m, "SegmentOptions")
      .def(py::init<>())
      .def_readwrite("threshold", &unetseg::SegmentOptions::threshold)
      .def_readwrite("min_area", &unetseg::SegmentOptions::min_area)
      .def_readwrite("connectivity", &unetseg::SegmentOptions::connectivity)
      .def_readwrite("labelling", &unetseg::SegmentOptions::labelling)
      .def_readwrite("boundary_threshold", &unetseg::SegmentOptions::boundary_threshold)
      .def_readwrite("tile_size", &unetseg::SegmentOptions::tile_size)
      .def_readwrite("halo", &unetseg::SegmentOptions::halo)
      .def_readwrite("normalisation", &unetseg::SegmentOptions::normalisation)
      .def_readwrite("context_top", &unetseg::SegmentOptions::context_top)
      .def_readwrite("context_bottom", &unetseg::SegmentOptions::context_bottom)
      .def_readwrite("context_left", &unetseg::SegmentOptions::context_left)
      .def_readwrite("context_right", &unetseg::SegmentOptions::context_right)
      .def_readwrite("tta", &unetseg::SegmentOptions::tta)
      .def_readwrite("diameter", &unetseg::SegmentOptions::diameter)
      .def_readwrite("channel", &unetseg::SegmentOptions::channel);

  py::class_<unetseg::ResolvedOptions>(m, "ResolvedOptions")
      .def_readonly("threshold", &unetseg::ResolvedOptions::threshold)
      .def_readonly("boundary_threshold", &unetseg::ResolvedOptions::boundary_threshold)
      .def_readonly("min_area", &unetseg::ResolvedOptions::min_area)
      .def_readonly("labelling", &unetseg::ResolvedOptions::labelling);

  py::class_<unetseg::ModelInfo>(m, "ModelInfo")
      .def_readonly("format_version", &unetseg::ModelInfo::format_version)
      .def_readonly("architecture", &unetseg::ModelInfo::architecture)
      .def_readonly("in_channels", &unetseg::ModelInfo::in_channels)
      .def_readonly("out_channels", &unetseg::ModelInfo::out_channels)
      .def_readonly("outputs", &unetseg::ModelInfo::outputs)
      .def_readonly("size_multiple", &unetseg::ModelInfo::size_multiple)
      .def_readonly("threshold", &unetseg::ModelInfo::threshold)
      .def_readonly("labelling", &unetseg::ModelInfo::labelling)
      .def_readonly("boundary_threshold", &unetseg::ModelInfo::boundary_threshold)
      .def_readonly("min_area", &unetseg::ModelInfo::min_area)
      .def_readonly("halo", &unetseg::ModelInfo::halo)
      .def_readonly("diameter", &unetseg::ModelInfo::diameter)
      .def_readonly("json", &unetseg::ModelInfo::json);

  py::class_<unetseg::Runner>(m, "Runner")
      .def(py::init([](const std::string& model, const std::string& device,
                       const std::string& precision, int64_t batch_size) {
             py::gil_scoped_release nogil;
             return unetseg::Runner(model, unetseg::RunnerOptions{device, precision, batch_size});
           }),
           py::arg("model"), py::arg("device") = "auto", py::arg("precision") = "auto",
           py::arg("batch_size") = 8)
      .def_property_readonly("info", &unetseg::Runner::info, py::return_value_policy::reference_internal)
      .def_property_readonly("device", [](const unetseg::Runner& r) { return r.device().str(); })
      .def_property_readonly("batch_size", [](const unetseg::Runner& r) { return r.options().batch_size; })
      .def_property_readonly("precision", [](const unetseg::Runner& r) { return r.options().precision; })
      .def_property_readonly("fused", &unetseg::Runner::fused)
      .def("resolve", &unetseg::Runner::resolve, py::arg("options"))
      .def(
          "normalisation",
          [](const unetseg::Runner& r, const at::Tensor& image, std::optional<int64_t> channel) {
            py::gil_scoped_release nogil;
            return r.normalisation(image, channel);
          },
          py::arg("image"), py::arg("channel") = py::none())
      .def(
          "segment",
          [](const unetseg::Runner& r, const std::vector<at::Tensor>& images, const unetseg::SegmentOptions& options) {
            std::vector<unetseg::Segmentation> results;
            {
              py::gil_scoped_release nogil;
              results = r.segment(images, options);
            }
            py::list out;
            for (auto& s : results) {
              out.append(py::make_tuple(s.labels, s.count, s.objects, s.diameter));
            }
            return out;
          },
          py::arg("images"), py::arg("options"))
      .def(
          "predict",
          [](const unetseg::Runner& r, const std::vector<at::Tensor>& images, const unetseg::SegmentOptions& options) {
            py::gil_scoped_release nogil;
            return r.predict(images, options);
          },
          py::arg("images"), py::arg("options"));
}
