"""``vllm-selfspec doctor [MODEL]``: is this install healthy, and is self_skip fast here?

Starts plain vLLM and a self_skip engine with drafting on at every batch size (the health
checks: how the target and the draft run, how drafts are scheduled, whether the draft loop
read any tensor to the host outside adaptive exit's rank-agreed points, greedy outputs
against plain vLLM), then replaces that engine by ``{"method":
"self_skip"}`` exactly as a user starts it and times it against plain vLLM at batch 1 in
alternating rounds; then a one-line verdict. Greedy outputs must be identical in float32;
in another dtype, where batched greedy output changes with the batch shape even in plain
vLLM, an output may also differ after a near-tie of plain vLLM's (top two logprobs within
``NEAR_TIE_LOGPROB_GAP``). A speed verdict is given only outside the rounds' spread.
Exit code 0 when healthy: outputs as above, no unplanned host reads in the draft loop, drafts made.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics

NEAR_TIE_LOGPROB_GAP = 0.5
"""Outside float32, an output that first differs where plain vLLM's top two logprobs are closer
than this is a rounding near-tie, not a fault."""
MIN_ROUNDS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's command-line options."""
    parser.add_argument("model", nargs="?", help="model folder or name (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", help="default: the model's own dtype; float32 on the CPU (exact token identity)")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (no torch.compile)")
    parser.add_argument("--num-prompts", type=int, default=4, help="prompts, each decoded alone (default 4)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                        help=f"alternating measurement rounds (default and least {MIN_ROUNDS})")


def _platform_line() -> str:
    import torch
    from vllm.platforms import current_platform

    if current_platform.device_type == "cuda":
        return f"platform: {current_platform.device_type}, {torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"platform: {current_platform.device_type}, {platform.machine()}, {cores} cores"


def _scheduling_line(llms: dict) -> str:
    """Whether each engine runs with vLLM's async scheduling (and why self_skip does not where plain vLLM
    does), which scheduler books self_skip's drafts, and whether adaptive exit is on."""
    from vllm.platforms import current_platform

    from vllm_selfspec.glue.config import NO_ASYNC_SCHEDULING_REASON

    def mode(llm) -> str:
        return "async" if llm.llm_engine.vllm_config.scheduler_config.async_scheduling else "synchronous"

    config = llms["self_skip"].llm_engine.vllm_config
    line = f"scheduling: plain vLLM {mode(llms['plain'])}, self_skip {mode(llms['self_skip'])}"
    exit_rule = "off"
    if config.speculative_config is None:
        line += " (no speculative decoding: the schedule drafts at no batch size)"
    else:
        booked_by = str(config.scheduler_config.scheduler_cls).rsplit(".", 1)[-1]
        exit_rule = "on" if config.speculative_config.draft.adaptive_exit else "off"
        line += f" (draft lengths booked by {booked_by}, adaptive exit {exit_rule})"
    if current_platform.is_cpu():
        return f"{line}; the CPU platform turns async scheduling off"
    if mode(llms["self_skip"]) != mode(llms["plain"]) and exit_rule == "on":
        return f"{line}; {NO_ASYNC_SCHEDULING_REASON}"
    return line


def run_doctor(args: argparse.Namespace) -> int:
    """Run the checks and print the report; return 0 when healthy."""
    import torch
    from vllm import SamplingParams

    from vllm_selfspec.compat import PLUGIN_VERSION, installed_vllm_version
    from vllm_selfspec.glue.tuning_worker import DRAFT_SWITCHING_EXTENSION
    from vllm_selfspec.tools.engine_runs import (
        SpecDecodeCounts,
        chat_prompts,
        combined_tokens_per_s,
        default_dtype,
        describe_draft,
        drafting_held_on,
        make_llm,
        median_and_range,
        release,
        timed_generate,
        timed_workload,
    )
    from vllm_selfspec.tools.model_prep import prepare_default_model
    from vllm_selfspec.tools.prompts import load_prompt_set

    for option, least in (("num_prompts", 1), ("max_tokens", 1), ("rounds", MIN_ROUNDS)):
        if getattr(args, option) < least:
            raise SystemExit(f"vllm-selfspec doctor: error: --{option.replace('_', '-')}: must be at least {least}")
    model = args.model or str(prepare_default_model())
    engine = dict(dtype=args.dtype or default_dtype(), enforce_eager=args.eager)
    user_spec = {"method": "self_skip"}
    llms = {"plain": make_llm(model, None, **engine)}
    try:
        plain_model = llms["plain"].llm_engine.vllm_config.model_config
        dtype = str(plain_model.dtype).removeprefix("torch.")
        held = make_llm(model, drafting_held_on(plain_model, user_spec), worker_extension_cls=DRAFT_SWITCHING_EXTENSION,
                        **engine)
        llms["self_skip"] = held
        runtime = held.collective_rpc("selfspec_runtime")[0]
        prompts = chat_prompts(llms["plain"], load_prompt_set("chat")[: args.num_prompts])
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        # Host reads are watched in a pass of their own, untimed: the recorder sees every torch call.
        held.collective_rpc("selfspec_watch_host_reads")
        try:
            held.generate(prompts[:1] * 2, [params, SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16)],
                          use_tqdm=False)
        finally:
            host_reads = held.collective_rpc("selfspec_host_reads")[0]
        before = SpecDecodeCounts.read(held)
        drafted = [list(o.outputs[0].token_ids) for o in held.generate(prompts, params, use_tqdm=False)]
        counts = SpecDecodeCounts.read(held).minus(before)
        reference = llms["plain"].generate(prompts, SamplingParams(temperature=0.0, max_tokens=args.max_tokens,
                                                                   logprobs=2), use_tqdm=False)
        release(llms.pop("self_skip"))

        # What a user gets: the same config as `vllm serve MODEL --speculative-config '{"method": "self_skip"}'`.
        llms["self_skip"] = make_llm(model, user_spec, **engine)
        draft = describe_draft(llms["self_skip"])
        scheduling = _scheduling_line(llms)
        for llm in llms.values():
            timed_generate(llm, prompts[:1], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in llms}
        for _ in range(args.rounds):
            for name, llm in llms.items():
                rates[name].append(combined_tokens_per_s(timed_workload(llm, prompts, params, 1)))
    finally:
        for llm in llms.values():
            release(llm)

    identity = _identity(reference, drafted, exact=dtype == "float32")
    ratios = [a / b for a, b in zip(rates["self_skip"], rates["plain"])]
    reads = host_reads["reads"]
    print(_platform_line())
    print(f"versions: vllm-selfspec {PLUGIN_VERSION}, vLLM {installed_vllm_version()}, torch {torch.__version__}")
    print(f"model: {model}, dtype {dtype}, {'eager' if args.eager else 'compiled'}")
    print(f"model runner: {runtime['model_runner']}; attention backend: {runtime['attention_backend']}")
    print(f"target compilation: {runtime['target_compilation']}")
    print(f"draft compilation: {runtime['draft_compilation']}")
    print(f"draft CUDA graphs: {runtime['draft_cuda_graphs']}")
    print(scheduling)
    agreed = host_reads["agreed_reads"]
    print(f"host reads in the draft loop: {'none' if not reads else len(reads)} over {host_reads['calls']} "
          f"propose calls{'' if not reads else ': ' + ', '.join(sorted(set(reads))[:5])}"
          f"{f'; adaptive exit read the device {len(agreed)} times at its rank-agreed points' if agreed else ''}")
    print(f"drafting held on, {args.num_prompts} prompts in one batch: {identity['line']}; accepted "
          f"{counts.accepted_tokens}/{counts.draft_tokens} draft tokens ({counts.acceptance_rate:.1%}), "
          f"{counts.mean_acceptance_length:.2f} tokens per step")
    print(f"as configured ({json.dumps(user_spec)}): {draft}")
    print(f"batch 1, {args.rounds} alternating rounds (median [range]): plain {median_and_range(rates['plain'])}, "
          f"self_skip {median_and_range(rates['self_skip'])}: {statistics.median(ratios):.2f}x plain "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)")
    problems = [text for bad, text in (
        (not identity["ok"], "outputs differ from plain vLLM"),
        (bool(reads), "the draft loop reads tensors to the host outside adaptive exit's agreed points"),
        (counts.drafts == 0, "self_skip made no drafts"),
    ) if bad]
    if problems:
        print(f"verdict: NOT HEALTHY: {'; '.join(problems)}")
        return 1
    print(f"verdict: healthy; {_speed_verdict(ratios)}")
    return 0


