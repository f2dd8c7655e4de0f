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

RAY_FILES = ("test_deploy_and_examples.py", "test_ray_serve.py", "test_ray_tp.py")
"""The files whose tests start Ray (marker ``ray``): one worker runs them all, one local cluster at a time."""
RAY_GROUP = "ray"
GROUP_ORDER = ("test_sampling.py", "test_server.py", "test_lossless.py", RAY_GROUP, "test_exact_sampling.py",
               "test_tune.py", "test_engine_features.py", "test_architectures.py", "test_doctor.py")
"""The engine tests' groups, longest first, so that ``make test``'s two workers finish together
(each worker has its own engine pool). Groups not named here follow (each a few seconds)."""


def _group(path_name: str) -> str:
    return RAY_GROUP if path_name in RAY_FILES else path_name


def pytest_collection_modifyitems(items):
    """Order the integration tests by group, longest first (unit tests before them)."""
    misplaced = [i.nodeid for i in items if i.get_closest_marker("ray") and i.path.name not in RAY_FILES]
    assert not misplaced, f"tests marked ray outside RAY_FILES: {misplaced}"

    def rank(item):
        group = _group(item.path.name)
        return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)
    integration = [i for i in items if "integration_tests" in i.path.parts]
    others = [i for i in items if "integration_tests" not in i.path.parts]
    items[:] = others + sorted(integration, key=rank)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: the suite also runs without xdist
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N`` (``make test``): a file's tests, or all the Ray files' tests, run
    in one worker, in order, so module-scoped and pooled engines are shared.

    xdist's own ``--dist loadgroup`` would do this from ``xdist_group`` markers, but with
    pytest 9 it does not group (pytest-xdist 3.8: the group suffix never reaches the node
    ids), so the scopes are drawn here from the node ids.
    """
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep GROUP_ORDER: longest group first

    class FileAndRayScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return _group(path.rsplit("/", 1)[-1]) if path.startswith("integration_tests/") else path

    return FileAndRayScheduling(config, log)


def _bind_engine_threads_to_this_workers_core() -> None:
    """Under ``pytest -n N``, pin each worker's engines to their own core.

    vLLM's CPU worker binds its threads to core 0 by default (``auto`` keeps one core for
    the front end), so two workers' engines would share one core. One core per worker
    measured here: two engines decoding side by side, each as fast as one alone (16
    requests x 128 tokens: 17.2 s each, against 15.6 s alone). A user's own setting wins;
    tests that run tensor parallelism set theirs.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(cores[int(worker.removeprefix("gw")) % len(cores)]))


_bind_engine_threads_to_this_workers_core()
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


@pytest.fixture
def async_scheduling_kept_on_cpu(monkeypatch):
    """The TEST-ONLY shim that keeps vLLM's async-scheduling decision on the CPU, for this test
    only: installed here, active while its variable is set, which engines started now inherit."""
    from vllm_selfspec.glue import async_on_cpu_test_shim
    from vllm_selfspec.glue.patches import ASYNC_ON_CPU_TEST_SHIM_ENV_VAR

    async_on_cpu_test_shim.install()
    monkeypatch.setenv(ASYNC_ON_CPU_TEST_SHIM_ENV_VAR, "1")


@pytest.fixture
def draft_lengths_cycled(monkeypatch) -> list[int]:
    """The TEST-ONLY shim that books draft lengths 3, 0, 2, 1, 3, ... one per step, for this test
    only: installed here, acting in the engines started now (they inherit its variable)."""
    from vllm_selfspec.glue import draft_cycle_test_shim
    from vllm_selfspec.glue.patching import DRAFT_CYCLE_TEST_SHIM_ENV_VAR

    cycle = [3, 0, 2, 1]
    monkeypatch.setenv(DRAFT_CYCLE_TEST_SHIM_ENV_VAR, ",".join(map(str, cycle)))
    draft_cycle_test_shim.install()
    return cycle
