"""`vllm-selfspec evaluate`'s fixed patterns, criteria and report, from synthetic rows."""

from vllm_selfspec.evaluate import TUNED, fixed_patterns, must_show_checks, render_report


def test_fixed_patterns_for_30_layers():
    patterns = fixed_patterns(30)
    assert patterns["every_other_layer"].attn == patterns["every_other_layer"].mlp == tuple(range(1, 30, 2))
    assert patterns["middle_block"].attn == patterns["middle_block"].mlp == tuple(range(12, 18))
    assert patterns["attention_only"].mlp == () and patterns["attention_only"].attn == tuple(range(8, 23, 2))


def _row(variant, batch_size, tokens_per_s, ratio, identical=True):
    return {"variant": variant, "batch_size": batch_size, "tokens_per_s": tokens_per_s, "ratio_to_plain": ratio,
            "acceptance_rate": 0.9, "mean_acceptance_length": 3.0,
            "identical_to_plain": None if variant == "plain" else identical}


def test_criteria_and_report():
    rows = [_row("plain", b, 100.0, 1.0) for b in (1, 8, 32)]
    rows += [_row("profile as shipped", 1, 112.0, 1.12), _row("profile as shipped", 8, 97.0, 0.97),
             _row("profile as shipped", 32, 99.0, 0.99), _row(TUNED, 1, 111.0, 1.11),
             _row("fixed: middle_block", 1, 90.0, 0.9), _row("fixed: attention_only", 1, 95.0, 0.95, identical=False)]
    checks = {name: (met, figures) for name, met, figures in must_show_checks(rows)}
    assert checks["tuned profile beats the best fixed pattern, greedy batch 1"] == (
        True, "111.0 vs 95.0 tok/s (fixed: attention_only)")
    assert checks["profile as shipped >= 1.10x plain, greedy batch 1"] == (True, "1.12x")
    assert checks["profile as shipped >= 0.98x plain, batch 8"] == (False, "0.97x")
    assert checks["profile as shipped >= 0.98x plain, batch 32"][0]
    assert checks["greedy outputs identical to plain with every mechanism on"] == (
        False, "5 of 6 configurations identical")
    plain_by_construction = {name: met for name, met, _ in must_show_checks(rows, shipped_is_plain=True)}
    assert plain_by_construction["profile as shipped >= 0.98x plain, batch 8"]
    assert not plain_by_construction["profile as shipped >= 1.10x plain, greedy batch 1"]
    report = render_report({"profile": "p.json", "profile_settings": {}, "dtype": "float32", "eager": True,
                            "max_tokens": 48, "rounds": 2, "held_out_prompts": {"chat": 4}, "minutes": 1.0,
                            "rows": rows})
    assert "| fixed: attention_only | 1 | 95.0 | 0.95 | 0.90 | 3.00 | **no** |" in report
    assert "- **not met**: profile as shipped >= 0.98x plain, batch 8 (0.97x)" in report
