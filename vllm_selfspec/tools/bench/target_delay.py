"""TEST-ONLY: a fixed delay on every target forward (or draft step), to set the regime drafting runs in.

Drafting does not pay with a 135M model on a CPU, where a verification of K+1 tokens
costs 1.4-2x a plain step. On a GPU serving a 13B-70B model a target forward costs
tens of milliseconds and barely grows with K+1 tokens; adding the same fixed delay to
every target forward (verification and plain steps alike, never to draft steps)
recreates that regime, so ``vllm-selfspec bench-controller`` can show that the
draft-length controller keeps drafting where drafting pays. A delay on every draft
step instead makes drafting a sure loss, for the test that it then stops. Never used
in serving.
"""

from __future__ import annotations

import time

from vllm_selfspec.glue.tuning_worker import DraftSwitchingWorkerExtension


class TargetDelayWorkerExtension(DraftSwitchingWorkerExtension):
    """Draft switching plus ``selfspec_delay_target_forward`` and ``selfspec_delay_draft_steps``
    (test and bench use only)."""

    def selfspec_delay_target_forward(self, seconds: float) -> None:
        """From now on, sleep ``seconds`` after every target forward (``_model_forward``; drafts call
        the draft model directly and are not delayed)."""
        _sleep_after_each_call(self.model_runner, "_model_forward", seconds)

    def selfspec_delay_draft_steps(self, seconds: float) -> None:
        """From now on, sleep ``seconds`` per draft step after every ``propose`` (a draft of K
        tokens sleeps K times as long)."""
        _sleep_after_each_call(self.model_runner.drafter, "propose", seconds, per=lambda drafts: drafts.shape[1])

    def selfspec_delayed_calls(self) -> dict[str, int]:
        """How many calls each delay has slept after so far: ``{"target": n, "draft": n}``."""
        return {"target": _slept_calls(self.model_runner, "_model_forward"),
                "draft": _slept_calls(self.model_runner.drafter, "propose")}


def _sleep_after_each_call(owner, method: str, seconds: float, per=lambda output: 1) -> None:
    """Make ``owner.method`` sleep ``seconds × per(its output)`` after each call. The wrapper is
    installed once; later calls only change the delay (0 turns it off)."""
    delays = owner.__dict__.setdefault("_selfspec_delays", {})
    slept = owner.__dict__.setdefault("_selfspec_slept_calls", {})
    if method not in delays:
        original = getattr(owner, method)
        slept[method] = 0

        def delayed(*args, **kwargs):
            output = original(*args, **kwargs)
            seconds_now = delays[method] * per(output)
            if seconds_now:
                time.sleep(seconds_now)
                slept[method] += 1
            return output

        setattr(owner, method, delayed)
    delays[method] = seconds


def _slept_calls(owner, method: str) -> int:
    return owner.__dict__.get("_selfspec_slept_calls", {}).get(method, 0)


TARGET_DELAY_EXTENSION = f"{__name__}.{TargetDelayWorkerExtension.__qualname__}"
"""The value for vLLM's ``worker_extension_cls``."""
