"""An exact goodness-of-fit test for sampled continuations, on a vocabulary small enough to enumerate.

:class:`ContinuationDistribution` holds the target's distribution over every continuation of
``length`` tokens after one prompt, built exactly from plain vLLM's logprobs over the whole
vocabulary (temperature, then top-k, then top-p, as vLLM's sampler applies them). Sampled
continuations are then judged against it as counts over those sequences (:class:`Verdict`):

- **per position, given its prefix**: the G statistic of position j's tokens against
  ``count(prefix) * P(token | prefix)``, summed over the prefixes sampled;
- **whole sequences**: the G statistic over complete continuations, which is the sum of the
  positions' statistics (the chain rule of the log-likelihood ratio);
- **score**: ``Z = sum(log P(seq) - E[log P]) / sqrt(N Var[log P])``, which a sampler that is
  too sharp or too flat moves in one direction;
- **support**: no sampled continuation may have probability 0.

Each G statistic's null distribution is simulated (multinomial draws of N sequences from the
exact distribution) and matched by a scaled chi-square (the simulated mean and variance), so
sparse cells need no asymptotic rule. The decision rejects when any statistic's p-value is
below ``alpha / number of statistics``. :func:`decision_rates` applies the same rule to
simulated samples: under the exact distribution (false alarms) and under a stated small bug.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.stats import chi2, norm

NULL_SIMULATIONS = 400
"""Simulated samples that fix each G statistic's null mean and variance."""


