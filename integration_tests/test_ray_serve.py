"""deploy/ray_serve_llm.yaml: it validates as written, and it serves self_skip on a local Ray cluster.

The start-up test keeps the config's structure (ray.serve.llm's ``build_openai_app``,
autoscaling, self_skip in ``engine_kwargs``) and changes only what this machine
cannot provide: the 65B weights become the tiny random-weight Llama, the A100s
become Ray Serve LLM's CPU accelerator, tensor-parallel size 8 becomes 1 (Ray Serve
LLM places one CPU bundle per rank and starts vLLM's own executor, which runs one
CPU rank here; tensor parallelism on Ray is tested in test_ray_tp.py), bfloat16
becomes float32 so the output can be compared exactly with plain vLLM.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from integration_tests.server import free_port
from vllm_selfspec.core.resolve import reject_unknown_options

pytestmark = [pytest.mark.engine, pytest.mark.ray]

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "ray_serve_llm.yaml"
PROMPTS = ["The capital of France is", "def fibonacci(n):"]


def _llm_configs() -> list[dict]:
    applications = yaml.safe_load(CONFIG.read_text())["applications"]
    assert [app["import_path"] for app in applications] == ["ray.serve.llm:build_openai_app"]
    return applications[0]["args"]["llm_configs"]


def test_ray_serve_config_validates(ray_auth_token):
    import ray
    from ray.serve.llm import LLMConfig, build_openai_app
    from vllm.engine.arg_utils import EngineArgs

    from vllm_selfspec.glue.config import SelfSkipSpeculativeConfig

    configs = _llm_configs()
    for raw in configs:
        llm_config = LLMConfig(**raw)  # Ray Serve LLM's own validation
        engine_kwargs = llm_config.engine_kwargs
        assert engine_kwargs["tensor_parallel_size"] in (4, 8)
        assert engine_kwargs["distributed_executor_backend"] == "ray"
        EngineArgs(model="unused", **engine_kwargs)  # every key is a vLLM engine argument
        spec = engine_kwargs["speculative_config"]
        assert spec["method"] == "self_skip"
        reject_unknown_options(spec, {f.name for f in dataclasses.fields(SelfSkipSpeculativeConfig)})
        autoscaling = llm_config.deployment_config["autoscaling_config"]
        assert autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    try:
        assert build_openai_app({"llm_configs": configs}) is not None
    finally:
        ray.shutdown()  # building the app may have started a local Ray instance


def _for_this_machine(raw: dict, model: str) -> dict:
    config = copy.deepcopy(raw)
    config["model_loading_config"] = {"model_id": "tiny-selfspec", "model_source": model}
    config.pop("accelerator_type")
    config["accelerator_config"] = {"kind": "cpu"}
    config["deployment_config"]["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    engine = config["engine_kwargs"]
    for key in ("gpu_memory_utilization", "distributed_executor_backend"):
        engine.pop(key)
    engine.update(tensor_parallel_size=1, dtype="float32", enforce_eager=True, max_model_len=512,
                  kv_cache_memory_bytes=128 << 20)
    engine["speculative_config"] = {"method": "self_skip", "num_speculative_tokens": 3}
    return config


def _replica_drafts(metrics_port: int) -> float:
    """vLLM's spec-decode draft count summed over Serve replicas, from Ray's Prometheus endpoint
    (Ray Serve LLM exports the engine's metrics there, tagged with the replica id)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(
        r'^ray_vllm_spec_decode_num_drafts_total\{[^}]*ReplicaId="[^"]+"[^}]*\} (\S+)$', text, re.MULTILINE))


def test_ray_serve_config_serves_self_skip_on_local_ray(tiny_model_factory, ray_auth_token):
    import openai
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app
    from vllm import SamplingParams

    from vllm_selfspec.tools.engine_runs import make_llm, release

    model = tiny_model_factory("llama")
    plain = make_llm(model, None, dtype="float32", enforce_eager=True, max_model_len=512,
                     kv_cache_memory_bytes=128 << 20)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=24)
        expected = [o.outputs[0].text for o in plain.generate(PROMPTS, params, use_tqdm=False)]
    finally:
        release(plain)

    context = ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
                       log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_openai_app({"llm_configs": [_for_this_machine(_llm_configs()[0], model)]}),
                  blocking=False)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                               timeout=60)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.models.list()
                break
            except openai.APIError:
                assert time.monotonic() < deadline, "Ray Serve application not ready after 300 s"
                time.sleep(2)
        served = [
            client.completions.create(model="tiny-selfspec", prompt=p, max_tokens=24, temperature=0).choices[0].text
            for p in PROMPTS
        ]
        assert served == expected

        # The replica's engine drafted: Ray's metrics agent exports it every few seconds.
        deadline = time.monotonic() + 60
        while _replica_drafts(context.address_info["metrics_export_port"]) == 0:
            assert time.monotonic() < deadline, "the replica's engine exported no spec-decode drafts in 60 s"
            time.sleep(2)

        # The replica's engine drafted with self_skip: the proposer announced itself in its log.
        logs = Path(context.address_info["session_dir"]) / "logs"
        proposer_lines = [
            line for path in logs.glob("worker-*") for line in path.read_text(errors="replace").splitlines()
            if "self_skip proposer on" in line
        ]
        assert proposer_lines, f"no self_skip proposer in the Ray worker logs under {logs}"
    finally:
        serve.shutdown()
        ray.shutdown()
