"""Running plain vLLM and self_skip side by side: engine construction, timing, spec-decode counters."""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from vllm import LLM, SamplingParams
from vllm.config import ModelConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.metrics.prometheus import unregister_vllm_metrics

from vllm_selfspec.core.draft_settings import DraftSettings

ENGINE_DEFAULTS = dict(seed=0, disable_log_stats=False)
"""Every tool's engines: a fixed seed, and stats on (vLLM's spec-decode counters need them)."""

CPU_ENGINE_DEFAULTS = dict(dtype="float32", max_model_len=2048, kv_cache_memory_bytes=2 << 30)
"""The CPU-only engine settings, the one place they live. float32: bfloat16 greedy output
changes with the batch shape on this CPU even in plain vLLM, so token identity would not
be exact; a 2,048-token context and a 2 GiB KV cache fit the default model at batch 32."""


def platform_engine_defaults() -> dict:
    """:data:`CPU_ENGINE_DEFAULTS` on the CPU platform; elsewhere nothing, so vLLM's own
    defaults apply (the model's dtype and context, ``gpu_memory_utilization``)."""
    from vllm.platforms import current_platform

    return dict(CPU_ENGINE_DEFAULTS) if current_platform.is_cpu() else {}


def default_dtype() -> str:
    """The tools' ``--dtype`` when none is given: float32 on the CPU, else the model's own (``auto``)."""
    return platform_engine_defaults().get("dtype", "auto")


@dataclass
class SpecDecodeCounts:
    """vLLM's speculative-decoding counters (``vllm:spec_decode_*``), or a difference of two readings."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, llm: LLM) -> SpecDecodeCounts:
        """The engine's counters now; none for an engine :func:`make_llm` made with stats off."""
        counts = cls()
        if not activate_engine_metrics(llm):
            return counts
        for metric in llm.get_metrics():
            if metric.name == "vllm:spec_decode_num_drafts":
                counts.drafts += int(metric.value)
            elif metric.name == "vllm:spec_decode_num_draft_tokens":
                counts.draft_tokens += int(metric.value)
            elif metric.name == "vllm:spec_decode_num_accepted_tokens":
                counts.accepted_tokens += int(metric.value)
            elif metric.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
                counts.accepted_per_position = [int(v) for v in metric.values]
        return counts

    def minus(self, earlier: SpecDecodeCounts) -> SpecDecodeCounts:
        """The counts accumulated since ``earlier``."""
        before = earlier.accepted_per_position + [0] * len(self.accepted_per_position)
        return SpecDecodeCounts(
            drafts=self.drafts - earlier.drafts,
            draft_tokens=self.draft_tokens - earlier.draft_tokens,
            accepted_tokens=self.accepted_tokens - earlier.accepted_tokens,
            accepted_per_position=[a - b for a, b in zip(self.accepted_per_position, before)],
        )

    def plus(self, other: SpecDecodeCounts) -> SpecDecodeCounts:
        """These counts and ``other``'s together (e.g. over measurement rounds)."""
        mine, theirs = self.accepted_per_position, other.accepted_per_position
        width = max(len(mine), len(theirs))
        return SpecDecodeCounts(
            drafts=self.drafts + other.drafts,
            draft_tokens=self.draft_tokens + other.draft_tokens,
            accepted_tokens=self.accepted_tokens + other.accepted_tokens,
            accepted_per_position=[a + b for a, b in zip(mine + [0] * (width - len(mine)),
                                                          theirs + [0] * (width - len(theirs)))],
        )

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens per drafted token."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens emitted per verification step: 1 (the target's own token) + accepted drafts."""
        return 1 + self.accepted_tokens / self.drafts if self.drafts else 1.0

    @property
    def per_position_rates(self) -> list[float]:
        """Share of drafts whose k-th token was accepted, for k = 1..K."""
        return [a / self.drafts for a in self.accepted_per_position] if self.drafts else []


