"""self_skip drives Mistral-, Qwen2- and Qwen3-style models (tiny random weights), losslessly.

Llama is covered on the real default model by test_lossless.py. Random weights say
nothing about speed or acceptance; they exercise each architecture's module layout.
"""

from __future__ import annotations

import pytest

from integration_tests.helpers import first_difference, greedy_run

pytestmark = pytest.mark.engine


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "qwen3"])
def test_greedy_identical_on_tiny_model(engines, tiny_model_factory, kind):
    model = tiny_model_factory(kind)
    engine = dict(dtype="float32", enforce_eager=True, max_model_len=1024)
    plain = greedy_run(engines.get(model, None, **engine), singles=0, num_prompts=8, max_tokens=32)
    # Skip one attention and one MLP sublayer of four layers: drafts are imperfect.
    spec = {"method": "self_skip", "num_speculative_tokens": 3, "skip_attn": [1], "skip_mlp": [2]}
    run = greedy_run(engines.get(model, spec, **engine), singles=0, num_prompts=8, max_tokens=32)
    for i, (ref, got) in enumerate(zip(plain.batched, run.batched)):
        assert got == ref, f"{kind} prompt {i} diverges at token {first_difference(ref, got)}"
    assert run.spec.drafts > 0 and run.spec.accepted_tokens > 0
