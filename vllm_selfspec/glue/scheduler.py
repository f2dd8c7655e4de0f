"""vLLM's schedulers, booking each step's self_skip draft length in the engine core.

vLLM's scheduler already tells every worker how many tokens to draft after each step
(``SchedulerOutput.num_spec_tokens_to_schedule``, which its dynamic speculation fills
from ``num_speculative_tokens_per_batch_size``), and under async scheduling books that
many placeholder drafts a step ahead. These subclasses change only that number, in the
``_update_after_schedule`` hook that runs before the async scheduler books placeholders,
and watch each completed step in ``update_from_output``: the draft-length controller
(:class:`vllm_selfspec.core.draft_booking.DraftBooking`) decides and learns here, once, so
every tensor-parallel rank drafts the same K, and under async scheduling the placeholders
match what the workers draft. ``PatchVllmConfigScheduling`` installs them for self_skip.
"""

from __future__ import annotations

import collections
import time

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.outputs import ModelRunnerOutput

from vllm_selfspec.core.draft_booking import CompletedStep, DraftBooking
from vllm_selfspec.core.draft_settings import DraftSettings
from vllm_selfspec.core.skip_set import SelfSkipConfigError

logger = init_logger(f"vllm.{__name__}")  # under "vllm", so vLLM's handlers and level apply

CONTROLLER_LOG_INTERVAL_S = 10.0
"""How often the draft-length controller's choices and speeds are logged (INFO)."""
STEPS_IN_FLIGHT = 8
"""Scheduled steps whose schedule time is kept until their output is back (async scheduling keeps two)."""


class DraftBookingMixin:
    """Books each step's draft length with a :class:`DraftBooking`; mixed into vLLM's two schedulers."""

    draft_booking: DraftBooking

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draft_booking = DraftBooking(self.vllm_config.speculative_config.draft)
        self._scheduled_at: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._next_controller_log = time.monotonic() + CONTROLLER_LOG_INTERVAL_S

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        scheduler_output.num_spec_tokens_to_schedule = self.draft_booking.book(
            len(scheduler_output.num_scheduled_tokens), scheduler_output.num_spec_tokens_to_schedule)
        self._scheduled_at[id(scheduler_output)] = time.monotonic()
        while len(self._scheduled_at) > STEPS_IN_FLIGHT:
            self._scheduled_at.popitem(last=False)
        super()._update_after_schedule(scheduler_output)

    def update_from_output(self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput):
        completed_at = time.monotonic()
        scheduled_at = self._scheduled_at.pop(id(scheduler_output), None)
        if scheduled_at is not None and scheduler_output.total_num_scheduled_tokens > 0:
            spec = scheduler_output.scheduled_spec_decode_tokens
            self.draft_booking.observe(CompletedStep(
                batch_size=len(scheduler_output.num_scheduled_tokens),
                booked=scheduler_output.num_spec_tokens_to_schedule,
                tokens=sum(len(ids) for ids in model_runner_output.sampled_token_ids),
                decode_only=all(n == 1 + len(spec.get(req_id, ()))
                                for req_id, n in scheduler_output.num_scheduled_tokens.items()),
                scheduled_at=scheduled_at,
                completed_at=completed_at,
            ))
            self._log_controller(completed_at)
        return super().update_from_output(scheduler_output, model_runner_output)

    def _log_controller(self, now: float) -> None:
        if self.draft_booking.controller is not None and now >= self._next_controller_log:
            logger.info("self_skip draft-length controller: %s", self.draft_booking.controller.summary())
            self._next_controller_log = now + CONTROLLER_LOG_INTERVAL_S

    def configure_draft_booking(self, settings: DraftSettings) -> None:
        """Book for new draft settings (a draft switched in a running engine); the controller starts afresh.

        Under async scheduling the workers must draft what was booked, so adaptive exit is refused."""
        if self.scheduler_config.async_scheduling and settings.adaptive_exit:
            raise SelfSkipConfigError(
                "adaptive_exit=true: this engine runs with async scheduling, under which the draft "
                "must draft the K its scheduler booked; start the engine with async_scheduling=False "
                "to switch to adaptive exit")
        self.draft_booking = DraftBooking(settings)


class SelfSkipScheduler(DraftBookingMixin, Scheduler):
    """vLLM's scheduler, booking self_skip's draft lengths."""


class SelfSkipAsyncScheduler(DraftBookingMixin, AsyncScheduler):
    """vLLM's async scheduler, booking self_skip's draft lengths (and as many placeholders)."""


def scheduler_class(async_scheduling: bool) -> type[Scheduler]:
    """The self_skip scheduler for an engine with or without async scheduling."""
    return SelfSkipAsyncScheduler if async_scheduling else SelfSkipScheduler
