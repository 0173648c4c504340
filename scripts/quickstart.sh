#!/usr/bin/env bash
# The main job on a fresh machine: install, stage MiniLM-L6, run sweeps/quickstart.yaml on local
# Ray with a local MLflow store (sqlite:///mlflow.db), then print the Pareto table.
# About 8 minutes on a 2-core CPU. Extra arguments go to `qa-ray sweep` (e.g. --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/stage_minilm.sh models
DATA=../shared/data/squad/dev-v1.1.json.gz
if [[ ! -f $DATA ]]; then
  # No local copy: SQuAD v1.1 from the hub, split by article as usual.
  DATA=rajpurkar/squad
  EXTRA=(data.split=validation)
else
  EXTRA=()
fi
exec .venv/bin/qa-ray sweep sweeps/quickstart.yaml "data.path=$DATA" "${EXTRA[@]}" "$@"
