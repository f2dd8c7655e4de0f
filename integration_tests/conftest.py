"""Fixtures for tests that start real vLLM engines on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# Lets tests send inspection functions to workers through LLM.collective_rpc.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from vllm_selfspec.tiny_models import write_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def default_model() -> str:
    """The embedded SmolLM2-135M-Instruct, converted once by ``prepare-model``."""
    from vllm_selfspec.model_prep import prepare_default_model

    return str(prepare_default_model())


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, default_model):
    """``make(kind)`` writes (once per session) a tiny random checkpoint of that architecture."""
    made: dict[str, str] = {}

    def make(kind: str) -> str:
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            made[kind] = str(write_tiny_model(kind, folder, Path(default_model)))
        return made[kind]

    return make
