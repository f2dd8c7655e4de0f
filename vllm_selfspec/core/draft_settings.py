"""The draft's settings as one value, and the options a user gives for them.

``SelfSkipOptions`` holds what a user may put in vLLM's speculative config for
``method="self_skip"`` (each ``None`` when not given). :func:`vllm_selfspec.core.resolve.resolve_self_skip`
turns options, a profile and the defaults into one :class:`DraftSettings`, which the
speculative config carries to the proposer, ``tune`` switches in running workers, and
profiles store. Adding an option touches this file, the resolution, and the proposer.
"""

from __future__ import annotations

import hashlib

import msgspec

from vllm_selfspec.core.adaptive_exit import DEFAULT_TARGET_ACCEPTANCE
from vllm_selfspec.core.draft_length_controller import ControllerSettings
from vllm_selfspec.core.skip_set import SkipSet

BatchSizeSchedule = tuple[tuple[int, int, int], ...]
"""vLLM's ``num_speculative_tokens_per_batch_size``: ``(first batch size, last, K)``; K = 0 drafts nothing."""


class SelfSkipOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The options ``self_skip`` adds to vLLM's speculative config; ``None``: from a profile or the default."""

    skip_attn: list[int] | None = None
    """Decoder-layer indices whose attention sublayer the draft bypasses."""
    skip_mlp: list[int] | None = None
    """Decoder-layer indices whose MLP sublayer the draft bypasses."""
    skip_profile: str | None = None
    """Path of a skip-profile JSON file made by ``vllm-selfspec tune``."""
    draft_vocab_size: int | None = None
    """Tokens the draft's LM head scores (0: the full vocabulary)."""
    adaptive_exit: bool | None = None
    """Stop each request's draft when its top-1 probability drops under the adaptive threshold."""
    draft_exit_target_acceptance: float | None = None
    """Acceptance rate the adaptive threshold steers toward (Draft & Verify: 0.85-0.90)."""
    draft_length_controller: bool | None = None
    """Choose K per batch size online from measured speed (default: on unless K or a schedule is given)."""
    draft_controller_warmup_steps: int | None = None
    """Steps each K runs per batch-size bucket while the controller warms up."""
    draft_controller_explore_every: int | None = None
    """A bucket's fewest steps between the controller's explorations of another K (slower arms wait longer)."""

    @classmethod
    def take_from(cls, config: dict) -> SelfSkipOptions:
        """Remove these options from a speculative-config dict and return them (checked when resolved)."""
        return cls(**{name: config.pop(name) for name in cls.__struct_fields__ if name in config})


OPTION_NAMES: tuple[str, ...] = SelfSkipOptions.__struct_fields__


class DraftSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a self_skip draft runs with, resolved once."""

    skip_attn: tuple[int, ...]
    skip_mlp: tuple[int, ...]
    num_speculative_tokens: int
    """K: drafts per request and step at most (0 in a running engine: no drafts)."""
    draft_vocab: tuple[int, ...] = ()
    """Token ids the draft head scores, ascending; empty for the full vocabulary."""
    adaptive_exit: bool = False
    draft_exit_target_acceptance: float = DEFAULT_TARGET_ACCEPTANCE
    num_speculative_tokens_per_batch_size: BatchSizeSchedule | None = None
    """The schedule vLLM's scheduler follows (``None``: K at every batch size); fixed once an engine runs."""
    draft_length_controller: ControllerSettings | None = None
    """The online draft-length controller, choosing K ≤ ``num_speculative_tokens`` per step (``None``: off)."""

    def skip_set(self, num_layers: int) -> SkipSet:
        """The validated skip set for a model of ``num_layers`` decoder layers."""
        return SkipSet.build(num_layers, self.skip_attn, self.skip_mlp)

    def never_drafts(self) -> bool:
        """Whether the schedule asks for no drafts at any batch size."""
        schedule = self.num_speculative_tokens_per_batch_size
        return schedule is not None and all(k == 0 for _, _, k in schedule)

    def graph_digest(self) -> str:
        """A short digest of what shapes the draft's compiled graph: the skip set and the draft head."""
        text = f"{sorted(self.skip_attn)}|{sorted(self.skip_mlp)}|{list(self.draft_vocab)}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def replace(self, **changes) -> DraftSettings:
        """A copy with ``changes`` applied."""
        return msgspec.structs.replace(self, **changes)

    def describe_head_and_exit(self) -> str:
        """A one-line summary of the draft head, adaptive exit and schedule, for logs."""
        head = f"draft head over {len(self.draft_vocab)} tokens" if self.draft_vocab else "full draft head"
        exit_rule = (f"adaptive exit (target acceptance {self.draft_exit_target_acceptance:g})"
                     if self.adaptive_exit else "no adaptive exit")
        schedule = self.num_speculative_tokens_per_batch_size
        controller = self.draft_length_controller
        if controller is not None:
            length = (f"draft-length controller (K 0-{self.num_speculative_tokens} per batch size, chosen online; "
                      f"warm-up {controller.warmup_steps} steps per K, exploring at least {controller.explore_every} steps apart)")
        else:
            length = f"K per batch size {list(schedule)}" if schedule else "fixed K"
        return f"{head}, {exit_rule}, {length}"

    def to_builtins(self) -> dict:
        """Plain data (for ``collective_rpc`` and JSON)."""
        return msgspec.to_builtins(self)

    @classmethod
    def from_builtins(cls, data: dict) -> DraftSettings:
        """The value back from :meth:`to_builtins`'s plain data, types checked."""
        return msgspec.convert(data, cls)
