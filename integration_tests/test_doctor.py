"""The wheel a user installs runs ``vllm-selfspec doctor`` on the default model, every line of its
report as expected; and doctor refuses a measurement too short for a verdict before any engine starts."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

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


REPO = Path(__file__).resolve().parents[1]

CHECK_THE_INSTALL = """
import importlib.metadata, importlib.resources, sys
import vllm_selfspec
print("package:", vllm_selfspec.__file__)
data = importlib.resources.files("vllm_selfspec")
print("profiles:", sorted(p.name for p in (data / "profiles").iterdir() if p.name.endswith(".json")))
print("prompt data:", sorted(p.name for p in (data / "tools" / "data").iterdir() if p.name.endswith(".jsonl")))
plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
print("plugins:", sorted(f"{ep.name}={ep.value} from {ep.dist.name} {ep.dist.version}" for ep in plugins))
"""


def _fresh_environment_beside_vllm(root: Path) -> Path:
    """A new virtual environment that sees this environment's vLLM and its dependencies, not this package.

    vLLM's CPU wheel and torch take minutes to install again, so the new environment reaches the
    installed ones through a path file, over a folder of links to everything installed here except
    vllm-selfspec (its editable install and metadata). The plugin, its data and its entry point can
    then come only from the wheel.
    """
    subprocess.run([sys.executable, "-m", "venv", str(root / "env")], check=True, timeout=300)
    beside = root / "beside-vllm"
    beside.mkdir()
    site_packages = Path(sysconfig.get_paths()["purelib"])
    for entry in site_packages.iterdir():
        if "vllm_selfspec" not in entry.name and not entry.name.endswith(".pth"):
            (beside / entry.name).symlink_to(entry)
    env_python = root / "env" / "bin" / "python"
    env_site = subprocess.run([str(env_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    (Path(env_site) / "beside_vllm.pth").write_text(f"{beside}\n")
    return env_python


def test_the_wheel_installs_beside_vllm_and_runs_doctor(default_model, tmp_path):
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    version = importlib.metadata.version("vllm-selfspec")
    wheel = tmp_path / "dist" / f"vllm_selfspec-{version}-py3-none-any.whl"
    assert wheel.is_file(), sorted(p.name for p in (tmp_path / "dist").iterdir())

    env_python = _fresh_environment_beside_vllm(tmp_path)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # --no-index: the wheel's dependencies must be met by what is installed beside it.
    install = subprocess.run([str(env_python), "-m", "pip", "install", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=600, env=environ)
    assert install.returncode == 0, (install.stdout + install.stderr)[-3000:]

    # Run from outside the checkout, so nothing comes from the source tree.
    check = subprocess.run([str(env_python), "-c", CHECK_THE_INSTALL], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=environ)
    assert check.returncode == 0, check.stderr[-3000:]
    report = dict(line.split(": ", 1) for line in check.stdout.splitlines())
    assert report["package"].startswith(str(tmp_path / "env")), report
    shipped = sorted(p.name for p in (REPO / "vllm_selfspec" / "profiles").glob("*.json"))
    assert shipped and report["profiles"] == repr(shipped), report
    prompt_data = sorted(p.name for p in (REPO / "vllm_selfspec" / "tools" / "data").glob("*.jsonl"))
    assert prompt_data and report["prompt data"] == repr(prompt_data), report
    assert f"self_skip=vllm_selfspec:register from vllm-selfspec {version}" in report["plugins"], report

    doctor = subprocess.run([str(env_python.parent / "vllm-selfspec"), "doctor", "--eager", "--num-prompts", "2",
                             "--max-tokens", "16", "--rounds", "3"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path, env=environ)
    assert doctor.returncode == 0, (doctor.stdout + doctor.stderr)[-3000:]
    lines = doctor.stdout.splitlines()
    for pattern in REPORT_LINES:
        assert any(re.match(pattern, line) for line in lines), f"no line matches {pattern!r}:\n{doctor.stdout}"


def test_doctor_refuses_fewer_than_three_rounds():
    result = subprocess.run([sys.executable, "-m", "vllm_selfspec.tools.cli", "doctor", "--rounds", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--rounds: must be at least 3" in result.stderr, result.stderr[-2000:]
