"""The memory plan's arithmetic, and that deploy/README.md shows what it computes."""

from pathlib import Path

import pytest

from vllm_selfspec.core.memory_plan import LLAMA_7B, LLAMA_65B, GpuBudget, markdown_table, plan_row


def test_kv_bytes_per_token_of_llama_65b():
    assert LLAMA_65B.kv_bytes_per_token(2) == 2 * 80 * 64 * 128 * 2


def test_self_skip_holds_more_kv_than_a_separate_draft():
    for size in (4, 8):
        own = plan_row(LLAMA_65B, None, size)
        other = plan_row(LLAMA_65B, LLAMA_7B, size)
        assert own.weights_gb_per_gpu == pytest.approx(65.2 * 2 / size)
        assert other.weights_gb_per_gpu == pytest.approx((65.2 + 6.74) * 2 / size)
        assert other.kv_tokens < own.kv_tokens
    assert plan_row(LLAMA_65B, None, 8).kv_tokens > 2 * plan_row(LLAMA_65B, None, 4).kv_tokens


def test_model_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        plan_row(LLAMA_65B, None, 1, GpuBudget(memory_gb=80))
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        plan_row(LLAMA_65B, None, 0)


def test_deploy_readme_shows_the_computed_table():
    readme = (Path(__file__).resolve().parents[1] / "deploy" / "README.md").read_text()
    assert markdown_table() in readme
