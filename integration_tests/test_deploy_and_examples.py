"""The Ray rehearsals run as documented: deploy/local_ray_tp.sh and examples/ray_tensor_parallel.py."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration_tests.helpers import CPU_SHM_SEGMENTS, removing_leaked_cpu_shm
from integration_tests.server import free_port

pytestmark = [pytest.mark.engine, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]


def test_local_ray_tp_script():
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PORT": str(free_port()),
        "RAY_PORT": str(free_port()),
    }
    before = set(glob.glob(CPU_SHM_SEGMENTS))
    result = subprocess.run([str(ROOT / "deploy" / "local_ray_tp.sh")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert set(glob.glob(CPU_SHM_SEGMENTS)) <= before, "the script left CPU all-reduce segments behind"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test-only Ray-on-CPU shim is active" in result.stdout
    assert "== OK: Ray tensor parallelism 2 with self_skip served requests" in result.stdout


def test_ray_tensor_parallel_example_rehearsal():
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "INFO"}
    with removing_leaked_cpu_shm():
        result = subprocess.run([sys.executable, str(ROOT / "examples" / "ray_tensor_parallel.py"),
                                 "--tiny-on-cpu"], env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert result.stdout.count("\n---") == 2  # both prompts answered
    assert "all 2 tensor-parallel ranks draft with vllm-selfspec" in output
