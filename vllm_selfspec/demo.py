"""``vllm-selfspec demo``: the same prompts through plain vLLM and through self_skip, side by side."""

from __future__ import annotations

import argparse

from vllm_selfspec.prompts import load_prompt_set


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


def _print_run(name: str, run) -> None:
    print(f"{name:>10}: {run.output_tokens} tokens in {run.seconds:.2f} s = {run.tokens_per_s:.1f} tok/s")


def run_demo(args: argparse.Namespace) -> int:
    """Run both engines; return 0 when the greedy outputs match token for token."""
    from vllm import SamplingParams

    from vllm_selfspec.engine_runs import chat_prompts, make_llm, release, timed_generate
    from vllm_selfspec.model_prep import prepare_default_model

    model = args.model or str(prepare_default_model())
    spec: dict = {"method": "self_skip"}
    if args.num_speculative_tokens is not None:
        spec["num_speculative_tokens"] = args.num_speculative_tokens
    if args.skip_profile is not None:
        spec["skip_profile"] = args.skip_profile
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    questions = load_prompt_set(args.prompts)[: args.num_prompts]

    runs = {}
    for name, speculative_config in (("plain", None), ("self_skip", spec)):
        llm = make_llm(model, speculative_config, dtype=args.dtype, enforce_eager=args.eager)
        prompts = chat_prompts(llm, questions)
        timed_generate(llm, prompts[:2], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        runs[name] = timed_generate(llm, prompts, params)
        if speculative_config is not None:
            config = llm.llm_engine.vllm_config.speculative_config
            settings = (
                f"K={config.num_speculative_tokens}, skip_attn={config.skip_attn}, "
                f"skip_mlp={config.skip_mlp} ({config.skip_source})"
            )
        release(llm)

    plain, self_skip = runs["plain"], runs["self_skip"]
    for index, question in enumerate(questions):
        same = plain.token_ids[index] == self_skip.token_ids[index]
        print(f"\n[{index}] {question}")
        print(f"  plain     : {plain.texts[index].strip()[:300]!r}")
        print(f"  self_skip : {'(identical)' if same else repr(self_skip.texts[index].strip()[:300])}")
    matches = sum(a == b for a, b in zip(plain.token_ids, self_skip.token_ids))
    print(f"\nmodel {model}, dtype {args.dtype}, {'eager' if args.eager else 'compiled'}, "
          f"greedy, {len(questions)} prompts, max_tokens {args.max_tokens}")
    print(f"self_skip settings: {settings}")
    print(f"outputs identical: {matches}/{len(questions)}")
    _print_run("plain", plain)
    _print_run("self_skip", self_skip)
    print(f"speed ratio self_skip/plain: {self_skip.tokens_per_s / plain.tokens_per_s:.3f}x")
    spec_counts = self_skip.spec
    print(
        f"acceptance: {spec_counts.accepted_tokens}/{spec_counts.draft_tokens} draft tokens "
        f"({spec_counts.acceptance_rate:.1%}), mean acceptance length "
        f"{spec_counts.mean_acceptance_length:.2f} tokens/step, per position "
        + ", ".join(f"{r:.2f}" for r in spec_counts.per_position_rates)
    )
    return 0 if matches == len(questions) else 1
