#!/usr/bin/env bash
# The committed reference prompt bundles of the tiny profile, one per request kind, rebuilt from
# their committed datasets with `detserve prompts bootstrap` and pinned with `detserve hash`.
# tests/unit/test_reference_bundles.py rebuilds each one the same way and compares byte for byte.
#
#   name               dataset (artifacts/datasets/NAME.source.jsonl)   --format   --field    n
set -euo pipefail
cd "$(dirname "$0")/.."
DETSERVE=${DETSERVE:-.venv/bin/detserve}
PROFILE=configs/tiny-cpu.json

while read -r name fmt field n; do
  dataset=artifacts/datasets/$name.source.jsonl
  "$DETSERVE" prompts bootstrap --config "$PROFILE" --name "$name" \
    --dataset-file "$dataset" --dataset-sha256 "$(sha256sum "$dataset" | cut -d' ' -f1)" \
    --format "$fmt" --field "$field" --n-prompts "$n" --output-dir "artifacts/$name" --force
  mkdir -p "manifests/$name"
  "$DETSERVE" hash --snapshot "artifacts/$name" --manifest-output "manifests/$name/$name.sha256" --force
done <<'TABLE'
reference_prompts jsonl text 64
chat_prompts jsonl messages 8
json_prompts requests text 4
regex_prompts requests text 4
choice_prompts requests text 4
grammar_prompts requests text 4
TABLE
