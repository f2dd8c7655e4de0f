"""Engine features keep working under self_skip, with outputs identical to plain vLLM.

Chunked prefill, prefix caching, stops in the middle of a draft, aborts, preemption;
plus the no-extra-memory guarantees: shared weight storage and equal KV block counts.
All in float32 (exact comparison) with enforce_eager to keep start-up short.
"""

from __future__ import annotations

import pytest
from vllm import SamplingParams

from vllm_selfspec.tools.engine_runs import chat_prompts, make_llm, release
from vllm_selfspec.tools.prompts import load_prompt_set

pytestmark = pytest.mark.engine

SELF_SKIP = {"method": "self_skip", "num_speculative_tokens": 4, "num_speculative_tokens_per_batch_size": [[1, 1, 4]]}
"""The shipped profile (cheap head, exit rule) with drafting held on at every batch size."""
FEATURE_ENGINE = dict(
    dtype="float32",
    enforce_eager=True,
    enable_prefix_caching=True,
    enable_chunked_prefill=True,
    max_num_batched_tokens=128,
    max_num_seqs=8,
    kv_cache_memory_bytes=256 << 20,
)


def _counter(llm, name: str) -> int:
    return int(sum(m.value for m in llm.get_metrics() if m.name == name))


def _summary(outputs):
    return [
        (list(o.outputs[0].token_ids), o.outputs[0].text, o.outputs[0].finish_reason, o.outputs[0].stop_reason)
        for o in outputs
    ]


