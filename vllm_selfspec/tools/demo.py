"""``vllm-selfspec demo``: the same prompts through plain vLLM and through self_skip, side by side.

Each engine decodes the prompts one request at a time (where self-speculation pays)
and then as one batch (where the profile's batch-size schedule may turn drafting off).
"""

from __future__ import annotations

import argparse

from vllm_selfspec.tools.prompts import load_prompt_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", default="chat", help="chat, summarization, humaneval or a file")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", help="float32 makes token-identity exact")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (no torch.compile)")
    parser.add_argument("--num-speculative-tokens", type=int, default=None)
    parser.add_argument("--skip-profile", default=None)


def run_demo(args: argparse.Namespace) -> int:
    """Run the engines; return 0 when every greedy output matches plain vLLM token for token."""
    from transformers import AutoConfig
    from vllm import SamplingParams

    from vllm_selfspec.core.resolve import resolve_self_skip
    from vllm_selfspec.tools.engine_runs import (
        SpecDecodeCounts,
        chat_prompts,
        combined_tokens_per_s,
        make_llm,
        release,
        timed_generate,
        timed_workload,
    )
    from vllm_selfspec.glue.identity import identity_from_hf_config
    from vllm_selfspec.tools.model_prep import prepare_default_model

    model = args.model or str(prepare_default_model())
    spec: dict = {"method": "self_skip"}
    if args.num_speculative_tokens is not None:
        spec["num_speculative_tokens"] = args.num_speculative_tokens
    if args.skip_profile is not None:
        spec["skip_profile"] = args.skip_profile
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    questions = load_prompt_set(args.prompts)[: args.num_prompts]

    resolved = resolve_self_skip(
        identity_from_hf_config(model, AutoConfig.from_pretrained(model)), max_model_len=2048,
        skip_profile=args.skip_profile, num_speculative_tokens=args.num_speculative_tokens,
    )
    settings = (f"K={resolved.num_speculative_tokens}, {resolved.skip_set.describe()}, "
                f"{resolved.describe_head_and_exit()} (from {resolved.source})")
    held = [[1, 1, resolved.num_speculative_tokens]]
    # The third engine holds K at every batch size, to show the drafts themselves even
    # where the profile's schedule turns drafting off.
    engines = {"plain": None, "self_skip": spec,
               "self_skip, drafting held on": {**spec, "num_speculative_tokens_per_batch_size": held}}
    results = {}
    for name, speculative_config in engines.items():
        llm = make_llm(model, speculative_config, dtype=args.dtype, enforce_eager=args.eager)
        prompts = chat_prompts(llm, questions)
        timed_generate(llm, prompts[:2], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        before = SpecDecodeCounts.read(llm)
        singles = timed_workload(llm, prompts, params, 1)
        singles_counts = SpecDecodeCounts.read(llm).minus(before)
        batch = timed_generate(llm, prompts, params)
        results[name] = {"one at a time": (singles, singles_counts), f"batch of {len(prompts)}": ([batch], batch.spec)}
        release(llm)

    plain = results["plain"][f"batch of {len(questions)}"][0][0]
    for index, question in enumerate(questions):
        print(f"\n[{index}] {question}\n  {plain.texts[index].strip()[:300]!r}")
    print(f"\nmodel {model}, dtype {args.dtype}, {'eager' if args.eager else 'compiled'}, "
          f"greedy, {len(questions)} prompts, max_tokens {args.max_tokens}")
    print(f"self_skip settings: {settings}")
    identical = total = 0
    for label in results["plain"]:
        plain_runs = results["plain"][label][0]
        plain_rate = combined_tokens_per_s(plain_runs)
        print(f"{label}: plain {plain_rate:.1f} tok/s")
        for name in list(engines)[1:]:
            runs, counts = results[name][label]
            rate = combined_tokens_per_s(runs)
            same = sum(a.token_ids == b.token_ids for a, b in zip(runs, plain_runs)) if len(runs) > 1 else sum(
                a == b for a, b in zip(runs[0].token_ids, plain_runs[0].token_ids))
            identical, total = identical + same, total + len(questions)
            print(f"  {name}: {rate:.1f} tok/s ({rate / plain_rate:.3f}x plain), outputs identical "
                  f"{same}/{len(questions)}, accepted {counts.accepted_tokens}/{counts.draft_tokens} draft "
                  f"tokens ({counts.acceptance_rate:.1%}), {counts.mean_acceptance_length:.2f} tokens per step")
    print(f"outputs identical to plain vLLM: {identical}/{total}")
    return 0 if identical == total else 1
