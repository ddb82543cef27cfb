#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels a GPU machine without internet lacks for scripts/gpu-check.sh
# (its image: Python 3.12 with a CUDA torch, numpy, scipy, scikit-image, OpenCV, tifffile, pandas,
# pytest, hypothesis and CuPy, but not the headers unetseg builds against). Run it here, where PyPI
# is reachable, and copy .whl/ to that machine with the checkout.
#
#   bash scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$PWD/.venv/bin/python}
rm -rf .whl
# nlohmann-json: the JSON headers the runner reads model metadata with (a build requirement).
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "nlohmann-json>=3.11"
ls -l .whl
