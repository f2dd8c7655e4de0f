"""Adaptive draft exit: stop drafting when the draft's confidence falls under a moving threshold.

Draft & Verify's rule (Zhang et al., 2024, §3.3): a request stops drafting once the
draft's top-1 probability is below the threshold γ. After each verification the
acceptance rate AR is smoothed, AR ← 0.5·AR + 0.5·(accepted/drafted); γ̃ = γ + 0.01
when AR is below the target (draft more cautiously), γ − 0.01 when above, and γ̃ = γ
when every draft ran the full K tokens (no early exit happened, so γ said nothing);
then γ ← 0.9·γ + 0.1·γ̃.

In a batch, self_skip stops drafting once no request's draft is confident, so every
request drafts the same number of tokens (one tensor, no per-request lists, no host
sync); at batch 1 this is the paper's rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_selfspec.core.skip_set import SelfSkipConfigError

DEFAULT_TARGET_ACCEPTANCE = 0.9
DEFAULT_INITIAL_THRESHOLD = 0.6
THRESHOLD_STEP = 0.01
THRESHOLD_MOMENTUM = 0.9
ACCEPTANCE_MOMENTUM = 0.5


def check_target_acceptance(value: object) -> float:
    """Validate ``draft_exit_target_acceptance``: a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise SelfSkipConfigError(
            f"draft_exit_target_acceptance: expected a number strictly between 0 and 1, got {value!r}"
        )
    return float(value)


@dataclass
class AdaptiveDraftExit:
    """The threshold γ and smoothed acceptance rate AR of one drafter (shared by its requests)."""

    target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE
    threshold: float = DEFAULT_INITIAL_THRESHOLD
    acceptance_rate: float | None = None
    """Smoothed accepted/drafted; ``None`` until the first verification is seen."""

    def keeps_drafting(self, top1_probability):
        """Whether a request whose latest draft token had this top-1 probability drafts another
        (elementwise for an array or tensor of them)."""
        return top1_probability >= self.threshold

    def update(self, accepted: int, drafted: int, ran_full_length: bool) -> None:
        """Move γ after a verification that accepted ``accepted`` of ``drafted`` draft tokens."""
        if drafted <= 0:
            return
        rate = accepted / drafted
        self.acceptance_rate = (
            rate
            if self.acceptance_rate is None
            else ACCEPTANCE_MOMENTUM * self.acceptance_rate + (1 - ACCEPTANCE_MOMENTUM) * rate
        )
        if ran_full_length:
            proposal = self.threshold
        elif self.acceptance_rate < self.target_acceptance:
            proposal = self.threshold + THRESHOLD_STEP
        else:
            proposal = self.threshold - THRESHOLD_STEP
        self.threshold = THRESHOLD_MOMENTUM * self.threshold + (1 - THRESHOLD_MOMENTUM) * proposal
