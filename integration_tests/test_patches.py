"""The patches install once, leave other methods alone, and fix what they claim to fix."""

import torch

import vllm_selfspec
from vllm_selfspec.glue import patches


def test_register_is_idempotent():
    vllm_selfspec.register()
    before = {p: dict(p._originals) for p in patches.ALL_PATCHES}
    vllm_selfspec.register()
    assert {p: dict(p._originals) for p in patches.ALL_PATCHES} == before
    from vllm.engine.arg_utils import EngineArgs

    assert EngineArgs.create_speculative_config is patches.PatchEngineArgs.__dict__["create_speculative_config"]


def test_cpu_expand_kernel_keeps_float_values():
    from vllm.utils import cpu_triton_utils

    out = torch.empty(6)
    cpu_triton_utils._expand_kernel_impl(
        out, torch.tensor([0.8, 0.0, 0.5]), torch.tensor([2, 5, 6], dtype=torch.int32), 0.0, 1.0
    )
    assert out.tolist() == [0.800000011920929] * 2 + [1.0] * 3 + [0.5]
    ints = torch.zeros(4, dtype=torch.int32)
    cpu_triton_utils._expand_kernel_impl(ints, torch.tensor([3, 9], dtype=torch.int32),
                                         torch.tensor([1, 3]), 0, 7)
    assert ints.tolist() == [3, 9, 9, 0]


def test_test_only_shims_stay_out_unless_asked():
    import os
    import subprocess
    import sys

    shims = {patches.RAY_ON_CPU_TEST_SHIM_ENV_VAR: "vllm_selfspec.glue.ray_cpu_test_shim",
             patches.ASYNC_ON_CPU_TEST_SHIM_ENV_VAR: "vllm_selfspec.glue.async_on_cpu_test_shim",
             patches.DRAFT_CYCLE_TEST_SHIM_ENV_VAR: "vllm_selfspec.glue.draft_cycle_test_shim"}
    env = {k: v for k, v in os.environ.items() if k not in shims}
    probe = ("import sys, vllm_selfspec; vllm_selfspec.register(); "
             f"print([name in sys.modules for name in {list(shims.values())!r}])")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "[False, False, False]", result.stderr[-2000:]
    asked = subprocess.run([sys.executable, "-c", probe], env={**env, **dict.fromkeys(shims, "1")},
                           capture_output=True, text=True, timeout=300)
    assert asked.stdout.strip().splitlines()[-1] == "[True, True, True]", asked.stderr[-2000:]


def test_test_only_shims_never_activate_off_cpu(monkeypatch):
    from vllm_selfspec.glue import async_on_cpu_test_shim, draft_cycle_test_shim, ray_cpu_test_shim

    applied = []
    shims = {ray_cpu_test_shim: (ray_cpu_test_shim.PatchCpuPlatformRayDeviceKey,
                                 ray_cpu_test_shim.PatchRayWorkerActorClass),
             async_on_cpu_test_shim: (async_on_cpu_test_shim.PatchCpuPlatformKeepsAsyncScheduling,),
             draft_cycle_test_shim: (draft_cycle_test_shim.PatchDraftBookingCycles,)}
    for shim, shim_patches in shims.items():
        for patch in shim_patches:
            monkeypatch.setattr(patch, "is_applied", classmethod(lambda cls: False))
            monkeypatch.setattr(patch, "apply", classmethod(lambda cls: applied.append(cls.__name__)))
        shim.install()
    assert len(applied) == 4  # on the CPU each installs its patches
    applied.clear()
    for shim in shims:
        monkeypatch.setattr(shim.current_platform, "is_cpu", lambda: False)
        shim.install()
    assert applied == []


def _patch_classes(module) -> list[type]:
    from vllm_selfspec.glue.patching import VllmPatch

    return [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, VllmPatch) and c is not VllmPatch]


def test_the_registry_names_every_patch_and_each_target_has_what_it_replaces():
    """A patch anywhere in the package is listed in the registry's docstring, and this vLLM
    still has every attribute each patch replaces (else ``apply`` would refuse at start-up)."""
    import importlib
    import pkgutil

    import vllm_selfspec.glue
    import vllm_selfspec.tools

    found = {}
    for package in (vllm_selfspec.glue, vllm_selfspec.tools):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)  # the test-only shim too: importing applies nothing
            found.update({c.__name__: c for c in _patch_classes(module) if c.__module__ == info.name})
    assert {"PatchEngineArgs", "PatchCpuPlatformRayDeviceKey", "PatchVllmVersionLookup"} <= set(found)
    unlisted = [name for name in found if f"``{name}``" not in patches.__doc__]
    assert not unlisted, f"not in the registry (glue/patches.py docstring): {unlisted}"
    missing = [(name, attr) for name, patch in found.items() for attr in patch.replaces
               if not hasattr(patch.target, attr)]
    assert not missing, missing
    for patch in found.values():
        assert all(part in (patch.__doc__ or "") for part in ("Why:", "How:", "Remove when:")), patch
