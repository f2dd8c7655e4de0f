"""Tensor parallelism on Ray: lossless, the plugin in every worker, ranks agreeing on the skip set,
on the number of draft forwards at every step whatever their timing (the controller booking K in
the engine core, adaptive exit deciding inside steps), and on a draft-graph capture that failed on
one rank.

vLLM refuses Ray on the CPU platform, so these tests switch on the TEST-ONLY shim
(``vllm_selfspec.glue.ray_cpu_test_shim``) through its environment variable and start a
local Ray cluster on loopback with two logical slots, one per tensor-parallel rank.
The model is a tiny random-weight Llama (4 attention heads, 2 KV heads) in float32.
"""

from __future__ import annotations

import os

import pytest
from vllm import SamplingParams

from integration_tests.helpers import QUICK_CONTROLLER, draft_lengths, removing_leaked_cpu_shm
from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.glue.engine_calls import configure_draft
from vllm_selfspec.glue.patches import RAY_ON_CPU_TEST_SHIM_ENV_VAR
from vllm_selfspec.glue.tuning_worker import DRAFT_SWITCHING_EXTENSION
from vllm_selfspec.tools.engine_runs import SpecDecodeCounts, chat_prompts, make_llm, release
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


def _time_each_rank_differently(worker) -> None:
    """TEST-ONLY: each rank's ``propose`` sleeps a random 0-20 ms after every call, from a
    generator seeded by its rank, so the ranks' clocks and their timing differ at every step;
    then watch each call's booked and drafted length (and host reads)."""
    import random
    import time

    from vllm.distributed import get_tensor_model_parallel_rank

    drafter = worker.model_runner.drafter
    rng = random.Random(get_tensor_model_parallel_rank())
    propose = drafter.propose

    def propose_then_sleep(*args, **kwargs):
        drafts = propose(*args, **kwargs)
        time.sleep(rng.uniform(0.0, 0.02))
        return drafts

    drafter.propose = propose_then_sleep
    worker.selfspec_watch_host_reads()


def _stop_timing_differently(worker) -> dict:
    report = worker.selfspec_host_reads()
    del worker.model_runner.drafter.propose
    return report


def _capture_failing_on_rank_1(worker) -> dict:
    """TEST-ONLY: one capture of the draft's graph in which a stand-in capture succeeds on rank 0
    and raises on rank 1 (the CPU has no CUDA graphs); report what each rank did next."""
    from unittest import mock

    from vllm.distributed import get_tensor_model_parallel_rank
    from vllm.v1.spec_decode.draft_model import DraftModelProposer

    drafter = worker.model_runner.drafter
    rank = get_tensor_model_parallel_rank()
    eager_runs = []

    def stand_in_capture(num_tokens, use_cudagraphs, slot_mappings):
        if rank == 1:
            raise RuntimeError("TEST-ONLY capture failure on rank 1")

    base_dummy_run = DraftModelProposer.dummy_run

    def recording_dummy_run(self, num_tokens, use_cudagraphs=True, is_graph_capturing=False, slot_mappings=None):
        eager_runs.append([num_tokens, use_cudagraphs])
        return base_dummy_run(self, num_tokens, use_cudagraphs, is_graph_capturing, slot_mappings)

    with mock.patch.object(drafter, "_capture", stand_in_capture), \
            mock.patch.object(DraftModelProposer, "dummy_run", recording_dummy_run):
        drafter.dummy_run(4, use_cudagraphs=True, is_graph_capturing=True)
    report = {"rank": rank, "reason": drafter._no_draft_cuda_graphs_reason, "eager_runs": eager_runs,
              "mode": drafter.cudagraph_dispatcher.cudagraph_mode.name}
    drafter._no_draft_cuda_graphs_reason = ""
    return report


def test_ray_tp2_self_skip_is_lossless_and_every_rank_agrees(ray_cluster, tiny_model_factory):
    model = tiny_model_factory("llama")

    plain = make_llm(model, None, **TP_ENGINE)
    try:
        prompts = _prompts(plain)
        expected = _generate(plain, prompts)
    finally:
        release(plain)

    llm = make_llm(model, SELF_SKIP, **TP_ENGINE, worker_extension_cls=DRAFT_SWITCHING_EXTENSION)
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

        # The draft-length controller deciding every step, in the engine core, and adaptive exit
        # stopping drafts inside steps, while each rank's timing differs at random: both ranks
        # run the same number of draft forwards at every step, the K the scheduler booked.
        configure_draft(llm, DraftSettings(skip_attn=(1,), skip_mlp=(2,), num_speculative_tokens=3, adaptive_exit=True,
                                           draft_exit_target_acceptance=0.5, draft_length_controller=QUICK_CONTROLLER))
        llm.collective_rpc(_time_each_rank_differently)
        before = SpecDecodeCounts.read(llm)
        try:
            assert _generate(llm, prompts) == expected
        finally:
            rank_0, rank_1 = llm.collective_rpc(_stop_timing_differently)
        with_controller = SpecDecodeCounts.read(llm).minus(before)
        assert with_controller.drafts > 0 and with_controller.accepted_tokens > 0, with_controller
        lengths = rank_0["draft_lengths"]
        assert lengths == rank_1["draft_lengths"] and len(lengths) >= 20, (lengths, rank_1["draft_lengths"])
        booked = [k for _, k in draft_lengths(llm)]
        assert [k for k, _ in lengths] == booked, (lengths, booked)
        assert len(set(booked)) >= 2, booked  # K did change
        assert any(drafted < k for k, drafted in lengths), lengths  # adaptive exit did stop drafts
        assert rank_0["reads"] == rank_1["reads"] == [], (rank_0["reads"], rank_1["reads"])

        # A draft-graph capture that fails on rank 1 only: both ranks turn the draft's graphs
        # off and run the eager dummy step together (its all-reduces paired).
        reports = sorted(llm.collective_rpc(_capture_failing_on_rank_1), key=lambda r: r["rank"])
        for report in reports:
            assert "rank 1: RuntimeError: TEST-ONLY capture failure on rank 1" in report["reason"], report
            assert "rank 0:" not in report["reason"], report
            assert report["eager_runs"] == [[4, False]] and report["mode"] == "NONE", report
        assert _generate(llm, prompts) == expected
    finally:
        release(llm)
