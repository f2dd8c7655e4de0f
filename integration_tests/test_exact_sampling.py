"""Sampled output keeps the target's distribution exactly, on every drafting mechanism and batching path.

A random 4-layer Llama with a 32-token vocabulary (``tools/tiny_models.py``; meaningless
outputs, exact distributions) makes the target's distribution over whole continuations
enumerable: plain vLLM scores every prefix in its support, over the whole vocabulary, and
:mod:`integration_tests.exact_sampling` turns that into the exact probability of each
continuation (temperature 0.8, top-k 8, top-p 0.9: rows neither flat nor one-hot). Each
configuration's sampled continuations are judged by a G test per position given its
prefix, over whole sequences, and a score test, against null distributions simulated from
the exact distribution; every configuration drafts, with both branches of rejection
sampling running (accepted drafts and rejected ones).

**False-alarm rate** 0.001 for the whole file, split evenly over its tests (each
configuration and the pooled test), each test's share split again over its statistics.
The scaled chi-square behind the G tests' p-values is checked where simulation can see it.
**Power**, simulated in each test on the very distribution judged: each configuration's
12,288 continuations reject a sampler that moves 5% of each drafted position's mass to the
most likely token with probability >= 0.9 (one request at a time and chunked prefill, a
few hundred each, check gross faults only); the pooled test (every configuration on the
short prompt, about 62,000 continuations) does so for a 2% move. ``make mutants`` adds a
real bug: drafts sampled at the request's temperature while the probabilities reported to
the rejection sampler are those at 1.25 times it (caught by one configuration alone; at
1.1 times it was not).
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
from vllm import SamplingParams

from integration_tests.exact_sampling import ContinuationDistribution, decision_rates, judge
from integration_tests.helpers import switch_draft
from vllm_selfspec.tools.engine_runs import SpecDecodeCounts, make_llm, release
from vllm_selfspec.tools.tiny_models import TINY_VOCAB_SIZE, write_tiny_vocab_model

pytestmark = pytest.mark.engine

TEMPERATURE, TOP_K, TOP_P = 0.8, 8, 0.9
LENGTH = 4
K = 3
SKIP = {"skip_attn": [1], "skip_mlp": [2]}
CHEAP_HEAD = list(range(0, TINY_VOCAB_SIZE, 2))
"""Half the vocabulary, ids that differ from their rows in the cheap head (its id mapping matters)."""
SHORT_PROMPT = [0, 5, 9, 3, 7, 2]
SAMPLES = 12_288
ONE_AT_A_TIME = 300
CHUNKED = 512
ENGINE = dict(skip_tokenizer_init=True, enforce_eager=True, max_logprobs=TINY_VOCAB_SIZE, max_model_len=4096,
              max_num_seqs=512, max_num_batched_tokens=2048, kv_cache_memory_bytes=512 << 20)
"""A decode step of 512 requests with K=3 drafts fills the 2,048-token budget, so long prompts are chunked."""

CONFIGS = {
    # name: (draft sampling, draft settings, batching path)
    "greedy-drafts-full-head-fixed-k": ("greedy", {}, "batch"),
    "greedy-drafts-cheap-head-adaptive-exit": ("greedy", dict(draft_vocab=CHEAP_HEAD, adaptive_exit=True), "batch"),
    "probabilistic-full-head-fixed-k": ("probabilistic", {}, "batch"),
    "probabilistic-cheap-head-adaptive-exit": ("probabilistic", dict(draft_vocab=CHEAP_HEAD, adaptive_exit=True),
                                               "batch"),
    "probabilistic-one-at-a-time": ("probabilistic", {}, "one-at-a-time"),
    "probabilistic-chunked-prefill": ("probabilistic", {}, "chunked-prefill"),
    "probabilistic-prefix-cached-blocks": ("probabilistic", {}, "prefix-cached"),
    "probabilistic-truncated-by-max-tokens": ("probabilistic", {}, "max-tokens-3"),
}
SMALL_SAMPLE_PATHS = ("one-at-a-time", "chunked-prefill")
"""Paths whose samples are few (each request costs a step, or a whole prompt's compute): checks of
gross faults, their power printed; the short prompt's one-at-a-time samples join the pooled test."""
ASYNC_CONFIG = "probabilistic-k-cycled-async-scheduling"
TESTS = len(CONFIGS) + 2  # and the async configuration, and the pooled test
ALPHA = 0.001 / TESTS
POWER_DELTA, POOLED_POWER_DELTA, MIN_POWER = 0.05, 0.02, 0.9

_RESULTS: dict[str, tuple[list[int], list[list[int]]]] = {}
"""Each configuration run so far: its prompt and sampled continuations (for the pooled test)."""


@pytest.fixture(scope="module")
def tiny_vocab_model(tmp_path_factory) -> str:
    return str(write_tiny_vocab_model(tmp_path_factory.mktemp("tiny-vocab")))


def _spec(draft_sample_method: str) -> dict:
    return {"method": "self_skip", "num_speculative_tokens": K, **SKIP, "draft_vocab_size": 0,
            "adaptive_exit": False, "draft_length_controller": False, "draft_exit_target_acceptance": 0.5,
            "draft_sample_method": draft_sample_method}


@pytest.fixture(scope="module")
def distributions(engines, tiny_vocab_model):
    """``get(prompt, length)``: the exact distribution over continuations, scored by plain vLLM."""
    made: dict[tuple, ContinuationDistribution] = {}

    def logprobs(prompts: list[list[int]]) -> np.ndarray:
        plain = engines.get(tiny_vocab_model, None, **ENGINE)
        outputs = plain.generate([{"prompt_token_ids": p} for p in prompts],
                                 SamplingParams(temperature=0.0, max_tokens=1, logprobs=TINY_VOCAB_SIZE),
                                 use_tqdm=False)
        rows = np.full((len(prompts), TINY_VOCAB_SIZE), -np.inf)
        for row, output in zip(rows, outputs):
            for token, logprob in output.outputs[0].logprobs[0].items():
                row[token] = logprob.logprob
        return rows

    def get(prompt: list[int], length: int) -> ContinuationDistribution:
        key = (tuple(prompt), length)
        if key not in made:
            made[key] = ContinuationDistribution.enumerate(logprobs, prompt, length, TEMPERATURE, TOP_K, TOP_P)
        return made[key]

    return get


def _prompt(path: str, block_size: int) -> list[int]:
    rng = np.random.default_rng(7)
    if path == "prefix-cached":  # several full blocks, shared by every request
        return [0, *rng.integers(2, TINY_VOCAB_SIZE, 2 * block_size + 5).tolist()]
    if path == "chunked-prefill":  # longer than the rest of a decode step's token budget
        return [0, *rng.integers(2, TINY_VOCAB_SIZE, 120).tolist()]
    return SHORT_PROMPT


def _sample(llm, path: str, prompt: list[int]) -> list[list[int]]:
    max_tokens = 3 if path == "max-tokens-3" else LENGTH
    params = SamplingParams(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, max_tokens=max_tokens,
                            ignore_eos=True)
    if path == "one-at-a-time":
        return [list(llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0].token_ids)
                for _ in range(ONE_AT_A_TIME)]
    if path == "chunked-prefill":  # a cache salt each: every request computes its whole prompt, in chunks
        requests = [{"prompt_token_ids": prompt, "cache_salt": str(i)} for i in range(CHUNKED)]
    else:
        requests = [{"prompt_token_ids": prompt}] * SAMPLES
    return [list(o.outputs[0].token_ids) for o in llm.generate(requests, params, use_tqdm=False)]


