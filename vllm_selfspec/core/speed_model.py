"""Speed model of speculative decoding: what a configuration gains over plain decoding, and why.

One speculative step drafts K tokens (K draft forwards), verifies them in one target
forward over K+1 tokens per request, and pays the engine's per-step overhead
(scheduling, sampling, rejection, output handling). It emits on average
E = 1 + sum of the per-position acceptance rates tokens per request. A plain step
costs T and emits one token per request. With every cost expressed as a multiple of T:

    speedup = E / (K * draft_cost + verify_cost + overhead)

``draft_cost`` is one draft forward, ``verify_cost`` the target forward of a
speculative step, ``overhead`` the rest of that step. This is the model of
*Decoding Speculative Decoding* (Yan et al., NAACL 2025) with the overhead split out,
which on a small model on a CPU is far from negligible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def expected_tokens_per_step(per_position_rates: Sequence[float]) -> float:
    """Tokens per request per step: the target's own token plus the accepted drafts.

    ``per_position_rates[k]`` is the share of drafts whose first k+1 tokens were all
    accepted (what vLLM's per-position counters divided by the number of drafts give).
    """
    return 1.0 + sum(per_position_rates)


def geometric_per_position_rates(acceptance: float, num_speculative_tokens: int) -> list[float]:
    """Per-position rates when every draft token is accepted independently with ``acceptance``."""
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must lie in [0, 1], got {acceptance}")
    return [acceptance ** (k + 1) for k in range(num_speculative_tokens)]


@dataclass(frozen=True)
class SpeedModelInputs:
    """The four quantities the model needs; costs are multiples of one plain decode step."""

    per_position_rates: tuple[float, ...]
    draft_cost: float
    verify_cost: float
    overhead: float

    @property
    def num_speculative_tokens(self) -> int:
        """K, the drafts per step."""
        return len(self.per_position_rates)

    @property
    def expected_tokens_per_step(self) -> float:
        """E, tokens per request per speculative step."""
        return expected_tokens_per_step(self.per_position_rates)

    @property
    def step_cost(self) -> float:
        """One speculative step, in plain decode steps."""
        return self.num_speculative_tokens * self.draft_cost + self.verify_cost + self.overhead

    def predicted_speedup(self) -> float:
        """Tokens per second relative to plain decoding."""
        return self.expected_tokens_per_step / self.step_cost

    def predicted_decode_speedup(self, plain_steps: int, speculative_steps: int) -> float:
        """Decode speedup when plain decoding takes ``plain_steps`` and speculation ``speculative_steps``."""
        return plain_steps / speculative_steps / self.step_cost

    def ceiling_speedup(self) -> float:
        """The speedup if every draft were accepted, at the same costs."""
        return (self.num_speculative_tokens + 1) / self.step_cost


def speculative_decode_steps(tokens_per_request: int, acceptance_lengths: Sequence[float], batched: bool) -> int:
    """Speculative steps to decode ``tokens_per_request`` tokens for each request.

    Request i needs ceil(tokens / E_i) steps (the last step is cut at the token limit).
    A batch runs until its slowest request is done; requests sent one at a time add up.
    """
    if not acceptance_lengths:
        raise ValueError("need at least one request's mean acceptance length")
    steps = [math.ceil(tokens_per_request / length - 1e-9) for length in acceptance_lengths]
    return max(steps) if batched else sum(steps)


@dataclass(frozen=True)
class MeasuredStepTimes:
    """Seconds per engine step of one run, split where the bench's worker timers split them."""

    step_s: float  # wall time per step, engine overhead included
    target_forward_s: float  # the target model's forward pass(es) in a step
    draft_s: float  # the proposer's whole ``propose`` call in a step (0 for plain runs)

    @property
    def overhead_s(self) -> float:
        """Everything in a step that is neither the target forward nor drafting."""
        return max(self.step_s - self.target_forward_s - self.draft_s, 0.0)


def inputs_from_measurements(per_position_rates: Sequence[float], plain: MeasuredStepTimes,
                             speculative: MeasuredStepTimes) -> SpeedModelInputs:
    """Speed-model inputs from a plain run and a speculative run at the same batch size."""
    num_tokens = len(per_position_rates)
    if num_tokens < 1:
        raise ValueError("a speculative run needs at least one per-position acceptance rate")
    unit = plain.step_s
    return SpeedModelInputs(
        per_position_rates=tuple(per_position_rates),
        draft_cost=speculative.draft_s / num_tokens / unit,
        verify_cost=speculative.target_forward_s / unit,
        overhead=speculative.overhead_s / unit,
    )


def kept_compute_share(num_layers: int, skip_attn: Sequence[int], skip_mlp: Sequence[int],
                       attn_share: float, mlp_share: float) -> float:
    """Share of a full forward's compute the draft still runs.

    ``attn_share`` and ``mlp_share`` are one sublayer's share of the full forward
    (for instance by parameter count); the rest (embedding, norms, LM head) always runs.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    full_layers = num_layers * (attn_share + mlp_share)
    if full_layers > 1.0 + 1e-9:
        raise ValueError("the sublayer shares add up to more than the whole forward")
    return 1.0 - len(skip_attn) * attn_share - len(skip_mlp) * mlp_share


@dataclass(frozen=True)
class PublishedSelfSpeculation:
    """A published Draft & Verify operating point and the model shape behind it."""

    model: str
    num_layers: int
    attn_params: float  # one attention sublayer
    mlp_params: float  # one MLP sublayer
    head_params: float  # the LM head, which the draft always runs
    skipped_attn: int
    skipped_mlp: int
    acceptance: float  # per-token acceptance rate reported by the authors
    reported_speedup: float

    @property
    def kept_compute_share(self) -> float:
        """Share of a full forward's weights (≈ time in memory-bound decoding) the draft still reads."""
        return kept_weight_share(self.num_layers, self.attn_params, self.mlp_params, self.head_params,
                                 self.skipped_attn, self.skipped_mlp)


def kept_weight_share(num_layers: int, attn_params: float, mlp_params: float, head_params: float,
                      skipped_attn: int, skipped_mlp: int) -> float:
    """Share of a forward's weights a draft still reads (the embedding lookup reads one row, so it is left out)."""
    total = num_layers * (attn_params + mlp_params) + head_params
    return 1.0 - (skipped_attn * attn_params + skipped_mlp * mlp_params) / total


DRAFT_AND_VERIFY_RESULTS = (
    # hidden 5120, 40 heads, FFN 13824, vocab 32000
    PublishedSelfSpeculation("LLaMA-2-13B", 40, 4 * 5120**2, 3 * 5120 * 13824, 5120 * 32000,
                             skipped_attn=24, skipped_mlp=10, acceptance=0.919, reported_speedup=1.58),
    # hidden 8192, 64 query / 8 KV heads of 128, FFN 28672, vocab 32000
    PublishedSelfSpeculation("LLaMA-2-70B", 80, 2 * 8192**2 + 2 * 8192 * 1024, 3 * 8192 * 28672, 8192 * 32000,
                             skipped_attn=47, skipped_mlp=37, acceptance=0.928, reported_speedup=1.99),
)
"""Skip counts from the published skip sets; acceptance and speedups from the maintainers' logs."""


def project(published: PublishedSelfSpeculation, num_speculative_tokens: int,
            verify_cost: float = 1.0, overhead: float = 0.0) -> SpeedModelInputs:
    """Speed-model inputs for a published operating point, with draft cost = weights kept.

    Decoding at small batch on GPUs is memory-bound, so a forward's time follows the
    weights it reads, and a verification over K+1 tokens costs about one decode step:
    ``verify_cost`` defaults to 1 and ``overhead`` to 0 (a lower bound on real engines).
    """
    return SpeedModelInputs(
        per_position_rates=tuple(geometric_per_position_rates(published.acceptance, num_speculative_tokens)),
        draft_cost=published.kept_compute_share,
        verify_cost=verify_cost,
        overhead=overhead,
    )


LLAMA_3_SHAPES = (
    # name, layers, one attention sublayer (32 query / 8 KV heads of 128), one MLP, the LM head (vocab 128256)
    ("Llama-3-8B", 32, 2 * 4096**2 + 2 * 4096 * 1024, 3 * 4096 * 14336, 4096 * 128256),
    ("Llama-3-70B", 80, 2 * 8192**2 + 2 * 8192 * 1024, 3 * 8192 * 28672, 8192 * 128256),
)
"""Shapes for what the heuristic skip set (no profile) leaves a draft to read."""


def projection_table() -> str:
    """The README's table of projected GPU speedups (``python -m vllm_selfspec.core.speed_model``).

    Rows: Draft & Verify's published operating points, and the heuristic skip set that a
    model without a profile gets, with a perfect draft (acceptance 1: a ceiling).
    Verification costs one decode step, a draft step the share of weights it reads, and
    there is no engine overhead.
    """
    from vllm_selfspec.core.skip_set import heuristic_skip_set

    rows = ["| model | skip set | weights the draft reads | acceptance | K | projected speedup | reported |",
            "|---|---|---|---|---|---|---|"]
    for published in DRAFT_AND_VERIFY_RESULTS:
        for k in (4, 8):
            speedup = project(published, k).predicted_speedup()
            rows.append(f"| {published.model} | Draft & Verify's, {published.skipped_attn} attention + "
                        f"{published.skipped_mlp} MLP of {2 * published.num_layers} sublayers | "
                        f"{published.kept_compute_share:.0%} | {published.acceptance} | {k} | {speedup:.2f}× | "
                        f"{published.reported_speedup}× |")
    for name, num_layers, attn, mlp, head in LLAMA_3_SHAPES:
        skipped = len(heuristic_skip_set(num_layers).attn)
        kept = kept_weight_share(num_layers, attn, mlp, head, skipped, 0)
        for k in (1, 4):
            inputs = SpeedModelInputs(per_position_rates=(1.0,) * k, draft_cost=kept, verify_cost=1.0, overhead=0.0)
            rows.append(f"| {name} | heuristic (no profile), {skipped} attention of {2 * num_layers} sublayers | "
                        f"{kept:.1%} | 1 (a perfect draft) | {k} | {inputs.predicted_speedup():.2f}× | — |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(projection_table())
