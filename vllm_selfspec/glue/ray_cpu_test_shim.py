"""TEST-ONLY: run vLLM's Ray executor on the CPU platform, for tests and the loopback demo.

vLLM refuses Ray on CPU machines, so without this nothing could exercise the plugin's
Ray tensor-parallel path where there is no GPU. This module is not even imported unless
the environment sets ``VLLM_SELFSPEC_TEST_ONLY_RAY_ON_CPU=1``, and it never activates on
any platform but the CPU one. Deployments on GPUs never need it (see ``deploy/``).
"""

from __future__ import annotations

import vllm.v1.executor.ray_executor_v2 as ray_executor_v2
from vllm.platforms import current_platform
from vllm.platforms.cpu import CpuPlatform

from vllm_selfspec.glue.patching import VllmPatch, install_test_only_shim

RAY_SLOT_RESOURCE = "GPU"
"""The Ray resource that stands for one tensor-parallel rank on the CPU: a scheduling token only."""


class PatchCpuPlatformRayDeviceKey(VllmPatch):
    """TEST-ONLY: give the CPU platform a Ray device key so ``distributed_executor_backend="ray"`` starts.

    Why: ``CpuPlatform.ray_device_key`` is empty, and vLLM's Ray executor raises
    "current platform cpu does not support ray", so the plugin's Ray path is untestable here.
    How: the key becomes Ray's logical ``GPU`` resource. A test cluster started with
    ``num_gpus=N`` (``ray start --num-gpus N``; no GPU is used or needed) then has N
    slots; vLLM places one CPU worker per slot, exactly as it places GPU workers.
    Remove when: vLLM supports the Ray executor on the CPU platform.
    """

    target = CpuPlatform
    replaces = ("ray_device_key",)
    ray_device_key = RAY_SLOT_RESOURCE


class _RayWorkerProcWithShim(ray_executor_v2.RayWorkerProc):
    """vLLM's Ray worker actor, with the shim installed in its process before anything else."""

    def __init__(self, *args, **kwargs):
        install()
        super().__init__(*args, **kwargs)


class PatchRayWorkerActorClass(VllmPatch):
    """TEST-ONLY: install the shim in every Ray worker process before vLLM asks for its device.

    Why: ``RayWorkerProc.get_node_and_physical_gpu_ids`` reads the platform's Ray device key
    right after the actor starts, before vLLM loads plugins in that process.
    How: the executor module's ``RayWorkerProc`` becomes a subclass whose constructor
    installs the shim first; Ray ships the subclass to the workers by reference.
    Remove when: vLLM supports the Ray executor on the CPU platform.
    """

    target = ray_executor_v2
    replaces = ("RayWorkerProc",)
    RayWorkerProc = _RayWorkerProcWithShim


def install() -> None:
    """Install the shim in this process, on the CPU platform only; elsewhere log and do nothing."""
    install_test_only_shim(
        __name__, (PatchCpuPlatformRayDeviceKey, PatchRayWorkerActorClass), current_platform.is_cpu(),
        current_platform.device_name, f"vLLM's Ray executor runs on the CPU; each tensor-parallel rank "
        f"takes one logical Ray '{RAY_SLOT_RESOURCE}' slot.")
