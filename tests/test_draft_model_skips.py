"""``LayerSkipDraftModel`` over recording fake modules: it bypasses exactly the skip set's sublayers."""

import random

import pytest
import torch
from torch import nn

from vllm_selfspec.core.skip_set import SkipSet
from vllm_selfspec.glue.draft_model import LayerSkipDraftModel

NUM_LAYERS = 10
HIDDEN = 3
EMBED_SCALE = 2.0 ** (2 * NUM_LAYERS)
"""Token ids are embedded above every sublayer constant, so the sum of the hidden state encodes both."""


def constant(layer: int, part: str) -> float:
    """What a sublayer adds to the residual stream: a distinct power of two per sublayer."""
    return 2.0 ** (2 * layer + (part == "mlp"))


class RecordingNorm(nn.Module):
    """An identity RMSNorm: ``norm(x)`` returns x, ``norm(x, residual)`` the fused add twice."""

    def __init__(self, log: list, layer, part: str):
        super().__init__()
        self.log, self.layer, self.part = log, layer, part

    def forward(self, x, residual=None):
        self.log.append((self.layer, self.part, x[0, 0].item()))
        if residual is None:
            return x
        total = x + residual
        return total, total


class RecordingSublayer(nn.Module):
    """Attention or MLP that records its input and returns its constant."""

    def __init__(self, log: list, layer: int, part: str):
        super().__init__()
        self.log, self.layer, self.part = log, layer, part

    def forward(self, hidden_states, positions=None):
        assert (positions is not None) == (self.part == "self_attn")
        self.log.append((self.layer, self.part, hidden_states[0, 0].item()))
        return torch.full_like(hidden_states, constant(self.layer, self.part))


class FakeLayer(nn.Module):
    def __init__(self, log: list, layer: int):
        super().__init__()
        self.input_layernorm = RecordingNorm(log, layer, "input_layernorm")
        self.self_attn = RecordingSublayer(log, layer, "self_attn")
        self.post_attention_layernorm = RecordingNorm(log, layer, "post_attention_layernorm")
        self.mlp = RecordingSublayer(log, layer, "mlp")


class FakeDecoder(nn.Module):
    def __init__(self, log: list):
        super().__init__()
        self.layers = nn.ModuleList(FakeLayer(log, i) for i in range(NUM_LAYERS))
        self.norm = RecordingNorm(log, "final", "norm")

    def embed_input_ids(self, input_ids):
        return input_ids.to(torch.float64).unsqueeze(-1).expand(-1, HIDDEN) * EMBED_SCALE


class FakeCausalLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.log: list = []
        self.model = FakeDecoder(self.log)


def _random_skip_set() -> SkipSet:
    all_sublayers = [(i, part) for i in range(NUM_LAYERS) for part in ("attn", "mlp")]
    chosen = random.Random(0).sample(all_sublayers, k=round(0.4 * len(all_sublayers)))
    return SkipSet.build(NUM_LAYERS, [i for i, p in chosen if p == "attn"], [i for i, p in chosen if p == "mlp"])


SKIP_SETS = {
    "nothing": SkipSet.build(NUM_LAYERS, [], []),
    "one-attention": SkipSet.build(NUM_LAYERS, [4], []),
    "one-mlp": SkipSet.build(NUM_LAYERS, [], [0]),
    "attention-only": SkipSet.build(NUM_LAYERS, [1, 2, 5, 6, 9], []),
    "mlp-only": SkipSet.build(NUM_LAYERS, [], [0, 3, 4, 8]),
    "mixed": SkipSet.build(NUM_LAYERS, [2, 3, 7], [3, 5, 9]),
    "random-40%": _random_skip_set(),
    "all-but-one-mlp": SkipSet.build(NUM_LAYERS, range(NUM_LAYERS), set(range(NUM_LAYERS)) - {6}),
    "all-but-one-attention": SkipSet.build(NUM_LAYERS, set(range(NUM_LAYERS)) - {0}, range(NUM_LAYERS)),
}


def expected_run(skip_set: SkipSet) -> list[tuple[int, str]]:
    """The (layer, part) pairs the draft must call, in order: norm then sublayer, for each kept sublayer."""
    calls = []
    for i in range(NUM_LAYERS):
        if i not in skip_set.attn:
            calls += [(i, "input_layernorm"), (i, "self_attn")]
        if i not in skip_set.mlp:
            calls += [(i, "post_attention_layernorm"), (i, "mlp")]
    return calls + [("final", "norm")]


def test_random_skip_set_has_forty_percent():
    assert SKIP_SETS["random-40%"].skipped_share == pytest.approx(0.4)
    assert SKIP_SETS["random-40%"].attn and SKIP_SETS["random-40%"].mlp


@pytest.mark.parametrize("name", SKIP_SETS)
def test_draft_runs_exactly_the_kept_sublayers(name):
    skip_set = SKIP_SETS[name]
    target = FakeCausalLM()
    draft = LayerSkipDraftModel(target, skip_set)
    input_ids = torch.tensor([3, 7])
    hidden = draft(input_ids=input_ids, positions=torch.tensor([11, 12]))

    calls = [(layer, part) for layer, part, _ in target.log]
    assert calls == expected_run(skip_set)
    ran = {(layer, part) for layer, part in calls if part in ("self_attn", "mlp")}
    skipped = {(i, "self_attn") for i in skip_set.attn} | {(i, "mlp") for i in skip_set.mlp}
    assert ran | skipped == {(i, p) for i in range(NUM_LAYERS) for p in ("self_attn", "mlp")}
    assert not ran & skipped

    # Each kept sublayer sees the residual stream so far; skipped ones add nothing to it.
    stream = 3 * EMBED_SCALE
    for layer, part, seen in target.log:
        if part in ("self_attn", "mlp"):
            assert seen == stream, (layer, part)
            stream += constant(layer, part)
    added = sum(constant(layer, part) for layer, part in ran)
    assert stream == 3 * EMBED_SCALE + added
    expected = (input_ids.to(torch.float64) * EMBED_SCALE + added).unsqueeze(-1).expand(-1, HIDDEN)
    assert torch.equal(hidden, expected)
