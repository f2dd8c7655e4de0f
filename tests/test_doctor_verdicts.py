"""``vllm-selfspec doctor``'s identity and speed verdicts, from synthetic outputs and rounds."""

from types import SimpleNamespace

from vllm_selfspec.tools.doctor import NEAR_TIE_LOGPROB_GAP, _identity, _speed_verdict


def _plain(tokens, top_two):
    """Plain vLLM's output: ``tokens`` and, at each, its top two logprobs."""
    logprobs = [{1: SimpleNamespace(logprob=a), 2: SimpleNamespace(logprob=b)} for a, b in top_two]
    return SimpleNamespace(outputs=[SimpleNamespace(token_ids=tokens, logprobs=logprobs)])


def test_float32_needs_exact_identity_other_dtypes_allow_a_near_tie():
    tie = NEAR_TIE_LOGPROB_GAP / 2
    reference = [_plain([5, 6, 7], [(-0.1, -3.0), (-0.5, -0.5 - tie), (-0.2, -4.0)]),
                 _plain([5, 6, 7], [(-0.1, -3.0), (-0.1, -3.0), (-0.2, -4.0)])]
    # The first output differs at a near-tie; the second is identical.
    near_tie = [[5, 9, 7], [5, 6, 7]]
    assert _identity(reference, near_tie, exact=True)["ok"] is False
    bf16 = _identity(reference, near_tie, exact=False)
    assert bf16["ok"] is True and "1/2, 1 more differing only after a near-tie" in bf16["line"]
    # A difference where plain vLLM was sure is a fault in any dtype.
    sure = [[5, 6, 7], [5, 9, 7]]
    assert _identity(reference, sure, exact=False)["ok"] is False
    assert _identity(reference, [[5, 6, 7], [5, 6, 7]], exact=True) == {
        "ok": True, "line": "greedy outputs identical to plain vLLM: 2/2 (float32: exact)"}


def test_a_speed_verdict_only_when_every_round_agrees():
    assert _speed_verdict([1.05, 1.12, 1.2]).startswith("self_skip as configured is faster here")
    assert _speed_verdict([0.8, 0.9, 0.97]).startswith("self_skip as configured is slower here")
    assert _speed_verdict([0.97, 1.01, 1.03]) == (
        "no speed difference beyond the rounds' spread at batch 1 (0.97-1.03x plain vLLM over 3 rounds)")
