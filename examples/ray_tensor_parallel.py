"""Offline batch with self_skip at tensor-parallel size N on a Ray cluster.

GPU cluster (started with deploy/start_ray_head.sh and start_ray_worker.sh):
    RAY_ADDRESS=auto python examples/ray_tensor_parallel.py /models/llama-65b --tp 8

This CPU machine, as a rehearsal: a tiny random-weight Llama at TP 2 on a local Ray
cluster through the TEST-ONLY Ray-on-CPU shim (its outputs are meaningless):
    python examples/ray_tensor_parallel.py --tiny-on-cpu
"""

import argparse
import os
import secrets
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="model path or name (omit with --tiny-on-cpu)")
    parser.add_argument("--tp", type=int, default=8, help="tensor-parallel size (default 8)")
    parser.add_argument("--profile", help="skip profile from `vllm-selfspec tune`")
    parser.add_argument("--tiny-on-cpu", action="store_true",
                        help="rehearse on a CPU machine: tiny model, TP 2, local Ray, test-only shim")
    args = parser.parse_args()
    if not args.model and not args.tiny_on_cpu:
        parser.error("give a MODEL, or --tiny-on-cpu")

    engine = dict(tensor_parallel_size=args.tp, distributed_executor_backend="ray", max_model_len=2048)
    if args.tiny_on_cpu:
        # Must be set before vLLM and Ray start: they read it in every process.
        os.environ["VLLM_SELFSPEC_TEST_ONLY_RAY_ON_CPU"] = "1"
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        import ray

        from vllm_selfspec.tools.model_prep import prepare_default_model
        from vllm_selfspec.tools.tiny_models import write_tiny_model

        work = Path(tempfile.mkdtemp())
        # ray.init turns on token authentication; the token is this run's own, not ~/.ray/auth_token.
        token_path = work / "ray_auth_token"
        token_path.write_text(secrets.token_hex(32))
        os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
        args.model = str(write_tiny_model("llama", work, prepare_default_model()))
        context = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
        os.environ["RAY_ADDRESS"] = context.address_info["address"]  # the engine joins this cluster
        engine.update(tensor_parallel_size=2, dtype="float32", enforce_eager=True, max_model_len=512,
                      kv_cache_memory_bytes=128 << 20)

    from vllm import LLM, SamplingParams

    from vllm_selfspec.tools.engine_runs import SpecDecodeCounts

    speculative_config = {"method": "self_skip", "num_speculative_tokens": 4}
    if args.profile:
        speculative_config["skip_profile"] = args.profile
    llm = LLM(model=args.model, speculative_config=speculative_config, disable_log_stats=False, **engine)
    prompts = ["Explain tensor parallelism in two sentences.", "Write a haiku about autumn."]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    for output in llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=64)):
        print(repr(output.outputs[0].text.strip()[:200]), "\n---")
    spec = SpecDecodeCounts.read(llm)
    print(f"self_skip drafts: {spec.drafts}, mean acceptance length: {spec.mean_acceptance_length:.2f}")


if __name__ == "__main__":
    main()