@dataclass
class TimedRun:
    """Outputs and timing of one ``generate`` call."""

    token_ids: list[list[int]]
    texts: list[str]
    seconds: float
    spec: SpecDecodeCounts

    @property
    def output_tokens(self) -> int:
        """Generated tokens over all requests."""
        return sum(len(t) for t in self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second of wall time."""
        return self.output_tokens / self.seconds if self.seconds else 0.0


_ENGINE_METRICS: weakref.WeakKeyDictionary[LLM, list | None] = weakref.WeakKeyDictionary()
"""Each engine's ``vllm:`` Prometheus collectors, as registered when :func:`make_llm` made it
(None: made with stats off)."""


def make_llm(model: str, speculative_config: dict | None = None, **overrides) -> LLM:
    """An engine with :data:`ENGINE_DEFAULTS` and the platform's defaults, optionally with a speculative config."""
    kwargs = {**ENGINE_DEFAULTS, **platform_engine_defaults(), **overrides}
    llm = LLM(model=model, speculative_config=speculative_config, **kwargs)
    _ENGINE_METRICS[llm] = None if kwargs["disable_log_stats"] else [
        collector for collector in REGISTRY._collector_to_names if getattr(collector, "_name", "").startswith("vllm:")]
    return llm


def activate_engine_metrics(llm: LLM) -> bool:
    """Make ``llm.get_metrics()`` read this engine's own counters; False if it has none
    (:func:`make_llm` made it with stats off). An engine made elsewhere reads the registry as it is.

    vLLM keeps its metrics in the process-wide Prometheus registry, and each new engine
    unregisters the collectors of those before it (``unregister_vllm_metrics``), which go
    on counting unregistered. So an earlier engine's collectors are registered again.
    """
    if llm not in _ENGINE_METRICS:
        return True
    collectors = _ENGINE_METRICS[llm]
    if collectors is None:
        return False
    unregister_vllm_metrics()
    for collector in collectors:
        REGISTRY.register(collector)
    return True


def model_config_for(model: str, **overrides) -> ModelConfig:
    """vLLM's model config for an engine :func:`make_llm` would start, without starting one."""
    engine = {**ENGINE_DEFAULTS, **platform_engine_defaults(), **overrides}
    return EngineArgs(model=model, **engine).create_model_config()


OMP_BINDING_ENV_VAR = "VLLM_CPU_OMP_THREADS_BIND"
"""vLLM's CPU setting for the cores an engine's worker runs on; its engine process reads it at spawn."""


def cores_for_parallel_start(is_cpu: bool, allowed_cores: set[int], environ: Mapping[str, str]) -> list[int]:
    """The cores on which engines may start at once, one worker each; [] to start them one after another.

    Only on a CPU host with two usable cores and no binding of the user's. There vLLM's default
    binding gives an engine's worker one core and keeps the other for the front end, and an
    engine's start, mostly Inductor compiling in the worker, leaves that other core idle.
    Elsewhere one core per engine would change how an engine runs (a GPU; a larger CPU host,
    where vLLM gives the worker many cores), or the user's binding decides.
    """
    if not is_cpu or len(allowed_cores) != 2 or environ.get(OMP_BINDING_ENV_VAR, "auto") != "auto":
        return []
    return sorted(allowed_cores)


class WorkerPlacementExtension:
    """A worker method for ``LLM.collective_rpc`` (loaded through vLLM's ``worker_extension_cls``)."""

    def selfspec_move_to_cores(self, cores: list[int]) -> list[int]:
        """Pin every thread of this worker process to ``cores``; return the cores the process now runs on."""
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), cores)
        return sorted(os.sched_getaffinity(0))


WORKER_PLACEMENT_EXTENSION = f"{__name__}.{WorkerPlacementExtension.__qualname__}"


def start_engines(model: str, speculative_configs: dict[str, dict | None],
                  **overrides) -> tuple[dict[str, LLM], str]:
    """One engine per named speculative config (None: plain vLLM), as :func:`make_llm` makes it; and how
    they were started, in words.

    Where :func:`cores_for_parallel_start` allows, they start at once, each worker on its own
    core; once all are up every worker moves to the first core, where vLLM's default binding
    puts a lone engine's worker, so each is measured as if it had started alone. Elsewhere they
    start one after another.
    """
    from vllm.platforms import current_platform
    from vllm.plugins import load_general_plugins

    cores = cores_for_parallel_start(current_platform.is_cpu(), os.sched_getaffinity(0), os.environ)
    drafting = [name for name, spec in speculative_configs.items() if spec is not None]
    llms: dict[str, LLM] = {}
    try:
        # Engines started at once register their metrics in an order nobody chooses, so only
        # one may register any: the one drafting engine (plain vLLM has no drafts to count).
        if not cores or len(speculative_configs) < 2 or len(drafting) > 1:
            for name, spec in speculative_configs.items():
                llms[name] = make_llm(model, spec, **overrides)
            return llms, "one after another"
        load_general_plugins()  # once, here, rather than from every starting thread
        futures = _start_each_on_its_core(model, speculative_configs, cores,
                                          {**overrides, "worker_extension_cls": WORKER_PLACEMENT_EXTENSION},
                                          stats_off=set(speculative_configs) - set(drafting))
        llms = {name: future.result() for name, future in futures.items() if future.exception() is None}
        failures = [error for future in futures.values() if (error := future.exception()) is not None]
        if failures:
            raise failures[0]
        for name, llm in llms.items():
            placed = llm.collective_rpc("selfspec_move_to_cores", args=([cores[0]],))
            if placed != [[cores[0]]]:
                raise RuntimeError(f"engine {name!r}: its worker runs on cores {placed}, not on core {cores[0]}")
    except BaseException:
        for llm in llms.values():
            release(llm)
        raise
    return llms, (f"at once, each worker on its own core of {cores}, then every worker moved to core {cores[0]} "
                  "for the measurements")


