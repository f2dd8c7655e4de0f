"""Recording host reads of tensors made by the plugin's own code inside ``propose``.

On a GPU each such read (``tolist``, ``item``, ``bool(tensor)``, a blocking copy to the
host...) waits for the device: a sync inside the draft loop. On the CPU every tensor is
host memory, so the recorder notes what the same code would do on a GPU. The watch also
records each call's booked and drafted length (a worker drafts what the scheduler booked).
Used by ``vllm-selfspec doctor`` and the tests, through the worker extension.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = frozenset({"tolist", "item", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
                        "__format__", "nonzero", "masked_select", "unique", "unique_consecutive"})
"""Tensor methods that bring a tensor's values to the host, or whose output shape depends on them."""
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
AGREED_READ_POINT = "_read_on_every_rank"
"""The proposer's one designed host read (adaptive exit's decisions, rank 0's values on every rank):
counted apart from the reads that would stall a GPU unplanned."""


def _waits_for_values(name: str, args, kwargs) -> bool:
    """Boolean-mask indexing, or a ``to`` naming a device or a ``copy_`` from a device tensor into
    host memory without ``non_blocking``."""
    if kwargs.get("non_blocking") or (name == "copy_" and len(args) > 2 and args[2] is True):
        return False
    if name == "to":
        return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])
    if name == "__getitem__":  # boolean-mask indexing: the result's shape depends on the mask
        index = args[1] if len(args) > 1 else None
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                   for i in (index if isinstance(index, tuple) else (index,)))
    if name == "copy_":
        source = args[1] if len(args) > 1 else kwargs.get("src")
        return isinstance(source, torch.Tensor) and args[0].device.type == "cpu" and source.device.type != "cpu"
    return False


@functools.lru_cache(maxsize=None)
def _in_package(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(PACKAGE_DIR)


class HostReadRecorder(TorchFunctionMode):
    """While active, records each host read made from a file of this package.

    ``HOST_READS``, boolean-mask indexing, a ``to`` naming a device and a ``copy_`` from a
    device into host memory, each without ``non_blocking=True`` (on the CPU no tensor is
    on a device, so that last one shows only on a GPU).
    vLLM's own code called meanwhile is not the plugin's and is not recorded.
    """

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.agreed_reads: list[str] = []
        """Reads made at ``AGREED_READ_POINT``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        caller = sys._getframe(1)
        if _in_package(caller.f_code.co_filename) and (
            name in HOST_READS or _waits_for_values(name, args, kwargs)
        ):
            reads = self.agreed_reads if caller.f_code.co_name == AGREED_READ_POINT else self.reads
            reads.append(f"{name} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
        return func(*args, **kwargs)


def watch_propose(drafter) -> None:
    """Record host reads inside each of ``drafter``'s ``propose`` calls, and each call's booked and
    drafted length, until :func:`unwatch_propose`."""
    recorder = HostReadRecorder()
    report = {"calls": 0, "reads": recorder.reads, "agreed_reads": recorder.agreed_reads, "draft_lengths": []}
    # An instance's own wrapper (the TEST-ONLY delay) stays in the call, and comes back after.
    unwatched = drafter.__dict__.get("propose")
    propose = drafter.propose

    def watched(*args, **kwargs):
        report["calls"] += 1
        with recorder:
            drafts = propose(*args, **kwargs)
        booked = kwargs["num_speculative_tokens"] if "num_speculative_tokens" in kwargs else args[0]
        report["draft_lengths"].append([booked, drafts.shape[1]])
        return drafts

    drafter.propose = watched
    drafter.selfspec_host_reads = report
    drafter.selfspec_unwatched_propose = unwatched


def unwatch_propose(drafter) -> dict:
    """Stop watching; return ``{"calls": propose calls, "reads": ["tolist at proposer.py:123", ...],
    "agreed_reads": [...], "draft_lengths": [[booked, drafted], ...]}`` (``agreed_reads``: those at
    ``AGREED_READ_POINT``; one ``draft_lengths`` pair per call)."""
    unwatched = drafter.__dict__.pop("selfspec_unwatched_propose")
    if unwatched is None:
        del drafter.propose  # back to the class's method
    else:
        drafter.propose = unwatched
    return drafter.__dict__.pop("selfspec_host_reads")
