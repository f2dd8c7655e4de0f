#!/usr/bin/env bash
# Start the Ray head node of a GPU cluster that serves with vllm-selfspec.
#
# Usage: deploy/start_ray_head.sh [PORT]          (default port 6379)
# Run on the head node after installing the same vLLM and vllm-selfspec as every
# worker (deploy/README.md, "How the plugin reaches every node").
set -euo pipefail
PORT="${1:-6379}"
source "$(dirname "$0")/require_ray_auth_token.sh"  # sets RAY_AUTH_MODE=token

# Fail here, not inside a worker, if vLLM or the plugin is missing or mismatched.
python -c "import vllm, vllm_selfspec; vllm_selfspec.register(); print('vllm', vllm.__version__, '+ vllm-selfspec', vllm_selfspec.__version__)"

ray start --head --port="$PORT" --dashboard-host=0.0.0.0 ${RAY_START_EXTRA_ARGS:-}
echo "Join workers with: deploy/start_ray_worker.sh $(hostname -I | awk '{print $1}'):$PORT"
