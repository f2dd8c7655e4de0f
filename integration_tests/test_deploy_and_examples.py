"""The Ray rehearsals run as documented: deploy/local_ray_tp.sh and examples/ray_tensor_parallel.py."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from integration_tests.helpers import CPU_SHM_SEGMENTS, removing_leaked_cpu_shm
from integration_tests.server import free_port
from vllm_selfspec.tools.model_prep import cache_dir

pytestmark = [pytest.mark.engine, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]


def _new_user_env(home: Path) -> dict[str, str]:
    """This environment as a user who never ran Ray: an empty HOME, no Ray token settings, no
    thread binding (the test workers' one-core binding). The converted default model stays
    where ``make setup`` put it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k != "VLLM_CPU_OMP_THREADS_BIND"}
    return {**env, "HOME": str(home), "VLLM_SELFSPEC_CACHE": str(cache_dir())}


def test_local_ray_tp_script(tmp_path):
    env = {
        **_new_user_env(tmp_path),
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
    assert not (tmp_path / ".ray").exists(), "the script wrote into ~/.ray"


def test_ray_tensor_parallel_example_rehearsal(tmp_path):
    env = {**_new_user_env(tmp_path), "VLLM_LOGGING_LEVEL": "INFO"}
    with removing_leaked_cpu_shm():
        result = subprocess.run([sys.executable, str(ROOT / "examples" / "ray_tensor_parallel.py"),
                                 "--tiny-on-cpu"], env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert result.stdout.count("\n---") == 2  # both prompts answered
    assert "all 2 tensor-parallel ranks draft with vllm-selfspec" in output
    drafts = re.search(r"^self_skip drafts: (\d+),", result.stdout, re.MULTILINE)
    assert drafts and int(drafts[1]) > 0, output[-3000:]
    assert not (tmp_path / ".ray").exists(), "the example wrote into ~/.ray"
