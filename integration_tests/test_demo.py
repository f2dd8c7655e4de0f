"""``vllm-selfspec demo``, short: its engines start at once on this 2-core machine, drafts happen,
and every output is plain vLLM's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from vllm_selfspec.tools.engine_runs import OMP_BINDING_ENV_VAR

pytestmark = pytest.mark.engine


def test_demo_starts_its_engines_at_once_and_matches_plain_vllm(default_model):
    # Without the suite's per-worker binding, as a user runs it: the engines start at once.
    environ = {k: v for k, v in os.environ.items() if k != OMP_BINDING_ENV_VAR}
    result = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "demo", "--eager",
                             "--num-prompts", "2", "--num-single-prompts", "1", "--max-tokens", "16",
                             "--rounds", "1"], env=environ, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    assert any(re.fullmatch(r"engines started at once, each worker on its own core of \[\d+, \d+\], then every "
                            r"worker moved to core \d+ for the measurements", line) for line in lines), result.stdout
    drafting_rows = [line for line in lines if line.startswith("  self_skip, drafting held on:")]
    assert len(drafting_rows) == 2, result.stdout
    for row in drafting_rows:
        assert re.search(r"accepted [1-9]\d*/\d+ draft tokens", row), row
    assert "outputs identical to plain vLLM: 3/3" in lines, result.stdout
