#!/usr/bin/env bash
# The CUDA path on a real GPU in one command (issue 31): builds unetseg against the machine's CUDA
# torch, runs tests/test_cuda.py (CUDA == CPU bit for bit: hypothesis cases, edge cases, 8192² and
# 16384², layouts, half precision, streams, opcheck, the Runner on CUDA), then
# benchmarks/bench_cuda.py --markdown. Everything lands under $OUT (default ./gpu-out): device.txt,
# build.log, test_cuda.log, bench_cuda.md, and gpu-check.log with each step's exit status and time.
# Made for a GPU machine with no internet (a CUDA torch, nvcc, CMake, pytest, hypothesis,
# scipy, scikit-image, OpenCV and CuPy installed): packages it lacks travel as wheels in .whl/
# (scripts/gpu-wheels.sh makes them here; copy .whl/ there with the checkout). Each step has a
# time limit, 9.5 minutes in all.
#
#   bash scripts/gpu-check.sh            # PYTHON=python3, OUT=./gpu-out unless set
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0

step() { # step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, logging its status and seconds
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@"
  rc=$?
  echo "$name: exit $rc in $(($(date +%s) - start)) s" | tee -a "$OUT/gpu-check.log"
  [[ $rc -eq 0 ]] || status=1
  return $rc
}

{
  nvidia-smi || true
  "$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.get_device_name(0))"
} > "$OUT/device.txt" 2>&1

if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# The machine's torch, not the pinned 2.13 (no isolation: the build uses what is installed).
step build 180 "$python" -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || {
  tail -40 "$OUT/build.log"
  exit 1
}
"$python" -c "import unetseg, torch; print('unetseg', unetseg.__version__, 'CUDA kernels', torch.cuda.is_available())" \
  >> "$OUT/device.txt" 2>&1
step test_cuda 240 "$python" -m pytest -q -rs tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
step bench_cuda 150 "$python" benchmarks/bench_cuda.py --markdown > "$OUT/bench_cuda.md" 2>&1
tail -3 "$OUT/test_cuda.log"
exit $status
