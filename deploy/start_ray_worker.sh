#!/usr/bin/env bash
# Join this GPU node to the Ray cluster as a worker.
#
# Usage: deploy/start_ray_worker.sh HEAD_IP:PORT
# The node needs the same vLLM and vllm-selfspec versions as the head, the head's
# Ray auth token (~/.ray/auth_token or RAY_AUTH_TOKEN), and the model weights and
# skip profile on the same paths as the head.
set -euo pipefail
HEAD="${1:?usage: $0 HEAD_IP:PORT}"
source "$(dirname "$0")/require_ray_auth_token.sh"  # sets RAY_AUTH_MODE=token

python -c "import vllm, vllm_selfspec; vllm_selfspec.register(); print('vllm', vllm.__version__, '+ vllm-selfspec', vllm_selfspec.__version__)"

ray start --address="$HEAD" ${RAY_START_EXTRA_ARGS:-}
