"""`vllm-selfspec bench --quick`: all four methods side by side, and a complete report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine


@pytest.mark.extended
def test_quick_bench_writes_a_complete_report(tmp_path, default_model):
    out = tmp_path / "report"
    command = [str(Path(sys.executable).parent / "vllm-selfspec"), "bench", "--quick", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    methods = ("plain", "self_skip", "ngram", "draft_model")
    assert {(r["method"], r["sampling"], r["batch_size"]) for r in rows} == {
        (m, s, b) for m in methods for s in ("greedy", "random") for b in (1, 4)
    }
    for row in rows:
        assert row["tokens_per_s"] > 0 and row["peak_worker_rss_mib"] > 0
        assert row["output_tokens"] == row["requests"] * 16  # ignore_eos: every request runs to max_tokens
        if row["method"] == "plain":
            continue
        assert row["speedup"] > 0 and len(row["per_position_acceptance"]) == 4
        if row["sampling"] == "greedy":  # float32: every method is lossless
            assert row["identical_to_plain"] == row["requests"]
        if row["method"] in ("self_skip", "draft_model"):
            model = row["speed_model"]
            assert model["predicted_speedup"] > 0 and 0 < model["draft_cost"]
            assert row["draft_ms_per_decode_step"] > 0
    # The target as its own draft accepts every greedy draft.
    assert all(r["mean_acceptance_length"] == 5.0 for r in rows
               if r["method"] == "draft_model" and r["sampling"] == "greedy")
    # Every self_skip row below 0.98x plain carries a flag.
    for row in rows:
        if row["method"] == "self_skip" and row["speedup"] < 0.98:
            assert any("below 0.98x plain" in flag for flag in row["flags"])

    report = (out / "report.md").read_text()
    machine = results["machine"]
    assert machine["vllm"] in report and machine["machine"] in report and "K=4" in report
    for section in ("## Flags", "## Throughput", "## Acceptance", "## Draft cost and the speed model",
                    "## Peak memory", "## Projections for large models (projections, not measurements)"):
        assert section in report
    for png in ("speedup_vs_batch_size.png", "acceptance_per_position.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
