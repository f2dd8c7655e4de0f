"""``vllm-selfspec doctor`` on the default model prints every line of its report."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.engine

REPORT_LINES = (
    r"platform: cpu, \S+, \d+ cores",
    r"versions: vllm-selfspec \S+, vLLM 0\.32\.\S+, torch \S+",
    r"model: \S+SmolLM2-135M-Instruct, dtype float32, eager",
    r"model runner: CPUModelRunner; attention backend: \S+",
    r"target compilation: NONE \(no CUDA graphs on cpu\)",
    r"draft compilation: eager",
    r"draft CUDA graphs: none: cpu has no CUDA graphs",
    r"draft: K=\d+, skip_attn=\[7\].*\(from shipped profile \S+\.json\)",
    r"scheduling: plain vLLM synchronous, self_skip synchronous \(the CPU platform turns async scheduling off\)",
    r"host reads in the draft loop: none over [1-9]\d* propose calls",
    r"greedy outputs identical to plain vLLM: 2/2 \(2 prompts x 1 rounds\)",
    r"batch 1, 1 alternating rounds \(median \[range\]\): plain [\d.]+ tok/s \[[\d.-]+\], self_skip [\d.]+ tok/s "
    r"\[[\d.-]+\]: [\d.]+x plain; accepted [1-9]\d*/\d+ draft tokens",
    r"verdict: healthy",
)


def test_doctor_reports_every_line(default_model):
    result = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "doctor", "--eager",
                             "--num-prompts", "2", "--max-tokens", "16", "--rounds", "1"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    for pattern in REPORT_LINES:
        assert any(re.match(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{result.stdout}"
