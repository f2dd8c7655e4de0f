"""Which attention and MLP sublayers a self-speculative draft bypasses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class SelfSkipConfigError(ValueError):
    """A self-skip setting is invalid; the message names the field to fix."""


def _checked_indices(field: str, indices: Iterable[int], num_layers: int) -> tuple[int, ...]:
    seen: set[int] = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise SelfSkipConfigError(
                f"{field}: {index!r} is not a decoder-layer index (expected an integer)"
            )
        if not 0 <= index < num_layers:
            raise SelfSkipConfigError(
                f"{field}: layer index {index} is out of range; this model has "
                f"{num_layers} decoder layers, so valid indices are 0..{num_layers - 1}"
            )
        if index in seen:
            raise SelfSkipConfigError(f"{field}: layer index {index} is listed twice")
        seen.add(index)
    return tuple(sorted(seen))


@dataclass(frozen=True)
class SkipSet:
    """The sublayers a draft bypasses; the residual stream passes through them unchanged.

    ``attn`` and ``mlp`` hold decoder-layer indices in ascending order.
    """

    num_layers: int
    attn: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()

    @classmethod
    def build(cls, num_layers: int, attn: Iterable[int], mlp: Iterable[int]) -> SkipSet:
        """Validate user-given indices and return the skip set they describe."""
        if num_layers < 1:
            raise SelfSkipConfigError(f"num_layers must be at least 1, got {num_layers}")
        skip_set = cls(
            num_layers=num_layers,
            attn=_checked_indices("skip_attn", attn, num_layers),
            mlp=_checked_indices("skip_mlp", mlp, num_layers),
        )
        if skip_set.num_skipped == 2 * num_layers:
            raise SelfSkipConfigError(
                "skip_attn/skip_mlp: every sublayer is skipped, so the draft would "
                "ignore its input; keep at least one attention or MLP sublayer"
            )
        return skip_set

    @property
    def num_skipped(self) -> int:
        """How many of the model's 2·L sublayers the draft bypasses."""
        return len(self.attn) + len(self.mlp)

    @property
    def skipped_share(self) -> float:
        """The share of sublayers bypassed, in [0, 1]."""
        return self.num_skipped / (2 * self.num_layers)

    def runs_attn(self, layer: int) -> bool:
        """Whether the draft runs the attention sublayer of ``layer``."""
        return layer not in self.attn

    def runs_mlp(self, layer: int) -> bool:
        """Whether the draft runs the MLP sublayer of ``layer``."""
        return layer not in self.mlp

    def describe(self) -> str:
        """A one-line summary for logs."""
        return (
            f"skip_attn={list(self.attn)} skip_mlp={list(self.mlp)} "
            f"({self.num_skipped} of {2 * self.num_layers} sublayers, "
            f"{self.skipped_share:.1%})"
        )


def heuristic_skip_set(num_layers: int) -> SkipSet:
    """The conservative default for models without a tuned profile.

    Skips the attention sublayer of every other layer in the middle half of the
    stack and no MLP sublayer: attention is the sublayer Draft & Verify's searches
    drop most often, and the first and last quarter of layers matter most to the
    output. For models with fewer than 4 layers nothing is skipped safely, so the
    single middle attention sublayer is skipped.
    """
    if num_layers < 4:
        return SkipSet.build(num_layers, [num_layers // 2], [])
    start, stop = num_layers // 4, num_layers - num_layers // 4
    return SkipSet.build(num_layers, range(start + 1, stop, 2), [])
