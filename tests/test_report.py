"""The bench report's arithmetic and flags, on synthetic measurements (vLLM-free)."""

from pathlib import Path

import pytest

from vllm_selfspec.tools.bench.command import BenchSettings, Row
from vllm_selfspec.tools.bench.report import build_results, markdown

ENGINES = {
    "plain": {"shape": {"num_layers": 2, "attn_params": 10, "mlp_params": 30, "lm_head_params": 20, "hidden_size": 2},
              "speculative_config": None},
    "self_skip": {"shape": {"num_layers": 2, "attn_params": 10, "mlp_params": 30, "lm_head_params": 20,
                            "hidden_size": 2},
                  "speculative_config": {"method": "self_skip", "num_speculative_tokens": 2, "skip_attn": [1],
                                         "skip_mlp": [], "skip_source": "test"}},
}
MACHINE = {"machine": "test box", "processor": "x", "python": "3", "torch": "t", "vllm": "0.32.0", "date": "today"}


def _timers(prefill_s, decode_steps, decode_s, forward_s, draft_s=0.0):
    return {"prefill_steps": 1, "prefill_s": prefill_s, "prefill_forward_s": 0.0, "prefill_draft_s": 0.0,
            "prefill_draft_forward_s": 0.0, "decode_steps": decode_steps, "decode_s": decode_s,
            "decode_forward_s": forward_s, "decode_draft_s": draft_s, "decode_draft_forward_s": draft_s * 3 / 4}


def _settings(tmp_path):
    return BenchSettings(model="m", methods=["plain", "self_skip"], prompt_sets={"chat": ["q"]}, batch_sizes=[1, 8],
                         sampling=["greedy"], max_tokens=9, num_speculative_tokens=2, single_requests=1,
                         skip_profile=None, dtype="float32", eager=True, out=Path(tmp_path), quick=True)


def test_speedups_speed_model_and_flags(tmp_path):
    # bs 1: plain decodes 8 tokens in 8 steps of 10 ms; self_skip in 4 steps of 14 ms (E = 2).
    plain1 = Row("plain", "chat", "greedy", 1, 1, 9, 0.1 + 0.08, _timers(0.1, 8, 0.08, 0.06), 100.0,
                 token_ids=[[1] * 9])
    skip1 = Row("self_skip", "chat", "greedy", 1, 1, 9, 0.1 + 0.056, _timers(0.1, 4, 0.056, 0.024, 0.024), 100.0,
                drafts=4, draft_tokens=8, accepted_tokens=4, per_position_rates=[0.6, 0.4],
                request_acceptance_lengths=[2.0], token_ids=[[1] * 9])
    # bs 8: same costs, but the slowest request accepts less, so the batch runs 8 steps, not 4.
    plain8 = Row("plain", "chat", "greedy", 8, 8, 72, 0.1 + 0.08, _timers(0.1, 8, 0.08, 0.06), 100.0,
                 token_ids=[[1] * 9] * 8)
    skip8 = Row("self_skip", "chat", "greedy", 8, 8, 72, 0.1 + 0.112, _timers(0.1, 8, 0.112, 0.048, 0.048), 100.0,
                drafts=32, draft_tokens=64, accepted_tokens=32, per_position_rates=[0.6, 0.4],
                request_acceptance_lengths=[2.0] * 7 + [1.0], token_ids=[[1] * 9] * 7 + [[2] * 9])
    results = build_results([plain1, skip1, plain8, skip8], ENGINES, _settings(tmp_path), MACHINE, 1.0)
    rows = {(r["method"], r["batch_size"]): r for r in results["rows"]}

    bs1 = rows[("self_skip", 1)]
    assert bs1["speedup"] == pytest.approx(0.18 / 0.156)
    assert bs1["identical_to_plain"] == 1
    model = bs1["speed_model"]
    assert model["expected_tokens_per_step"] == pytest.approx(2.0)
    assert model["predicted_decode_speedup"] == pytest.approx(2.0 / (0.014 / 0.010))
    assert model["measured_decode_speedup"] == pytest.approx((8 / 0.056) / (8 / 0.08))
    assert model["predicted_speedup"] == pytest.approx(bs1["speedup"])  # end to end, prefill included
    # Faster than plain, but its draft step is far cheaper than its compute share: flagged, explained.
    assert [f[:35] for f in bs1["flags"]] == ["draft step -56% against its ideal: "]
    assert "0.30 of the plain forward (ideal 0.90" in bs1["flags"][0]
    # One draft step = 3 ms against a 7.5 ms plain forward; the draft keeps 1 - 10/100 of the compute.
    assert bs1["draft_cost_ratio"] == pytest.approx(0.003 / 0.0075)
    assert bs1["draft_cost_ideal"] == pytest.approx(0.9)
    assert bs1["draft_forward_ratio"] == pytest.approx(0.75 * 0.003 / 0.0075)
    assert bs1["draft_outside_model_share"] == pytest.approx(0.25)

    # With a cheap draft head over 2 of the 10 vocabulary rows, the head keeps 4 of its 20 weights.
    head_engines = {**ENGINES, "self_skip": {**ENGINES["self_skip"], "speculative_config": {
        **ENGINES["self_skip"]["speculative_config"], "draft_vocab_size": 2}}}
    with_head = build_results([plain1, skip1], head_engines, _settings(tmp_path), MACHINE, 1.0)
    assert with_head["rows"][1]["draft_cost_ideal"] == pytest.approx(0.9 - 16 / 100)

    bs8 = rows[("self_skip", 8)]
    assert bs8["identical_to_plain"] == 7
    assert bs8["speed_model"]["slowest_request_tokens_per_step"] == 1.0
    assert bs8["speed_model"]["predicted_speedup"] == pytest.approx(bs8["speedup"])
    assert any("below 0.98x plain" in flag for flag in bs8["flags"])

    text = markdown(results)
    assert "test box" in text and "vLLM 0.32.0" in text
    assert "**chat / greedy / batch 8**: below 0.98x plain" in text
    assert "(projections, not measurements)" in text
