"""The search space of ``vllm-selfspec tune``: which sublayers to skip and how to draft.

Like Draft & Verify's Bayesian optimisation, every attention sublayer and every MLP
sublayer is its own yes/no variable (2·L in all); the draft length, the draft head's
vocabulary size and adaptive exit are searched with them. The sampler is Optuna's
(TPE); this module only maps a trial's parameters to a draft and back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet, heuristic_skip_set


@dataclass(frozen=True)
class DraftCandidate:
    """One point of the search: a skip set and the draft settings tried with it."""

    skip_set: SkipSet
    num_speculative_tokens: int
    draft_vocab_size: int
    adaptive_exit: bool

    def describe(self) -> str:
        """A one-line summary for logs and the progress bar."""
        head = f"head {self.draft_vocab_size}" if self.draft_vocab_size else "full head"
        exit_rule = "adaptive exit" if self.adaptive_exit else "fixed length"
        return f"{self.skip_set.describe()}, K={self.num_speculative_tokens}, {head}, {exit_rule}"


@dataclass(frozen=True)
class SearchSpace:
    """The variables one tuning study searches."""

    num_layers: int
    draft_lengths: tuple[int, ...]
    draft_vocab_sizes: tuple[int, ...]
    adaptive_exit_choices: tuple[bool, ...] = (False, True)

    def suggest(self, trial) -> DraftCandidate | None:
        """The candidate an Optuna trial proposes; ``None`` if it skips every sublayer."""
        attn = [i for i in range(self.num_layers) if trial.suggest_categorical(f"skip_attn_{i}", [False, True])]
        mlp = [i for i in range(self.num_layers) if trial.suggest_categorical(f"skip_mlp_{i}", [False, True])]
        k = trial.suggest_categorical("num_speculative_tokens", list(self.draft_lengths))
        vocab = trial.suggest_categorical("draft_vocab_size", list(self.draft_vocab_sizes))
        adaptive = trial.suggest_categorical("adaptive_exit", list(self.adaptive_exit_choices))
        try:
            skip_set = SkipSet.build(self.num_layers, attn, mlp)
        except SelfSkipConfigError:
            return None
        return DraftCandidate(skip_set, k, vocab, adaptive)

    def params(self, candidate: DraftCandidate) -> dict:
        """Optuna parameters that reproduce ``candidate`` (for ``study.enqueue_trial``)."""
        params = {f"skip_attn_{i}": i in candidate.skip_set.attn for i in range(self.num_layers)}
        params |= {f"skip_mlp_{i}": i in candidate.skip_set.mlp for i in range(self.num_layers)}
        return params | {
            "num_speculative_tokens": candidate.num_speculative_tokens,
            "draft_vocab_size": candidate.draft_vocab_size,
            "adaptive_exit": candidate.adaptive_exit,
        }

    def describe(self) -> str:
        """The space in one line, recorded in the profile."""
        return (
            f"skip_attn_i, skip_mlp_i in {{no, yes}} for i < {self.num_layers}; "
            f"K in {list(self.draft_lengths)}; draft_vocab_size in {list(self.draft_vocab_sizes)}; "
            f"adaptive_exit in {list(self.adaptive_exit_choices)}"
        )

    def starting_points(self, known_good: Iterable[SkipSet] = ()) -> list[DraftCandidate]:
        """Trials to run first: known-good skip sets, the heuristic set and one skipped attention.

        Each comes with the largest K, the full head and adaptive exit on; the sampler
        explores from there (Draft & Verify also seeds its search with hand-picked sets).
        """
        k = max(self.draft_lengths)
        smallest_head = min((v for v in self.draft_vocab_sizes if v), default=0)
        sets = [*known_good, heuristic_skip_set(self.num_layers),
                SkipSet.build(self.num_layers, [self.num_layers // 4], [])]
        candidates: list[DraftCandidate] = []
        for skip_set in sets:
            for vocab in dict.fromkeys([0, smallest_head]):
                candidate = DraftCandidate(skip_set, k, vocab, True in self.adaptive_exit_choices)
                if candidate not in candidates:
                    candidates.append(candidate)
        return candidates