def _identity(reference: list, drafted: list[list[int]], exact: bool) -> dict:
    """Drafted greedy outputs against plain vLLM's (with its top-two logprobs): identical, or, unless
    ``exact``, first differing where plain vLLM's top two were a near-tie."""
    identical = near_ties = 0
    for output, tokens in zip(reference, drafted):
        plain = list(output.outputs[0].token_ids)
        at = next((i for i, (a, b) in enumerate(zip(plain, tokens)) if a != b), None)
        if at is None and len(plain) == len(tokens):
            identical += 1
        elif not exact and at is not None:
            top_two = sorted((lp.logprob for lp in output.outputs[0].logprobs[at].values()), reverse=True)[:2]
            near_ties += len(top_two) == 2 and top_two[0] - top_two[1] < NEAR_TIE_LOGPROB_GAP
    total = len(reference)
    if exact:
        line = f"greedy outputs identical to plain vLLM: {identical}/{total} (float32: exact)"
    else:
        line = (f"greedy outputs identical to plain vLLM: {identical}/{total}, {near_ties} more differing only "
                f"after a near-tie of plain vLLM's (top two logprobs within {NEAR_TIE_LOGPROB_GAP})")
    return {"ok": identical + near_ties == total, "line": line}


def _speed_verdict(ratios: list[float]) -> str:
    """Faster or slower only when every round says so; otherwise within the rounds' spread."""
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}x plain vLLM over {len(ratios)} rounds"
    if min(ratios) > 1.0:
        return f"self_skip as configured is faster here at batch 1 ({spread})"
    if max(ratios) < 1.0:
        return (f"self_skip as configured is slower here at batch 1 ({spread}): run `vllm-selfspec tune` "
                "for this model on this machine")
    return f"no speed difference beyond the rounds' spread at batch 1 ({spread})"
