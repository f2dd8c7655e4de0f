"""Turn the user's ``self_skip`` options, a profile and the defaults into the draft's settings."""

from __future__ import annotations

import difflib

from vllm_selfspec.core.adaptive_exit import DEFAULT_TARGET_ACCEPTANCE, check_target_acceptance
from vllm_selfspec.core.draft_length_controller import ControllerSettings
from vllm_selfspec.core.draft_settings import OPTION_NAMES, DraftSettings, SelfSkipOptions
from vllm_selfspec.core.draft_vocab import draft_vocab
from vllm_selfspec.core.profile import (
    ModelIdentity,
    check_batch_size_schedule,
    find_shipped_profile,
    load_profile,
)
from vllm_selfspec.core.schedule import holds_one_draft_length
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet, heuristic_skip_set

DEFAULT_NUM_SPECULATIVE_TOKENS = 4
"""Draft length used when neither the user nor a profile gives one."""

DEFAULT_ADAPTIVE_EXIT = True
"""Adaptive exit without a profile: on where the engine schedules synchronously, because with
drafting held on `vllm-selfspec evaluate` measured it faster than drafting K tokens every step
(33.5 against 22.2 tok/s at batch 1, tuned skip set, K=6, held-out prompts; both below plain
vLLM on that CPU; docs/evaluate-cpu-eager); under async scheduling, which it cannot follow, it
is turned off (``PatchVllmConfigScheduling``)."""


def reject_unknown_options(given: dict, known_fields: set[str]) -> None:
    """Raise for option names that neither vLLM's speculative config nor ``self_skip`` knows."""
    valid = known_fields | set(OPTION_NAMES)
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(name, sorted(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SelfSkipConfigError(
                f"speculative_config: unknown option {name!r} for method 'self_skip'{hint} "
                f"(self_skip options: {', '.join(OPTION_NAMES)})"
            )


def resolve_self_skip(
    identity: ModelIdentity,
    max_model_len: int,
    options: SelfSkipOptions = SelfSkipOptions(),
    num_speculative_tokens: int | None = None,
    batch_size_schedule: list | None = None,
) -> tuple[DraftSettings, str]:
    """The draft's settings, and where its skip set came from (for the start-up log).

    ``num_speculative_tokens`` and ``batch_size_schedule`` are vLLM's own fields.
    Explicit ``skip_attn``/``skip_mlp`` win over a profile; a missing list counts as
    empty when the other is given. Without either, ``skip_profile`` is used, then the
    profile shipped for this model, then :func:`heuristic_skip_set`. Every other
    option given explicitly wins over the profile's value; without a profile the
    draft head is full and adaptive exit is on (``DEFAULT_ADAPTIVE_EXIT``).

    The draft length: a schedule (the user's, else the profile's) or a K the user gave is
    followed as given; otherwise the draft-length controller chooses K up to
    ``num_speculative_tokens`` per batch size online. ``draft_length_controller=True``
    turns it on over a given K or schedule (the schedule is then not used), ``False`` off.
    The source is ``explicit``, ``profile PATH``, ``shipped profile NAME`` or ``heuristic``.
    """
    profile = None
    if options.skip_profile is not None:
        profile = load_profile(options.skip_profile)
        mismatches = profile.model.mismatches(identity)
        if mismatches:
            raise SelfSkipConfigError(
                f"skip_profile: {options.skip_profile!r} was made for another model ("
                + "; ".join(mismatches)
                + "). Run `vllm-selfspec tune` for this model, or give skip_attn/skip_mlp."
            )
        source = f"profile {options.skip_profile}"
    elif options.skip_attn is None and options.skip_mlp is None:
        shipped = find_shipped_profile(identity)
        if shipped is not None:
            path, profile = shipped
            source = f"shipped profile {path.name}"
    tuned = profile.draft if profile is not None else None

    if options.skip_attn is not None or options.skip_mlp is not None:
        skip_set = SkipSet.build(identity.num_layers, options.skip_attn or [], options.skip_mlp or [])
        source = "explicit"
    elif profile is not None:
        skip_set = profile.skip_set()
    else:
        skip_set = heuristic_skip_set(identity.num_layers)
        source = "heuristic"

    k_given = num_speculative_tokens is not None
    if num_speculative_tokens is None:
        num_speculative_tokens = tuned.num_speculative_tokens if tuned else DEFAULT_NUM_SPECULATIVE_TOKENS
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
    if options.draft_vocab_size is not None:
        vocab = draft_vocab(options.draft_vocab_size, identity.vocab_size,
                            profile.draft_vocab_ranking if profile is not None else ())
    else:
        vocab = list(tuned.draft_vocab) if tuned else []
    adaptive_exit = options.adaptive_exit
    if adaptive_exit is None:
        adaptive_exit = tuned.adaptive_exit if tuned else DEFAULT_ADAPTIVE_EXIT
    if not isinstance(adaptive_exit, bool):
        raise SelfSkipConfigError(f"adaptive_exit: expected true or false, got {adaptive_exit!r}")
    target_acceptance = options.draft_exit_target_acceptance
    if target_acceptance is None:
        target_acceptance = tuned.draft_exit_target_acceptance if tuned else DEFAULT_TARGET_ACCEPTANCE
    check_target_acceptance(target_acceptance)
    if batch_size_schedule is None and tuned:
        batch_size_schedule = tuned.num_speculative_tokens_per_batch_size
    controller = _resolve_controller(options, fixed_length_given=k_given or batch_size_schedule is not None)
    if controller is not None:
        batch_size_schedule = None
    if batch_size_schedule is not None:
        batch_size_schedule = tuple(check_batch_size_schedule(batch_size_schedule))
        if holds_one_draft_length(batch_size_schedule, num_speculative_tokens):
            batch_size_schedule = None
    settings = DraftSettings(
        skip_attn=skip_set.attn,
        skip_mlp=skip_set.mlp,
        num_speculative_tokens=num_speculative_tokens,
        draft_vocab=tuple(vocab),
        adaptive_exit=adaptive_exit,
        draft_exit_target_acceptance=float(target_acceptance),
        num_speculative_tokens_per_batch_size=batch_size_schedule,
        draft_length_controller=controller,
    )
    return settings, source


def _resolve_controller(options: SelfSkipOptions, fixed_length_given: bool) -> ControllerSettings | None:
    """The controller's settings when it runs: by default unless a K or a schedule was given."""
    enabled = options.draft_length_controller
    if enabled is not None and not isinstance(enabled, bool):
        raise SelfSkipConfigError(f"draft_length_controller: expected true or false, got {enabled!r}")
    if enabled is None:
        enabled = not fixed_length_given
    tuning = {name: value for name, value in (("draft_controller_warmup_steps", options.draft_controller_warmup_steps),
                                              ("draft_controller_explore_every", options.draft_controller_explore_every))
              if value is not None}
    if not enabled:
        if tuning:
            raise SelfSkipConfigError(
                f"{next(iter(tuning))}: the draft-length controller is off (a num_speculative_tokens or a "
                "batch-size schedule was given, or draft_length_controller is false); set "
                "draft_length_controller: true to use it")
        return None
    defaults = ControllerSettings()
    return ControllerSettings(
        warmup_steps=tuning.get("draft_controller_warmup_steps", defaults.warmup_steps),
        explore_every=tuning.get("draft_controller_explore_every", defaults.explore_every),
    ).check()
