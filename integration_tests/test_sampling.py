"""Random sampling under self_skip keeps the target's distribution.

**Goodness of fit, conditioned on the sampled prefix.** self_skip samples
``SAMPLES_PER_PROMPT`` continuations of ``MAX_TOKENS`` tokens for each of
``len(QUESTIONS)`` prompts at temperature 0.8, top-k 50, top-p 0.95. For every token
that drafts can influence (the 2nd onwards), plain vLLM scores the exact prefix it
was sampled after: its top-50 raw logprobs give the distribution the request asks for,
P = top-p(top-k(softmax(logits / T))), exactly (top-k 50 bounds the support). Under a
correct sampler each token is an independent draw from its P given the prefix, so:

- no token may fall outside P's support (probability 0);
- score test: Z = sum(log P(x) - E_P[log P]) / sqrt(sum Var_P[log P]) is N(0, 1);
  a flatter or sharper sampler (wrong temperature, drafts accepted too readily) moves it;
- randomised PIT: U = P(tokens ranked above x) + V * P(x), V uniform, is uniform on
  (0, 1); a Pearson chi-square over ``PIT_BINS`` equal bins catches other distortions.

**False-alarm rate** 0.001: the score test and the PIT test each run at 0.0005
(Bonferroni); the support check cannot fail a correct sampler. Each test restarts the
workers' random stream from a seed of its own name (:func:`sample`), so its draw does
not depend on the tests that ran on the pooled engine before; float32 results still differ
between CPUs. Under plain vLLM, 20 rounds from different seeds gave Z a mean of -0.13 and
an sd of 0.94 (``python -m integration_tests.sampling_rounds``; docs/sampling-exactness.md).
**Power** is computed in the test itself,
by simulating the same decision rule 1000 times on the very distributions scored
(prefixes held as sampled) under two broken samplers: temperature 1.0 instead of 0.8,
and top-p ignored. Each must reach 0.95, and the simulated false-alarm rate must stay
under 0.01: ten times the nominal rate, a margin for the normal approximation this far
into the tail.

It runs with greedy drafts and the full LM head at fixed length, and with
probabilistic drafts (the draft's own probabilities reach vLLM's rejection sampler)
with the cheap draft head (``-inf`` outside its vocabulary), adaptive exit and the
draft-length controller choosing K per step. The
draft skips five middle sublayers and is often wrong, so both branches of rejection
sampling run.

``test_draft_probabilities_follow_the_request`` checks the probabilities the draft
hands to the rejection sampler against the request's temperature, top-k and top-p.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from scipy.stats import chi2, norm
from vllm import SamplingParams

from integration_tests.exact_sampling import keep_top_p
from integration_tests.helpers import COMPILATION_MODES, QUICK_CONTROLLER, draft_lengths, switch_draft
from vllm_selfspec.tools.engine_runs import SpecDecodeCounts, chat_prompts

pytestmark = pytest.mark.engine

TEMPERATURE, TOP_K, TOP_P = 0.8, 50, 0.95
QUESTIONS = [
    "Write a short story about a robot who learns to paint.",
    "Describe your ideal weekend.",
    "Give me three ideas for a birthday party.",
    "What should I cook for dinner tonight?",
]
SAMPLES_PER_PROMPT = 64
MAX_TOKENS = 6
ALPHA_SCORE = ALPHA_PIT = 0.0005
PIT_BINS = 10
MIN_POWER = 0.95
SIMULATIONS = 1000

K = 3
MIDDLE_SKIP = {"skip_attn": [10, 14, 18, 22], "skip_mlp": [16]}
PLAIN_ENGINE = dict(dtype="float32", max_logprobs=50, enforce_eager=True)
"""Shared with test_lossless.py's plain float32 eager engine."""
SELF_SKIP_ENGINE = dict(dtype="float32", **COMPILATION_MODES["eager"])


def _self_skip_spec(draft_sample_method: str) -> dict:
    return {"method": "self_skip", "num_speculative_tokens": K, **MIDDLE_SKIP, "draft_vocab_size": 4096,
            "adaptive_exit": True, "draft_exit_target_acceptance": 0.5,
            "num_speculative_tokens_per_batch_size": [[1, 1, K]], "draft_sample_method": draft_sample_method}


HEADS = ["full-head-fixed-length", "cheap-head-adaptive-exit", "cheap-head-adaptive-exit-controller"]


