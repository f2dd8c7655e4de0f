"""Agreement of the draft plan across tensor-parallel ranks."""

from __future__ import annotations

from collections.abc import Sequence

from vllm_selfspec.core.skip_set import SelfSkipConfigError


def check_ranks_agree(plans: Sequence[str]) -> None:
    """Raise unless every rank reports the same draft plan; ``plans[r]`` is rank r's.

    Each rank's draft runs the target's own tensor-parallel layers, whose all-reduces
    must be entered by every rank in the same order. Ranks that skip different
    sublayers would deadlock or mix unrelated activations, so the engine must not serve.
    """
    if len(set(plans)) <= 1:
        return
    reference = plans[0]
    lines = "\n".join(
        f"  rank {rank}: {plan}{'' if plan == reference else '   <-- differs from rank 0'}"
        for rank, plan in enumerate(plans)
    )
    raise SelfSkipConfigError(
        "self_skip: the tensor-parallel ranks would draft with different skip sets "
        "(skip_attn/skip_mlp), so their collectives would not match:\n"
        f"{lines}\n"
        "Install the same vllm-selfspec version and pass the same skip_profile/skip_attn/"
        "skip_mlp on every node."
    )
