"""``vllm-selfspec demo``: the same prompts through plain vLLM and through self_skip, side by side.

Engines: plain vLLM; self_skip as a user gets it (started only where the profile's
batch-size schedule drafts at some batch size: otherwise vLLM runs it as plain vLLM,
and the demo says so instead of starting a second plain engine); and self_skip with
drafting held on at every batch size; on a 2-core CPU host they start at once
(:func:`~vllm_selfspec.tools.engine_runs.start_engines`). Each decodes the first prompts
one request at a time (where self-speculation pays) and then all of them as one batch.
All engines stay up and are measured in alternating rounds, each round in a rotated
order, so that neither a slow spell of the machine nor a place in the order favours one;
each speed is printed as the median with the rounds' range.
"""

from __future__ import annotations

import argparse
import functools
import statistics

from vllm_selfspec.tools.prompts import load_prompt_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    parser.add_argument("--model", help="model folder (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", default="chat", help="chat, summarization, humaneval or a file")
    parser.add_argument("--num-prompts", type=int, default=8, help="prompts in the batch (default 8)")
    parser.add_argument("--num-single-prompts", type=int, default=4,
                        help="of those, the first N also run one request at a time (default 4)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dtype", help="default: the model's own dtype; float32 on the CPU (exact token identity)")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (no torch.compile)")
    parser.add_argument("--num-speculative-tokens", type=int, default=None)
    parser.add_argument("--skip-profile", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (default 3)")


def run_demo(args: argparse.Namespace) -> int:
    """Run the engines; return 0 when every greedy output matches plain vLLM token for token."""
    from vllm import SamplingParams

    from vllm_selfspec.tools.engine_runs import (
        SpecDecodeCounts,
        chat_prompts,
        combined_tokens_per_s,
        default_dtype,
        describe_draft,
        drafting_held_on,
        median_and_range,
        model_config_for,
        release,
        resolved_draft,
        start_engines,
        timed_generate,
        timed_workload,
    )
    from vllm_selfspec.tools.model_prep import prepare_default_model

    for option, value in (("--rounds", args.rounds), ("--num-prompts", args.num_prompts),
                          ("--num-single-prompts", args.num_single_prompts)):
        if value < 1:
            raise SystemExit(f"vllm-selfspec demo: error: {option}: must be at least 1, got {value}")
    if args.num_single_prompts > args.num_prompts:
        raise SystemExit(f"vllm-selfspec demo: error: --num-single-prompts: must not exceed --num-prompts "
                         f"({args.num_prompts}), got {args.num_single_prompts}")
    model = args.model or str(prepare_default_model())
    spec: dict = {"method": "self_skip"}
    if args.num_speculative_tokens is not None:
        spec["num_speculative_tokens"] = args.num_speculative_tokens
    if args.skip_profile is not None:
        spec["skip_profile"] = args.skip_profile
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    questions = load_prompt_set(args.prompts)[: args.num_prompts]

    dtype = args.dtype or default_dtype()
    engine = dict(dtype=dtype, enforce_eager=args.eager)
    model_config = model_config_for(model, **engine)
    as_user_gets_it = resolved_draft(model_config, spec)
    speculative_configs = {"plain": None}
    if not as_user_gets_it.never_drafts():
        speculative_configs["self_skip"] = spec
    # This engine holds K at every batch size, to show the drafts themselves even where
    # the profile's schedule turns drafting off.
    speculative_configs["self_skip, drafting held on"] = drafting_held_on(model_config, spec)
    llms, how_started = start_engines(model, speculative_configs, **engine)
    engines = list(llms)
    prompts = chat_prompts(llms["plain"], questions)
    singles = prompts[: args.num_single_prompts]
    labels = (f"one at a time ({len(singles)} prompts)", f"batch of {len(prompts)}")
    prompt_counts = dict(zip(labels, (len(singles), len(prompts))))
    # rounds[name][label]: one (runs, counts) per round
    rounds: dict[str, dict[str, list]] = {name: {label: [] for label in labels} for name in engines}
    drafts = {name: describe_draft(llms[name]) for name in engines[1:]}
    try:
        for llm in llms.values():
            timed_generate(llm, prompts[:2], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        for round_index in range(args.rounds):
            shift = round_index % len(engines)
            for name in engines[shift:] + engines[:shift]:
                llm = llms[name]
                before = SpecDecodeCounts.read(llm)
                runs = timed_workload(llm, singles, params, 1)
                rounds[name][labels[0]].append((runs, SpecDecodeCounts.read(llm).minus(before)))
                batch = timed_generate(llm, prompts, params)
                rounds[name][labels[1]].append(([batch], batch.spec))
    finally:
        for llm in llms.values():
            release(llm)

    plain = rounds["plain"][labels[1]][0][0][0]
    for index, question in enumerate(questions):
        print(f"\n[{index}] {question}\n  {plain.texts[index].strip()[:300]!r}")
    print(f"\nmodel {model}, dtype {dtype}, {'eager' if args.eager else 'compiled'}, greedy, "
          f"{len(questions)} prompts, max_tokens {args.max_tokens}, {args.rounds} alternating rounds "
          "(tok/s: median [lowest-highest round])")
    print(f"engines started {how_started}")
    if as_user_gets_it.never_drafts():
        print("self_skip as a user gets it: the profile's schedule turns drafting off at every batch size "
              "(where it was measured, drafting did not pay), so vLLM runs it as plain vLLM: the plain rows "
              "below are its speed")
    for name in engines[1:]:
        print(f"{name}: {drafts[name]}")
    identical = total = 0
    for label in labels:
        plain_rates = [combined_tokens_per_s(runs) for runs, _ in rounds["plain"][label]]
        print(f"{label}: plain {median_and_range(plain_rates)}")
        for name in list(engines)[1:]:
            rates = [combined_tokens_per_s(runs) for runs, _ in rounds[name][label]]
            ratio = statistics.median(rates) / statistics.median(plain_rates)
            same = 0
            for (runs, _), (plain_runs, _) in zip(rounds[name][label], rounds["plain"][label]):
                outputs = [t for run in runs for t in run.token_ids]
                same += sum(a == b for a, b in zip(outputs, [t for run in plain_runs for t in run.token_ids]))
            runs_total = prompt_counts[label] * args.rounds
            identical, total = identical + same, total + runs_total
            counts = functools.reduce(SpecDecodeCounts.plus, [c for _, c in rounds[name][label]])
            print(f"  {name}: {median_and_range(rates)} ({ratio:.3f}x plain's median), outputs identical "
                  f"{same}/{runs_total}, accepted {counts.accepted_tokens}/{counts.draft_tokens} "
                  f"draft tokens ({counts.acceptance_rate:.1%}), {counts.mean_acceptance_length:.2f} tokens per step")
    print(f"outputs identical to plain vLLM: {identical}/{total}")
    return 0 if identical == total else 1
