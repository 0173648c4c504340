#!/usr/bin/env bash
# Creates .venv with everything qa-ray needs (idempotent). torch goes first, so that nothing
# pulls a build for another machine; QA_RAY_TORCH picks which:
#
#   bash scripts/setup.sh                      torch==2.13.0 as pip finds it (CI's default: the
#                                              CPU build on this machine kind)
#   QA_RAY_TORCH=cpu   bash scripts/setup.sh   torch==2.13.0, CPU build (PyTorch's cpu index)
#   QA_RAY_TORCH=cu128 bash scripts/setup.sh   torch==2.13.0 for CUDA 12.8 (PyTorch's cu128
#                                              index; any cuNNN the PyTorch index serves, e.g.
#                                              cu126; pick one your driver supports: nvidia-smi)
#   QA_RAY_TORCH='torch==2.13.0' bash ...      anything else: a pip requirement, as given
#
# Then check what qa-ray sees: .venv/bin/qa-ray env
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=torch==2.13.0
case ${QA_RAY_TORCH:-} in
  "") TORCH_ARGS=("$TORCH") ;;
  cpu | cu[0-9]*) TORCH_ARGS=("$TORCH" --index-url "https://download.pytorch.org/whl/$QA_RAY_TORCH") ;;
  *) TORCH_ARGS=("$QA_RAY_TORCH") ;;
esac
if [[ ${1:-} == --print-torch ]]; then echo "${TORCH_ARGS[*]}"; exit 0; fi  # what it would install
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
echo "torch: pip install ${TORCH_ARGS[*]}"
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_ARGS[@]}"
# The tested versions of everything else (constraints.txt; refresh: bash scripts/lock.sh).
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
echo "qa-ray installed in $(pwd)/.venv"
