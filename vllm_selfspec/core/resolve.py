"""Turn the user's ``self_skip`` options into the skip set and draft length to run."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vllm_selfspec.core.profile import ModelIdentity, find_shipped_profile, load_profile
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet, heuristic_skip_set

SELF_SKIP_OPTION_NAMES = ("skip_attn", "skip_mlp", "skip_profile")
"""Options that ``self_skip`` adds to vLLM's speculative config."""

DEFAULT_NUM_SPECULATIVE_TOKENS = 4
"""Draft length used when neither the user nor a profile gives one."""


@dataclass(frozen=True)
class ResolvedSelfSkip:
    """The settings a self-skip drafter runs with, and where they came from."""

    skip_set: SkipSet
    num_speculative_tokens: int
    source: str
    """For the start-up log: ``explicit``, ``profile PATH``, ``shipped profile PATH`` or ``heuristic``."""


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
) -> ResolvedSelfSkip:
    """Pick the skip set and draft length: explicit lists, else a profile, else a default.

    Explicit ``skip_attn``/``skip_mlp`` win over a profile; a missing list counts as
    empty when the other is given. Without either, ``skip_profile`` is used, then the
    profile shipped for this model, then :func:`heuristic_skip_set`.
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
    return ResolvedSelfSkip(skip_set, num_speculative_tokens, source)