def _judge(name: str, dist: ContinuationDistribution, samples: list[list[int]], delta: float) -> tuple[float, str]:
    """Assert the continuations pass and the simulated false-alarm rate is as claimed; return the
    simulated power against a ``delta`` move, and the summary."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    verdict, null = judge(dist, samples, ALPHA, rng)
    false_alarms = decision_rates(dist, dist.probs, null, ALPHA * 100, rng, simulations=500)
    power = decision_rates(dist, dist.biased(delta), null, ALPHA, rng, simulations=200)
    summary = (f"{name}: {verdict.describe()}; simulated rejection rate at 100x the nominal rate "
               f"{false_alarms:.3f}, power against a {delta:.0%} move {power:.2f}")
    print(summary)
    # The scaled chi-square is an approximation: checked where simulation can see it, at 100x the
    # nominal rate (0.0091), it must not reject more than 3x as often.
    assert false_alarms <= 3 * ALPHA * 100, summary
    assert not verdict.rejected, summary
    return power, summary


def _run(llm, name: str, distributions, settings: dict | None, path: str) -> None:
    """Switch the draft to ``settings`` (None: keep the engine's), sample, assert drafts, judge."""
    if settings is not None:
        switch_draft(llm, **SKIP, num_speculative_tokens=K, target_acceptance=0.5, **settings)
    prompt = _prompt(path, llm.llm_engine.vllm_config.cache_config.block_size)
    started = time.perf_counter()
    before = SpecDecodeCounts.read(llm)
    samples = _sample(llm, path, prompt)
    spec = SpecDecodeCounts.read(llm).minus(before)
    # Both branches of rejection sampling ran: drafts accepted, and drafts rejected.
    assert spec.drafts > 0 and 0 < spec.accepted_tokens < spec.draft_tokens, (name, spec)
    if path == "k-cycled":
        # Steps drafted K = 3, and steps drafted fewer: the booked K changed under the requests.
        assert spec.accepted_per_position[K - 1] > 0 and spec.draft_tokens < K * spec.drafts, spec
        assert spec.draft_tokens > SAMPLES, spec  # and drafted often
    dist = distributions(prompt, len(samples[0]))
    power, summary = _judge(name, dist, samples, POWER_DELTA)
    if path not in SMALL_SAMPLE_PATHS:
        assert power >= MIN_POWER, summary
    _RESULTS[name] = (prompt, samples)
    print(f"{name}: acceptance {spec.acceptance_rate:.2f} over {spec.draft_tokens} drafted tokens, "
          f"{time.perf_counter() - started:.1f} s")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampling_is_exact(engines, tiny_vocab_model, distributions, name):
    draft_sample_method, settings, path = CONFIGS[name]
    llm = engines.get(tiny_vocab_model, _spec(draft_sample_method), **ENGINE)
    _run(llm, name, distributions, settings, path)


def _count_samplers(worker) -> dict:
    """Count this worker's steps with and without drafts, and its rejection-sampler calls
    (read back by calling again)."""
    runner = worker.model_runner
    if not hasattr(runner, "_test_sampler_counts"):
        counts = runner._test_sampler_counts = {"steps_with_drafts": 0, "draft_free_steps": 0, "rejection_sampler": 0}
        sample, rejection_sampler = runner._sample, runner.rejection_sampler.forward

        def counting_sample(logits, spec_decode_metadata):
            drafts = spec_decode_metadata is not None and spec_decode_metadata.max_spec_len > 0
            counts["steps_with_drafts" if drafts else "draft_free_steps"] += 1
            return sample(logits, spec_decode_metadata)

        def counting_rejection_sampler(*args, **kwargs):
            counts["rejection_sampler"] += 1
            return rejection_sampler(*args, **kwargs)

        runner._sample, runner.rejection_sampler.forward = counting_sample, counting_rejection_sampler
    return dict(runner._test_sampler_counts)


def test_sampling_is_exact_under_async_scheduling(tiny_vocab_model, distributions, async_scheduling_kept_on_cpu,
                                                   draft_lengths_cycled):
    """Probabilistic drafts under vLLM's async scheduling (the TEST-ONLY CPU shim keeps it on), the
    scheduler booking K = 3, 0, 2, 1, ... on successive steps (and as many placeholders; the
    TEST-ONLY cycle shim, as the draft-length controller books, but on every step by
    construction), so that K changes between the steps of each request."""
    distributions(SHORT_PROMPT, LENGTH)  # scored before the engine starts
    llm = make_llm(tiny_vocab_model, _spec("probabilistic"), **ENGINE)
    try:
        assert llm.llm_engine.vllm_config.scheduler_config.async_scheduling is True
        llm.collective_rpc(_count_samplers)
        _run(llm, ASYNC_CONFIG, distributions, None, "k-cycled")
        # Steps without a draft (after a K = 0 booking, and prefills) were sampled by vLLM's
        # plain sampler (PatchRunnerSamplesDraftFreeStepsPlainly), and judged above with the rest.
        counts = llm.collective_rpc(_count_samplers)[0]
        assert counts["draft_free_steps"] > 0 and counts["rejection_sampler"] == counts["steps_with_drafts"] > 0, counts
    finally:
        release(llm)


def test_pooled_sampling_is_exact(engines, tiny_vocab_model, distributions, request):
    """Every configuration on the short prompt, pooled: the power against a 2% move."""
    missing = [name for name in CONFIGS if _prompt(CONFIGS[name][2], 0) == SHORT_PROMPT and name not in _RESULTS]
    for name in missing:  # run alone (-k): the configurations it pools run first
        test_sampling_is_exact(engines, tiny_vocab_model, distributions, name)
    pooled = [s for prompt, samples in _RESULTS.values() if prompt == SHORT_PROMPT for s in samples
              if len(s) == LENGTH]
    power, summary = _judge("pooled", distributions(SHORT_PROMPT, LENGTH), pooled, POOLED_POWER_DELTA)
    assert power >= MIN_POWER, summary
