"""Rank agreement on the draft plan (vLLM-free)."""

import pytest

from vllm_selfspec.core.ranks import check_ranks_agree
from vllm_selfspec.core.skip_set import SelfSkipConfigError


def test_identical_plans_pass():
    check_ranks_agree(["skip_attn=[1]"] * 4)
    check_ranks_agree(["skip_attn=[1]"])


def test_differing_rank_is_named_and_marked():
    with pytest.raises(SelfSkipConfigError) as caught:
        check_ranks_agree(["skip_attn=[1]", "skip_attn=[1]", "skip_attn=[2]", "skip_attn=[1]"])
    message = str(caught.value)
    assert "rank 2: skip_attn=[2]   <-- differs from rank 0" in message
    assert message.count("differs") == 1
    assert "skip_attn/skip_mlp" in message and "same vllm-selfspec version" in message
