"""`vllm-selfspec evaluate`'s fixed patterns, criteria and report, from synthetic rows."""

from vllm_selfspec.tools.evaluate import TUNED, fixed_patterns, must_show_checks, render_report


def test_fixed_patterns_for_30_layers():
    patterns = fixed_patterns(30)
    assert patterns["every_other_layer"].attn == patterns["every_other_layer"].mlp == tuple(range(1, 30, 2))
    assert patterns["middle_block"].attn == patterns["middle_block"].mlp == tuple(range(12, 18))
    assert patterns["attention_only"].mlp == () and patterns["attention_only"].attn == tuple(range(8, 23, 2))


def _row(variant, batch_size, tokens_per_s, ratio, identical=True, drafts=None):
    if drafts is None:
        drafts = 10 if variant != "plain" else 0
    return {"variant": variant, "batch_size": batch_size, "tokens_per_s": tokens_per_s, "ratio_to_plain": ratio,
            "acceptance_rate": 0.9 if drafts else 0.0, "mean_acceptance_length": 3.0 if drafts else 1.0,
            "drafts": drafts, "identical_to_plain": None if variant == "plain" else identical}


def _rows(shipped_drafts=None, tuned_drafts=None, fixed_drafts=None, batch8_ratio=0.97):
    rows = [_row("plain", b, 100.0, 1.0) for b in (1, 8, 32)]
    rows += [_row("profile as shipped", 1, 112.0, 1.12, drafts=shipped_drafts),
             _row("profile as shipped", 8, batch8_ratio * 100, batch8_ratio, drafts=shipped_drafts),
             _row("profile as shipped", 32, 99.0, 0.99, drafts=shipped_drafts),
             _row(TUNED, 1, 111.0, 1.11, drafts=tuned_drafts),
             _row("fixed: middle_block", 1, 90.0, 0.9, drafts=fixed_drafts),
             _row("fixed: attention_only", 1, 95.0, 0.95, identical=False, drafts=fixed_drafts)]
    return rows


def _report(rows, shipped_is_plain=False):
    return render_report({"profile": "p.json", "profile_settings": {}, "dtype": "float32", "eager": True,
                          "max_tokens": 48, "rounds": 2, "held_out_prompts": {"chat": 4}, "minutes": 1.0,
                          "rows": rows, "shipped_is_plain_vllm": shipped_is_plain})


def test_criteria_and_report():
    rows = _rows()
    checks = {name: (met, figures) for name, met, figures in must_show_checks(rows)}
    assert checks["tuned profile beats the best fixed pattern, greedy batch 1"] == (
        True, "111.0 vs 95.0 tok/s (fixed: attention_only)")
    assert checks["profile as shipped >= 1.10x plain, greedy batch 1"] == (True, "1.12x")
    assert checks["profile as shipped >= 0.98x plain, batch 8"] == (False, "0.97x")
    assert checks["profile as shipped >= 0.98x plain, batch 32"] == (True, "0.99x")
    assert checks["greedy outputs identical to plain with every mechanism on"] == (
        False, "5 of 6 configurations identical, 6 of them drafting")
    report = _report(rows)
    assert "| fixed: attention_only | 1 | 95.0 | 0.95 | 0.90 | 3.00 | **no** |" in report
    assert "- **not met**: profile as shipped >= 0.98x plain, batch 8 (0.97x)" in report
    assert "- met: profile as shipped >= 0.98x plain, batch 32 (0.99x)" in report
    assert "not measured" not in report


def test_measured_batch_criteria_are_met_or_not_by_the_ratio():
    met = {name: m for name, m, _ in must_show_checks(_rows(batch8_ratio=0.98))}
    assert met["profile as shipped >= 0.98x plain, batch 8"] is True
    not_met = {name: m for name, m, _ in must_show_checks(_rows(batch8_ratio=0.97))}
    assert not_met["profile as shipped >= 0.98x plain, batch 8"] is False
    # The targets are the caller's (evaluate's --min-batched-ratio / --target-speedup).
    lenient = {name: m for name, m, _ in must_show_checks(_rows(batch8_ratio=0.97), min_batched_ratio=0.95,
                                                          target_speedup=1.5)}
    assert lenient["profile as shipped >= 0.95x plain, batch 8"] is True
    assert lenient["profile as shipped >= 1.50x plain, greedy batch 1"] is False


def test_a_profile_that_never_drafts_is_not_measured_at_batch_8_and_32():
    # Ratios that would pass if they were measured: the verdict must still not be "met".
    rows = _rows(shipped_drafts=0, batch8_ratio=1.05)
    checks = {name: (met, figures) for name, met, figures in must_show_checks(rows, shipped_is_plain=True)}
    for batch_size in (8, 32):
        met, figures = checks[f"profile as shipped >= 0.98x plain, batch {batch_size}"]
        assert met is None
        assert figures.startswith("the profile drafts at no batch size here, so self_skip is plain vLLM")
    assert checks["profile as shipped >= 1.10x plain, greedy batch 1"][0] is False
    # The batch-1 variants hold K, so they drafted: those criteria are still measured.
    assert checks["tuned profile beats the best fixed pattern, greedy batch 1"][0] is True
    assert checks["greedy outputs identical to plain with every mechanism on"] == (
        False, "5 of 6 configurations identical, 3 of them drafting")
    report = _report(rows, shipped_is_plain=True)
    assert ("- not measured: profile as shipped >= 0.98x plain, batch 8 (the profile drafts at no batch size "
            "here, so self_skip is plain vLLM; plain against itself 1.05x is run-to-run noise)") in report
    assert "- not measured: profile as shipped >= 0.98x plain, batch 32 (" in report
    assert "- met: profile as shipped" not in report


