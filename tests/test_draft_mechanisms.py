"""The vLLM-free parts of issue 3: adaptive exit, draft vocabulary, batch-size schedule, search space."""

import optuna
import pytest

from vllm_selfspec.core.adaptive_exit import AdaptiveDraftExit, check_target_acceptance
from vllm_selfspec.core.draft_vocab import check_draft_vocab_size, draft_vocab, rank_by_frequency
from vllm_selfspec.core.schedule import best_draft_length, schedule_from_measurements
from vllm_selfspec.core.search import SearchSpace
from vllm_selfspec.core.skip_set import SelfSkipConfigError, SkipSet


def test_adaptive_exit_follows_draft_and_verify_rule():
    rule = AdaptiveDraftExit(target_acceptance=0.9, threshold=0.6)
    rule.update(accepted=2, drafted=4, ran_full_length=False)  # AR = 0.5 < 0.9: raise the bar
    assert rule.acceptance_rate == 0.5
    assert rule.threshold == pytest.approx(0.9 * 0.6 + 0.1 * 0.61)
    rule.update(accepted=4, drafted=4, ran_full_length=False)  # AR = 0.75 < 0.9: raise again
    assert rule.acceptance_rate == pytest.approx(0.75)
    raised = rule.threshold
    assert raised > 0.6
    rule.update(accepted=4, drafted=4, ran_full_length=True)  # full-length drafts: γ̃ = γ
    assert rule.threshold == pytest.approx(raised)
    for _ in range(50):
        rule.update(accepted=4, drafted=4, ran_full_length=False)  # AR → 1 > 0.9: lower the bar
    assert rule.threshold < raised
    assert rule.keeps_drafting(rule.threshold) and not rule.keeps_drafting(rule.threshold - 1e-6)


def test_adaptive_exit_ignores_steps_without_drafts():
    rule = AdaptiveDraftExit()
    rule.update(accepted=0, drafted=0, ran_full_length=False)
    assert rule.acceptance_rate is None and rule.threshold == 0.6


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.9", True])
def test_target_acceptance_must_be_a_fraction(bad):
    with pytest.raises(SelfSkipConfigError, match="draft_exit_target_acceptance"):
        check_target_acceptance(bad)


def test_draft_vocab_takes_ranked_tokens_then_lowest_ids():
    ranking = rank_by_frequency([[50, 7, 50, 3], [50, 7, 999_999]])
    assert ranking == [50, 7, 3, 999_999]
    assert draft_vocab(5, 100, ranking) == [0, 1, 3, 7, 50]  # 999_999 is outside the vocabulary
    assert draft_vocab(0, 100, ranking) == [] and draft_vocab(100, 100, ranking) == []


def test_draft_vocab_larger_than_vocabulary_is_refused():
    with pytest.raises(SelfSkipConfigError, match="draft_vocab_size: 50000 is larger than the model's vocabulary of 49152"):
        check_draft_vocab_size(50000, 49152)
    with pytest.raises(SelfSkipConfigError, match="draft_vocab_size: must be 0"):
        check_draft_vocab_size(-1, 10)


def test_best_draft_length_needs_a_real_gain():
    assert best_draft_length({0: 100.0, 2: 101.0, 4: 99.0}, min_gain=1.02) == 0
    assert best_draft_length({0: 100.0, 2: 110.0, 4: 120.0}, min_gain=1.02) == 4
    with pytest.raises(ValueError, match="K=0"):
        best_draft_length({2: 1.0})


def test_schedule_takes_the_cautious_k_between_measured_sizes():
    schedule = schedule_from_measurements({1: 4, 4: 2, 8: 0, 32: 0}, max_batch_size=32)
    assert schedule == [(1, 1, 4), (2, 4, 2), (5, 32, 0)]
    assert schedule_from_measurements({1: 0}, max_batch_size=1) == [(1, 1, 0)]


def test_search_space_round_trips_a_candidate():
    space = SearchSpace(num_layers=6, draft_lengths=(2, 4), draft_vocab_sizes=(0, 512))
    start = space.starting_points([SkipSet.build(6, [2], [])])
    assert start[0].skip_set == SkipSet.build(6, [2], []) and start[0].num_speculative_tokens == 4
    for candidate in start:
        assert space.suggest(optuna.trial.FixedTrial(space.params(candidate))) == candidate
    everything = {**space.params(start[0]), **{f"skip_{kind}_{i}": True for kind in ("attn", "mlp") for i in range(6)}}
    assert space.suggest(optuna.trial.FixedTrial(everything)) is None