def _workload(llm) -> dict:
    articles = load_prompt_set("summarization")
    questions = load_prompt_set("chat")
    greedy = SamplingParams(temperature=0.0, max_tokens=48)
    results: dict = {}

    # Prefix caching: four questions about the same long article, asked twice.
    shared = chat_prompts(llm, [f"{articles[0]}\n\nQuestion: {q}" for q in questions[:4]])
    hits_before = _counter(llm, "vllm:prefix_cache_hits")
    results["prefix_first"] = _summary(llm.generate(shared, greedy, use_tqdm=False))
    results["prefix_again"] = _summary(llm.generate(shared, greedy, use_tqdm=False))
    results["prefix_hits"] = _counter(llm, "vllm:prefix_cache_hits") > hits_before

    # Chunked prefill: prompts far longer than max_num_batched_tokens, beside short ones.
    long_prompt = chat_prompts(llm, ["Summarize these articles.\n\n" + "\n\n".join(articles[:5])])
    assert len(llm.get_tokenizer().encode(long_prompt[0])) > 3 * FEATURE_ENGINE["max_num_batched_tokens"]
    results["chunked"] = _summary(
        llm.generate(long_prompt + chat_prompts(llm, questions[4:8]), greedy, use_tqdm=False)
    )

    # Stops inside a draft: stop strings, EOS, and max_tokens that are not multiples of K + 1.
    short = chat_prompts(llm, ["Answer with one word: what color is the sky?", "Say hi.", *questions[8:12]])
    params = [
        SamplingParams(temperature=0.0, max_tokens=64),
        SamplingParams(temperature=0.0, max_tokens=64),
        SamplingParams(temperature=0.0, max_tokens=64, stop=["."]),
        SamplingParams(temperature=0.0, max_tokens=64, stop=[" the", "\n"], include_stop_str_in_output=True),
        SamplingParams(temperature=0.0, max_tokens=3),
        SamplingParams(temperature=0.0, max_tokens=7),
    ]
    results["stops"] = _summary(llm.generate(short, params, use_tqdm=False))
    results["single_tokens"] = _summary(
        llm.generate(short[:3], SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    )

    # Aborts mid-generation: the rest finish unchanged and the engine keeps serving.
    engine = llm.llm_engine
    prompts = chat_prompts(llm, questions[12:18])
    for i, prompt in enumerate(prompts):
        engine.add_request(f"abort-{i}", prompt, SamplingParams(temperature=0.0, max_tokens=64))
    finished: dict[str, object] = {}
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
        if steps == 6:
            engine.abort_request(["abort-0", "abort-2", "abort-4"])
        assert steps < 2000, "requests never finished"
    results["abort_survivors"] = _summary([finished[f"abort-{i}"] for i in (1, 3, 5)])
    results["abort_removed"] = sorted(k for k in ("abort-0", "abort-2", "abort-4") if k not in finished)
    results["after_abort"] = _summary(llm.generate(prompts[:2], greedy, use_tqdm=False))
    results["kv_blocks"] = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
    return results


@pytest.fixture(scope="module")
def plain_results(default_model):
    llm = make_llm(default_model, None, **FEATURE_ENGINE)
    try:
        return _workload(llm)
    finally:
        release(llm)


def _weight_sharing_report(worker) -> dict:
    runner = worker.model_runner
    draft = runner.drafter.model
    target_ptrs = {p.untyped_storage().data_ptr() for p in runner.model.parameters()}
    draft_ptrs = {p.untyped_storage().data_ptr() for p in draft.parameters()}
    return {
        "draft_wraps_target": draft.target is runner.model,
        "draft_storage_within_target": draft_ptrs <= target_ptrs,
        "draft_param_count": sum(p.numel() for p in draft.parameters()),
        "target_param_count": sum(p.numel() for p in runner.model.parameters()),
        "kv_cache_tensors": len(runner.kv_caches),
        "draft_attn_layers_are_target_layers": set(runner.drafter._draft_attn_layer_names)
        <= set(runner.vllm_config.compilation_config.static_forward_context),
    }


def test_features_identical_and_no_extra_memory(default_model, plain_results):
    llm = make_llm(default_model, SELF_SKIP, **FEATURE_ENGINE)
    try:
        report = llm.collective_rpc(_weight_sharing_report)[0]
        results = _workload(llm)
        drafts = _counter(llm, "vllm:spec_decode_num_drafts")
    finally:
        release(llm)
    assert drafts > 0
    assert report["draft_wraps_target"] and report["draft_storage_within_target"]
    assert report["draft_param_count"] == report["target_param_count"]
    assert report["kv_cache_tensors"] == 30  # one per target attention layer, none for the draft
    assert report["draft_attn_layers_are_target_layers"]
    assert results["kv_blocks"] == plain_results["kv_blocks"]
    assert results["prefix_hits"] and plain_results["prefix_hits"]
    assert results["abort_removed"] == ["abort-0", "abort-2", "abort-4"]
    finish_reasons = {r[2] for r in results["stops"]} | {r[2] for r in results["single_tokens"]}
    assert {"stop", "length"} <= finish_reasons
    for key in ("prefix_first", "prefix_again", "chunked", "stops", "single_tokens",
                "abort_survivors", "after_abort"):
        assert results[key] == plain_results[key], key


def test_preemption_with_tiny_kv_cache(default_model):
    tiny_kv = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=24 << 20, max_num_seqs=16,
                   max_model_len=320)
    outputs, preemptions, drafts = {}, {}, {}
    for name, spec in (("plain", None), ("self_skip", SELF_SKIP)):
        llm = make_llm(default_model, spec, **tiny_kv)
        try:
            prompts = chat_prompts(llm, load_prompt_set("chat")[:16])
            outputs[name] = _summary(llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=128),
                                                  use_tqdm=False))
            preemptions[name] = _counter(llm, "vllm:num_preemptions")
            drafts[name] = _counter(llm, "vllm:spec_decode_num_drafts")
        finally:
            release(llm)
    assert preemptions["self_skip"] > 0, "the KV cache was large enough to avoid preemption"
    assert drafts == {"plain": 0, "self_skip": drafts["self_skip"]} and drafts["self_skip"] > 0, drafts
    assert outputs["self_skip"] == outputs["plain"]
