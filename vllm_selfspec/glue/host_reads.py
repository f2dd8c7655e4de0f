"""Recording host reads of tensors made by the plugin's own code inside ``propose``.

On a GPU each such read (``tolist``, ``item``, ``bool(tensor)``, a blocking copy to the
host...) waits for the device: a sync inside the draft loop. On the CPU every tensor is
host memory, so the recorder notes what the same code would do on a GPU. Used by
``vllm-selfspec doctor`` and the tests, through the worker extension.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = frozenset({"tolist", "item", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"})
"""Tensor methods that bring a tensor's values to the host."""
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def _names_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])


class HostReadRecorder(TorchFunctionMode):
    """While active, records each host read made from a file of this package.

    ``HOST_READS``, and ``to``/``copy_`` naming a device without ``non_blocking=True``.
    vLLM's own code called meanwhile is not the plugin's and is not recorded.
    """

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        caller = sys._getframe(1)
        if caller.f_code.co_filename.startswith(PACKAGE_DIR) and (
            name in HOST_READS
            or (name in ("to", "copy_") and not kwargs.get("non_blocking") and _names_a_device(args, kwargs))
        ):
            self.reads.append(f"{name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
        return func(*args, **kwargs)


def watch_propose(drafter) -> None:
    """Record host reads inside each of ``drafter``'s ``propose`` calls, until :func:`unwatch_propose`."""
    recorder = HostReadRecorder()
    report = {"calls": 0, "reads": recorder.reads}

    def watched(*args, **kwargs):
        report["calls"] += 1
        with recorder:
            return type(drafter).propose(drafter, *args, **kwargs)

    drafter.propose = watched
    drafter.selfspec_host_reads = report


def unwatch_propose(drafter) -> dict:
    """Stop watching; return ``{"calls": propose calls, "reads": ["tolist at proposer.py:123", ...]}``."""
    del drafter.propose  # back to the class's method
    return drafter.__dict__.pop("selfspec_host_reads")
