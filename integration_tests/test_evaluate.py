"""`vllm-selfspec evaluate` end to end on the default model, short: every row, lossless, a report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.extended]


def test_evaluate_short_run(tmp_path):
    out = tmp_path / "evaluate"
    run = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "evaluate", "--out", str(out), "--eager",
                          "--max-tokens", "8", "--rounds", "1"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    variants = {(r["variant"], r["batch_size"]) for r in results["rows"]}
    for batch_size in (1, 8, 32):
        assert ("plain", batch_size) in variants and ("profile as shipped", batch_size) in variants
    for name in ("profile, schedule held at its K", "profile, adaptive exit off", "profile, full draft head",
                 "fixed: every_other_layer", "fixed: middle_block", "fixed: attention_only"):
        assert (name, 1) in variants
    # float32 greedy: every configuration, the fixed patterns included, is token-identical to plain.
    assert all(r["identical_to_plain"] for r in results["rows"] if r["variant"] != "plain")
    held = next(r for r in results["rows"] if r["variant"] == "profile, schedule held at its K")
    assert held["mean_acceptance_length"] > 1  # the held variant really drafted
    report = (out / "report.md").read_text()
    assert "## Criteria" in report and "profile as shipped >= 0.98x plain, batch 32" in report
