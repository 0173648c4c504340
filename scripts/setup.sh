#!/usr/bin/env bash
# Creates .venv with everything qa-ray needs (idempotent). torch goes first, pinned to the
# CPU build on this machine kind, so nothing pulls a multi-GB CUDA build; on a GPU machine
# set QA_RAY_TORCH to the torch requirement you want (e.g. "torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${QA_RAY_TORCH:-torch==2.13.0}"
# The tested versions of everything else (constraints.txt; refresh: bash scripts/lock.sh).
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
echo "qa-ray installed in $(pwd)/.venv"