def _start_each_on_its_core(model: str, speculative_configs: dict[str, dict | None], cores: list[int],
                            overrides: dict, stats_off: set[str]) -> dict[str, Future]:
    """Start the engines from threads, the i-th bound to ``cores[i % len(cores)]``, those named in
    ``stats_off`` without stats (vLLM's offline default); return once all are done."""
    futures = {}
    with ThreadPoolExecutor(max_workers=len(speculative_configs)) as pool:
        try:
            for index, (name, spec) in enumerate(speculative_configs.items()):
                spawned = {child.pid for child in multiprocessing.active_children()}
                os.environ[OMP_BINDING_ENV_VAR] = str(cores[index % len(cores)])
                stats = {"disable_log_stats": True} if name in stats_off else {}
                futures[name] = pool.submit(make_llm, model, spec, **overrides, **stats)
                # The next engine's binding waits until this engine's process has taken its own.
                while not futures[name].done() and \
                        not {child.pid for child in multiprocessing.active_children()} - spawned:
                    time.sleep(0.05)
        finally:
            os.environ.pop(OMP_BINDING_ENV_VAR, None)
    return futures


def resolved_draft(model_config: ModelConfig, spec: dict) -> DraftSettings:
    """The draft settings ``spec`` (a self_skip config) resolves to for the model of ``model_config``:
    given options, else its profile, else the defaults."""
    from vllm_selfspec.core.draft_settings import SelfSkipOptions
    from vllm_selfspec.core.resolve import resolve_self_skip
    from vllm_selfspec.glue.identity import model_identity

    draft, _ = resolve_self_skip(model_identity(model_config), model_config.max_model_len,
                                 SelfSkipOptions.take_from(dict(spec)), spec.get("num_speculative_tokens"))
    return draft


def drafting_held_on(model_config: ModelConfig, spec: dict) -> dict:
    """``spec`` (a self_skip config) with drafting on at every batch size, at the K it resolves to;
    the profile's schedule is set aside."""
    k = resolved_draft(model_config, spec).num_speculative_tokens
    return {**spec, "num_speculative_tokens_per_batch_size": [[1, 1, k]]}


def describe_draft(llm: LLM) -> str:
    """The draft an engine resolved at start-up, as its config holds it."""
    spec = llm.llm_engine.vllm_config.speculative_config
    if spec is None:
        return "no speculative decoding (the schedule drafts at no batch size)"
    return (f"K={spec.draft.num_speculative_tokens}, {spec.skip_set().describe()}, "
            f"{spec.draft.describe_head_and_exit()} (from {spec.skip_source})")


def release(llm: LLM) -> None:
    """Shut an engine down and free its memory before the next one starts."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def chat_prompts(llm: LLM, questions: list[str]) -> list[str]:
    """Wrap plain questions in the model's chat template, if it has one."""
    tokenizer = llm.get_tokenizer()
    if not getattr(tokenizer, "chat_template", None):
        return questions
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]


def timed_generate(llm: LLM, prompts: list[str], params: SamplingParams) -> TimedRun:
    """Generate, timing the call and reading the spec-decode counters around it."""
    before = SpecDecodeCounts.read(llm)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return TimedRun(
        token_ids=[list(o.outputs[0].token_ids) for o in outputs],
        texts=[o.outputs[0].text for o in outputs],
        seconds=seconds,
        spec=SpecDecodeCounts.read(llm).minus(before),
    )


def timed_workload(llm: LLM, prompts: list[str], params: SamplingParams, batch_size: int) -> list[TimedRun]:
    """Batch size 1: every prompt alone, one after another; larger: one batch of
    ``batch_size`` prompts (cycled)."""
    if batch_size == 1:
        return [timed_generate(llm, [prompt], params) for prompt in prompts]
    return [timed_generate(llm, [prompts[i % len(prompts)] for i in range(batch_size)], params)]


def combined_tokens_per_s(runs: list[TimedRun]) -> float:
    """Output tokens over wall time, summed over several runs."""
    return sum(r.output_tokens for r in runs) / sum(r.seconds for r in runs)


def median_and_range(rates: list[float]) -> str:
    """Speeds of several rounds as ``median tok/s [lowest-highest]``."""
    import statistics

    return f"{statistics.median(rates):.1f} tok/s [{min(rates):.1f}-{max(rates):.1f}]"