def _configure(llm, head: str) -> None:
    """Switch the pooled engine's draft to the full head at fixed length, or its cheap head + exit
    rule (with the draft-length controller at its quickest for the last)."""
    if head == "full-head-fixed-length":
        switch_draft(llm, **MIDDLE_SKIP, num_speculative_tokens=K)
    else:
        vocab = llm.collective_rpc(_draft_vocab_at_start)[0]
        switch_draft(llm, **MIDDLE_SKIP, draft_vocab=vocab, adaptive_exit=True, target_acceptance=0.5,
                     num_speculative_tokens=K, controller=QUICK_CONTROLLER if head.endswith("controller") else None)


def _draft_vocab_at_start(worker) -> list[int]:
    """The draft head the engine resolved at start-up (4096 ids), kept across switches."""
    drafter = worker.model_runner.drafter
    if not hasattr(drafter, "_test_head_at_start"):
        drafter._test_head_at_start = list(drafter.draft_vocab)
    return drafter._test_head_at_start


def request_distribution(top_logprobs: np.ndarray, temperature: float, top_p: float | None) -> np.ndarray:
    """P over the top-50 tokens (descending raw logprob): temperature, then top-p as vLLM applies it."""
    scaled = top_logprobs / temperature
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs if top_p is None else keep_top_p(probs, top_p)


def decide(probs: np.ndarray, ranks: np.ndarray, pit_noise: np.ndarray) -> dict:
    """The test's decision for tokens at ``ranks`` (-1: outside the top 50) under ``probs`` [N, 50].

    ``ranks`` and ``pit_noise`` may carry leading simulation axes.
    """
    outside = ranks < 0
    rows = np.arange(probs.shape[0])
    safe = np.where(outside, 0, ranks)
    p_token = probs[rows, safe]
    impossible = (outside | (p_token <= 0)).sum(axis=-1)
    logp = np.log(np.where(probs > 0, probs, 1.0))
    mean = (probs * logp).sum(-1)
    var = (probs * logp**2).sum(-1) - mean**2
    log_p_token = np.log(np.where(p_token > 0, p_token, 1.0))
    z = (log_p_token - mean).sum(-1) / np.sqrt(var.sum())
    above = np.cumsum(probs, axis=-1) - probs
    p_above = above[rows, safe]
    pit = np.clip(p_above + pit_noise * p_token, 0, 1 - 1e-12)
    counts = np.stack([(np.floor(pit * PIT_BINS) == b).sum(-1) for b in range(PIT_BINS)], axis=-1)
    expected = ranks.shape[-1] / PIT_BINS
    chi_square = ((counts - expected) ** 2 / expected).sum(-1)
    rejected = ((impossible > 0) | (np.abs(z) > norm.ppf(1 - ALPHA_SCORE / 2))
                | (chi_square > chi2.ppf(1 - ALPHA_PIT, PIT_BINS - 1)))
    return {"impossible": impossible, "z": z, "chi_square": chi_square, "rejected": rejected}


def _rejection_rate(probs: np.ndarray, sampling: np.ndarray, rng: np.random.Generator) -> float:
    """How often the decision rule rejects tokens drawn from ``sampling`` (rows over the same 50 tokens)."""
    cdf = np.cumsum(sampling, axis=-1)
    draws = rng.random((SIMULATIONS, len(probs)))
    ranks = np.minimum((draws[..., None] > cdf[None]).sum(-1), probs.shape[-1] - 1)
    return float(decide(probs, ranks, rng.random(ranks.shape))["rejected"].mean())


def reseed(worker, seed: int) -> None:
    """Restart the worker's random stream, the one vLLM samples every request without a seed from."""
    torch.manual_seed(seed)


def sample(llm, prompts: list[str], seed: int) -> tuple[list[list[int]], list[list[int]], SpecDecodeCounts]:
    """``SAMPLES_PER_PROMPT`` continuations of each prompt, drawn from the random stream ``seed`` starts.

    Each round reseeds the workers, so rounds with different seeds are independent draws
    whatever ran on the engine before. Not per-request seeds: vLLM 0.32's CPU runner rewinds
    a request's generator when it discards a partial prefill's token, which a CPU generator
    cannot do (``CPU Generator does not use offset``).
    """
    params = SamplingParams(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, max_tokens=MAX_TOKENS,
                            ignore_eos=True)
    requests = [p for p in prompts for _ in range(SAMPLES_PER_PROMPT)]
    before = SpecDecodeCounts.read(llm)
    llm.collective_rpc(reseed, args=(seed,))
    outputs = llm.generate(requests, params, use_tqdm=False)
    counts = SpecDecodeCounts.read(llm).minus(before)
    return [list(o.prompt_token_ids) for o in outputs], [list(o.outputs[0].token_ids) for o in outputs], counts


