#!/usr/bin/env bash
# The main job on the embedded tiny CPU default, end to end. Run by `make demo` after `make stack`.
#
#   1. trust bootstrap: lock the digest of the image built on THIS machine into a git-ignored copy
#      of the profile (the committed profile cannot pin it: a locally built image has a local digest)
#   2. verify the snapshot and the prompt bundle
#   3. run: start the container, wait with full manifest verification, smoke test
#   4. sample -> run log A; restart the container; sample -> run log B
#   5. eval-determinism A B: identical, exit 0
set -euo pipefail
cd "$(dirname "$0")/.."
DETSERVE=${DETSERVE:-.venv/bin/detserve}
PROFILE=configs/tiny-cpu.json
LOCAL=configs/tiny-cpu.local.json
RUNS=artifacts/runs
N_PROMPTS=${N_PROMPTS:-16}
MAX_TOKENS=${MAX_TOKENS:-32}

step() { printf '\n== %s\n' "$*" >&2; }

step "trust bootstrap: pin the locally built image's digest into $LOCAL (git-ignored)"
"$DETSERVE" lock-image --config "$PROFILE" --write --profile-output "$LOCAL" --force

step "verify the snapshot against its committed manifest, and the prompt bundle against its pin"
"$DETSERVE" verify --config "$LOCAL"
"$DETSERVE" prompts verify

mkdir -p "$RUNS"
for side in a b; do
  step "run ($side): start, wait with full manifest verification, smoke"
  "$DETSERVE" run --config "$LOCAL"
  step "sample ($side): $N_PROMPTS prompts x $MAX_TOKENS tokens, greedy, seed from the profile"
  "$DETSERVE" sample --config "$LOCAL" --n-prompts "$N_PROMPTS" --max-tokens "$MAX_TOKENS" \
    --run-log-output "$RUNS/demo-$side.runlog.jsonl" --sidecar-output "$RUNS/demo-$side.sidecar.json" --force
  step "stop ($side): the next run starts a fresh container"
  "$DETSERVE" stop --config "$LOCAL"
done

step "eval-determinism: the two run logs must be identical byte for byte"
"$DETSERVE" eval-determinism --run-a "$RUNS/demo-a.runlog.jsonl" --run-b "$RUNS/demo-b.runlog.jsonl" \
  --report-output "$RUNS/demo.report.json" --force
sha256sum "$RUNS/demo-a.runlog.jsonl" "$RUNS/demo-b.runlog.jsonl" >&2
