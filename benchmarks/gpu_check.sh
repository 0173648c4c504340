#!/usr/bin/env bash
# The GPU check in one call (docs/benchmarks.md#gpu-check); the report lands in $OUT if set.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" --out "${OUT:-gpu_check_out}" "$@"
