"""A ledger of vLLM's rejection sampler on real rows: each decision re-derived and scored.

Installed in a worker (``llm.collective_rpc(install)``), it wraps vLLM 0.32's
``rejection_sample`` and ``generate_uniform_probs`` and, for every random request's
drafts, records against the target's distribution as the rejection sampler sees it
(temperature, top-k and top-p applied):

- **acceptance**: each reached draft d is accepted with probability min(1, p(d) / q(d))
  (q one-hot for greedy drafts); Z = (accepted - expected) / sd, overall and per position;
- **the rule**: accepted exactly when the uniform u <= p(d) / q(d) (mismatches counted);
- **the uniforms** of reached drafts: a chi-square over ten equal bins;
- **recovered tokens** after a rejection: drawn from the residual max(0, p - q), scored
  as a score test (Z) like ``test_sampling.py``'s, and never outside the residual's support;
- **bonus tokens** after a fully accepted draft: the bonus sampler's token is the one emitted.

``report(worker)`` returns the sums; :func:`summary` turns them into statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2

UNIFORM_BINS = 10


def install(worker) -> None:
    """Wrap the worker's rejection sampler functions (once) and start an empty ledger."""
    from vllm.v1.sample import rejection_sampler as module

    worker.selfspec_ledger = ledger = _empty(module.MAX_SPEC_LEN)
    if getattr(module, "_selfspec_ledger_installed", False):
        module._selfspec_ledger_target = ledger
        return
    module._selfspec_ledger_installed = True
    module._selfspec_ledger_target = ledger
    sample, uniforms = module.rejection_sample, module.generate_uniform_probs
    drawn: dict[str, torch.Tensor] = {}

    def recording_uniforms(*args, **kwargs):
        drawn["u"] = uniforms(*args, **kwargs)
        return drawn["u"]

    def recording_sample(draft_token_ids, num_draft_tokens, max_spec_len, cu_num_draft_tokens, draft_probs,
                         target_logits, bonus_token_ids, sampling_metadata, **kwargs):
        target_probs = target_logits.softmax(dim=-1, dtype=torch.float32)  # as rejection_sample computes them
        output = sample(draft_token_ids, num_draft_tokens, max_spec_len, cu_num_draft_tokens, draft_probs,
                        target_logits, bonus_token_ids, sampling_metadata, **kwargs)
        if not sampling_metadata.all_greedy:
            _record(module._selfspec_ledger_target, draft_token_ids, num_draft_tokens, draft_probs, target_probs,
                    bonus_token_ids, drawn["u"], output, sampling_metadata)
        return output

    module.generate_uniform_probs = recording_uniforms
    module.rejection_sample = recording_sample


def report(worker) -> dict:
    return worker.selfspec_ledger


def _empty(max_positions: int) -> dict:
    return {"reached": [0] * max_positions, "accepted": [0] * max_positions, "expected": [0.0] * max_positions,
            "variance": [0.0] * max_positions, "rule_mismatches": 0, "uniform_bins": [0] * UNIFORM_BINS,
            "recovered": 0, "recovered_outside_support": 0, "recovered_score": 0.0, "recovered_variance": 0.0,
            "bonus": 0, "bonus_mismatches": 0}


def _record(ledger: dict, draft_token_ids, num_draft_tokens, draft_probs, target_probs, bonus_token_ids,
            uniforms, output, sampling_metadata) -> None:
    greedy = (sampling_metadata.temperature == 0).tolist() if sampling_metadata.temperature is not None else None
    drafts = draft_token_ids.long()
    rows = torch.arange(len(drafts))
    p_draft = target_probs[rows, drafts.clamp(min=0)]
    q_draft = draft_probs[rows, drafts.clamp(min=0)] if draft_probs is not None else torch.ones_like(p_draft)
    ratio = torch.where(q_draft > 0, p_draft / q_draft, torch.zeros_like(p_draft)).double()
    output = output.tolist()
    start = 0
    for request, count in enumerate(num_draft_tokens):
        tokens, start = range(start, start + count), start + count
        if count == 0 or (greedy is not None and greedy[request]):
            continue
        for position, row in enumerate(tokens):
            if int(drafts[row]) < 0:  # a padded placeholder, always rejected
                break
            accept_p = min(1.0, float(ratio[row]))
            accepted = output[request][position] == int(drafts[row])
            ledger["reached"][position] += 1
            ledger["accepted"][position] += accepted
            ledger["expected"][position] += accept_p
            ledger["variance"][position] += accept_p * (1 - accept_p)
            ledger["rule_mismatches"] += accepted != bool(ratio[row] >= uniforms[row])
            ledger["uniform_bins"][min(int(float(uniforms[row]) * UNIFORM_BINS), UNIFORM_BINS - 1)] += 1
            if not accepted:
                q = draft_probs[row] if draft_probs is not None else torch.nn.functional.one_hot(
                    drafts[row], target_probs.shape[-1]).float()
                residual = (target_probs[row] - q).clamp(min=0).double()
                residual /= residual.sum()
                recovered = output[request][position]
                ledger["recovered"] += 1
                if residual[recovered] <= 0:
                    ledger["recovered_outside_support"] += 1
                    break
                support = residual[residual > 0]
                log_r = support.log()
                mean = float((support * log_r).sum())
                ledger["recovered_score"] += float(residual[recovered].log()) - mean
                ledger["recovered_variance"] += float((support * log_r**2).sum()) - mean**2
                break
        else:
            ledger["bonus"] += 1
            ledger["bonus_mismatches"] += output[request][count] != int(bonus_token_ids.view(-1)[request])


def summary(ledger: dict) -> dict:
    """The ledger's statistics: acceptance Z (overall, per position), rule mismatches, the uniforms'
    chi-square p-value, recovered-token Z and support, bonus tokens."""
    positions = [i for i, n in enumerate(ledger["reached"]) if n]
    accepted = sum(ledger["accepted"])
    expected, variance = sum(ledger["expected"]), sum(ledger["variance"])
    bins = np.array(ledger["uniform_bins"], dtype=float)
    uniform_chi_square = float(((bins - bins.mean()) ** 2 / bins.mean()).sum()) if bins.sum() else 0.0
    return {
        "drafts reached": sum(ledger["reached"]),
        "accepted": accepted,
        "expected accepted": round(expected, 1),
        "acceptance Z": (accepted - expected) / np.sqrt(variance) if variance else 0.0,
        "acceptance Z per position": [
            round((ledger["accepted"][i] - ledger["expected"][i]) / np.sqrt(ledger["variance"][i]), 2)
            if ledger["variance"][i] else 0.0 for i in positions],
        "rule mismatches": ledger["rule_mismatches"],
        "uniforms chi-square p": float(chi2.sf(uniform_chi_square, UNIFORM_BINS - 1)),
        "recovered": ledger["recovered"],
        "recovered outside support": ledger["recovered_outside_support"],
        "recovered Z": ledger["recovered_score"] / np.sqrt(ledger["recovered_variance"])
        if ledger["recovered_variance"] else 0.0,
        "bonus tokens": ledger["bonus"],
        "bonus mismatches": ledger["bonus_mismatches"],
    }
