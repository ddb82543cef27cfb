#!/usr/bin/env bash
# Set-up on a fresh clone, idempotent: a virtual environment in .venv with torch 2.13.0 (CPU),
# the build tools, unetseg built from this checkout (C++ ops + Python package) and the test extras.
# torch is pinned exactly and the package is built with --no-build-isolation: an isolated build, or
# a torch range admitting a newer release, would download a second, multi-GB CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install torch==2.13.0 "scikit-build-core>=0.10" "nlohmann-json>=3.11"
"${pip[@]}" install --no-build-isolation ".[test]"
