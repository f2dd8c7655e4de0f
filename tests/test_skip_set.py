import pytest

from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet, heuristic_skip_set


def test_build_sorts_and_reports_share():
    s = SkipSet.build(10, [7, 2], [5])
    assert s.attn == (2, 7) and s.mlp == (5,)
    assert s.num_skipped == 3 and s.skipped_share == pytest.approx(0.15)
    assert not s.runs_attn(7) and s.runs_attn(5) and not s.runs_mlp(5)


@pytest.mark.parametrize(
    "attn, mlp, field, words",
    [
        ([10], [], "skip_attn", "out of range"),
        ([-1], [], "skip_attn", "out of range"),
        ([], [3, 3], "skip_mlp", "listed twice"),
        (["3"], [], "skip_attn", "not a decoder-layer index"),
        ([True], [], "skip_attn", "not a decoder-layer index"),
    ],
)
def test_bad_indices_name_the_field(attn, mlp, field, words):
    with pytest.raises(SelfSkipConfigError, match=field) as info:
        SkipSet.build(10, attn, mlp)
    assert words in str(info.value)


def test_skipping_everything_is_refused():
    with pytest.raises(SelfSkipConfigError, match="every sublayer is skipped"):
        SkipSet.build(3, [0, 1, 2], [0, 1, 2])
    # All attention but one MLP kept is allowed.
    assert SkipSet.build(3, [0, 1, 2], [0, 1]).num_skipped == 5


def test_heuristic_skips_alternate_middle_attention_only():
    s = heuristic_skip_set(30)
    assert s.mlp == ()
    assert s.attn == (8, 10, 12, 14, 16, 18, 20, 22)
    assert all(7 <= i < 23 for i in s.attn)
    assert heuristic_skip_set(2).attn == (1,)
    for layers in range(1, 80):
        assert 0 < heuristic_skip_set(layers).num_skipped < 2 * layers
