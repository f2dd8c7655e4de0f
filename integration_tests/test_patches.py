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
