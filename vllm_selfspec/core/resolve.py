"""Turn the user's ``self_skip`` options into the skip set and draft length to run."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vllm_selfspec.core.adaptive_exit import DEFAULT_TARGET_ACCEPTANCE, check_target_acceptance
from vllm_selfspec.core.draft_vocab import draft_vocab
from vllm_selfspec.core.profile import (
    ModelIdentity,
    check_batch_size_schedule,
    find_shipped_profile,
    load_profile,
)
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet, heuristic_skip_set

SELF_SKIP_OPTION_NAMES = (
    "skip_attn",
    "skip_mlp",
    "skip_profile",
    "draft_vocab_size",
    "adaptive_exit",
    "draft_exit_target_acceptance",
)
"""Options that ``self_skip`` adds to vLLM's speculative config."""

DEFAULT_NUM_SPECULATIVE_TOKENS = 4
"""Draft length used when neither the user nor a profile gives one."""

DEFAULT_ADAPTIVE_EXIT = True
"""Adaptive exit without a profile: on, because `vllm-selfspec evaluate` measured it faster
(1.46x at batch 1 with the tuned skip set, K=6, on held-out prompts; docs/evaluate-cpu-eager)."""


@dataclass(frozen=True)
class ResolvedSelfSkip:
    """The settings a self-skip drafter runs with, and where they came from."""

    skip_set: SkipSet
    num_speculative_tokens: int
    source: str
    """For the start-up log: ``explicit``, ``profile PATH``, ``shipped profile PATH`` or ``heuristic``."""
    draft_vocab: tuple[int, ...] = ()
    """Token ids the draft head scores, ascending; empty for the full vocabulary."""
    adaptive_exit: bool = False
    draft_exit_target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE
    batch_size_schedule: list[tuple[int, int, int]] | None = None
    """vLLM's ``num_speculative_tokens_per_batch_size``, or ``None`` for a fixed K."""

    def describe_head_and_exit(self) -> str:
        """A one-line summary of the draft head, adaptive exit and schedule, for logs."""
        head = f"draft head over {len(self.draft_vocab)} tokens" if self.draft_vocab else "full draft head"
        exit_rule = (
            f"adaptive exit (target acceptance {self.draft_exit_target_acceptance:g})"
            if self.adaptive_exit
            else "no adaptive exit"
        )
        schedule = (
            f"K per batch size {self.batch_size_schedule}" if self.batch_size_schedule else "fixed K"
        )
        return f"{head}, {exit_rule}, {schedule}"


def reject_unknown_options(given: dict, known_fields: set[str]) -> None:
    """Raise for option names that neither vLLM's speculative config nor ``self_skip`` knows."""
    valid = known_fields | set(SELF_SKIP_OPTION_NAMES)
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SelfSkipConfigError(
                f"speculative_config: unknown option {name!r} for method 'self_skip'{hint} "
                f"(self_skip options: {', '.join(SELF_SKIP_OPTION_NAMES)})"
            )


def resolve_self_skip(
    identity: ModelIdentity,
    max_model_len: int,
    skip_attn: list[int] | None = None,
    skip_mlp: list[int] | None = None,
    skip_profile: str | None = None,
    num_speculative_tokens: int | None = None,
    draft_vocab_size: int | None = None,
    adaptive_exit: bool | None = None,
    draft_exit_target_acceptance: float | None = None,
    batch_size_schedule: list | None = None,
) -> ResolvedSelfSkip:
    """Pick the skip set, draft length, draft head, exit rule and schedule.

    Explicit ``skip_attn``/``skip_mlp`` win over a profile; a missing list counts as
    empty when the other is given. Without either, ``skip_profile`` is used, then the
    profile shipped for this model, then :func:`heuristic_skip_set`. Every other
    option given explicitly wins over the profile's value; without a profile the
    draft head is full, adaptive exit is on and K is the same at every batch size.
    """
    profile = None
    if skip_profile is not None:
        profile = load_profile(skip_profile)
        mismatches = profile.model.mismatches(identity)
        if mismatches:
            raise SelfSkipConfigError(
                f"skip_profile: {skip_profile!r} was made for another model ("
                + "; ".join(mismatches)
                + "). Run `vllm-selfspec tune` for this model, or give skip_attn/skip_mlp."
            )
        source = f"profile {skip_profile}"
    elif skip_attn is None and skip_mlp is None:
        shipped = find_shipped_profile(identity)
        if shipped is not None:
            path, profile = shipped
            source = f"shipped profile {path.name}"

    if skip_attn is not None or skip_mlp is not None:
        skip_set = SkipSet.build(identity.num_layers, skip_attn or [], skip_mlp or [])
        source = "explicit"
    elif profile is not None:
        skip_set = profile.skip_set()
    else:
        skip_set = heuristic_skip_set(identity.num_layers)
        source = "heuristic"

    if num_speculative_tokens is None:
        num_speculative_tokens = (
            profile.num_speculative_tokens if profile is not None else DEFAULT_NUM_SPECULATIVE_TOKENS
        )
    if isinstance(num_speculative_tokens, bool) or not isinstance(num_speculative_tokens, int):
        raise SelfSkipConfigError(
            f"num_speculative_tokens: expected an integer, got {num_speculative_tokens!r}"
        )
    if num_speculative_tokens < 1:
        raise SelfSkipConfigError(
            f"num_speculative_tokens: must be at least 1, got {num_speculative_tokens}"
        )
    if num_speculative_tokens >= max_model_len:
        raise SelfSkipConfigError(
            f"num_speculative_tokens: {num_speculative_tokens} drafts cannot fit in "
            f"max_model_len={max_model_len}; use fewer than {max_model_len}"
        )
    if draft_vocab_size is None:
        draft_vocab_size = profile.draft_vocab_size if profile is not None else 0
    vocab = draft_vocab(
        draft_vocab_size, identity.vocab_size, profile.draft_vocab_ranking if profile is not None else ()
    )
    if adaptive_exit is None:
        adaptive_exit = profile.adaptive_exit if profile is not None else DEFAULT_ADAPTIVE_EXIT
    if not isinstance(adaptive_exit, bool):
        raise SelfSkipConfigError(f"adaptive_exit: expected true or false, got {adaptive_exit!r}")
    if draft_exit_target_acceptance is None:
        draft_exit_target_acceptance = (
            profile.draft_exit_target_acceptance if profile is not None else DEFAULT_TARGET_ACCEPTANCE
        )
    check_target_acceptance(draft_exit_target_acceptance)
    if batch_size_schedule is None and profile is not None:
        batch_size_schedule = profile.num_speculative_tokens_per_batch_size
    if batch_size_schedule is not None:
        batch_size_schedule = check_batch_size_schedule(batch_size_schedule)
    return ResolvedSelfSkip(
        skip_set,
        num_speculative_tokens,
        source,
        draft_vocab=tuple(vocab),
        adaptive_exit=adaptive_exit,
        draft_exit_target_acceptance=float(draft_exit_target_acceptance),
        batch_size_schedule=batch_size_schedule,
    )