def request_distribution(logprobs: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution a request samples from, given raw logprobs over the whole vocabulary.

    vLLM's sampler: logits divided by the temperature, top-k kept, then the smallest set of
    top tokens whose mass reaches ``top_p`` (a token goes when the mass of the tokens ranked
    below it, itself included, is at most ``1 - top_p``; the top token always stays).
    """
    order = np.argsort(-logprobs, kind="stable")
    scaled = logprobs[order][:top_k] / temperature
    probs = np.exp(scaled - scaled.max())
    full = np.zeros(len(logprobs))
    full[order[:top_k]] = keep_top_p(probs / probs.sum(), top_p)
    return full


def keep_top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """vLLM's top-p on probabilities sorted in descending order along the last axis, renormalised:
    a token goes when the mass of the tokens ranked below it, itself included, is at most
    ``1 - top_p``; the top token always stays."""
    keep = np.cumsum(probs[..., ::-1], axis=-1)[..., ::-1] > 1 - top_p
    keep[..., 0] = True
    probs = np.where(keep, probs, 0.0)
    return probs / probs.sum(axis=-1, keepdims=True)


@dataclass
class ContinuationDistribution:
    """Every continuation of ``length`` tokens with probability > 0, and the tree of its prefixes."""

    sequences: np.ndarray
    """[cells, length] token ids."""
    probs: np.ndarray
    """[cells] probability of each whole continuation."""
    conditional: np.ndarray
    """[cells, length] P(token j | the tokens before it) along each continuation."""
    node_of: np.ndarray
    """[length, cells] index of each continuation's prefix of j + 1 tokens among that depth's prefixes."""
    parent_of: list[np.ndarray]
    """Per depth j, for each prefix of j + 1 tokens, the index of its prefix of j tokens (depth 0: 0)."""

    @classmethod
    def enumerate(cls, next_token_logprobs, prompt: list[int], length: int, temperature: float,
                  top_k: int, top_p: float) -> ContinuationDistribution:
        """Build it with ``next_token_logprobs(list of token-id prompts) -> [n, vocab] raw logprobs``."""
        rows: list[tuple[tuple[int, ...], float, list[float]]] = [((), 1.0, [])]
        for _ in range(length):
            logprobs = next_token_logprobs([prompt + list(prefix) for prefix, _, _ in rows])
            grown = []
            for (prefix, prob, path), row in zip(rows, logprobs):
                dist = request_distribution(np.asarray(row), temperature, top_k, top_p)
                grown += [(prefix + (int(t),), prob * dist[t], path + [dist[t]]) for t in np.flatnonzero(dist)]
            rows = grown
        sequences = np.array([prefix for prefix, _, _ in rows], dtype=np.int64)
        node_of = np.zeros((length, len(rows)), dtype=np.int64)
        parent_of = []
        for depth in range(length):
            keys = [tuple(s[: depth + 1]) for s in sequences.tolist()]
            index = {key: i for i, key in enumerate(dict.fromkeys(keys))}
            node_of[depth] = [index[key] for key in keys]
            parents = np.zeros(len(index), dtype=np.int64)
            if depth:
                parents[node_of[depth]] = node_of[depth - 1]
            parent_of.append(parents)
        return cls(sequences, np.array([p for _, p, _ in rows]), np.array([path for _, _, path in rows]),
                   node_of, parent_of)

    @property
    def length(self) -> int:
        return self.sequences.shape[1]

    def cell_counts(self, samples: list[list[int]]) -> tuple[np.ndarray, int]:
        """Counts per continuation, and how many samples fall outside the support."""
        index = {tuple(s): i for i, s in enumerate(self.sequences.tolist())}
        counts = np.zeros(len(self.sequences), dtype=np.int64)
        outside = 0
        for sample in samples:
            cell = index.get(tuple(sample[: self.length]))
            if cell is None:
                outside += 1
            else:
                counts[cell] += 1
        return counts, outside

    def biased(self, delta: float, from_position: int = 1) -> np.ndarray:
        """Continuation probabilities under a small bug: at each position from ``from_position``
        (0-based; drafts influence the 2nd token on), a share ``delta`` of the mass moves to
        the most likely token given the prefix (drafts accepted slightly too readily)."""
        probs = np.ones(len(self.sequences))
        for depth in range(self.length):
            cond = self.conditional[:, depth]
            if depth >= from_position:
                child = self.node_of[depth]
                parent = self.parent_of[depth][child]
                # Each prefix's most likely next token: its child node of highest probability.
                order = np.lexsort((child, -cond, parent))
                first = np.ones(len(order), dtype=bool)
                first[1:] = parent[order][1:] != parent[order][:-1]
                mode_child = np.zeros(parent.max() + 1, dtype=np.int64)
                mode_child[parent[order][first]] = child[order][first]
                cond = (1 - delta) * cond + delta * (child == mode_child[parent])
            probs *= cond
        return probs / probs.sum()

    def statistics(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Each position's conditional G, the whole-sequence G and the score Z, for counts [..., cells]."""
        counts = np.asarray(counts, dtype=np.float64)
        n = counts.sum(-1)
        stats = {}
        total = np.zeros(counts.shape[:-1])
        parent_counts = n[..., None]
        for depth in range(self.length):
            nodes = self.parent_of[depth].shape[0]
            node_counts = _sum_by(counts, self.node_of[depth], nodes)
            cond = np.zeros(nodes)
            cond[self.node_of[depth]] = self.conditional[:, depth]
            expected = parent_counts[..., self.parent_of[depth]] * cond
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = np.where(node_counts > 0, node_counts * np.log(node_counts / expected), 0.0)
            stats[f"G position {depth + 1}"] = 2 * terms.sum(-1)
            total = total + stats[f"G position {depth + 1}"]
            parent_counts = node_counts
        stats["G whole sequences"] = total
        logp = np.log(self.probs)
        mean = (self.probs * logp).sum()
        var = (self.probs * logp**2).sum() - mean**2
        stats["score Z"] = ((counts * logp).sum(-1) - n * mean) / np.sqrt(n * var)
        return stats


def _sum_by(counts: np.ndarray, groups: np.ndarray, size: int) -> np.ndarray:
    """Sum counts [..., cells] into ``size`` groups along the last axis."""
    membership = sparse.csr_matrix((np.ones(len(groups)), (np.arange(len(groups)), groups)),
                                   shape=(len(groups), size))
    flat = counts.reshape(-1, counts.shape[-1])
    return np.asarray((membership.T @ flat.T).T).reshape(*counts.shape[:-1], size)


@dataclass
class NullModel:
    """Each G statistic's null at sample size ``n``, as a scaled chi-square (matched mean and variance)."""

    n: int
    scale: dict[str, float]
    dof: dict[str, float]

    @classmethod
    def simulate(cls, dist: ContinuationDistribution, n: int, rng: np.random.Generator) -> NullModel:
        stats = dist.statistics(rng.multinomial(n, dist.probs, size=NULL_SIMULATIONS))
        scale, dof = {}, {}
        for name, values in stats.items():
            mean, var = values.mean(), values.var()
            if name.startswith("G") and var > 0:  # a position with one possible token tells nothing
                scale[name], dof[name] = var / (2 * mean), 2 * mean**2 / var
        return cls(n, scale, dof)

    def p_values(self, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, values in stats.items():
            if name in self.scale:
                out[name] = chi2.sf(values / self.scale[name], self.dof[name])
            elif not name.startswith("G"):
                out[name] = 2 * norm.sf(np.abs(values))
        return out

    @staticmethod
    def rejects(p_values: dict[str, np.ndarray], alpha: float) -> np.ndarray:
        """The decision: some statistic's p-value under ``alpha`` split over the statistics."""
        return np.min(np.stack(list(p_values.values())), axis=0) < alpha / len(p_values)


@dataclass
class Verdict:
    """The test's decision on one sample of continuations."""

    n: int
    outside_support: int
    statistics: dict[str, float]
    p_values: dict[str, float]
    rejected: bool

    def describe(self) -> str:
        parts = [f"{name} {value:.1f} (p {self.p_values[name]:.2g})" for name, value in self.statistics.items()]
        return f"{self.n} sequences, {self.outside_support} outside the support; " + ", ".join(parts)


def judge(dist: ContinuationDistribution, samples: list[list[int]], alpha: float,
          rng: np.random.Generator) -> tuple[Verdict, NullModel]:
    """Judge sampled continuations against the exact distribution at false-alarm rate ``alpha``;
    also return the null simulated for their number (for :func:`decision_rates`)."""
    counts, outside = dist.cell_counts(samples)
    null = NullModel.simulate(dist, int(counts.sum()), rng)
    all_stats = dist.statistics(counts)
    p_values = {name: float(value) for name, value in null.p_values(all_stats).items()}
    stats = {name: float(all_stats[name]) for name in p_values}
    rejected = outside > 0 or bool(null.rejects(p_values, alpha))
    return Verdict(null.n, outside, stats, p_values, rejected), null


def decision_rates(dist: ContinuationDistribution, probs: np.ndarray, null: NullModel, alpha: float,
                   rng: np.random.Generator, simulations: int = 1000) -> float:
    """How often :func:`judge`'s rule rejects ``null.n`` continuations drawn from ``probs`` (over ``dist``'s cells)."""
    counts = rng.multinomial(null.n, probs, size=simulations)
    return float(null.rejects(null.p_values(dist.statistics(counts)), alpha).mean())
