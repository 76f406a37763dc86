#!/usr/bin/env bash
# The main job on the embedded tiny CPU default, end to end. Run by `make demo` after `make stack`.
#
#   1. trust bootstrap: lock the digest of the image built on THIS machine into a git-ignored copy
#      of the profile (the committed profile cannot pin it: a locally built image has a local digest)
#   2. verify the snapshot and the prompt bundle
#   3. run: start the container, wait with full manifest verification, smoke test
#   4. sample -> run log A; restart the container; sample -> run log B; for the completion
#      bundle and for each request kind's reference bundle (chat, JSON schema, regex, choice,
#      grammar; scripts/make_reference_bundles.sh)
#   5. eval-determinism A B, for every bundle: identical, exit 0
#   6. the gateway: `detserve serve`, one chat with the openai client, its provenance; Ctrl-C
#      closes the transcript, and `detserve replay --claim SEGMENT` must say IDENTICAL
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

KINDS="chat_prompts json_prompts regex_prompts choice_prompts grammar_prompts"
bundle() { printf -- '--bundle artifacts/%s --bundle-pin manifests/%s/%s.sha256' "$1" "$1" "$1"; }

step "verify the snapshot against its committed manifest, and the prompt bundles against their pins"
"$DETSERVE" verify --config "$LOCAL"
"$DETSERVE" prompts verify --config "$LOCAL"   # the profile's bundle, measured on its model
for kind in $KINDS; do
  # shellcheck disable=SC2046
  "$DETSERVE" prompts verify $(bundle "$kind")
done

mkdir -p "$RUNS"
for side in a b; do
  step "run ($side): start, wait with full manifest verification, smoke"
  "$DETSERVE" run --config "$LOCAL"
  step "sample ($side): $N_PROMPTS prompts x $MAX_TOKENS tokens, greedy, seed from the profile"
  "$DETSERVE" sample --config "$LOCAL" --n-prompts "$N_PROMPTS" --max-tokens "$MAX_TOKENS" \
    --run-log-output "$RUNS/demo-$side.runlog.jsonl" --sidecar-output "$RUNS/demo-$side.sidecar.json" --force
  for kind in $KINDS; do
    step "sample ($side): every $kind request, $MAX_TOKENS tokens"
    # shellcheck disable=SC2046
    "$DETSERVE" sample --config "$LOCAL" --max-tokens "$MAX_TOKENS" $(bundle "$kind") \
      --run-log-output "$RUNS/demo-$kind-$side.runlog.jsonl" \
      --sidecar-output "$RUNS/demo-$kind-$side.sidecar.json" --force
  done
  step "stop ($side): the next run starts a fresh container"
  "$DETSERVE" stop --config "$LOCAL"
done

step "eval-determinism: the two run logs must be identical byte for byte"
"$DETSERVE" eval-determinism --run-a "$RUNS/demo-a.runlog.jsonl" --run-b "$RUNS/demo-b.runlog.jsonl" \
  --report-output "$RUNS/demo.report.json" --force
for kind in $KINDS; do
  step "eval-determinism: $kind, the two run logs must be identical byte for byte"
  "$DETSERVE" eval-determinism --run-a "$RUNS/demo-$kind-a.runlog.jsonl" \
    --run-b "$RUNS/demo-$kind-b.runlog.jsonl" --report-output "$RUNS/demo-$kind.report.json" --force
done
sha256sum "$RUNS"/demo-*a.runlog.jsonl "$RUNS"/demo-*b.runlog.jsonl >&2

step "the gateway: detserve serve in front of the verified server, one chat with the openai client"
"$DETSERVE" run --config "$LOCAL"
GATEWAY_DIR="$RUNS/gateway"
GATEWAY_PORT=${GATEWAY_PORT:-8088}
"$DETSERVE" serve --config "$LOCAL" --transcript-dir "$GATEWAY_DIR" --port "$GATEWAY_PORT" &
gateway=$!
client_out=$(.venv/bin/python scripts/gateway_demo_client.py "http://127.0.0.1:$GATEWAY_PORT") || {
  kill -TERM "$gateway"; wait "$gateway" || true; exit 1; }
kill -TERM "$gateway"  # as Ctrl-C: the gateway closes its transcript and exits 0
wait "$gateway"
printf '%s\n' "$client_out" | head -1 >&2
segment="$GATEWAY_DIR/$(printf '%s\n' "$client_out" | tail -1)"
step "replay the gateway's transcript: every exchange sent again, compared byte for byte"
"$DETSERVE" replay --claim "$segment" --config "$LOCAL" --output-dir "$RUNS/gateway-replay" --force
"$DETSERVE" stop --config "$LOCAL"
