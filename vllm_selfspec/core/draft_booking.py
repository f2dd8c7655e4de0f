"""Each engine step's draft length, decided once, where vLLM's scheduler books the drafts.

vLLM's scheduler tells every worker how many tokens to draft after each step
(``SchedulerOutput.num_spec_tokens_to_schedule``); under async scheduling it also books
that many placeholder drafts a step ahead. :class:`DraftBooking` decides that number in
the engine-core process, so every tensor-parallel rank drafts the same K by construction
(they all receive the same ``SchedulerOutput``), and the draft-length controller learns
from each completed step there: its tokens out and the wall time between completed steps.
No worker measures or decides anything.

This module is vLLM-free: :mod:`vllm_selfspec.glue.scheduler` reads the numbers off vLLM's
scheduler outputs and feeds them in.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from vllm_selfspec.core.draft_length_controller import DraftLengthController
from vllm_selfspec.core.draft_settings import DraftSettings

DRAFT_LENGTH_HISTORY = 100_000
"""Booked steps whose batch size and K are kept (for tests and the bench's plot)."""


@dataclass(frozen=True)
class CompletedStep:
    """What the engine core knows of a step once its output is back."""

    batch_size: int
    """Requests scheduled in the step."""
    booked: int
    """The K the step booked (drafts made after its verification)."""
    tokens: int
    """Tokens the step output (one per request plus its accepted drafts)."""
    decode_only: bool
    """Whether every request decoded (one token plus its drafts): a step that prefills says nothing about K."""
    scheduled_at: float
    completed_at: float


@dataclass
class DraftBooking:
    """The draft length of each step: the draft's K, or the controller's choice under it."""

    settings: DraftSettings
    controller: DraftLengthController | None = field(init=False)
    history: collections.deque = field(init=False)
    """(batch size, K) of each step booked while the controller is on."""
    _booked_steps: int = field(default=0, init=False)
    _last_completed_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        controller = self.settings.draft_length_controller
        self.controller = (None if controller is None
                           else DraftLengthController(self.settings.num_speculative_tokens, controller))
        self.history = collections.deque(maxlen=DRAFT_LENGTH_HISTORY)

    def book(self, batch_size: int, vllm_k: int) -> int:
        """K for a step of ``batch_size`` requests for which vLLM's scheduler would book ``vllm_k``
        (its K, or its batch-size schedule's); every ``decision_steps`` booked steps the controller
        decides anew."""
        k = min(vllm_k, self.settings.num_speculative_tokens)
        if self.controller is None or batch_size == 0:
            return k
        if self._booked_steps % self.controller.settings.decision_steps == 0:
            self.controller.replan()
        self._booked_steps += 1
        k = min(k, self.controller.draft_length(batch_size))
        self.history.append((batch_size, k))
        return k

    def observe(self, step: CompletedStep) -> None:
        """Feed a completed step to the controller: its tokens over the time since the previous step
        completed. A step that prefilled is left out, and so is one that waited for work longer than
        it ran (the engine was idle, not slow)."""
        previous, self._last_completed_at = self._last_completed_at, step.completed_at
        if self.controller is None or previous is None or not step.decode_only:
            return
        waited = step.scheduled_at - previous
        seconds = step.completed_at - previous
        if waited > seconds - waited:
            return
        self.controller.observe(step.batch_size, step.booked, tokens=step.tokens, seconds=seconds)

    def record(self) -> dict:
        """``{"steps": [[batch size, K], ...], "incumbents": {bucket: K}, "summary": str}`` (empty,
        summary ``"off"``, without the controller)."""
        if self.controller is None:
            return {"steps": [], "incumbents": {}, "summary": "off"}
        return {"steps": [list(step) for step in self.history], "incumbents": self.controller.incumbents(),
                "summary": self.controller.summary()}
