// unetseg._C: the pybind11 module. Importing it loads the op library (linked with --no-as-needed),
// whose static initialisers register torch.ops.unetseg.*; ops reach Python through torch.ops.
#include <pybind11/pybind11.h>

#ifndef UNETSEG_VERSION
#define UNETSEG_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "unetseg native core";
  m.attr("__version__") = UNETSEG_VERSION;
}
