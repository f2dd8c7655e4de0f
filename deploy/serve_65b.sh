#!/usr/bin/env bash
# Serve a LLaMA-65B-class model with self_skip, tensor-parallel over Ray, from the head node.
#
# Usage: deploy/serve_65b.sh MODEL_PATH [TP] [PROFILE]
#   MODEL_PATH  weights in Hugging Face layout, on the same path on every node
#   TP          tensor-parallel size: 4 (4x80 GB) or 8 (default; 8x40 GB or more KV room)
#   PROFILE     skip profile for this model (`vllm-selfspec tune` writes them, at TP 1 only);
#               without it the plugin falls back to its conservative heuristic skip set,
#               which gains almost nothing on a large model (README: "What you get without a profile")
# Env: PORT (8000), NUM_SPEC_TOKENS (4), MAX_MODEL_LEN (2048).
# Start the cluster first (deploy/start_ray_head.sh and start_ray_worker.sh).
set -euo pipefail
MODEL="${1:?usage: $0 MODEL_PATH [TP] [PROFILE]}"
TP="${2:-8}"
PROFILE="${3:-}"
case "$TP" in 4|8) ;; *) echo "TP must be 4 or 8 for a 65B-class model, got $TP" >&2; exit 2 ;; esac
source "$(dirname "$0")/require_ray_auth_token.sh"  # sets RAY_AUTH_MODE=token

spec="{\"num_speculative_tokens\": ${NUM_SPEC_TOKENS:-4}"
if [[ -n "$PROFILE" ]]; then
    [[ -f "$PROFILE" ]] || { echo "skip profile not found: $PROFILE" >&2; exit 2; }
    spec+=", \"skip_profile\": \"$PROFILE\""
fi
spec+="}"

export RAY_ADDRESS="${RAY_ADDRESS:-auto}"
exec vllm serve "$MODEL" \
    --port "${PORT:-8000}" \
    --tensor-parallel-size "$TP" \
    --distributed-executor-backend ray \
    --dtype bfloat16 \
    --max-model-len "${MAX_MODEL_LEN:-2048}" \
    --speculative-model self-skip \
    --speculative-config "$spec"
