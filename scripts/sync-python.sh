#!/usr/bin/env bash
# Development shortcut: copies python/unetseg over the installed package in .venv, for changes to
# Python files only (C++ changes need `pip install --no-build-isolation --no-deps .`).
set -euo pipefail
cd "$(dirname "$0")/.."
site=$(.venv/bin/python -c "import unetseg, os; print(os.path.dirname(unetseg.__file__))")
cp -r python/unetseg/. "$site/"