def score(plain, prompt_ids: list[list[int]], samples: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Plain vLLM's top-50 raw logprobs after each sampled prefix, and each sampled token's rank in them.

    One prefill per distinct sampled sequence: its prompt logprobs score every position.
    """
    sequences = sorted({(tuple(p), tuple(s)) for p, s in zip(prompt_ids, samples)})
    outputs = plain.generate([{"prompt_token_ids": list(p + s)} for p, s in sequences],
                             SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=TOP_K, detokenize=False),
                             use_tqdm=False)
    top = {}
    for (p, s), output in zip(sequences, outputs):
        for j in range(1, MAX_TOKENS):
            ranked = sorted(output.prompt_logprobs[len(p) + j].items(), key=lambda kv: -kv[1].logprob)[:TOP_K]
            top[(p, s[:j])] = ([t for t, _ in ranked], [lp.logprob for _, lp in ranked])
    logprobs, ranks = [], []
    for p, s in zip(prompt_ids, samples):
        for j in range(1, MAX_TOKENS):
            tokens, values = top[(tuple(p), tuple(s[:j]))]
            logprobs.append(values)
            ranks.append(tokens.index(s[j]) if s[j] in tokens else -1)
    return np.array(logprobs), np.array(ranks)


@pytest.fixture
def plain(engines, default_model):
    """Fetched for every test, so that the pool keeps it over the self_skip engine used before."""
    return engines.get(default_model, None, **PLAIN_ENGINE)


@pytest.fixture(scope="module")
def prompts(engines, default_model):
    return chat_prompts(engines.get(default_model, None, **PLAIN_ENGINE), QUESTIONS)


@pytest.mark.parametrize("draft_sample_method, head, mode", [
    ("greedy", HEADS[0], "eager"), ("probabilistic", HEADS[2], "eager"),
    # vLLM's default mode, every mechanism on; in make test-extended (one more engine).
    pytest.param("probabilistic", HEADS[2], "compiled", marks=pytest.mark.extended),
], ids=lambda value: value)
def test_sampled_tokens_follow_the_target_distribution(engines, default_model, plain, prompts, request,
                                                       draft_sample_method, head, mode):
    llm = engines.get(default_model, _self_skip_spec(draft_sample_method),
                      dtype="float32", **COMPILATION_MODES[mode])
    _configure(llm, head)
    prompt_ids, samples, spec = sample(llm, prompts, seed=zlib.crc32(request.node.name.encode()))
    # Both branches of rejection sampling ran: accepted drafts, and rejected ones replaced
    # by a sample from the residual distribution.
    assert spec.drafts > 0 and 0 < spec.accepted_tokens < spec.draft_tokens, spec
    if head.endswith("controller"):
        steps = draft_lengths(llm)
        assert len({k for _, k in steps}) >= 2, steps  # the controller changed K
    logprobs, ranks = score(plain, prompt_ids, samples)
    probs = request_distribution(logprobs, TEMPERATURE, TOP_P)
    observed = decide(probs, ranks, np.random.default_rng(0).random(ranks.shape))

    rng = np.random.default_rng(1)
    false_alarms = _rejection_rate(probs, probs, rng)
    power_temperature = _rejection_rate(probs, request_distribution(logprobs, 1.0, TOP_P), rng)
    power_top_p = _rejection_rate(probs, request_distribution(logprobs, TEMPERATURE, None), rng)
    summary = (f"{len(ranks)} tokens, acceptance {spec.acceptance_rate:.2f}: impossible {observed['impossible']}, "
               f"z {observed['z']:.2f}, PIT chi-square {observed['chi_square']:.1f}; simulated false-alarm rate "
               f"{false_alarms:.3f}, power vs T=1.0 {power_temperature:.3f}, vs top-p ignored {power_top_p:.3f}")
    print(summary)
    assert false_alarms <= 0.01, summary
    assert power_temperature >= MIN_POWER and power_top_p >= MIN_POWER, summary
    assert not observed["rejected"], summary


def _check_draft_probabilities(worker) -> dict:
    """Wrap the drafter's ``_draft_tokens`` and compare every probability row it returns with
    the request's distribution, recomputed here from the draft's logits."""
    drafter = worker.model_runner.drafter
    report = {"rows": 0, "max_error": 0.0}
    original = drafter._draft_tokens

    def reference(logits, metadata):
        logits = logits / metadata.temperature.unsqueeze(1)
        ordered, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(logits.shape[-1]).expand_as(ordered)
        ordered = ordered.masked_fill(ranks >= metadata.top_k.unsqueeze(1), float("-inf"))
        probs = ordered.softmax(-1)
        mass_above = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_above >= metadata.top_p.unsqueeze(1), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, order, probs)

    def checking(hidden_states, metadata):
        tokens, probs, top1 = original(hidden_states, metadata)
        if probs is not None:
            expected = reference(drafter.model.compute_logits(hidden_states).float(), metadata)
            report["rows"] += probs.shape[0]
            report["max_error"] = max(report["max_error"], float((probs - expected).abs().max()))
            in_support = bool(expected.gather(1, tokens.view(-1, 1).long()).gt(0).all())
            report["tokens_in_support"] = report.get("tokens_in_support", True) and in_support
        return tokens, probs, top1

    drafter._draft_tokens = checking
    drafter._test_probability_report = report
    return {}


def _probability_report(worker) -> dict:
    drafter = worker.model_runner.drafter
    del drafter._draft_tokens  # back to the class's method
    return drafter._test_probability_report


def test_draft_probabilities_follow_the_request(engines, default_model, prompts):
    """Probabilistic drafts: the probabilities handed to the rejection sampler are the request's
    temperature, top-k and top-p applied to the draft's logits, ``-inf`` outside the cheap head
    (the full head's logits go through the same ``sample_as_requested``)."""
    llm = engines.get(default_model, _self_skip_spec("probabilistic"), **SELF_SKIP_ENGINE)
    _configure(llm, "cheap-head-adaptive-exit")
    llm.collective_rpc(_check_draft_probabilities)
    params = SamplingParams(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, max_tokens=8, ignore_eos=True)
    llm.generate(prompts * 2, params, use_tqdm=False)
    report = llm.collective_rpc(_probability_report)[0]
    assert report["rows"] > 0, report
    assert report["max_error"] < 1e-4 and report["tokens_in_support"], report


@pytest.mark.parametrize("controller", [False, True], ids=["fixed-k", "controller"])
@pytest.mark.parametrize("adaptive_exit", [False, True], ids=["fixed-length", "adaptive-exit"])
@pytest.mark.parametrize("cheap_head", [False, True], ids=["full-head", "cheap-head"])
def test_draft_loop_drafts_as_booked_without_unplanned_reads(engines, default_model, prompts, cheap_head, adaptive_exit,
                                                            controller):
    """No device-to-host sync in ``propose`` but adaptive exit's own, and every call drafts what
    the scheduler booked, for greedy and probabilistic drafts, with and without the cheap head,
    adaptive exit (a low target acceptance, so drafts do exit) and the draft-length controller.

    The worker extension's recorder (``glue/host_reads.py``) notes each host read of a
    tensor by the plugin's code: on the CPU every tensor is host memory, so it notes what
    the same code does on a GPU. Adaptive exit reads the device at its rank-agreed points
    only (``_read_on_every_rank``: at most one per draft step and one per verification);
    without it there is no read at all. The watch also records each call's booked and
    drafted length: the booked ones are the scheduler's, step for step, and a call drafts
    all it was booked unless adaptive exit stopped it.
    """
    llm = engines.get(default_model, _self_skip_spec("probabilistic"), **SELF_SKIP_ENGINE)
    vocab = llm.collective_rpc(_draft_vocab_at_start)[0] if cheap_head else []
    switch_draft(llm, **MIDDLE_SKIP, draft_vocab=vocab, adaptive_exit=adaptive_exit, target_acceptance=0.5,
                 num_speculative_tokens=K, controller=QUICK_CONTROLLER if controller else None)
    llm.collective_rpc("selfspec_watch_host_reads")
    before = SpecDecodeCounts.read(llm)
    try:
        for params in (SamplingParams(temperature=0.0, max_tokens=12),  # greedy drafts
                       SamplingParams(temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, max_tokens=12)):
            llm.generate(prompts, params, use_tqdm=False)
    finally:
        report = llm.collective_rpc("selfspec_host_reads")[0]
    spec = SpecDecodeCounts.read(llm).minus(before)
    assert report["calls"] > 0 and spec.drafts > 0, (report["calls"], spec)
    assert report["reads"] == [], report["reads"][:10]
    lengths = report["draft_lengths"]
    if adaptive_exit:
        assert 0 < len(report["agreed_reads"]) <= sum(k for k, _ in lengths) + len(lengths), report["agreed_reads"][:5]
        assert all(drafted <= k for k, drafted in lengths), lengths
        if not controller:
            assert spec.draft_tokens < K * spec.drafts, spec  # some drafts did exit early
    else:
        assert report["agreed_reads"] == [], report["agreed_reads"][:5]
        assert all(drafted == k for k, drafted in lengths), lengths
    if controller:
        steps = draft_lengths(llm)
        assert len({k for _, k in steps}) >= 2, steps
        assert [k for k, _ in lengths] == [k for _, k in steps], (lengths[:30], steps[:30])
    else:
        assert {k for k, _ in lengths} == {K}, lengths