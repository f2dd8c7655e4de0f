"""The exact sampling test's statistics (``integration_tests/exact_sampling.py``) on a synthetic model:
the whole-sequence G is the sum of the positions' G, a correct sampler passes, a biased one fails."""

import numpy as np
import pytest

from integration_tests.exact_sampling import ContinuationDistribution, decision_rates, judge

VOCAB = 32


def _logprobs(prompts):
    """A synthetic next-token model: raw logprobs from the last three tokens."""
    weights = np.random.default_rng(3).normal(size=(VOCAB, VOCAB)) * 0.45
    rows = []
    for prompt in prompts:
        h = sum(weights[t] * (0.5 + i) for i, t in enumerate(prompt[-3:]))
        rows.append(h - np.log(np.exp(h).sum()))
    return np.array(rows)


@pytest.fixture(scope="module")
def dist():
    return ContinuationDistribution.enumerate(_logprobs, [3, 4, 5], 4, 0.8, 8, 0.9)


def test_the_distribution_is_exact_and_the_positions_add_up(dist):
    assert dist.probs.sum() == pytest.approx(1.0) and len(dist.probs) > 500
    assert np.allclose(dist.conditional.prod(axis=1), dist.probs)
    counts = np.random.default_rng(0).multinomial(5000, dist.probs)
    stats = dist.statistics(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        whole = 2 * np.where(counts > 0, counts * np.log(counts / (5000 * dist.probs)), 0.0).sum()
    assert stats["G whole sequences"] == pytest.approx(whole)
    assert stats["G whole sequences"] == pytest.approx(sum(stats[f"G position {i}"] for i in range(1, 5)))


def test_a_correct_sampler_passes_and_a_biased_one_fails(dist):
    rng = np.random.default_rng(1)
    biased = dist.biased(0.05)
    assert biased.sum() == pytest.approx(1.0) and not np.allclose(biased, dist.probs)
    correct = dist.sequences[rng.choice(len(dist.probs), 20_000, p=dist.probs)].tolist()
    wrong = dist.sequences[rng.choice(len(dist.probs), 20_000, p=biased)].tolist()
    assert not judge(dist, correct, 0.001, rng)[0].rejected
    verdict, null = judge(dist, wrong, 0.001, rng)
    assert verdict.rejected, verdict.describe()
    assert judge(dist, correct + [[VOCAB - 1] * 4], 0.001, rng)[0].outside_support == 1
    # The rule's rates, simulated: near the nominal rate under the exact distribution, high under the bias.
    assert null.n == 20_000
    assert decision_rates(dist, dist.probs, null, 0.05, rng, simulations=400) < 0.1
    assert decision_rates(dist, biased, null, 0.001, rng, simulations=100) > 0.9
