"""The speed model (vLLM-free)."""

import pytest

from vllm_selfspec.core.speed_model import (
    DRAFT_AND_VERIFY_RESULTS,
    MeasuredStepTimes,
    SpeedModelInputs,
    expected_tokens_per_step,
    geometric_per_position_rates,
    inputs_from_measurements,
    kept_compute_share,
    project,
)


def test_expected_tokens_and_the_standard_formula():
    rates = geometric_per_position_rates(0.8, 4)
    assert rates == pytest.approx([0.8, 0.64, 0.512, 0.4096])
    # (1 - a^(K+1)) / (1 - a), the closed form in Decoding Speculative Decoding
    assert expected_tokens_per_step(rates) == pytest.approx((1 - 0.8**5) / 0.2)
    with pytest.raises(ValueError, match="acceptance"):
        geometric_per_position_rates(1.2, 4)


def test_predicted_speedup_and_ceiling():
    inputs = SpeedModelInputs(per_position_rates=(0.9, 0.8, 0.7, 0.6), draft_cost=0.5, verify_cost=1.0,
                              overhead=0.2)
    assert inputs.step_cost == pytest.approx(3.2)
    assert inputs.predicted_speedup() == pytest.approx(4.0 / 3.2)
    assert inputs.ceiling_speedup() == pytest.approx(5 / 3.2)


def test_inputs_from_measured_step_times():
    plain = MeasuredStepTimes(step_s=0.040, target_forward_s=0.030, draft_s=0.0)
    spec = MeasuredStepTimes(step_s=0.200, target_forward_s=0.036, draft_s=0.120)
    inputs = inputs_from_measurements([1.0, 1.0, 0.5, 0.5], plain, spec)
    assert inputs.draft_cost == pytest.approx(0.120 / 4 / 0.040)
    assert inputs.verify_cost == pytest.approx(0.036 / 0.040)
    assert inputs.overhead == pytest.approx((0.200 - 0.036 - 0.120) / 0.040)
    # The decomposition adds back up to the measured step: E / (spec step / plain step).
    assert inputs.predicted_speedup() == pytest.approx(4.0 / (0.200 / 0.040))
    with pytest.raises(ValueError, match="per-position"):
        inputs_from_measurements([], plain, spec)


def test_kept_compute_share():
    assert kept_compute_share(30, [7, 26], [], attn_share=0.0066, mlp_share=0.0197) == pytest.approx(1 - 2 * 0.0066)
    assert kept_compute_share(30, [], [0, 1], attn_share=0.0066, mlp_share=0.0197) == pytest.approx(1 - 2 * 0.0197)
    with pytest.raises(ValueError, match="more than the whole"):
        kept_compute_share(30, [], [], attn_share=0.02, mlp_share=0.02)


def test_projections_use_the_published_skip_sets():
    by_model = {p.model: p for p in DRAFT_AND_VERIFY_RESULTS}
    # 70B skips more of its weights than 13B (84 of 160 sublayers against 34 of 80).
    assert by_model["LLaMA-2-70B"].kept_compute_share < by_model["LLaMA-2-13B"].kept_compute_share < 0.7
    for published in DRAFT_AND_VERIFY_RESULTS:
        projected = project(published, 4).predicted_speedup()
        assert 1.0 < projected < published.reported_speedup
        assert project(published, 4, overhead=0.1).predicted_speedup() < projected


def test_speculative_decode_steps_are_discrete_and_wait_for_the_slowest():
    from vllm_selfspec.core.speed_model import speculative_decode_steps

    assert speculative_decode_steps(15, [2.83], batched=False) == 6  # 5.3 steps round up
    assert speculative_decode_steps(16, [4.0, 4.0], batched=False) == 8  # one after another
    assert speculative_decode_steps(16, [4.0, 2.0, 4.0], batched=True) == 8  # the batch waits for E=2
    with pytest.raises(ValueError, match="acceptance length"):
        speculative_decode_steps(16, [], batched=True)


def test_the_readme_shows_the_projection_table_this_module_prints():
    from pathlib import Path

    from vllm_selfspec.core.speed_model import projection_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert projection_table() in readme, "README.md: paste `python -m vllm_selfspec.core.speed_model` again"


def test_the_heuristic_skip_set_leaves_a_large_model_almost_nothing_to_gain():
    from vllm_selfspec.core.skip_set import heuristic_skip_set
    from vllm_selfspec.core.speed_model import LLAMA_3_SHAPES, kept_weight_share

    for name, num_layers, attn, mlp, head in LLAMA_3_SHAPES:
        kept = kept_weight_share(num_layers, attn, mlp, head, len(heuristic_skip_set(num_layers).attn), 0)
        assert 0.95 < kept < 0.96, name
        # Even a draft accepted every time gains under 5% at K = 4: a profile from `tune` is how to gain.
        perfect = SpeedModelInputs(per_position_rates=(1.0,) * 4, draft_cost=kept, verify_cost=1.0, overhead=0.0)
        assert 1.0 < perfect.predicted_speedup() < 1.05, name
