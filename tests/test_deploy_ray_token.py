"""deploy/ cluster scripts on a node without a Ray token: instructions and exit 1, before anything slow."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SCRIPTS = {
    "start_ray_head.sh": [],
    "start_ray_worker.sh": ["10.0.0.1:6379"],
    "serve_65b.sh": ["/models/llama-65b", "8"],
}


def _run(script: str, home: Path, **env_overrides: str) -> subprocess.CompletedProcess:
    """Run a deploy script with HOME at ``home``, no Ray token in the environment, and stub
    ``python``/``ray``/``vllm`` commands that report they were reached (and exit 3)."""
    stubs = home / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("python", "ray", "vllm"):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "reached {name} with RAY_AUTH_MODE=$RAY_AUTH_MODE"\nexit 3\n')
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), PATH=f"{stubs}{os.pathsep}{env['PATH']}", **env_overrides)
    return subprocess.run([str(DEPLOY / script), *SCRIPTS[script]], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_token_stops_with_instructions(script, tmp_path):
    result = _run(script, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reached" not in result.stdout, "the script ran commands before checking for the token"
    message = result.stderr
    assert "no Ray auth token: RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset and " \
        f"{tmp_path}/.ray/auth_token is missing or empty" in message
    assert "ray get-auth-token --generate" in message
    assert "copy the head's ~/.ray/auth_token to ~/.ray/auth_token" in message
    assert 'export RAY_AUTH_TOKEN="' in message
    assert "Traceback" not in message
    assert not (tmp_path / ".ray").exists()


def test_missing_token_path_is_named(tmp_path):
    result = _run("start_ray_worker.sh", tmp_path, RAY_AUTH_TOKEN_PATH=str(tmp_path / "absent"))
    assert result.returncode == 1
    assert f"RAY_AUTH_TOKEN_PATH={tmp_path}/absent is missing or empty" in result.stderr


@pytest.mark.parametrize("where", ["home", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"])
def test_a_token_lets_the_script_continue(where, tmp_path):
    token = "0" * 64
    overrides = {}
    if where == "home":
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text(token)
    elif where == "RAY_AUTH_TOKEN":
        overrides = {"RAY_AUTH_TOKEN": token}
    else:
        (tmp_path / "token").write_text(token)
        overrides = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    result = _run("start_ray_worker.sh", tmp_path, **overrides)
    assert result.returncode == 3, result.stderr
    assert "reached python with RAY_AUTH_MODE=token" in result.stdout
