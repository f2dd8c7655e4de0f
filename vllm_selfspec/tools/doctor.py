"""``vllm-selfspec doctor [MODEL]``: is this install healthy, and is self_skip fast here?

Starts plain vLLM and a self_skip engine with drafting on at every batch size, then
prints the platform and versions, how the target and the draft run (model runner,
attention backend, compilation, the draft's CUDA graphs), whether the draft loop read
any tensor to the host, greedy outputs against plain vLLM, and batch-1 tokens/s of both
engines measured in alternating rounds; then a one-line verdict. Exit code 0 when the
outputs are identical and the draft loop made no host reads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The doctor's command-line options."""
    parser.add_argument("model", nargs="?", help="model folder or name (default: the prepared SmolLM2-135M-Instruct)")
    parser.add_argument("--dtype", help="default: the model's own dtype; float32 on the CPU (exact token identity)")
    parser.add_argument("--eager", action="store_true", help="enforce_eager=True (no torch.compile)")
    parser.add_argument("--num-prompts", type=int, default=4, help="prompts, each decoded alone (default 4)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds (default 3)")


def _platform_line() -> str:
    import torch
    from vllm.platforms import current_platform

    if current_platform.device_type == "cuda":
        return f"platform: {current_platform.device_type}, {torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"platform: {current_platform.device_type}, {platform.machine()}, {cores} cores"


def _scheduling_line(llms: dict) -> str:
    """Whether each engine runs with vLLM's async scheduling, and why self_skip does not where plain vLLM does."""
    from vllm.platforms import current_platform

    from vllm_selfspec.glue.config import NO_ASYNC_SCHEDULING_REASON

    def mode(llm) -> str:
        return "async" if llm.llm_engine.vllm_config.scheduler_config.async_scheduling else "synchronous"

    line = f"scheduling: plain vLLM {mode(llms['plain'])}, self_skip {mode(llms['self_skip'])}"
    if current_platform.is_cpu():
        return f"{line} (the CPU platform turns async scheduling off)"
    draft = llms["self_skip"].llm_engine.vllm_config.speculative_config.draft
    if mode(llms["self_skip"]) != mode(llms["plain"]) and draft.chooses_length_while_drafting():
        return f"{line} ({NO_ASYNC_SCHEDULING_REASON})"
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

    for option in ("num_prompts", "max_tokens", "rounds"):
        if getattr(args, option) < 1:
            raise SystemExit(f"vllm-selfspec doctor: error: --{option.replace('_', '-')}: must be at least 1")
    model = args.model or str(prepare_default_model())
    engine = dict(dtype=args.dtype or default_dtype(), enforce_eager=args.eager)
    llms = {"plain": make_llm(model, None, **engine)}
    try:
        plain_model = llms["plain"].llm_engine.vllm_config.model_config
        llms["self_skip"] = make_llm(model, drafting_held_on(plain_model, {"method": "self_skip"}),
                                     worker_extension_cls=DRAFT_SWITCHING_EXTENSION, **engine)
        self_skip = llms["self_skip"]
        runtime = self_skip.collective_rpc("selfspec_runtime")[0]
        prompts = chat_prompts(llms["plain"], load_prompt_set("chat")[: args.num_prompts])
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
        for llm in llms.values():
            timed_generate(llm, prompts[:1], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        # Host reads are watched in a pass of their own, untimed: the recorder sees every torch call.
        self_skip.collective_rpc("selfspec_watch_host_reads")
        try:
            self_skip.generate(prompts[:1] * 2, [params, SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16)],
                               use_tqdm=False)
        finally:
            host_reads = self_skip.collective_rpc("selfspec_host_reads")[0]
        rates: dict[str, list[float]] = {name: [] for name in llms}
        outputs: dict[str, list] = {name: [] for name in llms}
        before = SpecDecodeCounts.read(self_skip)
        for _ in range(args.rounds):
            for name, llm in llms.items():
                runs = timed_workload(llm, prompts, params, 1)
                rates[name].append(combined_tokens_per_s(runs))
                outputs[name] += [ids for run in runs for ids in run.token_ids]
        counts = SpecDecodeCounts.read(self_skip).minus(before)
        draft = describe_draft(self_skip)
        scheduling = _scheduling_line(llms)
    finally:
        for llm in llms.values():
            release(llm)

    identical = sum(a == b for a, b in zip(outputs["self_skip"], outputs["plain"]))
    plain_rate, self_skip_rate = (statistics.median(rates[name]) for name in ("plain", "self_skip"))
    ratio = self_skip_rate / plain_rate
    reads = host_reads["reads"]
    print(_platform_line())
    print(f"versions: vllm-selfspec {PLUGIN_VERSION}, vLLM {installed_vllm_version()}, torch {torch.__version__}")
    print(f"model: {model}, dtype {engine['dtype']}, {'eager' if args.eager else 'compiled'}")
    print(f"model runner: {runtime['model_runner']}; attention backend: {runtime['attention_backend']}")
    print(f"target compilation: {runtime['target_compilation']}")
    print(f"draft compilation: {runtime['draft_compilation']}")
    print(f"draft CUDA graphs: {runtime['draft_cuda_graphs']}")
    print(f"draft: {draft}")
    print(scheduling)
    print(f"host reads in the draft loop: {'none' if not reads else len(reads)} over {host_reads['calls']} "
          f"propose calls{'' if not reads else ': ' + ', '.join(sorted(set(reads))[:5])}")
    print(f"greedy outputs identical to plain vLLM: {identical}/{len(outputs['plain'])} "
          f"({args.num_prompts} prompts x {args.rounds} rounds)")
    print(f"batch 1, {args.rounds} alternating rounds (median [range]): plain {median_and_range(rates['plain'])}, "
          f"self_skip {median_and_range(rates['self_skip'])}: {ratio:.2f}x plain; accepted "
          f"{counts.accepted_tokens}/{counts.draft_tokens} draft tokens ({counts.acceptance_rate:.1%}), "
          f"{counts.mean_acceptance_length:.2f} tokens per step")
    healthy = identical == len(outputs["plain"]) and not reads and counts.drafts > 0
    if not healthy:
        problems = [text for bad, text in (
            (identical < len(outputs["plain"]), "outputs differ from plain vLLM"),
            (bool(reads), "the draft loop reads tensors to the host"),
            (counts.drafts == 0, "self_skip made no drafts"),
        ) if bad]
        print(f"verdict: NOT HEALTHY: {'; '.join(problems)}")
        return 1
    if ratio >= 1.0:
        print(f"verdict: healthy; self_skip is {ratio:.2f}x plain vLLM at batch 1 here")
    else:
        print(f"verdict: healthy, but drafting does not pay here ({ratio:.2f}x plain at batch 1): "
              "run `vllm-selfspec tune` for this model on this machine, whose schedule turns drafting off "
              "where it does not pay")
    return 0