def test_comparisons_without_drafts_are_not_measured():
    rows = [{**r, "identical_to_plain": True if r["identical_to_plain"] is not None else None}
            for r in _rows(shipped_drafts=0, tuned_drafts=0, fixed_drafts=0)]
    checks = {name: (met, figures) for name, met, figures in must_show_checks(rows, shipped_is_plain=True)}
    assert checks["tuned profile beats the best fixed pattern, greedy batch 1"] == (
        None, "the tuned profile drafted nothing with its K held; 111.0 vs 95.0 tok/s (fixed: attention_only)")
    assert checks["greedy outputs identical to plain with every mechanism on"] == (
        None, "no compared configuration drafted; 6 of 6 configurations identical, 0 of them drafting")
    report = _report(rows, shipped_is_plain=True)
    assert "- not measured: tuned profile beats the best fixed pattern, greedy batch 1 (" in report
    assert "- not measured: greedy outputs identical to plain with every mechanism on (" in report
    assert "- met:" not in report


def test_rows_without_a_drafts_count_drafted_where_drafts_were_accepted():
    """results.json written before rows counted drafts: accepted drafts show the row drafted."""
    rows = [{k: v for k, v in r.items() if k != "drafts"} for r in _rows(shipped_drafts=0)]
    met = {name: m for name, m, _ in must_show_checks(rows, shipped_is_plain=True)}
    assert met["tuned profile beats the best fixed pattern, greedy batch 1"] is True
    assert met["greedy outputs identical to plain with every mechanism on"] is False
    for r in rows:
        r["mean_acceptance_length"] = 1.0
    met = {name: m for name, m, _ in must_show_checks(rows, shipped_is_plain=True)}
    assert met["tuned profile beats the best fixed pattern, greedy batch 1"] is None
    assert met["greedy outputs identical to plain with every mechanism on"] is None


def _with_rounds(rows, rates):
    """Rows with per-round speeds: ``rates[(variant, batch_size)]`` (plain's rounds 100 tok/s each)."""
    out = []
    for r in rows:
        rounds = rates.get((r["variant"], r["batch_size"]), [100.0, 100.0, 100.0] if r["variant"] == "plain" else None)
        out.append({**r, "round_rates": rounds} if rounds else r)
    return out


def test_speed_verdicts_only_outside_the_rounds_noise():
    rows = _with_rounds(_rows(), {
        ("profile as shipped", 1): [105.0, 112.0, 116.0],  # straddles 1.10x: no verdict
        ("profile as shipped", 8): [96.0, 97.0, 97.5],  # every round under 0.98x: not met
        ("profile as shipped", 32): [98.0, 99.0, 101.0],  # every round at or over 0.98x: met
        (TUNED, 1): [100.0, 111.0, 120.0],  # overlaps the best fixed pattern's rounds: no verdict
        ("fixed: attention_only", 1): [94.0, 95.0, 101.0],
    })
    checks = {name: (met, figures) for name, met, figures in must_show_checks(rows)}
    assert checks["profile as shipped >= 1.10x plain, greedy batch 1"] == (None, "1.12x (rounds 1.05-1.16x)")
    assert checks["profile as shipped >= 0.98x plain, batch 8"] == (False, "0.97x (rounds 0.96-0.97x)")
    assert checks["profile as shipped >= 0.98x plain, batch 32"] == (True, "0.99x (rounds 0.98-1.01x)")
    met, figures = checks["tuned profile beats the best fixed pattern, greedy batch 1"]
    assert met is None and figures.endswith("within the rounds' noise: 100.0-120.0 vs 94.0-101.0 tok/s")
    rows = _with_rounds(_rows(), {(TUNED, 1): [102.0, 111.0, 120.0], ("fixed: attention_only", 1): [94.0, 95.0, 101.0]})
    assert dict((n, m) for n, m, _ in must_show_checks(rows))[
        "tuned profile beats the best fixed pattern, greedy batch 1"] is True


def test_identity_is_a_criterion_in_float32_only():
    rows = _rows()  # one configuration differs from plain vLLM
    assert dict((n, m) for n, m, _ in must_show_checks(rows))[
        "greedy outputs identical to plain with every mechanism on"] is False
    met, figures = {n: (m, f) for n, m, f in must_show_checks(rows, dtype="bfloat16")}[
        "greedy outputs identical to plain with every mechanism on"]
    assert met is None and figures.startswith("identity is checked in float32; this run used bfloat16")
