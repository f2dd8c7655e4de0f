"""The draft's LM-head vocabulary subset: which token ids the cheap draft head scores."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vllm_selfspec.core.skip_set import SelfSkipConfigError


def check_draft_vocab_size(size: object, vocab_size: int) -> int:
    """Validate ``draft_vocab_size``: 0 (full head) or 1..vocab_size."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise SelfSkipConfigError(f"draft_vocab_size: expected an integer, got {size!r}")
    if size < 0:
        raise SelfSkipConfigError(f"draft_vocab_size: must be 0 (full vocabulary) or more, got {size}")
    if size > vocab_size:
        raise SelfSkipConfigError(
            f"draft_vocab_size: {size} is larger than the model's vocabulary of {vocab_size} "
            f"tokens; use at most {vocab_size}, or 0 for the full head"
        )
    return size


def rank_by_frequency(token_id_lists: Iterable[Iterable[int]]) -> list[int]:
    """Token ids by how often they occur, most frequent first (ties: lower id first)."""
    counts = Counter(token for tokens in token_id_lists for token in tokens)
    return sorted(counts, key=lambda token: (-counts[token], token))


def draft_vocab(size: int, vocab_size: int, ranking: Iterable[int] = ()) -> list[int]:
    """The ``size`` token ids the draft head scores, sorted ascending; ``[]`` means the full head.

    Ids come from ``ranking`` (measured frequencies, most frequent first) and are
    topped up with the lowest ids not yet taken: byte-pair tokenizers number their
    merges in the order they were learnt, so low ids are the frequent ones.
    """
    check_draft_vocab_size(size, vocab_size)
    if size in (0, vocab_size):
        return []
    chosen: dict[int, None] = {}
    for token in ranking:
        if len(chosen) == size:
            break
        if 0 <= token < vocab_size:
            chosen.setdefault(token)
    next_id = 0
    while len(chosen) < size:
        chosen.setdefault(next_id)
        next_id += 1
    return sorted(chosen)
