#!/usr/bin/env bash
# Rewrites constraints.txt: the exact versions of every package in .venv, the set the tests
# passed with. setup.sh (so .ci/run and quickstart.sh) installs with `-c constraints.txt`, so a
# fresh machine gets these versions, not whatever the ranges in pyproject.toml allow today.
# torch is left out: it is installed first, for the machine's accelerator (see setup.sh).
#
# Refresh: bash scripts/lock.sh --upgrade   (reinstall to the newest versions the ranges allow,
#          then run the tests:  .venv/bin/python -m pytest -m "not slow" -q  and commit both)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--upgrade" ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade -e ".[dev]"
fi
{
  echo "# Tested versions (pip constraints). Written by scripts/lock.sh; do not edit by hand."
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check \
    | grep -v -E '^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+)==' \
    | LC_ALL=C sort -f
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages"
