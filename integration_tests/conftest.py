"""Fixtures for tests that start real vLLM engines on the CPU."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# Lets tests send inspection functions to workers through LLM.collective_rpc.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

from integration_tests.helpers import EnginePool  # noqa: E402
from vllm_selfspec.tools.tiny_models import write_tiny_model  # noqa: E402

ENGINE_FILE_ORDER = ("test_lossless.py", "test_sampling.py")
"""Run first, next to each other: they share the default model's float32 engines."""


def pytest_collection_modifyitems(items):
    """Bring the files that share engines together (stable otherwise)."""
    def rank(item):
        name = item.path.name
        return ENGINE_FILE_ORDER.index(name) if name in ENGINE_FILE_ORDER else len(ENGINE_FILE_ORDER)
    integration = [i for i in items if "integration_tests" in i.path.parts]
    others = [i for i in items if "integration_tests" not in i.path.parts]
    items[:] = others + sorted(integration, key=rank)


_POOL = EnginePool()


@pytest.fixture(scope="session")
def engines():
    """The session's :class:`EnginePool`."""
    yield _POOL
    _POOL.close()


@pytest.fixture(autouse=True)
def _pooled_engines_only_where_used(request):
    """Shut the pooled engines down before a test that does not use them (it may start its own)."""
    if "engines" not in request.fixturenames:
        _POOL.close()


@pytest.fixture(scope="session")
def default_model() -> str:
    """The embedded SmolLM2-135M-Instruct, converted once by ``prepare-model``."""
    from vllm_selfspec.tools.model_prep import prepare_default_model

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


@pytest.fixture
def ray_auth_token(tmp_path_factory):
    """The token for the authentication ``ray.init`` turns on, in pytest's temporary folder.

    Without it Ray would write ~/.ray/auth_token; the test fails if it did. One file per
    session: Ray keeps the token it read for the life of the process.
    """
    token = tmp_path_factory.getbasetemp() / "ray_auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    home_token = Path.home() / ".ray" / "auth_token"
    had_home_token = home_token.exists()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        yield token
    assert had_home_token or not home_token.exists(), f"Ray wrote {home_token}"
