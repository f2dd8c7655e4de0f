"""TEST-ONLY: book the draft lengths of a fixed cycle, one per engine step, for tests.

Which K the draft-length controller books depends on the machine's timing, so a test
that needs K to change between the steps of the same request (drafts, placeholders and
rejection sampling with a K that moves under them) cannot count on it. With
``VLLM_SELFSPEC_TEST_ONLY_DRAFT_CYCLE`` set to draft lengths (``"3,0,2,1"``), each step
books the next one, capped as :meth:`DraftBooking.book` caps its own choice, on the
booking path the controller uses. This module is not even imported unless the
environment sets that variable, and it never activates on any platform but the CPU one.
"""

from __future__ import annotations

import itertools
import os

from vllm.platforms import current_platform

from vllm_selfspec.core.draft_booking import DraftBooking
from vllm_selfspec.glue.patching import DRAFT_CYCLE_TEST_SHIM_ENV_VAR, VllmPatch, install_test_only_shim


class PatchDraftBookingCycles(VllmPatch):
    """TEST-ONLY: each booked step's K is the next of the cycle in ``VLLM_SELFSPEC_TEST_ONLY_DRAFT_CYCLE``.

    Why: tests of exactness under a K that changes every step need that K by construction.
    How: the original books (the controller, if on, still decides and learns), then the
    result is capped by the cycle's next draft length, while the variable was set when the
    booking was made; steps of no requests are left alone.
    Remove when: never; a test-only shim.
    """

    target = DraftBooking
    replaces = ("book",)

    def book(self, batch_size: int, vllm_k: int) -> int:
        k = PatchDraftBookingCycles.original("book")(self, batch_size, vllm_k)
        if "_test_only_cycle" not in self.__dict__:  # each booking (a draft switched in) starts the cycle
            lengths = os.environ.get(DRAFT_CYCLE_TEST_SHIM_ENV_VAR)
            self._test_only_cycle = itertools.cycle([int(n) for n in lengths.split(",")]) if lengths else None
        if batch_size == 0 or self._test_only_cycle is None:
            return k
        return min(k, next(self._test_only_cycle))


def install() -> None:
    """Install the shim in this process, on the CPU platform only; elsewhere log and do nothing."""
    install_test_only_shim(__name__, (PatchDraftBookingCycles,), current_platform.is_cpu(),
                           current_platform.device_name,
                           f"draft lengths booked in the cycle {os.environ.get(DRAFT_CYCLE_TEST_SHIM_ENV_VAR)}.")
