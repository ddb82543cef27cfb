#!/usr/bin/env bash
# Builds libunetseg with its CUDA kernels and glue against the CUDA build of torch 2.13 on a machine
# without a GPU (compile and link only: nothing runs). tests/test_cuda.py compiles the .cu files
# on every test run; this also checks the torch glue and the CMake CUDA path. Downloads the CUDA
# torch wheel from PyPI once (about 530 MB) into $UNETSEG_CUDA_TORCH (default /tmp/unetseg-cuda-torch).
#
#   bash scripts/check-cuda-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$PWD/.venv/bin/python}
dir=${UNETSEG_CUDA_TORCH:-/tmp/unetseg-cuda-torch}
version=$("$python" -c "import torch; print(torch.__version__.split('+')[0])")
if [[ ! -d "$dir/torch/lib" ]]; then
  mkdir -p "$dir"
  PIP_CONFIG_FILE=/dev/null "$python" -m pip download --isolated --no-deps --index-url https://pypi.org/simple \
    "torch==$version" -d "$dir"
  unzip -q -o "$dir"/torch-"$version"-*.whl 'torch/include/*' 'torch/share/*' 'torch/lib/*' -d "$dir"
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTorch_DIR="$dir/torch/share/cmake/Torch" \
  -DCUDA_TOOLKIT_ROOT_DIR="${CUDA_HOME:-/usr/local/cuda}" -DCMAKE_CUDA_COMPILER="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" \
  -DPython_EXECUTABLE="$python" -DTORCH_CUDA_ARCH_LIST="8.0;9.0" -DUNETSEG_CUDA=ON > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
cmake --build "$build" > "$build/build.log" 2>&1 || { grep -B2 -A8 -E "error" "$build/build.log" | head -80; exit 1; }
nm -C -D "$build/libunetseg.so" > "$build/symbols"
grep -q "unetseg::cuda::label(" "$build/symbols"
grep -q "unetseg::cuda::seeded_label(" "$build/symbols"
echo "check-cuda-build: libunetseg with CUDA kernels built and linked against torch $version+CUDA"
