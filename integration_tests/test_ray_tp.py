"""Tensor parallelism on Ray: lossless, the plugin in every worker, ranks agreeing on the skip set
and, with the draft-length controller on, on K at every step.

vLLM refuses Ray on the CPU platform, so these tests switch on the TEST-ONLY shim
(``vllm_selfspec.glue.ray_cpu_test_shim``) through its environment variable and start a
local Ray cluster on loopback with two logical slots, one per tensor-parallel rank.
The model is a tiny random-weight Llama (4 attention heads, 2 KV heads) in float32.
"""

from __future__ import annotations

import os

import pytest
from vllm import SamplingParams

from integration_tests.helpers import QUICK_CONTROLLER, removing_leaked_cpu_shm
from vllm_selfspec.tools.engine_runs import SpecDecodeCounts, chat_prompts, make_llm, release
from vllm_selfspec.glue.patches import RAY_ON_CPU_TEST_SHIM_ENV_VAR
from vllm_selfspec.tools.prompts import load_prompt_set

pytestmark = [pytest.mark.engine, pytest.mark.ray]

TP_ENGINE = dict(
    tensor_parallel_size=2,
    distributed_executor_backend="ray",
    dtype="float32",
    enforce_eager=True,
    max_model_len=512,
    kv_cache_memory_bytes=128 << 20,
)
SELF_SKIP = {"method": "self_skip", "num_speculative_tokens": 3, "skip_attn": [1], "skip_mlp": [2]}
GREEDY = SamplingParams(temperature=0.0, max_tokens=48)


def omp_binding_for_two_ranks() -> str:
    """One core per rank where there are two; vLLM's automatic binding wants a NUMA node per rank."""
    cores = sorted(os.sched_getaffinity(0))
    return f"{cores[0]}|{cores[1]}" if len(cores) >= 2 else "nobind"


@pytest.fixture
def ray_cluster(ray_auth_token):
    """A local Ray cluster on loopback with two logical slots, the test-only shim switched on."""
    import ray

    with pytest.MonkeyPatch.context() as env, removing_leaked_cpu_shm():
        env.setenv(RAY_ON_CPU_TEST_SHIM_ENV_VAR, "1")
        env.setenv("VLLM_CPU_OMP_THREADS_BIND", omp_binding_for_two_ranks())
        context = ray.init(
            num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
        # The engine-core process connects to this cluster instead of starting its own.
        env.setenv("RAY_ADDRESS", context.address_info["address"])
        try:
            yield context
        finally:
            ray.shutdown()


def _prompts(llm) -> list[str]:
    return chat_prompts(llm, load_prompt_set("chat")[:6] + load_prompt_set("summarization")[:2])


def _generate(llm, prompts) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, GREEDY, use_tqdm=False)]


def _describe_worker(worker) -> dict:
    import os

    import ray
    from vllm.distributed import get_tensor_model_parallel_rank

    from vllm_selfspec.glue.patches import PatchDraftModelProposer

    drafter = getattr(worker.model_runner, "drafter", None)
    return {
        "rank": get_tensor_model_parallel_rank(),
        "pid": os.getpid(),
        "ray_actor": ray.get_runtime_context().get_actor_id(),
        "plugin_loaded": PatchDraftModelProposer.is_applied(),
        "drafter": type(drafter).__name__,
        "plan": drafter.draft_plan() if hasattr(drafter, "draft_plan") else None,
    }


def _reload_draft_with_rank_1_diverging(worker) -> str:
    """Run the proposer's start-up path again with rank 1 holding a different skip set."""
    from vllm.distributed import get_tensor_model_parallel_rank

    from vllm_selfspec.core.skip_set import SkipSet

    drafter = worker.model_runner.drafter
    agreed = drafter.skip_set
    if get_tensor_model_parallel_rank() == 1:
        drafter.skip_set = SkipSet.build(agreed.num_layers, [3], [])
    try:
        drafter.load_model(worker.model_runner.get_model())
        return "loaded"
    except Exception as error:  # reported back to the test, which checks the message
        return f"{type(error).__name__}: {error}"
    finally:
        drafter.skip_set = agreed


def _switch_on_quick_controller(worker) -> None:
    """The controller deciding every step; rank 1's clock skewed so that drafting looks 3x
    faster per drafted token there: left to itself, rank 1 would choose other K than rank 0."""
    from vllm.distributed import get_tensor_model_parallel_rank

    drafter = worker.model_runner.drafter
    drafter.reconfigure(drafter.settings.replace(draft_length_controller=QUICK_CONTROLLER))
    if get_tensor_model_parallel_rank() == 1:
        observe = drafter.controller.observe
        drafter.controller.observe = lambda batch_size, k, tokens, seconds: observe(
            batch_size, k, tokens, seconds / (1 + 2 * k))


def _draft_lengths(worker) -> list:
    return list(worker.model_runner.drafter.draft_length_history)


def test_ray_tp2_self_skip_is_lossless_and_every_rank_agrees(ray_cluster, tiny_model_factory):
    model = tiny_model_factory("llama")

    plain = make_llm(model, None, **TP_ENGINE)
    try:
        prompts = _prompts(plain)
        expected = _generate(plain, prompts)
    finally:
        release(plain)

    llm = make_llm(model, SELF_SKIP, **TP_ENGINE)
    try:
        assert _generate(llm, prompts) == expected
        drafted = SpecDecodeCounts.read(llm)
        assert drafted.drafts > 0 and drafted.accepted_tokens > 0, f"self_skip at TP 2 on Ray: {drafted}"

        workers = llm.collective_rpc(_describe_worker)
        assert sorted(w["rank"] for w in workers) == [0, 1]
        # Two separate Ray actor processes, each with the plugin loaded and drafting with self_skip.
        assert all(w["ray_actor"] for w in workers)
        assert len({w["pid"] for w in workers} | {os.getpid()}) == 3
        assert all(w["plugin_loaded"] for w in workers)
        assert {w["drafter"] for w in workers} == {"SelfSkipProposer"}
        plans = {w["plan"] for w in workers}
        assert len(plans) == 1 and "skip_attn=[1] skip_mlp=[2]" in plans.pop()

        # A rank with a different skip set fails the start-up check on every rank.
        reports = llm.collective_rpc(_reload_draft_with_rank_1_diverging)
        for report in reports:
            assert report.startswith("SelfSkipConfigError")
            assert "rank 0:" in report and "skip_attn=[1]" in report
            assert "rank 1:" in report and "skip_attn=[3]" in report and "differs from rank 0" in report

        # The failed reload left the agreed draft in place; the engine still drafts, losslessly.
        assert _generate(llm, prompts) == expected
        after_reload = SpecDecodeCounts.read(llm).minus(drafted)
        assert after_reload.drafts > 0 and after_reload.accepted_tokens > 0, after_reload

        # The draft-length controller deciding every step: each rank measures its own step
        # times, rank 0 decides and broadcasts, and both ranks draft the same K at every step.
        llm.collective_rpc(_switch_on_quick_controller)
        before = SpecDecodeCounts.read(llm)
        assert _generate(llm, prompts) == expected
        with_controller = SpecDecodeCounts.read(llm).minus(before)
        assert with_controller.drafts > 0 and with_controller.accepted_tokens > 0, with_controller
        rank_0, rank_1 = llm.collective_rpc(_draft_lengths)
        assert rank_0 == rank_1 and len(rank_0) >= 20, (rank_0, rank_1)
        assert len({k for _, k in rank_0}) >= 2, rank_0  # K did change
    finally:
        release(llm)
