"""Draft lengths booked in the engine core: the controller's K under the draft's, and what a step teaches it."""

from vllm_selfspec.core.draft_booking import CompletedStep, DraftBooking
from vllm_selfspec.core.draft_length_controller import ControllerSettings
from vllm_selfspec.core.draft_settings import DraftSettings

FIXED = DraftSettings(skip_attn=(1,), skip_mlp=(2,), num_speculative_tokens=3)
QUICK = ControllerSettings(warmup_steps=3, explore_every=4, decision_steps=1, exploration_budget=1.0)


def test_without_the_controller_the_draft_k_caps_what_vllm_books():
    booking = DraftBooking(FIXED)
    assert [booking.book(batch, 4) for batch in (1, 8)] == [3, 3]
    assert booking.book(8, 2) == 2  # vLLM's batch-size schedule books fewer
    assert booking.record() == {"steps": [], "incumbents": {}, "summary": "off"}


def _step(booked, tokens, scheduled_at, completed_at, decode_only=True, batch_size=1):
    return CompletedStep(batch_size, booked, tokens, decode_only, scheduled_at, completed_at)


def test_the_controller_learns_from_the_time_between_completed_steps():
    """Drafting pays 2x here: the controller climbs from K = 0 and books K > 0 for batch 1."""
    booking = DraftBooking(FIXED.replace(draft_length_controller=QUICK))
    now = 0.0
    for _ in range(60):
        k = booking.book(1, 3)
        tokens = 1 + k  # every draft accepted
        booking.observe(_step(k, tokens, now, now + 0.01 * (1 + 0.25 * k)))
        now += 0.01 * (1 + 0.25 * k)
    steps = booking.record()["steps"]
    assert steps[0] == [1, 0] and len(steps) == 60
    assert booking.record()["incumbents"]["batch 1"] >= 2, booking.record()["summary"]
    assert max(k for _, k in steps) == 3


def test_prefills_and_idle_waits_teach_the_controller_nothing():
    booking = DraftBooking(FIXED.replace(draft_length_controller=QUICK))
    seen = []
    booking.controller.observe = lambda *args, **kwargs: seen.append(kwargs["seconds"])
    booking.observe(_step(0, 1, 0.0, 1.0))  # the first step: nothing to measure from
    booking.observe(_step(0, 1, 1.0, 1.5, decode_only=False))  # a prefill
    booking.observe(_step(0, 1, 9.0, 9.5))  # scheduled after 7.5 s idle, ran 0.5 s
    booking.observe(_step(0, 1, 9.5, 9.75))  # scheduled at once: counted
    booking.observe(_step(0, 1, 9.7, 10.0))  # async: scheduled before the previous completed
    assert seen == [0.25, 0.25]
