#!/usr/bin/env bash
# Puts SQuAD v1.1 dev where sweeps/quickstart.yaml reads it, data/squad/dev-v1.1.json.gz
# (idempotent): from ../shared/data/squad when a copy is there, else the official file from
# the SQuAD explorer, checked against its published SHA-256 before it is kept.
#   usage: bash scripts/get_data.sh [dev-v1.1|dev-v2.0]   (default: dev-v1.1)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-dev-v1.1}
case $NAME in
  dev-v1.1) SHA=95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9 ;;
  dev-v2.0) SHA=80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8 ;;
  *) echo "usage: bash scripts/get_data.sh [dev-v1.1|dev-v2.0], not '$NAME'" >&2; exit 2 ;;
esac
OUT=data/squad/$NAME.json.gz
[[ -f $OUT ]] && { echo "already there: $OUT"; exit 0; }
mkdir -p data/squad
TMP=$(mktemp); trap 'rm -f "$TMP"' EXIT
if [[ -f ../shared/data/squad/$NAME.json.gz ]]; then
  gzip -dc "../shared/data/squad/$NAME.json.gz" > "$TMP"
else
  curl -fsSL "https://rajpurkar.github.io/SQuAD-explorer/dataset/$NAME.json" -o "$TMP"
fi
echo "$SHA  $TMP" | sha256sum -c --quiet -
gzip -9 -n -c "$TMP" > "$OUT"
echo "wrote $OUT"
