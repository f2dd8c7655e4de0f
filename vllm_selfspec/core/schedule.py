"""The never-slower guard: a draft length for every batch size, from measured speeds.

The result is vLLM's own dynamic speculative-decoding schedule,
``num_speculative_tokens_per_batch_size``: inclusive batch-size ranges with the draft
length the scheduler asks for in that range (0 turns speculation off).
"""

from __future__ import annotations

from collections.abc import Mapping

BatchSizeSchedule = list[tuple[int, int, int]]


def best_draft_length(tokens_per_s_by_k: Mapping[int, float], min_gain: float = 1.0) -> int:
    """The draft length with the highest speed; 0 unless some K > 0 beats K = 0 by ``min_gain``."""
    if 0 not in tokens_per_s_by_k:
        raise ValueError("tokens_per_s_by_k must include K=0 (no speculation) to compare against")
    best = max(tokens_per_s_by_k, key=lambda k: (tokens_per_s_by_k[k], -k))
    if best != 0 and tokens_per_s_by_k[best] < min_gain * tokens_per_s_by_k[0]:
        return 0
    return best


def schedule_from_measurements(best_k_by_batch_size: Mapping[int, int], max_batch_size: int) -> BatchSizeSchedule:
    """Ranges covering 1..``max_batch_size``; between two measured sizes the smaller K holds.

    A batch size between two measured ones takes the smaller of their draft lengths
    (the cautious choice); above the largest measured size its K carries on.
    """
    if not best_k_by_batch_size or 1 not in best_k_by_batch_size:
        raise ValueError("best_k_by_batch_size must include batch size 1")
    sizes = sorted(best_k_by_batch_size)
    per_size = {}
    for lower, upper in zip(sizes, sizes[1:] + [max_batch_size + 1]):
        per_size[lower] = best_k_by_batch_size[lower]
        if upper > lower + 1:
            between = min(best_k_by_batch_size[lower], best_k_by_batch_size.get(upper, best_k_by_batch_size[lower]))
            per_size[lower + 1] = between
    schedule: BatchSizeSchedule = []
    starts = sorted(per_size)
    for start, next_start in zip(starts, starts[1:] + [max_batch_size + 1]):
        end = min(next_start - 1, max_batch_size)
        if start > max_batch_size:
            break
        k = per_size[start]
        if schedule and schedule[-1][2] == k and schedule[-1][1] == start - 1:
            schedule[-1] = (schedule[-1][0], end, k)
        else:
            schedule.append((start, end, k))
    return schedule



def holds_one_draft_length(schedule: BatchSizeSchedule, num_speculative_tokens: int) -> bool:
    """Whether ``schedule`` asks for ``num_speculative_tokens`` at every batch size.

    Contiguous ranges from 1, each with that K (vLLM carries the last range's K on).
    Such a schedule changes nothing, and is not handed to vLLM: a schedule makes vLLM
    vary the number of tokens per step, which keeps verification from full CUDA graphs.
    """
    previous_end = 0
    for start, end, k in schedule:
        if start != previous_end + 1 or k != num_speculative_tokens:
            return False
        previous_end = end
    return bool(schedule)
