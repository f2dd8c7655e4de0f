"""``vllm-selfspec doctor`` on the default model prints every line of its report, and refuses a
measurement too short for a verdict before any engine starts."""

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
    # As a user starts it on this CPU, the shipped profile's schedule drafts at no batch size.
    r"scheduling: plain vLLM synchronous, self_skip synchronous \(no speculative decoding: the schedule drafts "
    r"at no batch size\); the CPU platform turns async scheduling off",
    r"host reads in the draft loop: none over [1-9]\d* propose calls",
    r"drafting held on, 2 prompts in one batch: greedy outputs identical to plain vLLM: 2/2 \(float32: exact\); "
    r"accepted [1-9]\d*/\d+ draft tokens",
    r'as configured \(\{"method": "self_skip"\}\): .+',
    r"batch 1, 3 alternating rounds \(median \[range\]\): plain [\d.]+ tok/s \[[\d.-]+\], self_skip [\d.]+ tok/s "
    r"\[[\d.-]+\]: [\d.]+x plain \(rounds [\d.]+-[\d.]+x\)",
    r"verdict: healthy",
)


def test_doctor_reports_every_line(default_model):
    result = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "doctor", "--eager",
                             "--num-prompts", "2", "--max-tokens", "16", "--rounds", "3"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    for pattern in REPORT_LINES:
        assert any(re.match(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{result.stdout}"


def test_doctor_refuses_fewer_than_three_rounds():
    result = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "doctor", "--rounds", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--rounds: must be at least 3" in result.stderr, result.stderr[-2000:]
