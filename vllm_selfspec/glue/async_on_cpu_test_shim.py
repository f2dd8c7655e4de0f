"""TEST-ONLY: keep vLLM's async-scheduling decision on the CPU platform, for tests.

vLLM's CPU platform turns async scheduling off ("not required on CPU"), so without this
nothing here could run self_skip's drafts through the V1 runner's async-scheduling path
(placeholder drafts booked a step ahead, drafts and sampled tokens kept on the device).
The runner's CUDA streams and events are placeholders on the CPU; all the rest is the
code a GPU runs. This module is not even imported unless the environment sets
``VLLM_SELFSPEC_TEST_ONLY_ASYNC_ON_CPU=1``, and it never activates on any platform but
the CPU one.
"""

from __future__ import annotations

import os

from vllm.platforms import current_platform
from vllm.platforms.cpu import CpuPlatform

from vllm_selfspec.glue.patching import ASYNC_ON_CPU_TEST_SHIM_ENV_VAR, VllmPatch, install_test_only_shim


class PatchCpuPlatformKeepsAsyncScheduling(VllmPatch):
    """TEST-ONLY: leave ``scheduler_config.async_scheduling`` as ``VllmConfig`` decided it, on the CPU.

    Why: ``CpuPlatform.check_and_update_config`` sets it to False, so the V1 runner's
    async-scheduling path, which self_skip with fixed-length drafts may take on GPUs,
    is untestable here.
    How: the original runs, then the value decided before it is restored, while
    ``VLLM_SELFSPEC_TEST_ONLY_ASYNC_ON_CPU=1`` is set (read at each call, so a test can
    scope it; engine processes inherit it).
    Remove when: vLLM runs async scheduling on the CPU platform.
    """

    target = CpuPlatform
    replaces = ("check_and_update_config",)

    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        decided = vllm_config.scheduler_config.async_scheduling
        PatchCpuPlatformKeepsAsyncScheduling.original("check_and_update_config")(cls, vllm_config)
        if os.environ.get(ASYNC_ON_CPU_TEST_SHIM_ENV_VAR) == "1":
            vllm_config.scheduler_config.async_scheduling = decided


def install() -> None:
    """Install the shim in this process, on the CPU platform only; elsewhere log and do nothing."""
    install_test_only_shim(__name__, (PatchCpuPlatformKeepsAsyncScheduling,), current_platform.is_cpu(),
                           current_platform.device_name, "the CPU platform keeps vLLM's async-scheduling decision.")
