#!/usr/bin/env bash
# The seed study's memory-saving baselines on this CPU, each a one-trial sweep on the
# quickstart's SQuAD v1.1 split and 180 s training budget, then one front over them:
#   ev-teacher            all-MiniLM-L6-v2, full fine-tune (6 layers)
#   ev-student            the same with 3 of its 6 layers kept (static pruning)
#   ev-heads-pruned       the same with a third of its 72 attention heads removed by importance
#                         measured on 8 training batches (static pruning)
#   ev-student-distilled  the 3-layer student distilled from ev-teacher's final checkpoint
#   ev-lstm               the LSTM with attention from scratch (MiniLM's tokenizer and input
#                         embeddings), evaluated untrained at step 0 too
# Usage (after scripts/quickstart.sh staged the model):
#   bash benchmarks/seed_baselines.sh OUT_DIR        # about 25 minutes on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: seed_baselines.sh OUT_DIR}
mkdir -p "$OUT"
URI="sqlite:///$(realpath "$OUT")/mlflow.db"
Q=(.venv/bin/qa-ray sweep sweeps/quickstart.yaml search.num_samples=1 "storage_path=$OUT/runs"
   tracking.experiment_name=qa-ray-seed-baselines --tracking-uri "$URI")
FULL='search.initial_points=[{finetune: full, learning_rate: 2.0e-4, warmup_ratio: 0.05, per_device_batch_size: 16}]'
"${Q[@]}" name=ev-teacher "$FULL"
"${Q[@]}" name=ev-student "$FULL" model.keep_layers=3
"${Q[@]}" name=ev-heads-pruned "$FULL" "model.prune={heads: 0.33}"
# The teacher by name: ev-teacher's trial, its newest checkpoint looked up in MLflow.
TRIAL=$(.venv/bin/python -c "from qa_ray.tracking.runs import child_runs, find_parent_run as p
print(child_runs('$URI', p('$URI', 'ev-teacher'))[0].data.tags['qa_ray.trial_name'])")
"${Q[@]}" name=ev-student-distilled "$FULL" model.keep_layers=3 \
  "train.distill={teacher: 'sweep:ev-teacher/$TRIAL', alpha: 0.5, temperature: 2.0}"
"${Q[@]}" name=ev-lstm 'search.initial_points=[{learning_rate: 1.0e-3}]' \
  model.architecture=bilstm_attention model.finetune=full \
  "model.lstm={hidden_size: 128, embeddings_from: models/all-MiniLM-L6-v2}" train.eval_on_start=true \
  'search.space={params: {learning_rate: {type: float, low: 1.0e-3, high: 2.0e-3}}}'
.venv/bin/qa-ray pareto ev-teacher ev-student ev-heads-pruned ev-student-distilled ev-lstm \
  --tracking-uri "$URI" --publish
