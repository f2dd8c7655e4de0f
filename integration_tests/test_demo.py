"""``vllm-selfspec demo``, short: its engines start as ``cores_for_parallel_start`` allows on this
host (at once on a CPU host with exactly two usable cores, else one after another), drafts
happen, and every output is plain vLLM's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from vllm_selfspec.tools.engine_runs import OMP_BINDING_ENV_VAR, cores_for_parallel_start

pytestmark = pytest.mark.engine


def test_demo_starts_its_engines_as_the_host_allows_and_matches_plain_vllm(default_model):
    # Without the suite's per-worker binding, as a user runs it: the engines start at once.
    environ = {k: v for k, v in os.environ.items() if k != OMP_BINDING_ENV_VAR}
    result = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "demo", "--eager",
                             "--num-prompts", "2", "--num-single-prompts", "1", "--max-tokens", "16",
                             "--rounds", "1"], env=environ, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    lines = result.stdout.splitlines()
    if cores_for_parallel_start(True, os.sched_getaffinity(0), environ):
        started = (r"engines started at once, each worker on its own core of \[\d+, \d+\], then every "
                   r"worker moved to core \d+ for the measurements")
    else:
        started = r"engines started one after another"
    assert any(re.fullmatch(started, line) for line in lines), result.stdout
    drafting_rows = [line for line in lines if line.startswith("  self_skip, drafting held on:")]
    assert len(drafting_rows) == 2, result.stdout
    for row in drafting_rows:
        assert re.search(r"accepted [1-9]\d*/\d+ draft tokens", row), row
    assert "outputs identical to plain vLLM: 3/3" in lines, result.stdout
