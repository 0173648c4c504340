#!/usr/bin/env bash
# Downloads the wheels benchmarks/gpu_check.py carries to a GPU machine without network: what
# qa-ray's loop needs beyond torch, transformers, peft, accelerate, pyarrow, scipy, psutil and
# pyyaml (pydantic, datasets with pandas, pytest), for CPython 3.12 on x86-64 Linux, at the
# versions constraints.txt pins. They are committed; this is how they were made:
#   bash benchmarks/gpu_wheels/fetch.sh && (cd benchmarks/gpu_wheels && sha256sum *.whl > SHA256SUMS)
set -euo pipefail
cd "$(dirname "$0")"
"${PIP:-../../.venv/bin/pip}" download --only-binary=:all: --no-deps --python-version 3.12 \
  --implementation cp --abi cp312 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_28_x86_64 -d . \
  pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 \
  pandas==3.1.1 python-dateutil==2.9.0.post0 six==1.17.0 pytest==9.2.0 pluggy==1.7.0 \
  iniconfig==2.3.1 Pygments==2.21.0
