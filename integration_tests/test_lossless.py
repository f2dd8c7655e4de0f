"""Greedy self_skip output is token-identical to plain vLLM on the default model.

float32: exact identity, batched and one request at a time, K in {1, 4, 8}; and with
the cheap draft head, adaptive exit and a batch-size schedule on.
bfloat16: plain vLLM itself is not batch-invariant, so every divergence must sit at
a near-tie of the plain model (top-two logprob gap below NEAR_TIE_EPSILON).
Both compilation modes: vLLM's default (torch.compile) and enforce_eager.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from integration_tests.helpers import COMPILATION_MODES, first_difference, greedy_run, varied_prompts
from vllm_selfspec.engine_runs import make_llm, release

pytestmark = pytest.mark.engine

NEAR_TIE_EPSILON = 0.5
"""Largest top-two logprob gap (nats) of the plain bfloat16 model at which a divergence is
accepted as rounding: bfloat16 keeps 8 significant bits, so logits near 20 are only
resolved to about 0.1, and batch shape changes the summation order."""


@pytest.fixture(scope="module", params=list(COMPILATION_MODES))
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def plain_f32(default_model, mode):
    run = greedy_run(default_model, None, dtype="float32", **COMPILATION_MODES[mode])
    # The premise of exact comparison: float32 plain vLLM is batch-invariant here.
    assert run.batched == run.single
    return run


FIXED_LENGTH_FULL_HEAD = {"adaptive_exit": False, "draft_vocab_size": 0}
"""The draft without issue 3's mechanisms, so every draft runs K tokens."""


def _drafting_at_every_batch_size(k: int) -> dict:
    """Hold K at every batch size (the shipped schedule may turn drafting off for batches)."""
    return {"num_speculative_tokens_per_batch_size": [[1, 1, k]]}


@pytest.mark.parametrize("k", [1, 4, 8])
def test_float32_greedy_identical(default_model, mode, plain_f32, k):
    run = greedy_run(default_model, {"method": "self_skip", "num_speculative_tokens": k, **FIXED_LENGTH_FULL_HEAD,
                                     **_drafting_at_every_batch_size(k)},
                     dtype="float32", **COMPILATION_MODES[mode])
    assert len(run.batched) == 16 and any(len(t) == 128 for t in run.batched)
    for i, (ref, got) in enumerate(zip(plain_f32.batched, run.batched)):
        assert got == ref, f"prompt {i} (batched) diverges at token {first_difference(ref, got)}"
    for i, (ref, got) in enumerate(zip(plain_f32.single, run.single)):
        assert got == ref, f"prompt {i} (single) diverges at token {first_difference(ref, got)}"
    # vLLM's own spec-decode metrics count the self_skip drafts, per position.
    assert run.spec.drafts > 0 and run.spec.draft_tokens == k * run.spec.drafts
    assert len(run.spec.accepted_per_position) == k
    assert 0 < run.spec.accepted_tokens == sum(run.spec.accepted_per_position)


def test_float32_greedy_identical_with_every_mechanism_on(default_model, mode, plain_f32):
    """Cheap draft head and adaptive exit, with K held, and with a schedule that drafts only
    for single requests (batched steps then run with K=0 inside the speculative engine)."""
    k = 6
    on = {"method": "self_skip", "num_speculative_tokens": k, "draft_vocab_size": 4096, "adaptive_exit": True}
    held = greedy_run(default_model, {**on, **_drafting_at_every_batch_size(k)}, dtype="float32",
                      **COMPILATION_MODES[mode])
    guarded = greedy_run(default_model, {**on, "num_speculative_tokens_per_batch_size": [[1, 1, k], [2, 256, 0]]},
                         dtype="float32", **COMPILATION_MODES[mode])
    for name, run in (("held K", held), ("K only at batch size 1", guarded)):
        for i, (ref, got) in enumerate(zip(plain_f32.batched, run.batched)):
            assert got == ref, f"{name}: prompt {i} (batched) diverges at token {first_difference(ref, got)}"
        for i, (ref, got) in enumerate(zip(plain_f32.single, run.single)):
            assert got == ref, f"{name}: prompt {i} (single) diverges at token {first_difference(ref, got)}"
        # Adaptive exit ended some drafts early, and drafting did happen.
        assert run.spec.drafts > 0 and run.spec.draft_tokens < k * run.spec.drafts
        assert 0 < run.spec.accepted_tokens <= run.spec.draft_tokens
    # The schedule kept batched steps from drafting: fewer drafts than with K held.
    assert guarded.spec.drafts < held.spec.drafts


def test_bfloat16_divergences_are_near_ties(default_model, mode):
    engine = COMPILATION_MODES[mode]
    llm = make_llm(default_model, None, dtype="bfloat16", **engine)
    try:
        prompts = varied_prompts(llm)
        ref = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=128, logprobs=2),
                           use_tqdm=False)
    finally:
        release(llm)
    run = greedy_run(default_model, {"method": "self_skip", "num_speculative_tokens": 4},
                     dtype="bfloat16", single=False, **engine)
    gaps = []
    for i, (out, got) in enumerate(zip(ref, run.batched)):
        expected = list(out.outputs[0].token_ids)
        at = first_difference(expected, got)
        if at is None:
            continue
        assert at < len(expected) and at < len(got), f"prompt {i}: lengths differ without a token flip"
        top = sorted(out.outputs[0].logprobs[at].values(), key=lambda lp: -lp.logprob)
        gap = top[0].logprob - top[1].logprob
        gaps.append(gap)
        assert gap < NEAR_TIE_EPSILON, (
            f"prompt {i} diverges at token {at} where plain's top-two gap is {gap:.3f} >= "
            f"{NEAR_TIE_EPSILON}: not a rounding near-tie"
        )
    # Most prompts must still match exactly; a broken drafter diverges everywhere.
    assert len(gaps) <= len(prompts) // 2, f"{len(gaps)} of {len(prompts)} prompts diverged"
