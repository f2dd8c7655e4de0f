"""When the tools start their engines at once (``engine_runs.cores_for_parallel_start``)."""

from __future__ import annotations

import pytest

from vllm_selfspec.tools.engine_runs import cores_for_parallel_start


def test_two_cpu_cores_and_no_binding_of_the_users_start_engines_at_once():
    assert cores_for_parallel_start(True, {1, 0}, {}) == [0, 1]
    assert cores_for_parallel_start(True, {0, 1}, {"VLLM_CPU_OMP_THREADS_BIND": "auto"}) == [0, 1]


@pytest.mark.parametrize("is_cpu, cores, environ", [
    (True, {0, 1}, {"VLLM_CPU_OMP_THREADS_BIND": "0"}),       # the user's binding decides
    (True, {0, 1}, {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}),
    (True, {0}, {}),                                          # one core: nothing to run beside
    (True, {0, 1, 2, 3}, {}),                                 # vLLM gives a lone worker several cores
    (False, {0, 1}, {}),                                      # a GPU: the engines share its memory
])
def test_elsewhere_engines_start_one_after_another(is_cpu, cores, environ):
    assert cores_for_parallel_start(is_cpu, cores, environ) == []
